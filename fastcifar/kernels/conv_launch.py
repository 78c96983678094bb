"""The forward launchers of ``fastcifar.kernels.conv``'s (and ``conv_bn``'s,
``conv_pool``'s) kernels, and what the gradients' launchers (``conv_launch_bwd``) share
with them: which family a convolution takes (``family``), its tiles, grid and kernel
arguments. The families: ``conv_dot_kernels`` and ``conv_dot_bwd_kernels`` (dense and wide
groups on ``tl.dot``), ``conv_grouped_kernels`` (depthwise and narrow groups,
elementwise), each with the optional BatchNorm-and-activation prologue; the ``tl.dot``
family also with a 2x2 max pool in the forward's epilogue (``launch_pool_forward``).
Every launch goes through ``launch.launch`` (recorded by the AOT check).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcifar.kernels.launch import (
    ACTIVATIONS,
    acc_dtype,
    cdiv,
    empty_output,
    launch,
    memory_format,
    out_size,
    strides,
    tl_acc,
)
from fastcifar.kernels.tiles import fused_dot_tiles, tiles

_GELU = ACTIVATIONS["gelu"]  # its prologue takes smaller tiles (tiles.fused_dot_tiles)

__all__ = [
    "DOT_MIN_PER_GROUP",
    "channel_span",
    "family",
    "launch_forward",
    "launch_pool_forward",
    "empty_pooled_output",
    "span_align",
]

# Groups this wide (in and out) take the tl.dot kernels: a 16-wide K step holds two groups
# of 8 (half the block-diagonal weight tile is zeros) or one of 16; narrower groups would
# leave three quarters or more of each tensor-core step zero, so they run elementwise.
DOT_MIN_PER_GROUP = 8


def _k(dot: bool, backward: bool = False):
    # imported at the first launch: triton is a Linux-only dependency
    if dot and backward:
        from fastcifar.kernels import conv_dot_bwd_kernels

        return conv_dot_bwd_kernels
    if dot:
        from fastcifar.kernels import conv_dot_kernels

        return conv_dot_kernels
    from fastcifar.kernels import conv_grouped_kernels

    return conv_grouped_kernels


def family(cin: int, cout: int, groups: int, stride: int = 1) -> str:
    """The kernel and tile family of a convolution: ``dense`` (groups == 1) and
    ``grouped_dot`` (at least ``DOT_MIN_PER_GROUP`` channels a group, in and out) run the
    ``tl.dot`` kernels; ``depthwise`` (one input channel per group; at stride 2
    ``depthwise_strided``, smaller tiles) and ``grouped`` (narrower groups) the
    elementwise ones.

    Args:
        cin: input channels.
        cout: output channels.
        groups: the convolution's groups.
        stride: its stride.

    Returns:
        One of ``dense``, ``grouped_dot``, ``depthwise``, ``depthwise_strided``, ``grouped``.
    """
    if groups == 1:
        return "dense"
    if cin == groups:
        return "depthwise_strided" if stride > 1 else "depthwise"
    return "grouped_dot" if min(cin, cout) // groups >= DOT_MIN_PER_GROUP else "grouped"


def channel_span(block: int, per_group: int, other_per_group: int, other_total: int) -> int:
    """Channels of the other side (``other_per_group`` a group, ``other_total`` in all) that
    a block of ``block`` consecutive channels (``per_group`` a group, starting at a
    multiple of ``block``) is connected to: the groups it touches times their width.

    Args:
        block: channels of a program's block (a power of two).
        per_group: channels a group on the block's side.
        other_per_group: channels a group on the other side.
        other_total: channels on the other side in all.

    Returns:
        The number of other-side channels the block reads (at most ``other_total``).
    """
    if block % per_group == 0:
        touched = block // per_group
    elif per_group % block == 0:
        touched = 1
    else:  # blocks straddle group borders: at most two partial groups more
        touched = block // per_group + 2
    return min(other_total, touched * other_per_group)


def _dot_kernels(fam: str) -> bool:
    return fam in ("dense", "grouped_dot")


def span_align(per_group: int, groups: int) -> int:
    """A power of two (at most 16) dividing the first channel of every program's reduced
    span in the ``tl.dot`` kernels, a multiple of ``per_group`` (0 when dense): the
    ``SPAN_ALIGN`` hint that lets the compiler prove 16-byte aligned channel loads.

    Args:
        per_group: channels a group of the reduced side.
        groups: the convolution's groups.

    Returns:
        16 when dense, else the largest power of two (at most 16) dividing ``per_group``.
    """
    return 16 if groups == 1 else min(16, per_group & -per_group)


def _prologue_args(prologue, dummy: Tensor) -> tuple[Tensor, bool, int]:
    """(pro, PROLOGUE, ACT) kernel arguments of ``prologue`` = (the (CIN, 3) tensor of
    center, scale and shift, activation code) or None (``dummy`` stands for the pointer)."""
    if prologue is None:
        return dummy, False, 0
    pro, act = prologue
    return pro, True, act


def _meta(t, ksize, stride, padding, dilation, prologue: bool, act: int, dtype, **more) -> dict:
    """The constexprs every convolution kernel takes (the window, the prologue, the
    accumulator, the pixel block, ``more`` and the target's launch options; ``t``:
    ``tiles.Tiles``)."""
    return dict(
        KSIZE=ksize,
        STRIDE=stride,
        PADDING=padding,
        DILATION=dilation,
        PROLOGUE=prologue,
        ACT=act,
        ACC=tl_acc(dtype),
        BLOCK_P=t.block_p,
        **more,
        **t.launch_options,
    )


def _dot_meta(t, groups: int, per_group: int) -> dict:
    """The ``tl.dot`` kernels' own constexprs; ``per_group``: channels a group of the
    reduced side."""
    return dict(
        USE_DOT=t.use_dot,
        GROUPED=groups > 1,
        SPAN_ALIGN=span_align(per_group, groups),
        BLOCK_N=t.block_n,
        BLOCK_K=t.block_k,
    )


def launch_forward(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    stride,
    padding,
    dilation,
    groups,
    relu: bool = False,
    stats: bool = False,
    prologue=None,
) -> tuple[Tensor, Tensor | None, int]:
    """The output (N, COUT, HO, WO), ReLU applied if asked; with ``stats`` the per-program
    BatchNorm partials (programs, COUT, 2): (sum, sum of squared deviations), else None;
    and the pixels per program (every program's count but the last's). ``prologue``:
    (the (CIN, 3) center, scale and shift, activation code) applied to ``x`` as it is read,
    or None.

    Args:
        x: input (N, CIN, H, W), float32, float16, bfloat16 or float64, any strides.
        w: weight (COUT, CIN / groups, K, K), ``x``'s dtype.
        b: bias (COUT,), or None.
        stride: the convolution's stride.
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        groups: the convolution's groups.
        relu: apply ReLU to the output.
        stats: also return the BatchNorm partials of the (ReLU'd) output.
        prologue: (the (CIN, 3) accumulator-dtype tensor of center, scale and shift, an
            ``launch.ACTIVATIONS`` code), or None.

    Returns:
        (output (N, COUT, HO, WO) in ``x``'s dtype and memory format, the partials or None,
        pixels per program).
    """
    n, cin, h, wd = x.shape
    cout, ksize = w.shape[0], w.shape[-1]
    fam = family(cin, cout, groups, stride)
    pro, has_prologue, act = _prologue_args(prologue, w)
    dot = _dot_kernels(fam)
    t = fused_dot_tiles(tiles(x.dtype, fam), has_prologue and dot, gelu=not dot and act == _GELU)
    y = empty_output(x, cout, stride, padding, dilation, ksize)
    ho, wo = y.shape[2], y.shape[3]
    programs = cdiv(n * ho * wo, t.block_p)
    part = None
    if stats:
        part = torch.empty((programs, cout, 2), dtype=acc_dtype(x.dtype), device=x.device)
    pointers = (x, w, b if b is not None else w, pro, y, part if stats else y)
    flags = dict(HAS_BIAS=b is not None, RELU=relu, STATS=stats)
    meta = _meta(t, ksize, stride, padding, dilation, has_prologue, act, x.dtype, **flags)
    layout = (*strides(x), *strides(w), *strides(y))
    cin_pg, cout_pg = cin // groups, cout // groups
    if dot:
        span = channel_span(t.block_n, cout_pg, cin_pg, cin)
        sizes = (n, cin, h, wd, cout, ho, wo, cin_pg, cout_pg, span)
        grid = (programs, cdiv(cout, t.block_n))
        dot_meta = _dot_meta(t, groups, cin_pg)
        launch(_k(True).conv_fwd_dot_kernel, grid, *pointers, *sizes, *layout, **dot_meta, **meta)
    else:
        sizes = (n, h, wd, cout, ho, wo, cout_pg)
        grid = (programs, cdiv(cout, t.block_c))
        own = dict(CIN_PG=cin_pg, BLOCK_C=t.block_c)
        launch(_k(False).conv_fwd_grouped_kernel, grid, *pointers, *sizes, *layout, **own, **meta)
    return y, part, t.block_p


def empty_pooled_output(
    x: Tensor, cout: int, stride: int, padding: int, dilation: int, kernel: int = 3
) -> Tensor:
    """The uninitialised (N, COUT, HO // 2, WO // 2) output of a ``kernel`` x ``kernel``
    convolution of ``x`` followed by a 2x2, stride-2 max pool (floor, as
    ``nn.MaxPool2d(2)``), in ``x``'s dtype, device and memory format.

    Args:
        x: the input (N, CIN, H, W).
        cout: output channels.
        stride: the convolution's stride.
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        kernel: the kernel's height and width.

    Returns:
        An uninitialised (N, COUT, HO // 2, WO // 2) tensor.
    """
    n, _, h, w = x.shape
    hp = out_size(h, stride, padding, dilation, kernel) // 2
    wp = out_size(w, stride, padding, dilation, kernel) // 2
    fmt = memory_format(x)
    return torch.empty((n, cout, hp, wp), dtype=x.dtype, device=x.device, memory_format=fmt)


def _require_pool_family(fam: str) -> None:
    """Raise ``NotImplementedError`` unless the pool in the epilogue (and its un-pool)
    can run in ``fam``'s kernels: the ``tl.dot`` family only."""
    if not _dot_kernels(fam):
        raise NotImplementedError(
            f"fastcifar.kernels: the pool in the epilogue takes dense and grouped_dot "
            f"convolutions (the tl.dot kernels), not {fam}; leave the max pool to PyTorch"
        )


def launch_pool_forward(
    x: Tensor, w: Tensor, b: Tensor | None, stride, padding, dilation, groups, prologue=None
) -> tuple[Tensor, Tensor, int, Tensor]:
    """``max_pool2d(conv2d(x, w, b), 2)`` with the pool in the ``tl.dot`` forward's
    epilogue: (the pooled output (N, COUT, HO // 2, WO // 2) in ``x``'s dtype and memory
    format, its BatchNorm partials (programs, COUT, 2), pooled pixels per program, the
    packed window positions (N * HP * WP, cdiv(COUT, 4)) uint8). ``prologue`` as
    ``launch_forward``'s.

    Args:
        x: input (N, CIN, H, W), any strides.
        w: weight (COUT, CIN / groups, K, K).
        b: bias (COUT,), or None.
        stride: the convolution's stride (1).
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        groups: the convolution's groups (dense or at least 8 channels a group).
        prologue: as ``launch_forward``'s.

    Returns:
        (pooled output, partials, pooled pixels per program, window positions) as above; a
        position is 2 bits (which of the window's four pixels won) packed four channels a byte.

    Raises:
        NotImplementedError: a depthwise or narrow-grouped convolution (not the ``tl.dot``
            family); a stride other than 1.
    """
    n, cin, h, wd = x.shape
    cout, ksize = w.shape[0], w.shape[-1]
    fam = family(cin, cout, groups, stride)
    _require_pool_family(fam)
    if stride != 1:  # compiled and checked at stride 1 only (the unpool spilled on sm_100)
        raise NotImplementedError(
            f"fastcifar.kernels: the pool in the epilogue takes stride-1 convolutions, not "
            f"stride {stride}; leave the max pool to PyTorch"
        )
    pro, has_prologue, act = _prologue_args(prologue, w)
    t = fused_dot_tiles(tiles(x.dtype, fam), has_prologue, pool=True, gelu=act == _GELU)
    ho, wo = (
        out_size(h, stride, padding, dilation, ksize),
        out_size(wd, stride, padding, dilation, ksize),
    )
    y = empty_pooled_output(x, cout, stride, padding, dilation, ksize)
    hp, wp = y.shape[2], y.shape[3]
    programs = cdiv(n * hp * wp, t.block_p)
    part = torch.empty((programs, cout, 2), dtype=acc_dtype(x.dtype), device=x.device)
    idx = torch.empty((n * hp * wp, cdiv(cout, 4)), dtype=torch.uint8, device=x.device)
    cin_pg, cout_pg = cin // groups, cout // groups
    span = channel_span(t.block_n, cout_pg, cin_pg, cin)
    pointers = (x, w, b if b is not None else w, pro, y, part, idx)
    sizes = (n, cin, h, wd, cout, ho, wo, hp, wp, cin_pg, cout_pg, span)
    layout = (*strides(x), *strides(w), *strides(y))
    meta = _meta(t, ksize, stride, padding, dilation, has_prologue, act, x.dtype)
    own = dict(_dot_meta(t, groups, cin_pg), HAS_BIAS=b is not None, STATS=True)
    grid = (programs, cdiv(cout, t.block_n))
    launch(_k(True).conv_pool_fwd_dot_kernel, grid, *pointers, *sizes, *layout, **own, **meta)
    return y, part, t.block_p, idx
