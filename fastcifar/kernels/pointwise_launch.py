"""The launchers of ``fastcifar.kernels.pointwise``'s kernels (``pointwise_kernels``): the
1x1 convolution's forward with the BatchNorm-and-activation prologue and the statistics
epilogue, its input gradient (with the prologue's backward in the epilogue) and its
weight gradient. Every launch goes through ``launch.launch`` (recorded by the AOT check).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcifar.kernels.launch import (
    acc_dtype,
    cdiv,
    empty_output,
    launch,
    memory_format,
    partial_pixels,
    strides,
    tl_acc,
)
from fastcifar.kernels.tiles import tiles

__all__ = ["launch_forward", "launch_grad_input", "launch_grad_weight"]


def _k():
    # imported at the first launch: triton is a Linux-only dependency
    from fastcifar.kernels import pointwise_kernels

    return pointwise_kernels


def _dummy(t: Tensor | None, other: Tensor) -> Tensor:
    return t if t is not None else other


def launch_forward(
    x: Tensor, w: Tensor, b: Tensor | None, pro: Tensor | None, act: int, stats: bool
):
    """(y (N, COUT, H, W), partials (programs, COUT, 2) or None, pixels per program).

    Args:
        x: input (N, CIN, H, W), any strides.
        w: weight (COUT, CIN, 1, 1), ``x``'s dtype.
        b: bias (COUT,), or None.
        pro: the prologue (CIN, 3) center, scale, shift, or None.
        act: the prologue's ``launch.ACTIVATIONS`` code.
        stats: also return the BatchNorm partials.

    Returns:
        (y in ``x``'s dtype and memory format, the partials or None, pixels per program).
    """
    t = tiles(x.dtype, "pointwise")
    n, cin, h, wd = x.shape
    cout = w.shape[0]
    y = empty_output(x, cout, 1, 0, 1, 1)
    programs = cdiv(n * h * wd, t.block_p)
    part = None
    if stats:
        part = torch.empty((programs, cout, 2), dtype=acc_dtype(x.dtype), device=x.device)
    launch(
        _k().pointwise_fwd_kernel,
        (programs, cdiv(cout, t.block_n)),
        x,
        w,
        _dummy(b, w),
        _dummy(pro, w),
        y,
        _dummy(part, y),
        n,
        cin,
        h,
        wd,
        cout,
        *strides(x),
        w.stride(0),
        w.stride(1),
        *strides(y),
        HAS_BIAS=b is not None,
        PROLOGUE=pro is not None,
        ACT=act,
        STATS=stats,
        USE_DOT=t.use_dot,
        ACC=tl_acc(x.dtype),
        BLOCK_P=t.block_p,
        BLOCK_N=t.block_n,
        BLOCK_K=t.block_k,
        **t.launch_options,
    )
    return y, part, t.block_p


def launch_grad_input(
    dy: Tensor, w: Tensor, x: Tensor, pro: Tensor | None, act: int
) -> tuple[Tensor, Tensor]:
    """(dx in x's dtype and layout, (CIN, 2) sums of (dz, dz * (x - center)) in the
    accumulator dtype: zeros without a prologue).

    Args:
        dy: the output gradient (N, COUT, H, W), any strides.
        w: weight (COUT, CIN, 1, 1).
        x: the raw input (N, CIN, H, W).
        pro: the prologue (CIN, 3), or None.
        act: the prologue's ``launch.ACTIVATIONS`` code.

    Returns:
        (dx (N, CIN, H, W), the (CIN, 2) sums).
    """
    t = tiles(dy.dtype, "pointwise")
    n, cin, h, wd = x.shape
    dx = torch.empty_like(x, memory_format=memory_format(x))
    programs = cdiv(n * h * wd, t.block_p)
    prologue = pro is not None
    red = torch.zeros(
        (programs if prologue else 1, cin, 2), dtype=acc_dtype(dy.dtype), device=dy.device
    )
    launch(
        _k().pointwise_bwd_input_kernel,
        (programs, cdiv(cin, t.block_n)),
        dy,
        w,
        x,
        _dummy(pro, w),
        dx,
        red,
        n,
        cin,
        h,
        wd,
        w.shape[0],
        *strides(dy),
        w.stride(0),
        w.stride(1),
        *strides(x),
        *strides(dx),
        PROLOGUE=prologue,
        ACT=act,
        USE_DOT=t.use_dot,
        ACC=tl_acc(dy.dtype),
        BLOCK_P=t.block_p,
        BLOCK_N=t.block_n,
        BLOCK_K=t.block_k,
        **t.launch_options,
    )
    return dx, red.sum(0)  # fixed-order sum of the partials: deterministic


def launch_grad_weight(dy: Tensor, x: Tensor, pro: Tensor | None, act: int, w_shape) -> Tensor:
    """The weight gradient (COUT, CIN, 1, 1) in x's dtype: per-program partials summed in
    a fixed order (deterministic).

    Args:
        dy: the output gradient (N, COUT, H, W).
        x: the raw input (N, CIN, H, W).
        pro: the prologue (CIN, 3), or None.
        act: the prologue's ``launch.ACTIVATIONS`` code.
        w_shape: the weight's shape (COUT, CIN, 1, 1).

    Returns:
        The weight gradient (COUT, CIN, 1, 1).
    """
    t = tiles(x.dtype, "pointwise")
    n, cin, h, wd = x.shape
    cout, total = w_shape[0], n * h * wd
    grid_nk = (cdiv(cout, t.block_n), cdiv(cin, t.block_k))
    pixels_per_partial = partial_pixels(total, grid_nk[0] * grid_nk[1], t, x.device)
    parts = cdiv(total, pixels_per_partial)
    part = torch.empty((parts, cout, cin), dtype=acc_dtype(x.dtype), device=x.device)
    launch(
        _k().pointwise_bwd_weight_kernel,
        (parts, *grid_nk),
        dy,
        x,
        _dummy(pro, x),
        part,
        n,
        cin,
        h,
        wd,
        cout,
        pixels_per_partial,
        *strides(dy),
        *strides(x),
        PROLOGUE=pro is not None,
        ACT=act,
        USE_DOT=t.use_dot,
        ACC=tl_acc(x.dtype),
        BLOCK_P=t.block_p,
        BLOCK_N=t.block_n,
        BLOCK_K=t.block_k,
        **t.launch_options,
    )
    return part.sum(0).view(cout, cin, 1, 1).to(x.dtype)


# ------------------------------------------------------------------------- custom ops
