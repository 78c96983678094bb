"""Benchmark fixtures. The GPU benchmarks need CUDA and skip without it."""

from __future__ import annotations

import pytest

from fastcifar.runtime import copy_bandwidth_gb_s


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """Measured device-to-device copy bandwidth in GB/s (read + write bytes), 1 GiB buffers."""
    return copy_bandwidth_gb_s("cuda")
