"""``@triton.jit`` helpers of the elementwise (depthwise and narrow-group) kernels: the
``KSIZE`` x ``KSIZE`` window of a tile of output pixels (the forward and the weight
gradient's recompute) and its transpose (the input gradient), one kernel row at a time,
with the BatchNorm-and-activation prologue applied as the input is read.

Index conventions as ``_stencil``'s.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcifar.kernels._stencil import (
    apply_prologue,
    load_tile,
    pixel_offset,
    tap_source,
    tap_target,
)


@triton.jit
def _window_row(
    acc,
    x_ptr,
    w_ptr,
    n,
    oh,
    ow,
    mask_p,
    x_chan,
    w_chan,
    mask_c,
    kh,
    H,
    W,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wh,
    stride_ww,
    pro_ptr,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    ACC: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
):
    # row kh of ``window``'s taps
    for kw in tl.static_range(KSIZE):
        ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
        x_off = pixel_offset(n, ih, iw, stride_xn, stride_xh, stride_xw)
        xt = load_tile(x_ptr, x_off, x_chan, stride_xc, ok, mask_c)
        if PROLOGUE:  # zero outside the image after the activation, not before
            xt = apply_prologue(xt, pro_ptr, x_chan, ok, mask_c, ACT, ACC)
        wv = tl.load(w_ptr + w_chan + kh * stride_wh + kw * stride_ww, mask=mask_c, other=0.0)
        acc += xt.to(ACC) * wv.to(ACC)[None, :]
    return acc


@triton.jit
def window(
    acc,
    x_ptr,
    w_ptr,  # accumulator [P, C]; input; weight (c, ., KSIZE, KSIZE)
    n,
    oh,
    ow,
    mask_p,  # output pixels [P]
    x_chan,
    w_chan,
    mask_c,  # per column: input channel, weight offset of tap (0, 0)
    H,
    W,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wh,
    stride_ww,
    pro_ptr,  # the prologue's (C, 3) (center, scale, shift) per input channel, when PROLOGUE
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    ACC: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
):
    # acc[p, c] += sum over the taps of x[n, x_chan[c], tap source of p] * w[w_chan[c], tap]:
    # one channel per column, the depthwise (or one input channel of a group's) window.
    # 3x3 unrolls all 9 taps; 5x5 and 7x7 loop over rows, so that 25-49 loads and their
    # addresses are not live at once (unrolled, the 5x5 spilled 338 bytes on sm_90)
    if KSIZE > 3:
        for kh in range(KSIZE):
            acc = _window_row(
                acc,
                x_ptr,
                w_ptr,
                n,
                oh,
                ow,
                mask_p,
                x_chan,
                w_chan,
                mask_c,
                kh,
                H,
                W,
                stride_xn,
                stride_xc,
                stride_xh,
                stride_xw,
                stride_wh,
                stride_ww,
                pro_ptr,
                KSIZE,
                STRIDE,
                PADDING,
                DILATION,
                ACC,
                PROLOGUE,
                ACT,
            )
    else:
        for kh in tl.static_range(KSIZE):
            acc = _window_row(
                acc,
                x_ptr,
                w_ptr,
                n,
                oh,
                ow,
                mask_p,
                x_chan,
                w_chan,
                mask_c,
                kh,
                H,
                W,
                stride_xn,
                stride_xc,
                stride_xh,
                stride_xw,
                stride_wh,
                stride_ww,
                pro_ptr,
                KSIZE,
                STRIDE,
                PADDING,
                DILATION,
                ACC,
                PROLOGUE,
                ACT,
            )
    return acc


@triton.jit
def _window_transposed_row(
    acc,
    dy_ptr,
    w_ptr,
    n,
    ih,
    iw,
    mask_p,
    dy_chan,
    w_chan,
    mask_c,
    kh,
    HO,
    WO,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_wh,
    stride_ww,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    ACC: tl.constexpr,
):
    # row kh of ``window_transposed``'s taps
    for kw in tl.static_range(KSIZE):
        oh, ow, ok = tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
        d_off = pixel_offset(n, oh, ow, stride_dyn, stride_dyh, stride_dyw)
        dyt = load_tile(dy_ptr, d_off, dy_chan, stride_dyc, ok, mask_c)
        wv = tl.load(w_ptr + w_chan + kh * stride_wh + kw * stride_ww, mask=mask_c, other=0.0)
        acc += dyt.to(ACC) * wv.to(ACC)[None, :]
    return acc


@triton.jit
def window_transposed(
    acc,
    dy_ptr,
    w_ptr,  # accumulator [P, C]; output gradient; weight (., ., KSIZE, KSIZE)
    n,
    ih,
    iw,
    mask_p,  # input pixels [P]
    dy_chan,
    w_chan,
    mask_c,  # per column: output channel, weight offset of tap (0, 0)
    HO,
    WO,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_wh,
    stride_ww,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    ACC: tl.constexpr,
):
    # acc[p, c] += sum over the taps of dy[n, dy_chan[c], the output pixel whose tap reads
    # p] * w[w_chan[c], tap]: ``window``'s adjoint, the input gradient of one channel; rows
    # looped for 5x5 and 7x7 as in ``window`` (unrolled, 360 bytes spilled on sm_90)
    if KSIZE > 3:
        for kh in range(KSIZE):
            acc = _window_transposed_row(
                acc,
                dy_ptr,
                w_ptr,
                n,
                ih,
                iw,
                mask_p,
                dy_chan,
                w_chan,
                mask_c,
                kh,
                HO,
                WO,
                stride_dyn,
                stride_dyc,
                stride_dyh,
                stride_dyw,
                stride_wh,
                stride_ww,
                KSIZE,
                STRIDE,
                PADDING,
                DILATION,
                ACC,
            )
    else:
        for kh in tl.static_range(KSIZE):
            acc = _window_transposed_row(
                acc,
                dy_ptr,
                w_ptr,
                n,
                ih,
                iw,
                mask_p,
                dy_chan,
                w_chan,
                mask_c,
                kh,
                HO,
                WO,
                stride_dyn,
                stride_dyc,
                stride_dyh,
                stride_dyw,
                stride_wh,
                stride_ww,
                KSIZE,
                STRIDE,
                PADDING,
                DILATION,
                ACC,
            )
    return acc
