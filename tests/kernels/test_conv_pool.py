"""The convolution with its 2x2 max pool in the epilogue and the un-pool on the gradients'
load (``fastcifar.kernels.conv_pool``), against PyTorch's conv2d -> max_pool2d -> batch
statistics, with and without the BatchNorm-and-activation prologue."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastcifar.kernels import tiles
from fastcifar.kernels.conv_pool import conv2d_pool_stats
from tests.kernel_helpers import DEVICE, conv_inputs, low_precision_bound, rel

# (N, CIN, COUT, H, W, stride, padding, dilation, groups): even and odd pre-pool sizes
# (the speed run's 32 px -> 31 -> 15 -> 7 and the progressive 24/28 px: 23 -> 11, 27 ->
# 13), a channel count that leaves a partial byte of positions (COUT 6), a wide group
CONFIGS = [
    (2, 16, 32, 8, 8, 1, 1, 1, 1),
    (2, 8, 6, 7, 9, 1, 1, 1, 1),
    (1, 16, 16, 11, 6, 1, 0, 1, 1),
    (2, 16, 32, 6, 6, 1, 1, 1, 2),
]
_ACT = {"identity": lambda t: t, "silu": F.silu, "relu": F.relu}


def reference(x, w, b, prologue, activation, s, p, d, g):
    if prologue is not None:
        center, scale, shift = (prologue[:, i].view(1, -1, 1, 1) for i in range(3))
        x = _ACT[activation]((x - center) * scale + shift)
    y = F.max_pool2d(F.conv2d(x, w, b, s, p, d, g), 2)
    return y, y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)


def run(fn, tensors, args, seed=1):
    """(y, mean, var, then the gradient of each tensor) for a loss on all three outputs."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    outs = fn(*leaves, *args)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o)).sum() for o in outs)
    wanted = [t for t in leaves if t is not None]
    return [*outs, *torch.autograd.grad(loss, wanted)]


def inputs(cfg, dtype, channels_last, prologue: bool):
    x, w, b = conv_inputs(cfg, dtype, channels_last)
    gen = torch.Generator().manual_seed(7)
    pro = None
    if prologue:  # center, a positive scale, shift per input channel
        pro = torch.randn(cfg[1], 3, generator=gen, dtype=torch.float64)
        pro[:, 1] = pro[:, 1].abs() + 0.5
        pro = pro.to(DEVICE, torch.float64 if dtype == torch.float64 else torch.float32)
    return [x, w, b, pro]


NAMES = ("y", "mean", "var", "grad input", "grad weight", "grad bias", "grad prologue")


@pytest.mark.parametrize(
    "channels_last, activation", [(False, None), (True, "silu")], ids=["nchw", "cl-prologue"]
)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_float64_equals_conv_then_pool(cfg, channels_last, activation):
    tensors = inputs(cfg, torch.float64, channels_last, activation is not None)
    args = (activation or "identity", *cfg[5:])
    ours = run(conv2d_pool_stats, tensors, args)
    ref = run(reference, tensors, args)
    assert ours[0].shape == ref[0].shape
    assert ours[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for name, a, r in zip(NAMES, ours, ref, strict=False):
        assert (a - r).abs().max().item() <= 1e-9 * max(1.0, r.abs().max().item()), name


def test_ties_go_where_max_pool2d_sends_them():
    # a zero weight makes every pre-pool pixel of channels 0-3 equal their bias: four-way
    # ties in every window, whose gradient must reach the first pixel in row-major order
    # (the weight gradient, a sum of that pixel's random input taps, tells which one)
    cfg = (2, 8, 8, 6, 6, 1, 1, 1, 1)
    x, w, b = conv_inputs(cfg, torch.float64, channels_last=False)
    w[:4] = 0.0
    tensors = [x, w, b, None]
    args = ("identity", *cfg[5:])
    ours, ref = run(conv2d_pool_stats, tensors, args), run(reference, tensors, args)
    for name, a, r in zip(NAMES, ours, ref, strict=False):
        assert (a - r).abs().max().item() < 1e-12, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_within_pytorchs_own_error(dtype):
    cfg = CONFIGS[0]
    tensors = inputs(cfg, dtype, True, prologue=True)
    args = ("silu", *cfg[5:])
    ours = run(conv2d_pool_stats, tensors, args)
    theirs = run(reference, [t.to(dtype) if t is not None else None for t in tensors], args)
    exact = run(reference, [t.double() if t is not None else None for t in tensors], args)
    for name, a, t, r in zip(NAMES, ours, theirs, exact, strict=False):
        assert rel(a, r) < low_precision_bound(rel(t, r), dtype), name


def test_the_gpu_tiles_compute_the_same():
    # the exact GPU_TILES configuration (64 pooled pixels x 32 channels, tl.dot) run under
    # the interpreter on a shape that fills more than one program of each
    cfg = (2, 16, 64, 12, 12, 1, 1, 1, 1)
    tensors = inputs(cfg, torch.float32, True, prologue=True)
    args = ("silu", *cfg[5:])
    with tiles.gpu_tiles():
        ours = run(conv2d_pool_stats, tensors, args)
    exact = run(reference, [t.double() if t is not None else None for t in tensors], args)
    for name, a, r in zip(NAMES, ours, exact, strict=False):
        assert rel(a, r) < 1e-5, name


def test_opcheck():
    cfg = (1, 8, 8, 5, 4, 1, 1, 1, 1)
    x, w, b, pro = inputs(cfg, torch.float32, True, prologue=True)
    leaves = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), pro.requires_grad_())
    op = torch.ops.fastcifar.conv2d_pool_stats.default
    torch.library.opcheck(op, (*leaves, 3, *cfg[5:]))


def test_refusals_name_the_problem():
    x, w, b = conv_inputs((1, 8, 8, 3, 3, 1, 0, 1, 1), torch.float32, False)
    with pytest.raises(ValueError, match="smaller than the 2x2 pooling window"):
        conv2d_pool_stats(x, w, b)  # 3x3 -> 1x1 before the pool
    x, w, b = conv_inputs((1, 8, 8, 6, 6, 1, 1, 1, 8), torch.float32, False)
    with pytest.raises(NotImplementedError, match="leave the max pool to PyTorch"):
        conv2d_pool_stats(x, w, b, padding=1, groups=8)  # depthwise
    with pytest.raises(NotImplementedError, match="stride-1 convolutions, not stride 2"):
        conv2d_pool_stats(x, w[:, :1].repeat(1, 8, 1, 1), b, padding=1, stride=2)
    with pytest.raises(ValueError, match="activation 'gelu2'"):
        conv2d_pool_stats(x, w[:, :1].repeat(1, 8, 1, 1), b, torch.zeros(8, 3), "gelu2")


def test_flops_count_the_pre_pool_convolution():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = CONFIGS[0]
    x, w, b, _ = inputs(cfg, torch.float32, False, prologue=False)
    x.requires_grad_()
    w.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        y, _, _ = conv2d_pool_stats(x, w, None, padding=1)
        y.sum().backward()
    one = 2 * 2 * 8 * 8 * 32 * 16 * 9  # 2 N HO WO COUT CIN K K at the pre-pool 8x8
    assert counter.get_total_flops() == 3 * one
