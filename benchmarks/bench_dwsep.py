"""``depthwise_separable_conv2d`` (kernels/dwsep.py): 3x3 depthwise -> ReLU -> 1x1 fused,
against the same two convolutions unfused in Triton and in cuDNN, forward + backward, at
batch 512, bfloat16, channels_last, on a GPU (skipped without one). Nothing here asserts
speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastcifar.kernels import conv2d, depthwise_separable_conv2d

pytestmark = pytest.mark.cuda
BATCH = 512
DTYPE = torch.bfloat16


@pytest.mark.parametrize("kind", ["fused", "unfused_triton", "unfused_cudnn"])
@pytest.mark.parametrize("channels,cout,size", [(64, 64, 32), (160, 32, 32), (320, 132, 4)])
def test_depthwise_separable(benchmark, copy_bandwidth, kind, channels, cout, size):
    """3x3 depthwise -> ReLU -> 1x1 at s7 / c1c2c3c40 widths, forward+backward."""
    x = torch.randn(BATCH, channels, size, size, device="cuda", dtype=DTYPE)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    wd = (torch.randn(channels, 1, 3, 3, device="cuda", dtype=DTYPE) / 3).requires_grad_()
    wp = (torch.randn(cout, channels, 1, 1, device="cuda", dtype=DTYPE) / 8).requires_grad_()

    def fn():
        if kind == "fused":
            return depthwise_separable_conv2d(x, wd, wp, 1, 1, 1, True)
        dw = conv2d if kind == "unfused_triton" else F.conv2d
        return F.conv2d(F.relu(dw(x, wd, None, 1, 1, 1, channels)), wp)

    y = fn()
    gy = torch.randn_like(y)

    def step():
        torch.autograd.grad(fn(), (x, wd, wp), gy)
        torch.cuda.synchronize()

    for _ in range(5):
        step()
    benchmark.pedantic(step, rounds=30, iterations=5)
    nbytes = (2 * x.numel() + 3 * y.numel()) * x.element_size()  # x twice, y, dy twice
    benchmark.extra_info.update(
        kind=kind,
        gb_per_s=nbytes / benchmark.stats.stats.median / 1e9,
        copy_fraction=nbytes / benchmark.stats.stats.median / 1e9 / copy_bandwidth,
    )
