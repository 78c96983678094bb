"""Triton kernels of ``fastcifar.kernels.dwsep``: the fused 3x3 depthwise -> (ReLU) -> 1x1
pointwise convolution, whose depthwise output ("mid") lives only in registers: the
forward recomputes it per tile, the backward recomputes it (and its gradient) where
needed. Accumulation in float32 (float64 for float64 inputs).

Private: the launchers in ``fastcifar.kernels.dwsep`` call these; imported lazily, as
triton is a Linux-only dependency.
"""

from __future__ import annotations

import triton
import triton.language as tl
from fastcifar.kernels._stencil import pixel_coords, tap_source, tap_target

# ----------------------------------------------------------------------------------------
# Fused depthwise-separable convolution: 3x3 depthwise (stride STRIDE, padding PADDING, dilation
# DILATION),
# optional ReLU, then 1x1 pointwise. The depthwise output ("mid", (N, C, HO, WO)) lives
# only in registers: the forward recomputes it per tile, the backward recomputes it (and
# its gradient) where needed, so it is never written to memory.


@triton.jit
def _dw_tile(
    x_ptr, wd_ptr, n, oh, ow, mask_p, offs_c, mask_c, H, W,
    stride_xn, stride_xc, stride_xh, stride_xw, stride_wc, stride_wh, stride_ww,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr, RELU: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CMID: tl.constexpr,
):  # fmt: skip
    # depthwise 3x3 at output pixels (n, oh, ow) [BLOCK_P] for channels offs_c [BLOCK_CMID] ->
    # [BLOCK_P, BLOCK_CMID]
    mid = tl.zeros([BLOCK_P, BLOCK_CMID], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
            xt = tl.load(
                x_ptr
                + (n * stride_xn + ih * stride_xh + iw * stride_xw)[:, None]
                + offs_c[None, :] * stride_xc,
                mask=ok[:, None] & mask_c[None, :],
                other=0.0,
            )
            wv = tl.load(
                wd_ptr + offs_c * stride_wc + kh * stride_wh + kw * stride_ww,
                mask=mask_c,
                other=0.0,
            )
            mid += xt.to(ACC) * wv.to(ACC)[None, :]
    if RELU:
        mid = tl.maximum(mid, 0.0)
    return mid


@triton.jit
def dwsep_fwd_kernel(
    x_ptr,  # input (N, C, H, W)
    wd_ptr,  # depthwise weight (C, 1, 3, 3)
    wp_ptr,  # pointwise weight (COUT, C, 1, 1)
    y_ptr,  # output (N, COUT, HO, WO)
    N, C, H, W, COUT, HO, WO,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wc, stride_wh, stride_ww,
    stride_po, stride_pc,
    stride_yn, stride_yc, stride_yh, stride_yw,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CMID: tl.constexpr, BLOCK_COUT: tl.constexpr,
):  # fmt: skip
    """Fused depthwise 3x3 -> (ReLU) -> pointwise 1x1 forward; mid stays in registers.

    x (N, C, H, W), w_dw (C, 1, 3, 3), w_pw (COUT, C, 1, 1), y (N, COUT, HO, WO): any
    strides, one dtype. Grid: (cdiv(N*HO*WO, BLOCK_P), cdiv(COUT, BLOCK_COUT)); each
    program recomputes BLOCK_CMID depthwise channels at a time and feeds ``tl.dot``.
    """
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = pid_o * BLOCK_COUT + tl.arange(0, BLOCK_COUT)
    mask_p = offs_p < N * HO * WO
    mask_o = offs_o < COUT
    n, oh, ow = pixel_coords(offs_p, HO, WO)
    acc = tl.zeros([BLOCK_P, BLOCK_COUT], dtype=ACC)
    for c0 in range(0, C, BLOCK_CMID):
        offs_c = c0 + tl.arange(0, BLOCK_CMID)
        mask_c = offs_c < C
        mid = _dw_tile(x_ptr, wd_ptr, n, oh, ow, mask_p, offs_c, mask_c, H, W, stride_xn,
                       stride_xc, stride_xh, stride_xw, stride_wc, stride_wh, stride_ww,
                       STRIDE, PADDING, DILATION, RELU, ACC, BLOCK_P, BLOCK_CMID)  # fmt: skip
        wp = tl.load(
            wp_ptr + offs_c[:, None] * stride_pc + offs_o[None, :] * stride_po,
            mask=mask_c[:, None] & mask_o[None, :],
            other=0.0,
        )  # [BLOCK_CMID, BLOCK_COUT]
        if USE_DOT:
            acc += tl.dot(mid.to(wp.dtype), wp, input_precision="ieee").to(ACC)
        else:
            acc += tl.sum(mid[:, :, None] * wp.to(ACC)[None, :, :], axis=1)
    y_off = n * stride_yn + oh * stride_yh + ow * stride_yw
    tl.store(
        y_ptr + y_off[:, None] + offs_o[None, :] * stride_yc,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_o[None, :],
    )


@triton.jit
def _grad_mid_tile(
    dy_ptr, wp_ptr, n, oh, ow, mask_p, offs_c, mask_c, COUT,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw, stride_po, stride_pc,
    USE_DOT: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CMID: tl.constexpr,
    BLOCK_COUT: tl.constexpr,
):  # fmt: skip
    # gradient of mid at pixels (n, oh, ow): dy [BLOCK_P, COUT] @ wp^T [COUT, BLOCK_CMID] ->
    # [BLOCK_P, BLOCK_CMID]
    g = tl.zeros([BLOCK_P, BLOCK_CMID], dtype=ACC)
    d_off = n * stride_dyn + oh * stride_dyh + ow * stride_dyw
    for o0 in range(0, COUT, BLOCK_COUT):
        offs_o = o0 + tl.arange(0, BLOCK_COUT)
        mask_o = offs_o < COUT
        dyt = tl.load(
            dy_ptr + d_off[:, None] + offs_o[None, :] * stride_dyc,
            mask=mask_p[:, None] & mask_o[None, :],
            other=0.0,
        )
        wpt = tl.load(
            wp_ptr + offs_o[:, None] * stride_po + offs_c[None, :] * stride_pc,
            mask=mask_o[:, None] & mask_c[None, :],
            other=0.0,
        )  # [BLOCK_COUT, BLOCK_CMID]
        if USE_DOT:
            g += tl.dot(dyt, wpt, input_precision="ieee").to(ACC)
        else:
            g += tl.sum(dyt.to(ACC)[:, :, None] * wpt.to(ACC)[None, :, :], axis=1)
    return g


@triton.jit
def dwsep_bwd_weights_kernel(
    x_ptr, wd_ptr, wp_ptr, dy_ptr,
    pd_ptr,  # partial grad of the depthwise weight (T, C, 9), ACC dtype
    pp_ptr,  # partial grad of the pointwise weight (T, COUT, C), ACC dtype
    N, C, H, W, COUT, HO, WO, PIXELS_PER_PARTIAL,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wc, stride_wh, stride_ww,
    stride_po, stride_pc,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CMID: tl.constexpr, BLOCK_COUT: tl.constexpr,
):  # fmt: skip
    """Fused depthwise-separable backward: both weight gradients as per-program partials.

    x (N, C, H, W), dy (N, COUT, HO, WO): any strides, one dtype; pd (T, C, 9) and
    pp (T, COUT, C, zero-initialised) contiguous in ``ACC``. Grid: (T, cdiv(C, BLOCK_CMID)).
    """
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_CMID + tl.arange(0, BLOCK_CMID)
    mask_c = offs_c < C
    total = N * HO * WO
    start = pid_t * PIXELS_PER_PARTIAL
    end = tl.minimum(start + PIXELS_PER_PARTIAL, total)
    gwd = tl.zeros([16, BLOCK_CMID], dtype=ACC)  # 9 taps, padded to a power of two
    taps = tl.arange(0, 16)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        mid = _dw_tile(x_ptr, wd_ptr, n, oh, ow, mask_p, offs_c, mask_c, H, W, stride_xn,
                       stride_xc, stride_xh, stride_xw, stride_wc, stride_wh, stride_ww,
                       STRIDE, PADDING, DILATION, RELU, ACC, BLOCK_P, BLOCK_CMID)  # fmt: skip
        g = _grad_mid_tile(dy_ptr, wp_ptr, n, oh, ow, mask_p, offs_c, mask_c, COUT,
                           stride_dyn, stride_dyc, stride_dyh, stride_dyw, stride_po, stride_pc,
                           USE_DOT, ACC, BLOCK_P, BLOCK_CMID, BLOCK_COUT)  # fmt: skip
        if RELU:
            g = tl.where(mid > 0, g, 0.0)
        # pointwise weight: mid^T [BLOCK_CMID, BLOCK_P] @ dy [BLOCK_P, BLOCK_COUT], accumulated into
        # this tile's partial
        d_off = n * stride_dyn + oh * stride_dyh + ow * stride_dyw
        for o0 in range(0, COUT, BLOCK_COUT):
            offs_o = o0 + tl.arange(0, BLOCK_COUT)
            mask_o = offs_o < COUT
            dyt = tl.load(
                dy_ptr + d_off[:, None] + offs_o[None, :] * stride_dyc,
                mask=mask_p[:, None] & mask_o[None, :],
                other=0.0,
            )
            if USE_DOT:
                part = tl.dot(tl.trans(mid.to(dyt.dtype)), dyt, input_precision="ieee").to(ACC)
            else:
                part = tl.sum(mid[:, :, None] * dyt.to(ACC)[:, None, :], axis=0)
            # this program's own slice of the zero-initialised partials: no other writer
            ptr = pp_ptr + pid_t * COUT * C + offs_o[None, :] * C + offs_c[:, None]
            msk = mask_c[:, None] & mask_o[None, :]
            tl.store(ptr, tl.load(ptr, mask=msk, other=0.0) + part, mask=msk)
        # depthwise weight: per tap, sum over pixels of g * x(shifted)
        for kh in tl.static_range(3):
            for kw in tl.static_range(3):
                ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
                xt = tl.load(
                    x_ptr
                    + (n * stride_xn + ih * stride_xh + iw * stride_xw)[:, None]
                    + offs_c[None, :] * stride_xc,
                    mask=ok[:, None] & mask_c[None, :],
                    other=0.0,
                )
                s = tl.sum(g * xt.to(ACC), axis=0)  # [BLOCK_CMID]
                gwd += tl.where((taps == kh * 3 + kw)[:, None], s[None, :], 0.0)
    out = pd_ptr + pid_t * C * 9 + offs_c[None, :] * 9 + taps[:, None]
    tl.store(out, gwd, mask=(taps < 9)[:, None] & mask_c[None, :])


@triton.jit
def dwsep_bwd_input_kernel(
    x_ptr, wd_ptr, wp_ptr, dy_ptr,
    dx_ptr,  # grad of input (N, C, H, W)
    N, C, H, W, COUT, HO, WO,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wc, stride_wh, stride_ww,
    stride_po, stride_pc,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CMID: tl.constexpr, BLOCK_COUT: tl.constexpr,
):  # fmt: skip
    """Fused depthwise-separable backward: the input gradient, recomputing mid's gradient
    (and mid itself, for the ReLU mask) at the output pixel each tap reaches.

    x, dx (N, C, H, W), dy (N, COUT, HO, WO): any strides, one dtype.
    Grid: (cdiv(N*H*W, BLOCK_P), cdiv(C, BLOCK_CMID)).
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_CMID + tl.arange(0, BLOCK_CMID)
    mask_p = offs_p < N * H * W
    mask_c = offs_c < C
    n, ih, iw = pixel_coords(offs_p, H, W)
    acc = tl.zeros([BLOCK_P, BLOCK_CMID], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
            # the gradient of mid at the output pixel this tap reaches, recomputed
            g = _grad_mid_tile(dy_ptr, wp_ptr, n, oh, ow, ok, offs_c, mask_c, COUT,
                               stride_dyn, stride_dyc, stride_dyh, stride_dyw, stride_po,
                               stride_pc, USE_DOT, ACC, BLOCK_P, BLOCK_CMID,
                               BLOCK_COUT)  # fmt: skip
            if RELU:
                mid = _dw_tile(x_ptr, wd_ptr, n, oh, ow, ok, offs_c, mask_c, H, W,
                               stride_xn, stride_xc, stride_xh, stride_xw, stride_wc, stride_wh,
                               stride_ww, STRIDE, PADDING, DILATION, RELU, ACC, BLOCK_P,
                               BLOCK_CMID)  # fmt: skip
                g = tl.where(mid > 0, g, 0.0)
            wv = tl.load(
                wd_ptr + offs_c * stride_wc + kh * stride_wh + kw * stride_ww,
                mask=mask_c,
                other=0.0,
            )
            acc += g * wv.to(ACC)[None, :]
    g_off = n * stride_dxn + ih * stride_dxh + iw * stride_dxw
    tl.store(
        dx_ptr + g_off[:, None] + offs_c[None, :] * stride_dxc,
        acc.to(dx_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_c[None, :],
    )
