"""Triton kernels of ``fastcifar.kernels.dwsep``: the fused 3x3 depthwise -> (ReLU) -> 1x1
pointwise convolution, whose depthwise output ("mid") lives only in registers: the
forward recomputes it per tile (``_dw_tile``, here), the backward (``dwsep_bwd_kernels``)
recomputes it and its gradient where needed. Accumulation in float32 (float64 for
float64 inputs).

Private: the launchers in ``fastcifar.kernels.dwsep`` call these; imported lazily, as
triton is a Linux-only dependency.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcifar.kernels._stencil import (
    mac,
    pixel_coords,
    pixel_offset,
    program_tile,
    store_tile,
)
from fastcifar.kernels._window import window

# ----------------------------------------------------------------------------------------
# Fused depthwise-separable convolution: 3x3 depthwise (stride STRIDE, padding PADDING, dilation
# DILATION),
# optional ReLU, then 1x1 pointwise. The depthwise output ("mid", (N, C, HO, WO)) lives
# only in registers: the forward recomputes it per tile, the backward recomputes it (and
# its gradient) where needed, so it is never written to memory.


@triton.jit
def _dw_tile(
    x_ptr,
    wd_ptr,
    n,
    oh,
    ow,
    mask_p,
    offs_c,
    mask_c,
    H,
    W,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wc,
    stride_wh,
    stride_ww,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # depthwise 3x3 at output pixels (n, oh, ow) [BLOCK_P] for channels offs_c [BLOCK_K] ->
    # [BLOCK_P, BLOCK_K]
    mid = tl.zeros([BLOCK_P, BLOCK_K], dtype=ACC)
    mid = window(
        mid,
        x_ptr,
        wd_ptr,
        n,
        oh,
        ow,
        mask_p,
        offs_c,
        offs_c * stride_wc,
        mask_c,
        H,
        W,
        stride_xn,
        stride_xc,
        stride_xh,
        stride_xw,
        stride_wh,
        stride_ww,
        x_ptr,
        3,
        STRIDE,
        PADDING,
        DILATION,
        ACC,
        False,
        0,
    )
    if RELU:
        mid = tl.maximum(mid, 0.0)
    return mid


@triton.jit
def dwsep_fwd_kernel(
    x_ptr,  # input (N, C, H, W)
    wd_ptr,  # depthwise weight (C, 1, 3, 3)
    wp_ptr,  # pointwise weight (COUT, C, 1, 1)
    y_ptr,  # output (N, COUT, HO, WO)
    N,
    C,
    H,
    W,
    COUT,
    HO,
    WO,
    # element strides of x (n, c, h, w), wd (c, h, w), wp (out, in) and y (n, c, h, w)
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wc,
    stride_wh,
    stride_ww,
    stride_po,
    stride_pc,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    # the convolution and the tile, fixed at compile time
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    RELU: tl.constexpr,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Fused depthwise 3x3 -> (ReLU) -> pointwise 1x1 forward; mid stays in registers.

    x (N, C, H, W), w_dw (C, 1, 3, 3), w_pw (COUT, C, 1, 1), y (N, COUT, HO, WO): any
    strides, one dtype. Grid: (cdiv(N*HO*WO, BLOCK_P), cdiv(COUT, BLOCK_N)); each
    program recomputes BLOCK_K depthwise channels at a time and feeds ``tl.dot``.
    """
    # this program's tile: BLOCK_P output pixels x BLOCK_N output channels
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    offs_p, offs_o, mask_p, mask_o = program_tile(pid_p, pid_o, N * HO * WO, COUT, BLOCK_P, BLOCK_N)
    n, oh, ow = pixel_coords(offs_p, HO, WO)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=ACC)
    for c0 in range(0, C, BLOCK_K):
        # BLOCK_K channels of the depthwise output at these pixels, in registers only
        offs_c = c0 + tl.arange(0, BLOCK_K)
        mask_c = offs_c < C
        mid = _dw_tile(
            x_ptr,
            wd_ptr,
            n,
            oh,
            ow,
            mask_p,
            offs_c,
            mask_c,
            H,
            W,
            stride_xn,
            stride_xc,
            stride_xh,
            stride_xw,
            stride_wc,
            stride_wh,
            stride_ww,
            STRIDE,
            PADDING,
            DILATION,
            RELU,
            ACC,
            BLOCK_P,
            BLOCK_K,
        )
        # the pointwise convolution: mid [BLOCK_P, BLOCK_K] @ wp [BLOCK_K, BLOCK_N], mid
        # rounded to the weight's dtype as tensor cores take it
        wp = tl.load(
            wp_ptr + offs_c[:, None] * stride_pc + offs_o[None, :] * stride_po,
            mask=mask_c[:, None] & mask_o[None, :],
            other=0.0,
        )
        acc = mac(acc, mid.to(wp.dtype), wp, USE_DOT, ACC)
    y_off = pixel_offset(n, oh, ow, stride_yn, stride_yh, stride_yw)
    store_tile(y_ptr, acc, y_off, offs_o, stride_yc, mask_p, mask_o)
