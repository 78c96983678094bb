"""The 1x1 convolution with the BatchNorm-and-activation prologue and the statistics
epilogue (``fastcifar.kernels.pointwise_conv2d``) against PyTorch in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastcifar.kernels.launch import ACTIVATIONS
from fastcifar.kernels.pointwise import pointwise_conv2d
from fastcifar.kernels.tiles import gpu_tiles
from tests.kernel_helpers import DEVICE, low_precision_bound, rel

TORCH_ACT = {
    "identity": lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "gelu": F.gelu,
}


def reference(x, w, b, prologue, activation, stats=True):
    """PyTorch's composition: the normalised, activated tensor written, then the conv."""
    a = x
    if prologue is not None:
        center, scale, shift = (prologue[:, i].view(1, -1, 1, 1) for i in range(3))
        # in the input's dtype, as a BatchNorm and activation under autocast write it
        a = TORCH_ACT[activation]((x - center) * scale + shift).to(x.dtype)
    y = F.conv2d(a, w, b)
    return (y, y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)) if stats else (y,)


def inputs(n, cin, cout, h, w, dtype, channels_last, prologue=True, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(n, cin, h, w, generator=gen) + 1).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(cout, cin, 1, 1, generator=gen) / cin**0.5).to(DEVICE, dtype)
    b = torch.randn(cout, generator=gen).to(DEVICE, dtype) if bias else None
    # BatchNorm's parameters stay float32 under autocast: so does the prologue (center near
    # the input's mean of 1, scale, shift)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    pro = torch.stack(
        (
            torch.randn(cin, generator=gen) + 1,
            torch.rand(cin, generator=gen) + 0.2,
            torch.randn(cin, generator=gen),
        ),
        dim=1,
    ).to(DEVICE, sdt)
    return [x, wt, b, pro if prologue else None]


def run(fn, tensors, activation, stats=True, seed=1):
    """Outputs, then the gradients of every tensor input, for a loss using all outputs."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves, activation, stats)
    out = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum(
        (o.double() * torch.randn(o.shape, generator=gen).to(o.device, torch.float64)).sum()
        for o in out
    )
    present = [t for t in leaves if t is not None]
    return [*out, *torch.autograd.grad(loss, present)]


def ours(x, w, b, prologue, activation, stats):
    return pointwise_conv2d(x, w, b, prologue, activation, stats)


NAMES = ("y", "mean", "var", "grad x", "grad weight", "grad bias", "grad prologue")


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_float64_matches_pytorch_to_1e_12(activation, channels_last):
    # odd sizes: no dimension a multiple of a block
    tensors = inputs(3, 20, 37, 5, 6, torch.float64, channels_last)
    got = run(ours, tensors, activation)
    want = run(reference, tensors, activation)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for name, a, r in zip(NAMES, got, want, strict=True):
        assert rel(a, r) < 1e-12, f"{name}: {rel(a, r):.2e}"


def test_without_prologue_or_statistics_it_is_a_1x1_convolution():
    tensors = inputs(2, 9, 11, 4, 3, torch.float64, True, prologue=False, bias=False)
    got = run(ours, tensors, "identity", stats=False)
    want = run(reference, tensors, "identity", stats=False)
    assert len(got) == len(want) == 3  # y, grad x, grad weight
    for a, r in zip(got, want, strict=True):
        assert rel(a, r) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_within_pytorchs_own_error(dtype):
    # the GPU tiles themselves (64 pixels x 32 channels, K = 32), several programs a side
    tensors = inputs(2, 40, 70, 9, 8, dtype, True)
    exact = run(reference, [t.double() if t is not None else None for t in tensors], "silu")
    theirs = run(reference, tensors, "silu")
    with gpu_tiles():
        got = run(ours, tensors, "silu")
    for name, a, t, r in zip(NAMES, got, theirs, exact, strict=True):
        bound = 1e-5 if dtype == torch.float32 else low_precision_bound(rel(t, r), dtype)
        assert rel(a, r) <= bound, f"{name}: {rel(a, r):.2e} > {bound:.2e}"


def test_bad_input_is_named():
    x, w, b, pro = inputs(1, 4, 5, 2, 2, torch.float32, False)
    with pytest.raises(NotImplementedError, match=r"weight \(COUT, CIN, 1, 1\)"):
        pointwise_conv2d(x, torch.randn(5, 4, 3, 3))
    with pytest.raises(ValueError, match=r"floating \(4, 3\) tensor of center, scale"):
        pointwise_conv2d(x, w, b, pro[:, :2])
    with pytest.raises(ValueError, match="activation 'hardswish'"):
        pointwise_conv2d(x, w, b, pro, "hardswish")
