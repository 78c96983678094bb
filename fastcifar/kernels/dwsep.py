"""``fastcifar.kernels.depthwise_separable_conv2d``: a fused 3x3 depthwise -> (ReLU) -> 1x1
pointwise convolution whose forward and backward never write the depthwise output.

Semantics (bias-free, as every seed's separable block)::

    mid = conv2d(x, w_dw, stride=stride, padding=padding, dilation=dilation, groups=C)
    mid = relu(mid) if relu else mid
    y = conv2d(mid, w_pw)

Shapes: x (N, C, H, W), NCHW or channels_last; w_dw (C, 1, 3, 3); w_pw (COUT, C, 1, 1);
y (N, COUT, HO, WO) in x's memory format and dtype (float32/16, bfloat16, float64).

The forward computes ``mid`` tile by tile in registers and feeds it straight into the
pointwise product. The backward recomputes ``mid`` and its gradient (``dy @ w_pw``) where
it needs them: one kernel produces both weight gradients as per-tile partials (summed
afterwards in a fixed order: deterministic), another the input gradient, recomputing the
gradient of ``mid`` at the output pixel each of the nine taps reaches. This trades
recomputation for memory traffic; it is not the default anywhere until a GPU benchmark
shows it faster (the seeds put ReLU and BatchNorm between the two convolutions, so their
blocks need the BatchNorm statistics of ``mid`` first; this op covers blocks without).

Raises ``NotImplementedError`` for configurations outside the depthwise subset of
``fastcifar.kernels.conv2d`` (stride 1-2, dilation 1-3, padding 0..dilation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcifar.kernels.conv import check_supported
from fastcifar.kernels.flops import dwsep_flops
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

__all__ = ["depthwise_separable_conv2d"]


def _k(backward: bool = False):
    # imported at the first launch: triton is a Linux-only dependency
    if backward:
        from fastcifar.kernels import dwsep_bwd_kernels

        return dwsep_bwd_kernels
    from fastcifar.kernels import dwsep_kernels

    return dwsep_kernels


def _wd_strides(w: Tensor) -> tuple[int, int, int]:
    s = w.stride()
    return s[0], s[2], s[3]


def _wp_strides(w: Tensor) -> tuple[int, int]:
    s = w.stride()
    return s[0], s[1]


def _meta(t, x: Tensor, stride, padding, dilation, relu) -> dict:
    """The constexprs every dwsep kernel takes: the convolution, the ReLU, the tile and
    the target's launch options (``t``: ``tiles.Tiles``)."""
    return dict(
        STRIDE=stride,
        PADDING=padding,
        DILATION=dilation,
        RELU=relu,
        USE_DOT=t.use_dot,
        ACC=tl_acc(x.dtype),
        BLOCK_P=t.block_p,
        BLOCK_K=t.block_k,
        BLOCK_N=t.block_n,
        **t.launch_options,
    )


def launch_forward(x, wd, wp, stride, padding, dilation, relu):
    """Launch the fused forward: depthwise 3x3, optional ReLU, 1x1, one kernel.

    Args:
        x: input (N, C, H, W), any strides.
        wd: depthwise weight (C, 1, 3, 3).
        wp: pointwise weight (COUT, C, 1, 1).
        stride: the depthwise convolution's stride.
        padding: its zero padding, in pixels.
        dilation: its tap spacing.
        relu: ReLU between the two convolutions.

    Returns:
        y (N, COUT, HO, WO) in ``x``'s dtype and memory format.
    """
    t = tiles(x.dtype, "dwsep")
    n, c, h, w = x.shape
    cout = wp.shape[0]
    y = empty_output(x, cout, stride, padding, dilation)
    ho, wo = y.shape[2], y.shape[3]
    grid = (cdiv(n * ho * wo, t.block_p), cdiv(cout, t.block_n))
    layout = (*strides(x), *_wd_strides(wd), *_wp_strides(wp), *strides(y))
    meta = _meta(t, x, stride, padding, dilation, relu)
    launch(_k().dwsep_fwd_kernel, grid, x, wd, wp, y, n, c, h, w, cout, ho, wo, *layout, **meta)
    return y


def launch_backward(dy, x, wd, wp, stride, padding, dilation, relu):
    """Launch the fused backward: the weights' gradients (one kernel, per-program partials summed in
    a fixed order) and the input's (another), both recomputing the depthwise output.

    Args:
        dy: the output gradient (N, COUT, HO, WO).
        x: the input (N, C, H, W).
        wd: depthwise weight (C, 1, 3, 3).
        wp: pointwise weight (COUT, C, 1, 1).
        stride: the depthwise convolution's stride.
        padding: its zero padding, in pixels.
        dilation: its tap spacing.
        relu: ReLU between the two convolutions.

    Returns:
        (dx (N, C, H, W), grad of wd (C, 1, 3, 3), grad of wp (COUT, C, 1, 1)), ``x``'s dtype.
    """
    k = _k(backward=True)
    n, c, h, w = x.shape
    cout, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    sizes = (n, c, h, w, cout, ho, wo)
    strided = (*strides(x), *_wd_strides(wd), *_wp_strides(wp), *strides(dy))
    tw = tiles(x.dtype, "dwsep_weights")
    c_blocks = cdiv(c, tw.block_k)
    pixels_per_partial = partial_pixels(n * ho * wo, c_blocks, tw, x.device)
    parts = cdiv(n * ho * wo, pixels_per_partial)
    part_dw = torch.empty((parts, c, 9), dtype=acc_dtype(x.dtype), device=x.device)
    part_pw = torch.zeros((parts, cout, c), dtype=acc_dtype(x.dtype), device=x.device)
    pointers = (x, wd, wp, dy, part_dw, part_pw)
    meta = _meta(tw, x, stride, padding, dilation, relu)
    grid = (parts, c_blocks)
    launch(
        k.dwsep_bwd_weights_kernel, grid, *pointers, *sizes, pixels_per_partial, *strided, **meta
    )
    ti = tiles(x.dtype, "dwsep")
    dx = torch.empty_like(x, memory_format=memory_format(x))
    grid = (cdiv(n * h * w, ti.block_p), cdiv(c, ti.block_k))
    meta = _meta(ti, x, stride, padding, dilation, relu)
    launch(
        k.dwsep_bwd_input_kernel, grid, x, wd, wp, dy, dx, *sizes, *strided, *strides(dx), **meta
    )
    g_wd = part_dw.sum(0).view(c, 1, 3, 3).to(x.dtype)
    g_wp = part_pw.sum(0).view(cout, c, 1, 1).to(x.dtype)
    return dx, g_wd, g_wp


