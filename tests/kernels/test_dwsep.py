"""The fused depthwise-separable op against the unfused float64 PyTorch composition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastcifar.kernels import depthwise_separable_conv2d
from tests.kernel_helpers import DEVICE, low_precision_bound, rel

# (N, C, COUT, H, W, stride, padding, dilation, relu)
CONFIGS = [
    (2, 5, 7, 7, 9, 1, 1, 1, False),
    (2, 6, 9, 7, 8, 2, 1, 1, True),
    (1, 5, 4, 8, 7, 1, 2, 2, True),
    (2, 35, 19, 5, 6, 1, 1, 1, True),  # more channels than one block
    (1, 4, 6, 9, 9, 2, 0, 3, False),
]


def reference(x, wd, wp, s, p, d, relu):
    mid = F.conv2d(x, wd, None, s, p, d, x.shape[1])
    return F.conv2d(F.relu(mid) if relu else mid, wp)


def make(cfg, dtype, channels_last):
    n, c, co, h, w, *_ = cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wd = (torch.randn(c, 1, 3, 3, generator=g) / 3).to(DEVICE, dtype)
    wp = (torch.randn(co, c, 1, 1, generator=g) / c**0.5).to(DEVICE, dtype)
    return x, wd, wp


def fwd_bwd(fn, tensors, args, gy=None):
    leaves = [t.detach().requires_grad_() for t in tensors]
    y = fn(*leaves, *args)
    if gy is None:
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    return [y, *torch.autograd.grad(y, leaves, gy.to(y.dtype))], gy


# float32 on every shape; float64 and bfloat16 on two representative ones (interpreter time)
CASES = [(cfg, torch.float32) for cfg in CONFIGS] + [
    (cfg, dtype) for cfg in CONFIGS[1:3] for dtype in (torch.float64, torch.bfloat16)
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("cfg,dtype", CASES, ids=str)
def test_matches_the_unfused_composition(cfg, dtype, channels_last):
    args = cfg[5:]
    tensors = make(cfg, dtype, channels_last)
    ours, gy = fwd_bwd(depthwise_separable_conv2d, tensors, args)
    ref, _ = fwd_bwd(reference, [t.double() for t in tensors], args, gy.double())
    assert ours[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert ours[0].dtype == dtype
    if dtype == torch.bfloat16:
        theirs, _ = fwd_bwd(reference, tensors, args, gy)  # PyTorch's own bf16 error
        for a, t, r in zip(ours, theirs, ref, strict=True):
            assert rel(a, r) < low_precision_bound(rel(t, r), dtype)
    else:
        tol = 2e-6 if dtype == torch.float32 else 1e-13
        for name, a, r in zip(("y", "dx", "dw_dw", "dw_pw"), ours, ref, strict=True):
            assert rel(a, r) < tol, f"{name}: {rel(a, r):.2e}"


def test_gradcheck_float64():
    x, wd, wp = make((1, 3, 2, 5, 4, 1, 1, 1, True), torch.float64, False)
    leaves = [t.requires_grad_() for t in (x, wd, wp)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: depthwise_separable_conv2d(a, b, c, 1, 1, 1, True), leaves, fast_mode=True
    )


def test_backward_is_bitwise_deterministic():
    tensors = make(CONFIGS[1], torch.float32, True)
    first, gy = fwd_bwd(depthwise_separable_conv2d, tensors, CONFIGS[1][5:])
    second, _ = fwd_bwd(depthwise_separable_conv2d, tensors, CONFIGS[1][5:], gy)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_opcheck(channels_last):
    x, wd, wp = make(CONFIGS[1], torch.float32, channels_last)
    args = (x.requires_grad_(), wd.requires_grad_(), wp.requires_grad_(), 2, 1, 1, True)
    torch.library.opcheck(torch.ops.fastcifar.dwsep_conv2d.default, args)


def test_compile_fullgraph():
    torch._dynamo.reset()
    x, wd, wp = make(CONFIGS[0], torch.float32, True)
    wd.requires_grad_()
    fn = torch.compile(
        lambda a, b, c: depthwise_separable_conv2d(a, b, c, 1, 1, 1, True).sum(),
        backend="aot_eager",
        fullgraph=True,
    )
    fn(x, wd, wp).backward()
    ref = wd.detach().double().requires_grad_()
    reference(x.double(), ref, wp.double(), 1, 1, 1, True).sum().backward()
    assert rel(wd.grad, ref.grad) < 2e-6


def test_bad_shapes():
    x, wd, wp = make(CONFIGS[0], torch.float32, False)
    with pytest.raises(ValueError, match="must be \\(5, 1, 3, 3\\)"):
        depthwise_separable_conv2d(x, wd[:4], wp)
    with pytest.raises(NotImplementedError, match="stride 3"):
        depthwise_separable_conv2d(x, wd, wp, stride=3)
