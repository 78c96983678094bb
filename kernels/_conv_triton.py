"""Triton kernels for 3x3 convolutions: dense (dilation 1-3) and small-group/depthwise.

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


@triton.jit
def _pixel_coords(offs_p, H, W):
    # flattened pixel index over (N, H, W) -> (n, row, col)
    n = offs_p // (H * W)
    rem = offs_p % (H * W)
    return n, rem // W, rem % W


@triton.jit
def _tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE: tl.constexpr, PADDING: tl.constexpr,
                DILATION: tl.constexpr):  # fmt: skip
    # the input pixel tap (kh, kw) of output pixel (oh, ow) reads, and whether it lies inside
    ih = oh * STRIDE - PADDING + kh * DILATION
    iw = ow * STRIDE - PADDING + kw * DILATION
    return ih, iw, mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def _tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE: tl.constexpr, PADDING: tl.constexpr,
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
    n, oh, ow = _pixel_coords(offs_p, HO, WO)
    acc = tl.zeros([BLOCK_P, BLOCK_COUT], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
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
    w_ptr,  # weight (COUT, CIN_PG, 3, 3)
    b_ptr,  # bias (COUT,) or dummy
    y_ptr,  # output (N, COUT, HO, WO)
    N, H, W, COUT, HO, WO, COUT_PG,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_yn, stride_yc, stride_yh, stride_yw,
    CIN_PG: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else a dummy
    RELU: tl.constexpr, STATS: tl.constexpr,
):  # fmt: skip
    """Grouped 3x3 forward (depthwise when CIN_PG == COUT_PG == 1), elementwise math.

    x (N, COUT/COUT_PG*CIN_PG, H, W), w (COUT, CIN_PG, 3, 3), y (N, COUT, HO, WO): any
    strides, one dtype; accumulation in ``ACC``. Grid: (cdiv(N*HO*WO, BLOCK_P),
    cdiv(COUT, BLOCK_C)); epilogue as the dense kernel.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N * HO * WO
    mask_co = offs_co < COUT
    n, oh, ow = _pixel_coords(offs_p, HO, WO)
    group = offs_co // COUT_PG
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
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
    n, ih, iw = _pixel_coords(offs_p, H, W)
    acc = tl.zeros([BLOCK_P, BLOCK_CIN], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = _tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
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
    w_ptr,  # weight (COUT, CIN_PG, 3, 3)
    dx_ptr,  # grad of input (N, CIN, H, W)
    N, CIN, H, W, HO, WO, COUT_PG,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_xn, stride_xc, stride_xh, stride_xw,
    CIN_PG: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grouped 3x3 input gradient (depthwise included), elementwise math.

    dy (N, COUT, HO, WO), w (COUT, CIN_PG, 3, 3), dx (N, CIN, H, W): any strides, one
    dtype. Grid: (cdiv(N*H*W, BLOCK_P), cdiv(CIN, BLOCK_C)).
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < N * H * W
    mask_ci = offs_ci < CIN
    n, ih, iw = _pixel_coords(offs_p, H, W)
    group = offs_ci // CIN_PG
    ci_local = offs_ci % CIN_PG
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = _tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
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
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
        ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
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
    part_ptr,  # partials (T, COUT, CIN_PG, 9), contiguous, ACC dtype
    N, H, W, COUT, HO, WO, COUT_PG, PIXELS_PER_PARTIAL,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    CIN_PG: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr, DILATION: tl.constexpr,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grouped 3x3 weight gradient (depthwise included), per-program partials.

    dy (N, COUT, HO, WO), x (N, CIN, H, W): any strides, one dtype; part
    (T, COUT, CIN_PG, 9) contiguous in ``ACC``. Grid: (T, cdiv(COUT, BLOCK_C), 9 * CIN_PG).
    """
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_z = tl.program_id(2)  # tap * CIN_PG + ci
    tap = pid_z // CIN_PG
    ci = pid_z % CIN_PG
    kh = tap // 3
    kw = tap % 3
    offs_co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_co = offs_co < COUT
    cin = (offs_co // COUT_PG) * CIN_PG + ci
    total = N * HO * WO
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    start = pid_t * PIXELS_PER_PARTIAL
    end = tl.minimum(start + PIXELS_PER_PARTIAL, total)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
        ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
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
    out = part_ptr + pid_t * COUT * CIN_PG * 9 + offs_co * CIN_PG * 9 + ci * 9 + tap
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
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
        dyt = tl.load(
            dy_ptr
            + (n * stride_dyn + oh * stride_dyh + ow * stride_dyw)[:, None]
            + offs_c[None, :] * stride_dyc,
            mask=mask_p[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc += tl.sum(dyt.to(ACC), axis=0)
    tl.store(part_ptr + pid_t * C + offs_c, acc, mask=mask_c)


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
            ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
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
    n, oh, ow = _pixel_coords(offs_p, HO, WO)
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
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
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
                ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
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
    n, ih, iw = _pixel_coords(offs_p, H, W)
    acc = tl.zeros([BLOCK_P, BLOCK_CMID], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = _tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
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
