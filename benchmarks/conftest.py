"""Benchmark fixtures. The GPU benchmarks need CUDA and skip without it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """Measured device-to-device copy bandwidth in GB/s (read + write bytes), 1 GiB buffers."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    reps = 20
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    return 2 * src.numel() / seconds / 1e9
