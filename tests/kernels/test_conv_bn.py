"""The conv + ReLU + BatchNorm-statistics epilogue and the fused Conv-ReLU-BN and Conv-BN
blocks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.kernels.conv_bn import conv2d_relu_stats
from fastcifar.models import create_model
from fastcifar.nn.conv_bn import FusedConvBN, FusedConvReLUBN, fuse_conv_relu_bn
from tests.kernel_helpers import DEVICE, conv_inputs, rel

# (N, CIN, COUT, H, W, stride, padding, dilation, groups)
CONFIGS = [
    (2, 5, 7, 7, 9, 1, 1, 1, 1),
    (3, 4, 6, 9, 7, 1, 0, 2, 1),
    (2, 6, 6, 7, 9, 2, 1, 1, 6),
    (2, 8, 8, 6, 5, 1, 1, 1, 4),
]


def reference(x, w, b, s, p, d, g, relu):
    y = F.conv2d(x, w, b, s, p, d, g)
    if relu:
        y = F.relu(y)
    return y, y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)


def make(cfg, dtype, channels_last):
    return conv_inputs(cfg, dtype, channels_last), tuple(cfg[5:])


def run(fn, tensors, args, relu, seeds=(1, 2, 3)):
    leaves = [t.detach().requires_grad_() for t in tensors]
    y, mean, var = fn(*leaves, *args, relu)
    # a loss that uses all three outputs, so the statistics' gradients are checked too
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    gy = torch.randn(y.shape, generator=gens[0]).to(y)
    loss = (y * gy).sum() + (mean * torch.randn(mean.shape, generator=gens[1]).to(mean)).sum()
    loss = loss + (var * torch.randn(var.shape, generator=gens[2]).to(var)).sum()
    return [y, mean, var, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_conv_relu_and_batch_statistics(cfg, channels_last, relu):
    tensors, args = make(cfg, torch.float32, channels_last)
    ours = run(conv2d_relu_stats, tensors, args, relu)
    ref = run(reference, [t.double() for t in tensors], args, relu)
    assert ours[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    names = ("y", "mean", "var", "grad input", "grad weight", "grad bias")
    for name, a, r in zip(names, ours, ref, strict=True):
        assert rel(a, r) < 5e-6, f"{name}: {rel(a, r):.2e}"


def test_gradcheck_float64():
    tensors, args = make((1, 2, 3, 5, 4, 1, 1, 1, 1), torch.float64, False)
    leaves = [t.requires_grad_() for t in tensors]

    def fn(x, w, b):
        y, mean, var = conv2d_relu_stats(x, w, b, *args, relu=True)
        return y, mean, var

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


def test_opcheck_channels_last():
    tensors, args = make(CONFIGS[2], torch.float32, True)
    leaves = tuple(t.requires_grad_() for t in tensors)
    torch.library.opcheck(torch.ops.fastcifar.conv2d_relu_stats.default, (*leaves, *args, True))


def crb(cin, cout, **kw):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False, **kw), nn.ReLU(), nn.BatchNorm2d(cout))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("kind", ["conv_relu_bn", "conv_bn"])
def test_fused_block_matches_the_unfused_block(momentum, kind):
    # conv_bn: the model zoo's depthwise 5x5 -> BatchNorm (FusedConvBN)
    torch.manual_seed(0)
    if kind == "conv_relu_bn":
        ref, cls = crb(4, 6, padding=1, groups=2).to(DEVICE), FusedConvReLUBN
    else:
        conv = nn.Conv2d(4, 4, 5, padding=2, groups=4, bias=False)
        ref, cls = nn.Sequential(conv, nn.BatchNorm2d(4)).to(DEVICE), FusedConvBN
    ref[-1].momentum = momentum
    with torch.no_grad():
        ref[-1].weight.uniform_(0.5, 1.5)
        ref[-1].bias.uniform_(-0.5, 0.5)
    fused = copy.deepcopy(ref)
    fused.__class__ = cls
    for step in range(2):  # two steps: running statistics move twice
        x = torch.randn(3, 4, 7, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
        xs = [x.clone().requires_grad_() for _ in range(2)]
        out_ref, out = ref(xs[0]), fused(xs[1])
        gy = torch.randn_like(out_ref)
        out_ref.backward(gy)
        out.backward(gy)
        assert rel(out, out_ref.double()) < 1e-5, step
        assert rel(xs[1].grad, xs[0].grad.double()) < 1e-5
        for (name, p), q in zip(ref.named_parameters(), fused.parameters(), strict=True):
            assert rel(q.grad, p.grad.double()) < 1e-4, name
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fused[-1], buf), getattr(ref[-1], buf))
    ref.eval()
    fused.eval()
    x = torch.randn(2, 4, 7, 9, device=DEVICE)
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fuse_s7_keeps_state_dict_and_output():
    torch.manual_seed(0)
    model = create_model("s7").to(DEVICE)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    keys = list(model.state_dict())
    expected = model(x)
    ref_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(ref_state)
    fused = fuse_conv_relu_bn(model)
    assert len(fused) == 17 and "pool1" in fused and "pool3" not in fused
    assert list(model.state_dict()) == keys
    model.load_state_dict(ref_state)  # undo the running-stat updates of the first pass
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------- the BatchNorm-and-activation prologue

# (N, C, COUT, H, W, stride, padding, dilation, groups, K): depthwise 3x3, 5x5 at stride 2,
# dilated, groups of 4 channels (ResNeXt's first stage), and the tl.dot kernels: dense
# 3x3 (also strided and dilated) and groups of 8 channels (RegNetX, ResNeXt's wider
# stages; two groups per 16-wide reduction step), at stride 2
PROLOGUE_CONFIGS = [
    (2, 6, 6, 7, 9, 1, 1, 1, 6, 3),
    (2, 5, 5, 9, 8, 2, 2, 1, 5, 5),
    (2, 4, 4, 8, 7, 1, 2, 2, 4, 3),
    (2, 8, 8, 6, 5, 1, 1, 1, 2, 3),
    (2, 5, 6, 7, 6, 1, 1, 1, 1, 3),
    (2, 6, 4, 9, 8, 2, 2, 2, 1, 3),
    (2, 24, 16, 6, 7, 2, 1, 1, 2, 3),
]


def prologue_reference(x, w, b, prologue, s, p, d, g, activation):
    """PyTorch's composition: the normalised, activated input written, zero-padded."""
    from tests.kernels.test_pointwise import TORCH_ACT

    center, scale, shift = (prologue[:, i].view(1, -1, 1, 1) for i in range(3))
    a = TORCH_ACT[activation]((x - center) * scale + shift)
    return reference(a.to(x.dtype), w, b, s, p, d, g, relu=False)


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("cfg", PROLOGUE_CONFIGS, ids=str)
def test_prologue_matches_pytorch_in_float64_border_included(cfg, activation):
    from fastcifar.kernels.conv_bn import conv2d_prologue_stats

    (x, w, b), args = make(cfg, torch.float64, True)
    gen = torch.Generator().manual_seed(5)
    c = x.shape[1]
    # a large positive shift: act(shift) is far from 0, so padding before the activation
    # (instead of after it) would show at every border pixel
    pro = torch.stack(
        (
            torch.randn(c, generator=gen, dtype=torch.float64),
            torch.rand(c, generator=gen, dtype=torch.float64) + 0.5,
            torch.rand(c, generator=gen, dtype=torch.float64) + 2.0,
        ),
        dim=1,
    )
    stride, padding, dilation, groups = args[:4]

    def ours(x, w, b, pro, *_):
        return conv2d_prologue_stats(x, w, b, pro, activation, stride, padding, dilation, groups)

    def theirs(x, w, b, pro, *_):
        return prologue_reference(x, w, b, pro, stride, padding, dilation, groups, activation)

    got = run(ours, [x, w, b, pro.to(DEVICE)], (), None)
    want = run(theirs, [x, w, b, pro.to(DEVICE)], (), None)
    names = ("y", "mean", "var", "grad x", "grad weight", "grad bias", "grad prologue")
    for name, a, r in zip(names, got, want, strict=True):
        assert rel(a, r) < 1e-12, f"{name}: {rel(a, r):.2e}"
