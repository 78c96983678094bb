"""The exact GPU tile configuration (``GPU_TILES``, and each target's own entries in
``TARGET_TILES``: the block sizes, ``tl.dot`` path and weight-gradient split a GPU launch
uses) executed under the interpreter, on tiny shapes, for every kernel; plus the
int32-offset guard and the grid-filling weight-gradient split."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fastcifar.kernels import check_supported, conv2d_relu_stats, depthwise_separable_conv2d
from fastcifar.kernels.launch import ACTIVATIONS, partial_pixels, record_launches
from fastcifar.kernels.tiles import GPU_TILES, TARGET_TILES, compile_target, gpu_tiles, tiles
from tests.kernel_helpers import conv_inputs, low_precision_bound, rel
from tests.kernels.test_conv import check, make

# Shapes larger than one GPU tile (at most 128 pixels, 32 channels) so that several
# programs, a partial last tile and several channel blocks are all exercised.
DENSE = (2, 37, 35, 9, 8, 1, 1, 1, 1)
DENSE_STRIDED_DILATED = (1, 20, 33, 11, 10, 2, 2, 2, 1)
DEPTHWISE = (3, 20, 20, 9, 7, 1, 1, 1, 20)  # 189 pixels, 3 blocks of 8 channels
GROUPED = (2, 66, 66, 6, 7, 2, 3, 3, 33)  # 2 input channels per group, stride 2, dilation 3
# the model zoo's: depthwise 5x5 at stride 2 (EfficientNet), groups of 16 (ResNeXt)
DEPTHWISE_5X5 = (2, 40, 40, 9, 8, 2, 2, 1, 40, 5)
GROUPS_OF_16 = (1, 64, 64, 8, 7, 1, 1, 1, 4)
GROUPS_OF_8 = (2, 48, 48, 7, 6, 2, 1, 1, 6)  # RegNetX's width, 3 blocks of two groups
GROUPS_OF_12 = (1, 48, 48, 6, 5, 1, 1, 1, 4)  # blocks of 16 straddle the groups
DEPTHWISE_7X7 = (1, 24, 24, 9, 9, 1, 3, 1, 24, 7)  # rows of taps looped, not unrolled


@pytest.fixture(autouse=True)
def _gpu_tiles():
    with gpu_tiles():
        yield


def test_gpu_tiles_are_in_force():
    for family, t in GPU_TILES.items():
        assert tiles(torch.float16, family) == t
        assert tiles(torch.float32, family).use_dot
    assert not tiles(torch.float64).use_dot


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "cfg",
    [
        DENSE,
        DENSE_STRIDED_DILATED,
        DEPTHWISE,
        GROUPED,
        DEPTHWISE_5X5,
        GROUPS_OF_16,
        GROUPS_OF_8,
        GROUPS_OF_12,
        DEPTHWISE_7X7,
    ],
    ids=str,
)
def test_conv2d_forward_and_gradients(cfg, dtype):
    # float16 takes the tl.dot path of the dense kernels with the GPU's 16-wide K blocks
    check(cfg, dtype, channels_last=True)


def test_conv2d_nchw_float32():
    check(DENSE, torch.float32, channels_last=False)
    check(DEPTHWISE, torch.float32, channels_last=False)


@pytest.mark.parametrize("cfg", [DENSE, DEPTHWISE], ids=str)
def test_relu_stats_epilogue(cfg):
    x, wt, b, kw = make(cfg, torch.float32, channels_last=True)
    y, mean, var = conv2d_relu_stats(x, wt, b, **kw)
    ref = F.relu(F.conv2d(x.double(), wt.double(), b.double(), **kw))
    assert rel(y, ref) < 2e-6
    assert rel(mean, ref.mean((0, 2, 3))) < 2e-6
    assert rel(var, ref.var((0, 2, 3), unbiased=False)) < 2e-6


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_depthwise_separable(dtype, relu):
    check_depthwise_separable(dtype, relu)


# the configurations that run each kernel family (tiles.FAMILIES)
FAMILY_CONFIGS = {
    "dense": (DENSE,),
    "depthwise": (DEPTHWISE,),
    "depthwise_strided": (DEPTHWISE_5X5,),
    "grouped": (GROUPED,),
    "grouped_dot": (GROUPS_OF_8,),
    "reduce": (DEPTHWISE, GROUPED),
}


def _runs_differently(target: str) -> dict:
    """The families whose ``target`` tiles the interpreter runs differently from
    ``GPU_TILES``': other block sizes or ``tl.dot`` use (``num_warps`` and ``num_stages``
    are compile options the interpreter ignores: gfx90a's warps-only entries run exactly
    what GPU_TILES' tests run)."""

    def executed(t):
        return replace(t, num_warps=4, num_stages=3)

    own = TARGET_TILES[target]
    return {f: t for f, t in own.items() if executed(t) != executed(GPU_TILES[f])}


