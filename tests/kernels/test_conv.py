"""fastcifar.kernels.conv2d against a float64 PyTorch reference (Triton interpreter on a CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastcifar.kernels import check_supported, conv2d, is_supported
from tests.kernel_helpers import DEVICE, conv_inputs, low_precision_bound, rel

# (N, CIN, COUT, H, W, stride, padding, dilation, groups): odd sizes, not multiples of blocks
DENSE = [
    (2, 5, 7, 7, 9, 1, 1, 1, 1),
    (2, 5, 7, 7, 9, 2, 0, 1, 1),
    (1, 3, 6, 9, 8, 1, 2, 2, 1),
    (2, 4, 5, 9, 7, 2, 1, 2, 1),
    (1, 4, 3, 10, 11, 1, 3, 3, 1),
    (1, 17, 19, 8, 7, 1, 0, 3, 1),
]
GROUPED = [
    (2, 6, 6, 7, 9, 1, 1, 1, 6),  # depthwise
    (2, 6, 6, 7, 9, 2, 1, 1, 6),
    (1, 5, 5, 8, 7, 1, 2, 2, 5),
    (2, 8, 8, 7, 5, 1, 1, 1, 4),  # 2 input channels per group, as s7's grouped layers
    (1, 9, 6, 6, 7, 2, 0, 1, 3),  # 3 per group, 2 outputs per group
    (1, 8, 12, 5, 6, 1, 3, 3, 2),  # 4 per group
    (1, 35, 35, 5, 4, 1, 1, 1, 35),  # more channels than one block
    # the model zoo's: (..., groups, K) with a K x K kernel
    (2, 6, 6, 9, 8, 1, 2, 1, 6, 5),  # depthwise 5x5, EfficientNet's
    (1, 6, 6, 9, 10, 2, 2, 1, 6, 5),  # depthwise 5x5, stride 2
    (1, 5, 5, 9, 9, 1, 3, 1, 5, 7),  # depthwise 7x7
    (1, 4, 4, 11, 10, 1, 6, 2, 4, 7),  # depthwise 7x7, dilation 2
    (1, 16, 16, 6, 7, 1, 1, 1, 2),  # groups of 8, RegNetX's
    (1, 32, 32, 5, 6, 2, 1, 1, 2),  # groups of 16, ResNeXt's last stage, stride 2
    (1, 12, 6, 7, 6, 1, 2, 1, 3, 5),  # 4 per group, 5x5, 2 outputs per group
    # groups of 8 or more take the tl.dot kernels with a block-diagonal weight tile
    (1, 24, 24, 5, 6, 1, 1, 1, 2),  # 12 per group: blocks straddle group borders
    (1, 16, 32, 6, 5, 2, 1, 1, 2),  # 8 inputs, 16 outputs per group, stride 2
    (2, 40, 40, 5, 5, 1, 2, 2, 5),  # 8 per group, 5 groups, dilation 2
    (1, 16, 16, 7, 7, 1, 2, 1, 2, 5),  # 8 per group, 5x5
]
REPRESENTATIVE = [DENSE[0], DENSE[3], GROUPED[0], GROUPED[4]]
# norm-wise relative error bounds. float32/float64: accumulation-order noise only.
EXACT_TOL = {torch.float32: 2e-6, torch.float64: 1e-13}


def make(cfg, dtype, channels_last, bias=True, seed=0):
    """(x, weight, bias, conv2d keyword arguments) for ``cfg``."""
    s, p, d, g = cfg[5:9]
    x, wt, b = conv_inputs(cfg, dtype, channels_last, bias, seed)
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g)


def run(fn, x, wt, b, kw, gy=None):
    leaves = [t.detach().requires_grad_() for t in (x, wt, b) if t is not None]
    xx, ww = leaves[0], leaves[1]
    bb = leaves[2] if b is not None else None
    y = fn(xx, ww, bb, **kw)
    if gy is None:
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    return y, grads, gy


def reference(x, wt, b, kw, gy):
    up = [t.double() if t is not None else None for t in (x, wt, b)]
    return run(F.conv2d, *up, kw, gy.double())


def check(cfg, dtype, channels_last):
    x, wt, b, kw = make(cfg, dtype, channels_last)
    y, grads, gy = run(conv2d, x, wt, b, kw)
    y_ref, grads_ref, _ = reference(x, wt, b, kw, gy)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last or y.shape[1] == 1
    names = ("output", "grad input", "grad weight", "grad bias")
    ours = [y, *grads]
    refs = [y_ref, *grads_ref]
    if dtype in EXACT_TOL:
        for name, a, r in zip(names, ours, refs, strict=True):
            assert rel(a, r) < EXACT_TOL[dtype], f"{name}: {rel(a, r):.3e}"
        return
    # float16/bfloat16: judged against PyTorch's own error in that dtype on the same inputs
    y_t, grads_t, _ = run(F.conv2d, x, wt, b, kw, gy)
    for name, a, t, r in zip(names, ours, [y_t, *grads_t], refs, strict=True):
        bound = low_precision_bound(rel(t, r), dtype)
        assert rel(a, r) < bound, f"{name}: ours {rel(a, r):.3e}, torch {rel(t, r):.3e}"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("cfg", DENSE + GROUPED, ids=str)
def test_float32_forward_and_gradients(cfg, channels_last):
    check(cfg, torch.float32, channels_last)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("cfg", REPRESENTATIVE, ids=str)
def test_other_dtypes(cfg, channels_last, dtype):
    check(cfg, dtype, channels_last)


@pytest.mark.parametrize("cfg", [(1, 2, 3, 5, 4, 1, 1, 1, 1), (1, 4, 4, 4, 5, 2, 2, 2, 2)], ids=str)
def test_gradcheck_float64(cfg):
    x, wt, b, kw = make(cfg, torch.float64, channels_last=False)
    leaves = [t.requires_grad_() for t in (x, wt, b)]
    assert torch.autograd.gradcheck(lambda a, c, d: conv2d(a, c, d, **kw), leaves, fast_mode=True)


@pytest.mark.parametrize("cfg", [DENSE[1], GROUPED[3]], ids=str)
def test_backward_is_bitwise_deterministic(cfg):
    x, wt, b, kw = make(cfg, torch.float32, channels_last=True)
    _, first, gy = run(conv2d, x, wt, b, kw)
    _, second, _ = run(conv2d, x, wt, b, kw, gy)
    for a, c in zip(first, second, strict=True):
        assert torch.equal(a, c)


def test_expanded_stride0_gradient():
    x, wt, b, kw = make(DENSE[0], torch.float32, channels_last=False)
    leaves = [t.requires_grad_() for t in (x, wt, b)]
    conv2d(*leaves, **kw).sum().backward()  # the gradient of .sum() is an expanded tensor
    ours = [t.grad.clone() for t in leaves]
    ref = [t.detach().double().requires_grad_() for t in (x, wt, b)]
    F.conv2d(*ref, **kw).sum().backward()
    for a, r in zip(ours, ref, strict=True):
        assert rel(a, r.grad) < 2e-6


@pytest.mark.parametrize(
    "cin, cout, groups, kernel",
    [
        (64, 64, 1, "dot"),  # dense
        (64, 64, 64, "grouped"),  # depthwise
        (64, 64, 16, "grouped"),  # 4 per group: elementwise
        (64, 64, 8, "dot"),  # 8 per group: two groups a 16-wide tl.dot step
        (512, 512, 32, "dot"),  # ResNeXt's last stage, 16 per group
        (64, 32, 8, "grouped"),  # 8 in, 4 out per group: elementwise
    ],
)
def test_which_kernels_a_configuration_takes(cin, cout, groups, kernel):
    from fastcifar.kernels import conv_launch, conv_launch_bwd
    from fastcifar.kernels.launch import record_launches

    x = torch.empty(8, cin, 8, 8, device="meta")
    w = torch.empty(cout, cin // groups, 3, 3, device="meta")
    with record_launches() as launches:
        y, _, _ = conv_launch.launch_forward(x, w, None, 1, 1, 1, groups)
        conv_launch_bwd.launch_grad_input(
            torch.empty_like(y), w, x.shape, torch.contiguous_format, 1, 1, 1, groups
        )
        conv_launch_bwd.launch_grad_weight(torch.empty_like(y), x, w.shape, 1, 1, 1, groups)
    names = [la.kernel.__name__ for la in launches]
    suffix = "_dot_kernel" if kernel == "dot" else "_grouped_kernel"
    assert all(name.endswith(suffix) for name in names), names


def test_no_bias_and_unused_grads():
    x, wt, _, kw = make(GROUPED[0], torch.float32, False, bias=False)
    y = conv2d(x, wt.requires_grad_(), None, **kw)
    (gw,) = torch.autograd.grad(y.square().sum(), [wt])
    wr = wt.detach().double().requires_grad_()
    (gr,) = torch.autograd.grad(F.conv2d(x.double(), wr, None, **kw).square().sum(), [wr])
    assert rel(gw, gr) < 2e-6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(wshape=(4, 4, 5, 5)), "dense kernel 5x5 is not 3x3"),
        (dict(wshape=(4, 1, 9, 9), groups=4), "grouped kernel 9x9 is not 3x3, 5x5 or 7x7"),
        (dict(wshape=(4, 1, 3, 5), groups=4), "is not square"),
        (dict(wshape=(32, 32, 3, 3), cin=64, groups=2), "32 input channels per group"),
        (dict(wshape=(4, 1, 5, 5), groups=4, padding=3), "padding 3 is outside 0..dilation"),
        (dict(dilation=4), "dilation 4 is not 1, 2 or 3"),
        (dict(stride=3), "stride 3 is not 1 or 2"),
        (dict(padding=2), "padding 2 is outside 0..dilation"),
        (dict(stride=(1, 2)), "differs between height and width"),
        (dict(dtype=torch.int32), "dtype torch.int32"),
    ],
)
def test_unsupported_configurations_are_named(kwargs, match):
    cin = kwargs.get("cin", 4)
    wshape = kwargs.get("wshape", (4, cin // kwargs.get("groups", 1), 3, 3))
    with pytest.raises(NotImplementedError, match=match):
        check_supported(
            (1, cin, 8, 8),
            wshape,
            kwargs.get("dtype", torch.float32),
            DEVICE,
            kwargs.get("stride", 1),
            kwargs.get("padding", 1),
            kwargs.get("dilation", 1),
            kwargs.get("groups", 1),
        )


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET=1"):
        conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3), padding=1)
    assert not is_supported(torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3))


def test_mismatched_dtypes():
    with pytest.raises(ValueError, match="share one dtype"):
        conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3).double())


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_opcheck(channels_last):
    for cfg in (DENSE[3], GROUPED[4]):
        x, wt, b, kw = make(cfg, torch.float32, channels_last)
        args = (
            x.requires_grad_(),
            wt.requires_grad_(),
            b.requires_grad_(),
            kw["stride"],
            kw["padding"],
            kw["dilation"],
            kw["groups"],
        )
        torch.library.opcheck(torch.ops.fastcifar.conv2d.default, args)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(6, 1, 3, 3) / 3)
        self.w2 = torch.nn.Parameter(torch.randn(4, 6, 3, 3) / 3)

    def forward(self, x):
        x = torch.relu(conv2d(x, self.w1, None, padding=1, groups=6))
        return conv2d(x, self.w2, None, padding=2, dilation=2).mean((2, 3))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Tiny().to(DEVICE)
    x = torch.randn(2, 6, 6, 7, device=DEVICE).contiguous(memory_format=torch.channels_last)
    eager = model(x)
    eager.sum().backward()
    g_eager = model.w1.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(model.w1.grad, g_eager)
