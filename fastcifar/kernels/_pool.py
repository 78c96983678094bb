"""``@triton.jit`` helpers of a 2x2 max pool (stride 2, floor: ``nn.MaxPool2d(2)``) run in
a convolution's epilogue and un-run on its gradient's load (``conv_pool``).

The forward visits the four pre-pool pixels of each window in row-major order (window
position ``q`` = 2 * row + column, 0..3) and keeps the largest value as stored (rounded
to the output dtype) and its position: a later value replaces the kept one only when
strictly larger or NaN, so ties go to the first in row-major order and NaN propagates,
as PyTorch's ``max_pool2d`` kernels decide (``aten/src/ATen/native/cpu/MaxPoolKernel.cpp``
and ``cuda/DilatedMaxPool2d.cu``: ``if ((val > maxval) || isnan(val))``).

The positions are stored packed, 2 bits a channel: a (N * HP * WP, cdiv(C, 4)) uint8
tensor whose byte ``[pixel, c // 4]`` holds channel c's position at bits 2 * (c % 4).
The backward's loads read a pooled gradient element and its byte and give the pre-pool
pixel its window's gradient where it was the maximum, zero elsewhere (and zero on the
last row or column that an odd size leaves outside every window).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pool_update(best, arg, acc, q, OUT_DTYPE: tl.constexpr):
    # keep the window's maximum so far (best) and its position (arg), given the value acc
    # of window position q: compared as stored in OUT_DTYPE; strictly larger or NaN wins
    v = acc.to(OUT_DTYPE).to(acc.dtype)
    take = (v > best) | (v != v)
    return tl.where(take, v, best), tl.where(take, q, arg)


@triton.jit
def store_positions(
    idx_ptr, arg, offs_p, mask_p, pid_n, COUT, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr
):
    # arg [BLOCK_P pooled pixels, BLOCK_N channels from pid_n * BLOCK_N] of positions 0..3,
    # packed four channels a byte into idx[pixel, c // 4] (module docstring)
    shift = tl.arange(0, 4) * 2
    quads = tl.reshape(arg, (BLOCK_P, BLOCK_N // 4, 4))
    packed = tl.sum(quads << shift[None, None, :], axis=2).to(tl.uint8)
    row = (COUT + 3) // 4  # bytes per pooled pixel
    offs_b = pid_n * (BLOCK_N // 4) + tl.arange(0, BLOCK_N // 4)
    tl.store(
        idx_ptr + offs_p[:, None] * row + offs_b[None, :],
        packed,
        mask=mask_p[:, None] & (offs_b < row)[None, :],
    )


@triton.jit
def unpool_load(
    dy_ptr,
    idx_ptr,
    n,
    oh,
    ow,
    offs_c,
    mask_p,
    mask_c,
    stride_n,
    stride_c,
    stride_h,
    stride_w,
    C,
    HP,
    WP,
):
    # [pixels, channels] tile of the pre-pool gradient at pre-pool pixels (n, oh, ow) from
    # the pooled gradient dy (N, C, HP, WP; strides given) and the packed positions: the
    # window's gradient where this pixel was its maximum, else zero
    ph = oh // 2
    pw = ow // 2
    inside = mask_p & (ph < HP) & (pw < WP)
    mask = inside[:, None] & mask_c[None, :]
    pix = n * stride_n + ph * stride_h + pw * stride_w
    g = tl.load(dy_ptr + pix[:, None] + offs_c[None, :] * stride_c, mask=mask, other=0.0)
    row = (C + 3) // 4
    byte = tl.load(
        idx_ptr + ((n * HP + ph) * WP + pw)[:, None] * row + (offs_c // 4)[None, :],
        mask=mask,
        other=0,
    )
    position = (byte.to(tl.int32) >> ((offs_c % 4) * 2)[None, :]) & 3
    here = (oh % 2) * 2 + ow % 2
    return tl.where(position == here[:, None], g, 0.0).to(g.dtype)
