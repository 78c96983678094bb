"""The gradients' launchers of ``fastcifar.kernels.conv``'s (and ``conv_bn``'s,
``conv_pool``'s) kernels: the input, weight and bias gradients, each with the optional
BatchNorm-and-activation prologue's backward, and for the ``tl.dot`` family the un-pool of
a pooled forward's gradient as it is loaded (``unpool``). Families, tiles and kernel
arguments as ``conv_launch``'s forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcifar.kernels.conv_launch import (
    _GELU,
    _dot_kernels,
    _dot_meta,
    _k,
    _meta,
    _prologue_args,
    _require_pool_family,
    channel_span,
    family,
)
from fastcifar.kernels.launch import acc_dtype, cdiv, launch, partial_pixels, strides, tl_acc
from fastcifar.kernels.tiles import fused_dot_tiles, tiles

__all__ = ["launch_grad_bias", "launch_grad_input", "launch_grad_weight"]


def launch_grad_input(
    dy: Tensor,
    w: Tensor,
    x_shape,
    x_format,
    stride,
    padding,
    dilation,
    groups,
    prologue=None,
    x: Tensor | None = None,
    unpool=None,
):
    """The input gradient (N, CIN, H, W) of output gradient ``dy``, in ``x_format``. With
    ``prologue`` (as ``launch_forward``'s; ``x`` the raw input): (the raw input's direct
    gradient, (CIN, 2) sums of (dz, dz * (x - center))), the prologue's backward in the
    epilogue. ``unpool``: (the packed window positions, HO, WO) when ``dy`` is the
    gradient of the convolution's pooled output (``launch_pool_forward``), else None.

    Args:
        dy: the output gradient (N, COUT, HO, WO), or of the pooled output with ``unpool``.
        w: the weight (COUT, CIN / groups, K, K).
        x_shape: the input's shape (N, CIN, H, W).
        x_format: the input's memory format, given to the gradient.
        stride: the convolution's stride.
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        groups: the convolution's groups.
        prologue: as ``launch_forward``'s, or None.
        x: the raw input (before the prologue), when ``prologue`` is given.
        unpool: (positions, HO, WO) from ``launch_pool_forward``, or None.

    Returns:
        The input gradient (N, CIN, H, W) in ``dy``'s dtype; with ``prologue`` the pair
        (that gradient, the (CIN, 2) accumulator-dtype sums).
    """
    n, cin, h, wd = x_shape
    cout = dy.shape[1]
    fam = family(cin, cout, groups, stride)
    idx, ho, wo, hp, wp = _unpool_args(unpool, dy, fam)
    pro, has_prologue, act = _prologue_args(prologue, w)
    # With the prologue's backward as its epilogue, the depthwise input gradient takes the
    # stride-2 tile (32 x 8): at 64 x 8 x 4 warps ptxas (triton 3.6, the GPU machines'
    # stack) spilled 12 bytes on sm_90 in float16 (72 registers); 32 x 8 compiles in 62.
    t = tiles(dy.dtype, "depthwise_strided" if has_prologue and fam == "depthwise" else fam)
    t = fused_dot_tiles(t, unpool=unpool is not None, gelu=not _dot_kernels(fam) and act == _GELU)
    dx = torch.empty(x_shape, dtype=dy.dtype, device=dy.device, memory_format=x_format)
    programs = cdiv(n * h * wd, t.block_p)
    # the prologue's per program and input channel (sum dz, sum dz * (x - center)); without
    # one, the kernel reads neither pointer (dx stands in: no allocation, no fill launch)
    red, xp = dx, dx
    if has_prologue:
        red = torch.zeros((programs, cin, 2), dtype=acc_dtype(dy.dtype), device=dy.device)
        xp = x
    meta = _meta(t, w.shape[-1], stride, padding, dilation, has_prologue, act, dy.dtype)
    layout = (*strides(dy), *strides(w), *strides(xp), *strides(dx))
    cin_pg, cout_pg = cin // groups, cout // groups
    if _dot_kernels(fam):
        span = channel_span(t.block_n, cin_pg, cout_pg, cout)
        pointers = (dy, w, xp, pro, idx, dx, red)
        sizes = (n, cin, h, wd, cout, ho, wo, hp, wp, cin_pg, cout_pg, span)
        grid = (programs, cdiv(cin, t.block_n))
        kernel = _k(True, backward=True).conv_bwd_input_dot_kernel
        own = dict(_dot_meta(t, groups, cout_pg), UNPOOL=unpool is not None)
    else:
        pointers = (dy, w, xp, pro, dx, red)
        sizes = (n, cin, h, wd, ho, wo, cout_pg)
        grid = (programs, cdiv(cin, t.block_c))
        kernel, own = (
            _k(False).conv_bwd_input_grouped_kernel,
            dict(CIN_PG=cin_pg, BLOCK_C=t.block_c),
        )
    launch(kernel, grid, *pointers, *sizes, *layout, **own, **meta)
    if has_prologue:
        return dx, red.sum(0)  # fixed-order sum of the partials: deterministic
    return dx


def _unpool_args(unpool, dy: Tensor, fam: str) -> tuple:
    """(positions pointer, HO, WO, HP, WP) of a gradient kernel: ``unpool`` = (the packed
    positions, HO, WO) or None (``dy`` is the convolution's own output gradient; ``dy``
    stands in for the pointer)."""
    hp, wp = dy.shape[2], dy.shape[3]
    if unpool is None:
        return dy, hp, wp, hp, wp
    _require_pool_family(fam)
    idx, ho, wo = unpool
    return idx, ho, wo, hp, wp


def launch_grad_weight(
    dy: Tensor, x: Tensor, w_shape, stride, padding, dilation, groups, prologue=None, unpool=None
):
    """The weight gradient (COUT, CIN / groups, K, K): per-program partials summed in a
    fixed order (deterministic). ``prologue`` as ``launch_forward``'s (``x`` raw);
    ``unpool`` as ``launch_grad_input``'s.

    Args:
        dy: the output gradient (N, COUT, HO, WO), or of the pooled output with ``unpool``.
        x: the input (N, CIN, H, W) (raw when ``prologue`` is given).
        w_shape: the weight's shape (COUT, CIN / groups, K, K).
        stride: the convolution's stride.
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        groups: the convolution's groups.
        prologue: as ``launch_forward``'s, or None.
        unpool: as ``launch_grad_input``'s, or None.

    Returns:
        The weight gradient (COUT, CIN / groups, K, K) in ``x``'s dtype.
    """
    n, cin, h, wd = x.shape
    cout, cin_pg, ksize = w_shape[0], w_shape[1], w_shape[-1]
    cout_pg, taps = cout // groups, ksize * ksize
    fam = family(cin, cout, groups, stride)
    idx, ho, wo, hp, wp = _unpool_args(unpool, dy, fam)
    pro, has_prologue, act = _prologue_args(prologue, x)
    dot = _dot_kernels(fam)
    t = tiles(x.dtype, fam if dot else "reduce")
    total = n * ho * wo
    if dot:
        span = channel_span(t.block_n, cout_pg, cin_pg, cin)
        grid_nz = (cdiv(cout, t.block_n), taps * cdiv(span, t.block_k))
    else:
        grid_nz = (cdiv(cout, t.block_c), taps * cin_pg)
    pixels_per_partial = partial_pixels(total, grid_nz[0] * grid_nz[1], t, x.device)
    parts = cdiv(total, pixels_per_partial)
    part = torch.empty((parts, cout, cin_pg, taps), dtype=acc_dtype(x.dtype), device=x.device)
    meta = _meta(t, ksize, stride, padding, dilation, has_prologue, act, x.dtype)
    layout = (*strides(dy), *strides(x))
    if dot:
        pointers = (dy, x, pro, idx, part)
        sizes = (n, cin, h, wd, cout, ho, wo, hp, wp, cin_pg, cout_pg, span, pixels_per_partial)
        kernel = _k(True, backward=True).conv_bwd_weight_dot_kernel
        own = dict(_dot_meta(t, groups, cin_pg), UNPOOL=unpool is not None)
    else:
        pointers = (dy, x, pro, part)
        sizes = (n, h, wd, cout, ho, wo, cout_pg, pixels_per_partial)
        kernel, own = (
            _k(False).conv_bwd_weight_grouped_kernel,
            dict(CIN_PG=cin_pg, BLOCK_C=t.block_c),
        )
    launch(kernel, (parts, *grid_nz), *pointers, *sizes, *layout, **own, **meta)
    # fixed-order sum of the per-tile partials: deterministic
    return part.sum(0).view(cout, cin_pg, ksize, ksize).to(x.dtype)


def launch_grad_bias(dy: Tensor) -> Tensor:
    """The bias gradient (C,) of output gradient ``dy`` (N, C, HO, WO): per-program
    partial sums over the pixels, summed in a fixed order (deterministic).

    Args:
        dy: the output gradient (N, C, HO, WO), any strides.

    Returns:
        The bias gradient (C,) in ``dy``'s dtype.
    """
    t = tiles(dy.dtype, "reduce")
    n, c, ho, wo = dy.shape
    total = n * ho * wo
    pixels_per_partial = partial_pixels(total, cdiv(c, t.block_c), t, dy.device)
    parts = cdiv(total, pixels_per_partial)
    part = torch.empty((parts, c), dtype=acc_dtype(dy.dtype), device=dy.device)
    meta = dict(ACC=tl_acc(dy.dtype), BLOCK_P=t.block_p, BLOCK_C=t.block_c, **t.launch_options)
    grid = (parts, cdiv(c, t.block_c))
    launch(
        _k(False).bias_grad_kernel,
        grid,
        dy,
        part,
        n,
        c,
        ho,
        wo,
        pixels_per_partial,
        *strides(dy),
        **meta,
    )
    return part.sum(0).to(dy.dtype)
