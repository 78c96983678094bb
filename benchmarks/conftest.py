"""Benchmark fixtures. The GPU benchmarks need CUDA and skip without it; the per-op
benchmarks (``bench_<op>.py``) run their kernels under the Triton interpreter without
one, so it is switched on here, before any kernel is imported."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastcifar.engine.runtime import copy_bandwidth_gb_s


@pytest.fixture(scope="session")
def copy_bandwidth() -> float | None:
    """Measured device-to-device copy bandwidth in GB/s (read + write bytes), 1 GiB
    buffers; None without CUDA."""
    return copy_bandwidth_gb_s("cuda") if torch.cuda.is_available() else None