def _targets_whose_tiles_run() -> set[str]:
    """The targets whose own tile entries the test below runs: not one whose entries (as
    the interpreter runs them, ``_runs_differently``) are all another target's too (sm_86
    and sm_89 have sm_120's, sm_100 a part of them, gfx942 gfx90a's: the same tiles run
    the same code under the interpreter)."""
    entries = {t: set(_runs_differently(t).items()) for t in sorted(TARGET_TILES)}
    out = set()
    for target, own in entries.items():
        if own and not any(
            own < other or (own == other and o < target)
            for o, other in entries.items()
            if o != target
        ):
            out.add(target)
    return out


@pytest.mark.parametrize("target", sorted(TARGET_TILES))
def test_each_targets_own_tiles_compute_the_same(target):
    # a target's tile entries (tiles.TARGET_TILES) are the ones its launches take, and they
    # run under the interpreter too: the configurations of every family whose tiles it runs
    # differently from GPU_TILES (once for targets that share them)
    with compile_target(target):
        for family, t in TARGET_TILES[target].items():
            assert tiles(torch.float16, family) == t
        if target not in _targets_whose_tiles_run():
            return
        families = _runs_differently(target)
        for cfg in dict.fromkeys(c for f in families for c in FAMILY_CONFIGS.get(f, ())):
            check(cfg, torch.float16, channels_last=True)
        if {"dwsep", "dwsep_weights"} & set(families):
            check_depthwise_separable(torch.float16, relu=True)
        if "pointwise" in families:
            from tests.kernels.test_pointwise import NAMES, inputs, ours, reference, run

            tensors = inputs(2, 40, 70, 9, 8, torch.float16, True)
            exact = run(reference, [t.double() for t in tensors], "silu")
            theirs, got = run(reference, tensors, "silu"), run(ours, tensors, "silu")
            for name, a, th, r in zip(NAMES, got, theirs, exact, strict=True):
                assert rel(a, r) <= low_precision_bound(rel(th, r), torch.float16), name


