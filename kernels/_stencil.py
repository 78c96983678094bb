"""``@triton.jit`` helpers every 3x3 convolution kernel shares: pixel coordinates, and
where a tap reads or writes (stride, padding and dilation applied, borders masked).

Index conventions: a flattened pixel index runs over (n, row, col); ``STRIDE``,
``PADDING``, ``DILATION`` are the convolution's; the 3x3 taps are ``kh, kw``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pixel_coords(offs_p, H, W):
    # flattened pixel index over (N, H, W) -> (n, row, col)
    n = offs_p // (H * W)
    rem = offs_p % (H * W)
    return n, rem // W, rem % W


@triton.jit
def tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE: tl.constexpr, PADDING: tl.constexpr,
                DILATION: tl.constexpr):  # fmt: skip
    # the input pixel tap (kh, kw) of output pixel (oh, ow) reads, and whether it lies inside
    ih = oh * STRIDE - PADDING + kh * DILATION
    iw = ow * STRIDE - PADDING + kw * DILATION
    return ih, iw, mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE: tl.constexpr, PADDING: tl.constexpr,
                DILATION: tl.constexpr):  # fmt: skip
    # the output pixel whose tap (kh, kw) reads input pixel (ih, iw), and whether one exists
    th = ih + PADDING - kh * DILATION
    tw = iw + PADDING - kw * DILATION
    ths = tl.where(th >= 0, th, 0)
    tws = tl.where(tw >= 0, tw, 0)
    oh = ths // STRIDE
    ow = tws // STRIDE
    ok = mask_p & (th >= 0) & (tw >= 0) & (ths % STRIDE == 0) & (tws % STRIDE == 0)
    return oh, ow, ok & (oh < HO) & (ow < WO)
