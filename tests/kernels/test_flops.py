"""Each fastcifar:: custom op's registered FLOP formula (fastcifar/kernels/flops.py),
read through PyTorch's own ``FlopCounterMode``: our convolutions count what ATen's count
for the same arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from fastcifar.kernels import conv2d, conv2d_relu_stats, depthwise_separable_conv2d
from fastcifar.kernels.conv_bn import conv2d_prologue_stats
from fastcifar.kernels.pointwise import pointwise_conv2d


def _count(fn, *inputs) -> tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) that FlopCounterMode counts for fn."""
    with FlopCounterMode(display=False) as forward:
        out = fn()
    with FlopCounterMode(display=False) as both:
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out.sum(), inputs)
    return forward.get_total_flops(), both.get_total_flops()


def _tensors(shape, wshape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(wshape, dtype=torch.float64, requires_grad=True)
    return x, w


def test_dense_conv2d_counts_as_atens():
    x, w = _tensors((2, 4, 6, 6), (8, 4, 3, 3))
    ours = _count(lambda: conv2d(x, w, None, 1, 1, 1, 1), x, w)
    atens = _count(lambda: F.conv2d(x, w, None, 1, 1), x, w)
    assert ours == atens and ours[0] == 2 * 2 * 6 * 6 * 8 * 4 * 9


@pytest.mark.parametrize("groups,wshape", [(8, (8, 1, 3, 3)), (2, (8, 4, 5, 5))])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_and_grouped_count_their_groups(stride, groups, wshape):
    # torch's own backward formula ignores groups in the weight gradient (it counts a
    # depthwise layer's CIN times over); ours counts each gradient as the forward
    x, w = _tensors((2, 8, 7, 7), wshape)
    k = wshape[-1]
    forward, both = _count(lambda: conv2d(x, w, None, stride, k // 2, 1, groups), x, w)
    ho = (7 + 2 * (k // 2) - k) // stride + 1
    assert forward == conv_flop_count([2, 8, 7, 7], list(wshape), [2, 8, ho, ho], False)
    assert forward == 2 * 2 * ho * ho * 8 * wshape[1] * k * k
    assert both == 3 * forward  # forward, input gradient, weight gradient


def test_fused_ops_count_their_convolution_only():
    x, w = _tensors((2, 4, 6, 6), (8, 4, 3, 3))
    dense = 2 * 2 * 6 * 6 * 8 * 4 * 9
    assert _count(lambda: conv2d_relu_stats(x, w, None, 1, 1), x, w) == (dense, 3 * dense)
    pro = torch.tensor([[0.0, 1.0, 0.0]] * 4, dtype=torch.float64)
    fn = lambda: conv2d_prologue_stats(x, w, None, pro, "relu", 1, 1)  # noqa: E731
    assert _count(fn, x, w) == (dense, 3 * dense)
    w1 = torch.randn(8, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    pointwise = 2 * 2 * 6 * 6 * 8 * 4
    fn = lambda: pointwise_conv2d(x, w1, None, pro, "relu", stats=True)  # noqa: E731
    assert _count(fn, x, w1) == (pointwise, 3 * pointwise)


def test_depthwise_separable_counts_both_convolutions():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    wd = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    wp = torch.randn(8, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    dw, pw = 2 * 2 * 6 * 6 * 4 * 9, 2 * 2 * 6 * 6 * 8 * 4
    fn = lambda: depthwise_separable_conv2d(x, wd, wp, 1, 1, 1, True)  # noqa: E731
    assert _count(fn, x, wd, wp) == (dw + pw, 4 * dw + 3 * pw)