def check_depthwise_separable(dtype, relu):
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(1, 36, 7, 9, generator=g)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last)
    )
    wd = (torch.randn(36, 1, 3, 3, generator=g) / 3).to(dtype)
    wp = (torch.randn(34, 36, 1, 1, generator=g) / 6).to(dtype)
    gy = torch.randn(1, 34, 7, 9, generator=g).to(dtype)

    def fwd_bwd(fn, tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        y = fn(*leaves)
        return [y, *torch.autograd.grad(y, leaves, gy.to(y.dtype))]

    def unfused(a, d, p):
        mid = F.conv2d(a, d, None, 1, 1, 1, a.shape[1])
        return F.conv2d(F.relu(mid) if relu else mid, p)

    ours = fwd_bwd(lambda a, d, p: depthwise_separable_conv2d(a, d, p, 1, 1, 1, relu), (x, wd, wp))
    ref = fwd_bwd(unfused, [t.double() for t in (x, wd, wp)])
    if dtype == torch.float32:
        for a, r in zip(ours, ref, strict=True):
            assert rel(a, r) < 5e-6
    else:
        torch_own = fwd_bwd(unfused, (x.float(), wd.float(), wp.float()))  # fp32 compute
        for a, t, r in zip(ours, torch_own, ref, strict=True):
            assert rel(a, r) < low_precision_bound(rel(t.to(dtype), r), dtype)


def test_weight_gradient_split_fills_the_gpu():
    # a depthwise weight gradient at C=16, 8x8, batch 512: 32,768 pixels; 4,096 pixels a
    # program would launch 8 x 2 x 9 = 144 programs for 132 SMs
    t = GPU_TILES["reduce"]  # on the CPU, partial_pixels assumes an H100's 132 SMs
    grouped_other = -(-16 // t.block_c) * 9  # channel blocks x 9 taps
    pixels = partial_pixels(512 * 64, grouped_other, t, torch.device("cpu"))
    assert pixels < t.pixels_per_partial and pixels % t.block_p == 0
    assert -(-512 * 64 // pixels) * grouped_other >= 2 * 132
    # a large map keeps the full split, and the split never goes below one pixel block
    assert partial_pixels(512 * 32 * 32, 9 * 8, t, torch.device("cpu")) == t.pixels_per_partial
    assert partial_pixels(10, 1, t, torch.device("cpu")) == t.block_p


def test_launches_record_the_gpu_configuration():
    from fastcifar.kernels.conv_launch_bwd import launch_grad_weight

    x = torch.empty(512, 32, 8, 8, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.empty(32, 1, 3, 3, device="meta")
    with record_launches() as launches:
        launch_grad_weight(torch.empty_like(x), x, w.shape, 1, 1, 1, 32)
    (la,) = launches
    t = GPU_TILES["reduce"]
    assert la.meta["BLOCK_P"] == t.block_p and la.meta["BLOCK_C"] == t.block_c
    assert la.meta["num_warps"] == t.num_warps
    assert la.grid[0] * la.grid[1] * la.grid[2] >= 2 * 132


@pytest.mark.parametrize(
    "input_shape,weight_shape,what",
    [
        ((2**16, 64, 32, 32), (64, 64, 3, 3), "input"),  # 2**32 elements in
        ((2**14, 16, 64, 64), (512, 16, 3, 3), "output"),  # 2**26 in, 2**35 out
    ],
)
def test_int32_offsets_are_guarded_by_shape(input_shape, weight_shape, what):
    with pytest.raises(NotImplementedError, match=f"the {what} has .* int32 offsets"):
        check_supported(input_shape, weight_shape, torch.bfloat16, "cuda", padding=1)
    # just below the limit is accepted (no allocation: shapes only)
    check_supported((2**15 - 1, 64, 32, 32), (64, 64, 3, 3), torch.bfloat16, "cuda", padding=1)


@pytest.mark.parametrize(
    "cfg, activation", [(DEPTHWISE, "gelu"), (DENSE, "silu"), (GROUPS_OF_8, "gelu")], ids=str
)
def test_prologue_at_gpu_tiles_matches_float64(cfg, activation):
    """The BatchNorm-and-activation prologue through the depthwise kernels (the input
    gradient at the stride-2 tile, 32 x 8, halved for GELU's) and the ``tl.dot`` kernels
    (dense, groups of 8) at their GPU tiles: several pixel and channel blocks, SiLU and
    GELU, float32 against PyTorch's float64 composition."""
    from fastcifar.kernels import conv_launch, conv_launch_bwd
    from fastcifar.kernels.conv_bn import conv2d_prologue_stats
    from tests.kernels.test_conv_bn import prologue_reference
    from tests.kernels.test_conv_bn import run as run_stats

    (x, w, b), args = (conv_inputs(cfg, torch.float32, True), cfg[5:9])
    c = x.shape[1]
    gen = torch.Generator().manual_seed(3)
    pro = torch.stack(
        (
            torch.randn(c, generator=gen),
            torch.rand(c, generator=gen) + 0.5,
            torch.randn(c, generator=gen),
        ),
        dim=1,
    )

    def ours(x, w, b, pro, *_):
        return conv2d_prologue_stats(x, w, b, pro, activation, *args)

    def theirs(x, w, b, pro, *_):
        return prologue_reference(x, w, b, pro, *args, activation)

    got = run_stats(ours, [x, w, b, pro], (), None)
    want = run_stats(theirs, [t.double() for t in (x, w, b, pro)], (), None)
    names = ("y", "mean", "var", "grad x", "grad weight", "grad bias", "grad prologue")
    for name, a, r in zip(names, got, want, strict=True):
        assert rel(a.double(), r) < 1e-5, f"{name}: {rel(a.double(), r):.2e}"
    act = ACTIVATIONS[activation]
    with record_launches() as launches:
        conv_launch_bwd.launch_grad_input(x, w, x.shape, torch.channels_last, *args, (pro, act), x)
        conv_launch.launch_forward(x, w, None, *args, stats=True, prologue=(pro, act))
    grad, forward = launches
    family = conv_launch.family(c, w.shape[0], args[3], args[0])
    expected = "depthwise_strided" if family == "depthwise" else family
    # GELU's prologue halves an elementwise kernel's pixels (tiles.fused_dot_tiles)
    halved = activation == "gelu" and family == "depthwise"
    want = GPU_TILES[expected].block_p // (2 if halved else 1)
    assert grad.meta["PROLOGUE"] and grad.meta["BLOCK_P"] == want
    # a tl.dot forward with the prologue runs one pipeline stage (tiles.fused_dot_tiles)
    stages = 1 if family in ("dense", "grouped_dot") else GPU_TILES[family].num_stages
    assert forward.meta["PROLOGUE"] and forward.meta["num_stages"] == stages
