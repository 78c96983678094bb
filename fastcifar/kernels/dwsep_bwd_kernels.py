"""Triton kernels of ``fastcifar.kernels.dwsep``'s backward: the fused 3x3 depthwise ->
(ReLU) -> 1x1 pointwise convolution's weight gradients (per-program partials) and input
gradient, recomputing the depthwise output ("mid", ``dwsep_kernels._dw_tile``) and its
gradient (``_grad_mid_tile``) in registers where needed, so it is never written.
Accumulation in float32 (float64 for float64 inputs).

Private: the launchers in ``fastcifar.kernels.dwsep`` call these; imported lazily, as
triton is a Linux-only dependency.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcifar.kernels._stencil import (
    load_tile,
    mac,
    partial_range,
    pixel_coords,
    pixel_offset,
    program_tile,
    store_tile,
    tap_source,
    tap_target,
)
from fastcifar.kernels.dwsep_kernels import _dw_tile


@triton.jit
def _grad_mid_tile(
    dy_ptr,
    wp_ptr,
    n,
    oh,
    ow,
    mask_p,
    offs_c,
    mask_c,
    COUT,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_po,
    stride_pc,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # gradient of mid at pixels (n, oh, ow): dy [BLOCK_P, COUT] @ wp^T [COUT, BLOCK_K] ->
    # [BLOCK_P, BLOCK_K]
    g = tl.zeros([BLOCK_P, BLOCK_K], dtype=ACC)
    dy_off = pixel_offset(n, oh, ow, stride_dyn, stride_dyh, stride_dyw)
    for o0 in range(0, COUT, BLOCK_N):
        offs_o = o0 + tl.arange(0, BLOCK_N)
        mask_o = offs_o < COUT
        dyt = load_tile(dy_ptr, dy_off, offs_o, stride_dyc, mask_p, mask_o)
        wpt = tl.load(
            wp_ptr + offs_o[:, None] * stride_po + offs_c[None, :] * stride_pc,
            mask=mask_o[:, None] & mask_c[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_K]
        g = mac(g, dyt, wpt, USE_DOT, ACC)
    return g


@triton.jit
def dwsep_bwd_weights_kernel(
    x_ptr,  # input (N, C, H, W)
    wd_ptr,  # depthwise weight (C, 1, 3, 3)
    wp_ptr,  # pointwise weight (COUT, C, 1, 1)
    dy_ptr,  # output gradient (N, COUT, HO, WO)
    pd_ptr,  # partial grad of the depthwise weight (T, C, 9), ACC dtype
    pp_ptr,  # partial grad of the pointwise weight (T, COUT, C), ACC dtype
    # sizes, and the output pixels each partial sums over
    N,
    C,
    H,
    W,
    COUT,
    HO,
    WO,
    PIXELS_PER_PARTIAL,
    # element strides of x (n, c, h, w), wd (c, h, w), wp (out, in) and dy (n, c, h, w)
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wc,
    stride_wh,
    stride_ww,
    stride_po,
    stride_pc,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
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
    """Fused depthwise-separable backward: both weight gradients as per-program partials.

    x (N, C, H, W), dy (N, COUT, HO, WO): any strides, one dtype; pd (T, C, 9) and
    pp (T, COUT, C, zero-initialised) contiguous in ``ACC``. Grid: (T, cdiv(C, BLOCK_K)).
    """
    # this program: one pixel range (a partial) and BLOCK_K depthwise channels
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    total = N * HO * WO
    start, end = partial_range(pid_t, PIXELS_PER_PARTIAL, total)
    gwd = tl.zeros([16, BLOCK_K], dtype=ACC)  # 9 taps, padded to a power of two
    taps = tl.arange(0, 16)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        # mid and its gradient at these pixels, recomputed (ReLU'd mid masks the gradient)
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
        g = _grad_mid_tile(
            dy_ptr,
            wp_ptr,
            n,
            oh,
            ow,
            mask_p,
            offs_c,
            mask_c,
            COUT,
            stride_dyn,
            stride_dyc,
            stride_dyh,
            stride_dyw,
            stride_po,
            stride_pc,
            USE_DOT,
            ACC,
            BLOCK_P,
            BLOCK_K,
            BLOCK_N,
        )
        if RELU:
            g = tl.where(mid > 0, g, 0.0)
        # pointwise weight: mid^T [BLOCK_K, BLOCK_P] @ dy [BLOCK_P, BLOCK_N], accumulated into
        # this tile's partial
        dy_off = pixel_offset(n, oh, ow, stride_dyn, stride_dyh, stride_dyw)
        for o0 in range(0, COUT, BLOCK_N):
            offs_o = o0 + tl.arange(0, BLOCK_N)
            mask_o = offs_o < COUT
            dyt = load_tile(dy_ptr, dy_off, offs_o, stride_dyc, mask_p, mask_o)
            part = mac(
                tl.zeros([BLOCK_K, BLOCK_N], dtype=ACC),
                tl.trans(mid.to(dyt.dtype)),
                dyt,
                USE_DOT,
                ACC,
            )
            # this program's own slice of the zero-initialised partials: no other writer
            ptr = pp_ptr + pid_t * COUT * C + offs_o[None, :] * C + offs_c[:, None]
            msk = mask_c[:, None] & mask_o[None, :]
            tl.store(ptr, tl.load(ptr, mask=msk, other=0.0) + part, mask=msk)
        # depthwise weight: per tap, sum over pixels of g * x(shifted)
        for kh in tl.static_range(3):
            for kw in tl.static_range(3):
                ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
                x_off = pixel_offset(n, ih, iw, stride_xn, stride_xh, stride_xw)
                xt = load_tile(x_ptr, x_off, offs_c, stride_xc, ok, mask_c)
                s = tl.sum(g * xt.to(ACC), axis=0)  # [BLOCK_K]
                gwd += tl.where((taps == kh * 3 + kw)[:, None], s[None, :], 0.0)
    out = pd_ptr + pid_t * C * 9 + offs_c[None, :] * 9 + taps[:, None]
    tl.store(out, gwd, mask=(taps < 9)[:, None] & mask_c[None, :])


@triton.jit
def dwsep_bwd_input_kernel(
    x_ptr,  # input (N, C, H, W)
    wd_ptr,  # depthwise weight (C, 1, 3, 3)
    wp_ptr,  # pointwise weight (COUT, C, 1, 1)
    dy_ptr,  # output gradient (N, COUT, HO, WO)
    dx_ptr,  # input gradient (N, C, H, W)
    N,
    C,
    H,
    W,
    COUT,
    HO,
    WO,
    # element strides of x, wd (c, h, w), wp (out, in), dy and dx
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wc,
    stride_wh,
    stride_ww,
    stride_po,
    stride_pc,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_dxn,
    stride_dxc,
    stride_dxh,
    stride_dxw,
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
    """Fused depthwise-separable backward: the input gradient, recomputing mid's gradient
    (and mid itself, for the ReLU mask) at the output pixel each tap reaches.

    x, dx (N, C, H, W), dy (N, COUT, HO, WO): any strides, one dtype.
    Grid: (cdiv(N*H*W, BLOCK_P), cdiv(C, BLOCK_K)).
    """
    # this program's tile: BLOCK_P input pixels x BLOCK_K channels
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p, offs_c, mask_p, mask_c = program_tile(pid_p, pid_c, N * H * W, C, BLOCK_P, BLOCK_K)
    n, ih, iw = pixel_coords(offs_p, H, W)
    acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
            # the gradient of mid at the output pixel this tap reaches, recomputed
            g = _grad_mid_tile(
                dy_ptr,
                wp_ptr,
                n,
                oh,
                ow,
                ok,
                offs_c,
                mask_c,
                COUT,
                stride_dyn,
                stride_dyc,
                stride_dyh,
                stride_dyw,
                stride_po,
                stride_pc,
                USE_DOT,
                ACC,
                BLOCK_P,
                BLOCK_K,
                BLOCK_N,
            )
            if RELU:
                mid = _dw_tile(
                    x_ptr,
                    wd_ptr,
                    n,
                    oh,
                    ow,
                    ok,
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
                g = tl.where(mid > 0, g, 0.0)
            wv = tl.load(
                wd_ptr + offs_c * stride_wc + kh * stride_wh + kw * stride_ww,
                mask=mask_c,
                other=0.0,
            )
            acc += g * wv.to(ACC)[None, :]
    dx_off = pixel_offset(n, ih, iw, stride_dxn, stride_dxh, stride_dxw)
    store_tile(dx_ptr, acc, dx_off, offs_c, stride_dxc, mask_p, mask_c)