@torch.library.custom_op("fastcifar::dwsep_conv2d", mutates_args=())
def _dwsep_op(
    input: Tensor,
    w_dw: Tensor,
    w_pw: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    relu: bool,
) -> Tensor:
    return launch_forward(input, w_dw, w_pw, stride, padding, dilation, relu)


@_dwsep_op.register_fake
def _(input, w_dw, w_pw, stride, padding, dilation, relu):
    return empty_output(input, w_pw.shape[0], stride, padding, dilation)


@torch.library.custom_op("fastcifar::dwsep_conv2d_backward", mutates_args=())
def _dwsep_backward_op(
    grad: Tensor,
    input: Tensor,
    w_dw: Tensor,
    w_pw: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return launch_backward(grad, input, w_dw, w_pw, stride, padding, dilation, relu)


@_dwsep_backward_op.register_fake
def _(grad, input, w_dw, w_pw, stride, padding, dilation, relu):
    dx = torch.empty(
        input.shape, dtype=input.dtype, device=input.device, memory_format=memory_format(input)
    )
    return (
        dx,
        torch.empty(w_dw.shape, dtype=input.dtype, device=input.device),
        torch.empty(w_pw.shape, dtype=input.dtype, device=input.device),
    )


def _setup_context(ctx, inputs, output):
    input, w_dw, w_pw, stride, padding, dilation, relu = inputs
    ctx.save_for_backward(input, w_dw, w_pw)
    ctx.args = (stride, padding, dilation, relu)


def _autograd_backward(ctx, grad):
    input, w_dw, w_pw = ctx.saved_tensors
    dx, g_dw, g_pw = _dwsep_backward_op(grad, input, w_dw, w_pw, *ctx.args)
    return dx, g_dw, g_pw, None, None, None, None


_dwsep_op.register_autograd(_autograd_backward, setup_context=_setup_context)
# FLOPs, for torch.utils.flop_counter and the roofline (kernels/flops.py)
dwsep_flops(torch.ops.fastcifar.dwsep_conv2d, depthwise=1, pointwise=1)
dwsep_flops(torch.ops.fastcifar.dwsep_conv2d_backward, depthwise=3, pointwise=2)


def depthwise_separable_conv2d(
    input: Tensor,
    w_dw: Tensor,
    w_pw: Tensor,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    relu: bool = False,
) -> Tensor:
    """Fused depthwise 3x3 -> optional ReLU -> pointwise 1x1 (module docstring).

    Args:
        input: (N, C, H, W), float32, float16, bfloat16 or float64, any memory format.
        w_dw: depthwise weight (C, 1, 3, 3), ``input``'s dtype.
        w_pw: pointwise weight (COUT, C, 1, 1), ``input``'s dtype.
        stride: the depthwise convolution's stride.
        padding: its zero padding, in pixels.
        dilation: its tap spacing.
        relu: ReLU between the two convolutions.

    Returns:
        (N, COUT, HO, WO) in ``input``'s dtype and memory format.

    Raises:
        NotImplementedError: an unsupported configuration, named.
        ValueError: weight shapes that do not match the input, or mixed dtypes.
    """
    c = input.shape[1]
    if input.dim() != 4 or w_dw.shape[:2] != (c, 1) or tuple(w_pw.shape[1:]) != (c, 1, 1):
        raise ValueError(
            f"depthwise_separable_conv2d: w_dw {tuple(w_dw.shape)} must be ({c}, 1, 3, 3) and "
            f"w_pw {tuple(w_pw.shape)} (COUT, {c}, 1, 1)"
        )
    if tuple(w_dw.shape[2:]) != (3, 3):
        raise NotImplementedError(
            f"depthwise_separable_conv2d: depthwise kernel {tuple(w_dw.shape[2:])} is not 3x3 "
            f"(larger ones run unfused through fastcifar.kernels.conv2d)"
        )
    check_supported(
        input.shape, w_dw.shape, input.dtype, input.device, stride, padding, dilation, groups=c
    )
    if not input.dtype == w_dw.dtype == w_pw.dtype:
        raise ValueError("depthwise_separable_conv2d: input and weights must share one dtype")
    return _dwsep_op(input, w_dw, w_pw, stride, padding, dilation, relu)
