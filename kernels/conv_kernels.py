"""Triton kernels of ``fastcifar.kernels.conv`` (and ``conv_bn``): 3x3 dense (dilation 1-3)
and grouped/depthwise KSIZE x KSIZE (3, 5, 7) convolutions, forward with optional ReLU /
BatchNorm-statistics epilogue, input, weight and bias gradients.

Private: the launchers in ``fastcifar.kernels.conv`` call these. Every tensor is
addressed through its four strides (n, c, h, w), so NCHW, channels_last and
stride-0 (expanded) gradients all work without copies. Accumulation is float32
(float64 for float64 inputs); results are cast to the output's dtype on store.

Index conventions: ``P`` is the flattened (n, oh, ow) output pixel (or (n, ih, iw)
input pixel for the input gradient); ``STRIDE``, ``PADDING``, ``DILATION`` are stride, padding and
dilation; the 3x3 taps are ``kh, kw``; ``CIN_PG``/``COUT_PG`` are channels per group.

Weight gradients are deterministic: each program sums over its own fixed range of
pixels and writes a partial; the partials are summed afterwards in a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl
from fastcifar.kernels._stencil import pixel_coords, tap_source, tap_target


@triton.jit
def _epilogue(
    acc, y_ptr, stats_ptr, pid_p, n, oh, ow, offs_co, mask_p, mask_co, COUT,
    stride_yn, stride_yc, stride_yh, stride_yw,
    RELU: tl.constexpr, STATS: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    # optional ReLU, the store, and optional BatchNorm statistics of what was stored:
    # per program and channel the sum and the sum of squared deviations from the tile's
    # own mean (combined on the host with Chan's formula: no cancellation, deterministic)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = acc.to(y_ptr.dtype.element_ty)
    y_off = n * stride_yn + oh * stride_yh + ow * stride_yw
    valid = mask_p[:, None] & mask_co[None, :]
    tl.store(y_ptr + y_off[:, None] + offs_co[None, :] * stride_yc, out, mask=valid)
    if STATS:
        v = tl.where(valid, out.to(ACC), 0.0)
        count = tl.sum(mask_p.to(ACC), axis=0)
        total = tl.sum(v, axis=0)
        mean = total / tl.maximum(count, 1.0)
        dev = tl.where(valid, v - mean[None, :], 0.0)
        m2 = tl.sum(dev * dev, axis=0)
        base = stats_ptr + pid_p * COUT * 2 + offs_co * 2
        tl.store(base, total, mask=mask_co)
        tl.store(base + 1, m2, mask=mask_co)


@triton.jit
def conv_fwd_dense_kernel(
    x_ptr,  # input (N, CIN, H, W), any strides
    w_ptr,  # weight (COUT, CIN, 3, 3), any strides
    b_ptr,  # bias (COUT,) or a dummy when HAS_BIAS is false
    y_ptr,  # output (N, COUT, HO, WO), any strides
    N, CIN, H, W, COUT, HO, WO,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_yn, stride_yc, stride_yh, stride_yw,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_COUT: tl.constexpr, BLOCK_CIN: tl.constexpr,
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else a dummy
    RELU: tl.constexpr, STATS: tl.constexpr,
):  # fmt: skip
    """Dense 3x3 forward, y = conv2d(x, w) + b, optional ReLU / BatchNorm-statistics epilogue.

    x (N, CIN, H, W), w (COUT, CIN, 3, 3), y (N, COUT, HO, WO): any strides (NCHW or
    channels_last), one dtype (float32/16, bfloat16, float64); accumulation in ``ACC``.
    Grid: (cdiv(N*HO*WO, BLOCK_P), cdiv(COUT, BLOCK_COUT)); each program computes a
    BLOCK_P x BLOCK_COUT output tile, reducing BLOCK_CIN input channels per step per tap
    (``tl.dot`` when USE_DOT).
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_co = pid_c * BLOCK_COUT + tl.arange(0, BLOCK_COUT)
    mask_p = offs_p < N * HO * WO
    mask_co = offs_co < COUT
    n, oh, ow = pixel_coords(offs_p, HO, WO)
    acc = tl.zeros([BLOCK_P, BLOCK_COUT], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
            x_base = n * stride_xn + ih * stride_xh + iw * stride_xw
            for ci0 in range(0, CIN, BLOCK_CIN):
                offs_ci = ci0 + tl.arange(0, BLOCK_CIN)
                mask_ci = offs_ci < CIN
                xt = tl.load(
                    x_ptr + x_base[:, None] + offs_ci[None, :] * stride_xc,
                    mask=ok[:, None] & mask_ci[None, :],
                    other=0.0,
                )
                wt = tl.load(
                    w_ptr
                    + offs_co[None, :] * stride_wo
                    + offs_ci[:, None] * stride_wi
                    + kh * stride_wh
                    + kw * stride_ww,
                    mask=mask_ci[:, None] & mask_co[None, :],
                    other=0.0,
                )
                if USE_DOT:
                    acc += tl.dot(xt, wt, input_precision="ieee").to(ACC)
                else:
                    acc += tl.sum(xt.to(ACC)[:, :, None] * wt.to(ACC)[None, :, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(ACC)[None, :]
    _epilogue(acc, y_ptr, stats_ptr, pid_p, n, oh, ow, offs_co, mask_p, mask_co, COUT,
              stride_yn, stride_yc, stride_yh, stride_yw, RELU, STATS, ACC)  # fmt: skip


@triton.jit
def conv_fwd_grouped_kernel(
    x_ptr,  # input (N, CIN, H, W)
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    b_ptr,  # bias (COUT,) or dummy
    y_ptr,  # output (N, COUT, HO, WO)
    # sizes: batch, input height and width, output channels, output height and width,
    # output channels per group
    N, H, W, COUT, HO, WO, COUT_PG,
    # element strides (n, c, h, w) of x, w (out, in, h, w) and y: any layout
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_yn, stride_yc, stride_yh, stride_yw,
    # the convolution's shape and the tile, fixed at compile time
    CIN_PG: tl.constexpr, KSIZE: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr,
    DILATION: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else a dummy
    RELU: tl.constexpr, STATS: tl.constexpr,
):  # fmt: skip
    """Grouped KSIZE x KSIZE forward (depthwise when CIN_PG == COUT_PG == 1), elementwise
    math.

    x (N, COUT/COUT_PG*CIN_PG, H, W), w (COUT, CIN_PG, KSIZE, KSIZE), y (N, COUT, HO, WO): any
    strides, one dtype; accumulation in ``ACC``. Grid: (cdiv(N*HO*WO, BLOCK_P),
    cdiv(COUT, BLOCK_C)); epilogue as the dense kernel.
    """
    # this program's tile: BLOCK_P output pixels x BLOCK_C output channels
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N * HO * WO
    mask_co = offs_co < COUT
    n, oh, ow = pixel_coords(offs_p, HO, WO)
    group = offs_co // COUT_PG
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    # every tap of the window, every input channel of each output channel's group: one
    # (pixels x channels) load of x and one channel vector of w each
    for kh in tl.static_range(KSIZE):
        for kw in tl.static_range(KSIZE):
            ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
            x_base = n * stride_xn + ih * stride_xh + iw * stride_xw
            for ci in tl.static_range(CIN_PG):
                cin = group * CIN_PG + ci
                xt = tl.load(
                    x_ptr + x_base[:, None] + cin[None, :] * stride_xc,
                    mask=ok[:, None] & mask_co[None, :],
                    other=0.0,
                )
                wv = tl.load(
                    w_ptr + offs_co * stride_wo + ci * stride_wi + kh * stride_wh + kw * stride_ww,
                    mask=mask_co,
                    other=0.0,
                )
                acc += xt.to(ACC) * wv.to(ACC)[None, :]
    # bias, then ReLU, the store and the BatchNorm statistics as asked
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(ACC)[None, :]
    _epilogue(acc, y_ptr, stats_ptr, pid_p, n, oh, ow, offs_co, mask_p, mask_co, COUT,
              stride_yn, stride_yc, stride_yh, stride_yw, RELU, STATS, ACC)  # fmt: skip


@triton.jit
def conv_bwd_input_dense_kernel(
    dy_ptr,  # grad of output (N, COUT, HO, WO), any strides (stride 0 too)
    w_ptr,  # weight (COUT, CIN, 3, 3)
    dx_ptr,  # grad of input (N, CIN, H, W)
    N, CIN, H, W, COUT, HO, WO,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_xn, stride_xc, stride_xh, stride_xw,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CIN: tl.constexpr, BLOCK_COUT: tl.constexpr,
):  # fmt: skip
    """Dense 3x3 input gradient: dx = conv_transpose2d(dy, w).

    dy (N, COUT, HO, WO) any strides (stride-0 expanded too), w (COUT, CIN, 3, 3),
    dx (N, CIN, H, W): one dtype. Grid: (cdiv(N*H*W, BLOCK_P), cdiv(CIN, BLOCK_CIN));
    each input pixel gathers the output pixels whose taps read it.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_ci = pid_c * BLOCK_CIN + tl.arange(0, BLOCK_CIN)
    mask_p = offs_p < N * H * W
    mask_ci = offs_ci < CIN
    n, ih, iw = pixel_coords(offs_p, H, W)
    acc = tl.zeros([BLOCK_P, BLOCK_CIN], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
            d_base = n * stride_dyn + oh * stride_dyh + ow * stride_dyw
            for co0 in range(0, COUT, BLOCK_COUT):
                offs_co = co0 + tl.arange(0, BLOCK_COUT)
                mask_co = offs_co < COUT
                dyt = tl.load(
                    dy_ptr + d_base[:, None] + offs_co[None, :] * stride_dyc,
                    mask=ok[:, None] & mask_co[None, :],
                    other=0.0,
                )
                wt = tl.load(
                    w_ptr
                    + offs_co[:, None] * stride_wo
                    + offs_ci[None, :] * stride_wi
                    + kh * stride_wh
                    + kw * stride_ww,
                    mask=mask_co[:, None] & mask_ci[None, :],
                    other=0.0,
                )
                if USE_DOT:
                    acc += tl.dot(dyt, wt, input_precision="ieee").to(ACC)
                else:
                    acc += tl.sum(dyt.to(ACC)[:, :, None] * wt.to(ACC)[None, :, :], axis=1)
    x_off = n * stride_xn + ih * stride_xh + iw * stride_xw
    tl.store(
        dx_ptr + x_off[:, None] + offs_ci[None, :] * stride_xc,
        acc.to(dx_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_ci[None, :],
    )


@triton.jit
def conv_bwd_input_grouped_kernel(
    dy_ptr,  # grad of output (N, COUT, HO, WO)
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    dx_ptr,  # grad of input (N, CIN, H, W)
    # sizes: batch, input channels, input and output height and width, outputs per group
    N, CIN, H, W, HO, WO, COUT_PG,
    # element strides (n, c, h, w) of dy, w (out, in, h, w) and dx: any layout
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_xn, stride_xc, stride_xh, stride_xw,
    CIN_PG: tl.constexpr, KSIZE: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr,
    DILATION: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grouped KSIZE x KSIZE input gradient (depthwise included), elementwise math.

    dy (N, COUT, HO, WO), w (COUT, CIN_PG, KSIZE, KSIZE), dx (N, CIN, H, W): any strides, one
    dtype. Grid: (cdiv(N*H*W, BLOCK_P), cdiv(CIN, BLOCK_C)).
    """
    # this program's tile: BLOCK_P input pixels x BLOCK_C input channels
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N * H * W
    mask_ci = offs_ci < CIN
    n, ih, iw = pixel_coords(offs_p, H, W)
    group = offs_ci // CIN_PG
    ci_local = offs_ci % CIN_PG
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    # every tap: the output pixel that read this input pixel through it (if any), and
    # every output channel of the group, weighted by the tap's filter value
    for kh in tl.static_range(KSIZE):
        for kw in tl.static_range(KSIZE):
            oh, ow, ok = tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
            d_base = n * stride_dyn + oh * stride_dyh + ow * stride_dyw
            for j in range(COUT_PG):
                co = group * COUT_PG + j
                dyt = tl.load(
                    dy_ptr + d_base[:, None] + co[None, :] * stride_dyc,
                    mask=ok[:, None] & mask_ci[None, :],
                    other=0.0,
                )
                wv = tl.load(
                    w_ptr + co * stride_wo + ci_local * stride_wi + kh * stride_wh + kw * stride_ww,
                    mask=mask_ci,
                    other=0.0,
                )
                acc += dyt.to(ACC) * wv.to(ACC)[None, :]
    x_off = n * stride_xn + ih * stride_xh + iw * stride_xw
    tl.store(
        dx_ptr + x_off[:, None] + offs_ci[None, :] * stride_xc,
        acc.to(dx_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_ci[None, :],
    )


@triton.jit
def conv_bwd_weight_dense_kernel(
    dy_ptr,  # grad of output (N, COUT, HO, WO)
    x_ptr,  # input (N, CIN, H, W)
    part_ptr,  # partials (T, COUT, CIN, 9), contiguous, ACC dtype
    N, CIN, H, W, COUT, HO, WO, PIXELS_PER_PARTIAL,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_COUT: tl.constexpr, BLOCK_CIN: tl.constexpr,
):  # fmt: skip
    """Dense 3x3 weight gradient, as per-program partials (summed on the host in order).

    dy (N, COUT, HO, WO), x (N, CIN, H, W): any strides, one dtype; part (T, COUT, CIN, 9)
    contiguous in ``ACC``. Grid: (T = cdiv(N*HO*WO, PIXELS_PER_PARTIAL),
    cdiv(COUT, BLOCK_COUT), 9 * cdiv(CIN, BLOCK_CIN)): pixel range, output-channel block,
    tap x input-channel block.
    """
    pid_t = tl.program_id(0)  # pixel range
    pid_co = tl.program_id(1)
    pid_z = tl.program_id(2)  # tap * ci_blocks + ci block
    n_ci_blocks = tl.cdiv(CIN, BLOCK_CIN)
    tap = pid_z // n_ci_blocks
    kh = tap // 3
    kw = tap % 3
    offs_co = pid_co * BLOCK_COUT + tl.arange(0, BLOCK_COUT)
    offs_ci = (pid_z % n_ci_blocks) * BLOCK_CIN + tl.arange(0, BLOCK_CIN)
    mask_co = offs_co < COUT
    mask_ci = offs_ci < CIN
    total = N * HO * WO
    acc = tl.zeros([BLOCK_COUT, BLOCK_CIN], dtype=ACC)
    start = pid_t * PIXELS_PER_PARTIAL
    end = tl.minimum(start + PIXELS_PER_PARTIAL, total)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
        dyt = tl.load(
            dy_ptr
            + (n * stride_dyn + oh * stride_dyh + ow * stride_dyw)[None, :]
            + offs_co[:, None] * stride_dyc,
            mask=mask_p[None, :] & mask_co[:, None],
            other=0.0,
        )  # [BLOCK_COUT, BLOCK_P]
        xt = tl.load(
            x_ptr
            + (n * stride_xn + ih * stride_xh + iw * stride_xw)[:, None]
            + offs_ci[None, :] * stride_xc,
            mask=ok[:, None] & mask_ci[None, :],
            other=0.0,
        )  # [BLOCK_P, BLOCK_CIN]
        if USE_DOT:
            acc += tl.dot(dyt, xt, input_precision="ieee").to(ACC)
        else:
            acc += tl.sum(dyt.to(ACC)[:, :, None] * xt.to(ACC)[None, :, :], axis=1)
    out = part_ptr + pid_t * COUT * CIN * 9 + offs_co[:, None] * CIN * 9 + offs_ci[None, :] * 9
    tl.store(out + tap, acc, mask=mask_co[:, None] & mask_ci[None, :])


@triton.jit
def conv_bwd_weight_grouped_kernel(
    dy_ptr,  # grad of output (N, COUT, HO, WO)
    x_ptr,  # input (N, CIN, H, W)
    part_ptr,  # partials (T, COUT, CIN_PG, KSIZE * KSIZE), contiguous, ACC dtype
    # sizes, outputs per group, and the output pixels each partial sums over
    N, H, W, COUT, HO, WO, COUT_PG, PIXELS_PER_PARTIAL,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    CIN_PG: tl.constexpr, KSIZE: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr,
    DILATION: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grouped KSIZE x KSIZE weight gradient (depthwise included), per-program partials.

    dy (N, COUT, HO, WO), x (N, CIN, H, W): any strides, one dtype; part
    (T, COUT, CIN_PG, KSIZE * KSIZE) contiguous in ``ACC``. Grid: (T, cdiv(COUT, BLOCK_C),
    KSIZE * KSIZE * CIN_PG).
    """
    # this program: one pixel range (a partial), one block of output channels, one tap
    # and one input channel of the group
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_z = tl.program_id(2)  # tap * CIN_PG + ci
    tap = pid_z // CIN_PG
    ci = pid_z % CIN_PG
    kh = tap // KSIZE
    kw = tap % KSIZE
    offs_co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_co = offs_co < COUT
    cin = (offs_co // COUT_PG) * CIN_PG + ci
    total = N * HO * WO
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    start = pid_t * PIXELS_PER_PARTIAL
    end = tl.minimum(start + PIXELS_PER_PARTIAL, total)
    # dw[co, ci, tap] += sum over the range's pixels of dy[co] x (x the tap reads)[ci]
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
        dyt = tl.load(
            dy_ptr
            + (n * stride_dyn + oh * stride_dyh + ow * stride_dyw)[:, None]
            + offs_co[None, :] * stride_dyc,
            mask=mask_p[:, None] & mask_co[None, :],
            other=0.0,
        )
        xt = tl.load(
            x_ptr
            + (n * stride_xn + ih * stride_xh + iw * stride_xw)[:, None]
            + cin[None, :] * stride_xc,
            mask=ok[:, None] & mask_co[None, :],
            other=0.0,
        )
        acc += tl.sum(dyt.to(ACC) * xt.to(ACC), axis=0)
    TAPS = KSIZE * KSIZE
    out = part_ptr + pid_t * COUT * CIN_PG * TAPS + offs_co * CIN_PG * TAPS + ci * TAPS + tap
    tl.store(out, acc, mask=mask_co)


@triton.jit
def bias_grad_kernel(
    dy_ptr,  # grad of output (N, C, HO, WO)
    part_ptr,  # partials (T, C), contiguous, ACC dtype
    N, C, HO, WO, PIXELS_PER_PARTIAL,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Bias gradient: per-channel sums of dy over (N, HO, WO), per-program partials.

    dy (N, C, HO, WO) any strides; part (T, C) contiguous in ``ACC``.
    Grid: (T = cdiv(N*HO*WO, PIXELS_PER_PARTIAL), cdiv(C, BLOCK_C)).
    """
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    total = N * HO * WO
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    start = pid_t * PIXELS_PER_PARTIAL
    end = tl.minimum(start + PIXELS_PER_PARTIAL, total)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        dyt = tl.load(
            dy_ptr
            + (n * stride_dyn + oh * stride_dyh + ow * stride_dyw)[:, None]
            + offs_c[None, :] * stride_dyc,
            mask=mask_p[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc += tl.sum(dyt.to(ACC), axis=0)
    tl.store(part_ptr + pid_t * C + offs_c, acc, mask=mask_c)
