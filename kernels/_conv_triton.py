"""Triton kernels for 3x3 convolutions: dense (dilation 1-3) and small-group/depthwise.

Private: the launchers in ``fastcifar.kernels.conv`` call these. Every tensor is
addressed through its four strides (n, c, h, w), so NCHW, channels_last and
stride-0 (expanded) gradients all work without copies. Accumulation is float32
(float64 for float64 inputs); results are cast to the output's dtype on store.

Index conventions: ``P`` is the flattened (n, oh, ow) output pixel (or (n, ih, iw)
input pixel for the input gradient); ``S``, ``PAD``, ``D`` are stride, padding and
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
def _tap_source(oh, ow, mask_p, kh, kw, H, W, S: tl.constexpr, PAD: tl.constexpr,
                D: tl.constexpr):  # fmt: skip
    # the input pixel tap (kh, kw) of output pixel (oh, ow) reads, and whether it lies inside
    ih = oh * S - PAD + kh * D
    iw = ow * S - PAD + kw * D
    return ih, iw, mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def _tap_target(ih, iw, mask_p, kh, kw, HO, WO, S: tl.constexpr, PAD: tl.constexpr,
                D: tl.constexpr):  # fmt: skip
    # the output pixel whose tap (kh, kw) reads input pixel (ih, iw), and whether one exists
    th = ih + PAD - kh * D
    tw = iw + PAD - kw * D
    ths = tl.where(th >= 0, th, 0)
    tws = tl.where(tw >= 0, tw, 0)
    oh = ths // S
    ow = tws // S
    ok = mask_p & (th >= 0) & (tw >= 0) & (ths % S == 0) & (tws % S == 0)
    return oh, ow, ok & (oh < HO) & (ow < WO)


@triton.jit
def _epilogue(
    acc, y_ptr, stats_ptr, pid_p, n, oh, ow, offs_co, mask_p, mask_co, COUT,
    syn, syc, syh, syw, RELU: tl.constexpr, STATS: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    # optional ReLU, the store, and optional BatchNorm statistics of what was stored:
    # per program and channel the sum and the sum of squared deviations from the tile's
    # own mean (combined on the host with Chan's formula: no cancellation, deterministic)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = acc.to(y_ptr.dtype.element_ty)
    y_off = n * syn + oh * syh + ow * syw
    valid = mask_p[:, None] & mask_co[None, :]
    tl.store(y_ptr + y_off[:, None] + offs_co[None, :] * syc, out, mask=valid)
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
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    syn, syc, syh, syw,
    S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BP: tl.constexpr, BCO: tl.constexpr, BCI: tl.constexpr,
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else a dummy
    RELU: tl.constexpr, STATS: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_co = pid_c * BCO + tl.arange(0, BCO)
    mask_p = offs_p < N * HO * WO
    mask_co = offs_co < COUT
    n, oh, ow = _pixel_coords(offs_p, HO, WO)
    acc = tl.zeros([BP, BCO], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, S, PAD, D)
            x_base = n * sxn + ih * sxh + iw * sxw
            for ci0 in range(0, CIN, BCI):
                offs_ci = ci0 + tl.arange(0, BCI)
                mask_ci = offs_ci < CIN
                xt = tl.load(
                    x_ptr + x_base[:, None] + offs_ci[None, :] * sxc,
                    mask=ok[:, None] & mask_ci[None, :],
                    other=0.0,
                )
                wt = tl.load(
                    w_ptr + offs_co[None, :] * swo + offs_ci[:, None] * swi + kh * swh + kw * sww,
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
              syn, syc, syh, syw, RELU, STATS, ACC)  # fmt: skip


@triton.jit
def conv_fwd_grouped_kernel(
    x_ptr,  # input (N, CIN, H, W)
    w_ptr,  # weight (COUT, CIN_PG, 3, 3)
    b_ptr,  # bias (COUT,) or dummy
    y_ptr,  # output (N, COUT, HO, WO)
    N, H, W, COUT, HO, WO, COUT_PG,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    syn, syc, syh, syw,
    CIN_PG: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else a dummy
    RELU: tl.constexpr, STATS: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_co = pid_c * BC + tl.arange(0, BC)
    mask_p = offs_p < N * HO * WO
    mask_co = offs_co < COUT
    n, oh, ow = _pixel_coords(offs_p, HO, WO)
    group = offs_co // COUT_PG
    acc = tl.zeros([BP, BC], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, S, PAD, D)
            x_base = n * sxn + ih * sxh + iw * sxw
            for ci in tl.static_range(CIN_PG):
                cin = group * CIN_PG + ci
                xt = tl.load(
                    x_ptr + x_base[:, None] + cin[None, :] * sxc,
                    mask=ok[:, None] & mask_co[None, :],
                    other=0.0,
                )
                wv = tl.load(
                    w_ptr + offs_co * swo + ci * swi + kh * swh + kw * sww, mask=mask_co, other=0.0
                )
                acc += xt.to(ACC) * wv.to(ACC)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(ACC)[None, :]
    _epilogue(acc, y_ptr, stats_ptr, pid_p, n, oh, ow, offs_co, mask_p, mask_co, COUT,
              syn, syc, syh, syw, RELU, STATS, ACC)  # fmt: skip


@triton.jit
def conv_bwd_input_dense_kernel(
    dy_ptr,  # grad of output (N, COUT, HO, WO), any strides (stride 0 too)
    w_ptr,  # weight (COUT, CIN, 3, 3)
    dx_ptr,  # grad of input (N, CIN, H, W)
    N, CIN, H, W, COUT, HO, WO,
    sdn, sdc, sdh, sdw,
    swo, swi, swh, sww,
    sxn, sxc, sxh, sxw,
    S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BP: tl.constexpr, BCI: tl.constexpr, BCO: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_ci = pid_c * BCI + tl.arange(0, BCI)
    mask_p = offs_p < N * H * W
    mask_ci = offs_ci < CIN
    n, ih, iw = _pixel_coords(offs_p, H, W)
    acc = tl.zeros([BP, BCI], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = _tap_target(ih, iw, mask_p, kh, kw, HO, WO, S, PAD, D)
            d_base = n * sdn + oh * sdh + ow * sdw
            for co0 in range(0, COUT, BCO):
                offs_co = co0 + tl.arange(0, BCO)
                mask_co = offs_co < COUT
                dyt = tl.load(
                    dy_ptr + d_base[:, None] + offs_co[None, :] * sdc,
                    mask=ok[:, None] & mask_co[None, :],
                    other=0.0,
                )
                wt = tl.load(
                    w_ptr + offs_co[:, None] * swo + offs_ci[None, :] * swi + kh * swh + kw * sww,
                    mask=mask_co[:, None] & mask_ci[None, :],
                    other=0.0,
                )
                if USE_DOT:
                    acc += tl.dot(dyt, wt, input_precision="ieee").to(ACC)
                else:
                    acc += tl.sum(dyt.to(ACC)[:, :, None] * wt.to(ACC)[None, :, :], axis=1)
    x_off = n * sxn + ih * sxh + iw * sxw
    tl.store(
        dx_ptr + x_off[:, None] + offs_ci[None, :] * sxc,
        acc.to(dx_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_ci[None, :],
    )


@triton.jit
def conv_bwd_input_grouped_kernel(
    dy_ptr,  # grad of output (N, COUT, HO, WO)
    w_ptr,  # weight (COUT, CIN_PG, 3, 3)
    dx_ptr,  # grad of input (N, CIN, H, W)
    N, CIN, H, W, HO, WO, COUT_PG,
    sdn, sdc, sdh, sdw,
    swo, swi, swh, sww,
    sxn, sxc, sxh, sxw,
    CIN_PG: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr,
    ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_ci = pid_c * BC + tl.arange(0, BC)
    mask_p = offs_p < N * H * W
    mask_ci = offs_ci < CIN
    n, ih, iw = _pixel_coords(offs_p, H, W)
    group = offs_ci // CIN_PG
    ci_local = offs_ci % CIN_PG
    acc = tl.zeros([BP, BC], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = _tap_target(ih, iw, mask_p, kh, kw, HO, WO, S, PAD, D)
            d_base = n * sdn + oh * sdh + ow * sdw
            for j in range(COUT_PG):
                co = group * COUT_PG + j
                dyt = tl.load(
                    dy_ptr + d_base[:, None] + co[None, :] * sdc,
                    mask=ok[:, None] & mask_ci[None, :],
                    other=0.0,
                )
                wv = tl.load(
                    w_ptr + co * swo + ci_local * swi + kh * swh + kw * sww, mask=mask_ci, other=0.0
                )
                acc += dyt.to(ACC) * wv.to(ACC)[None, :]
    x_off = n * sxn + ih * sxh + iw * sxw
    tl.store(
        dx_ptr + x_off[:, None] + offs_ci[None, :] * sxc,
        acc.to(dx_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_ci[None, :],
    )


@triton.jit
def conv_bwd_weight_dense_kernel(
    dy_ptr,  # grad of output (N, COUT, HO, WO)
    x_ptr,  # input (N, CIN, H, W)
    part_ptr,  # partials (T, COUT, CIN, 9), contiguous, ACC dtype
    N, CIN, H, W, COUT, HO, WO, PIX_PER_PROG,
    sdn, sdc, sdh, sdw,
    sxn, sxc, sxh, sxw,
    S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BP: tl.constexpr, BCO: tl.constexpr, BCI: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)  # pixel range
    pid_co = tl.program_id(1)
    pid_z = tl.program_id(2)  # tap * ci_blocks + ci block
    n_ci_blocks = tl.cdiv(CIN, BCI)
    tap = pid_z // n_ci_blocks
    kh = tap // 3
    kw = tap % 3
    offs_co = pid_co * BCO + tl.arange(0, BCO)
    offs_ci = (pid_z % n_ci_blocks) * BCI + tl.arange(0, BCI)
    mask_co = offs_co < COUT
    mask_ci = offs_ci < CIN
    total = N * HO * WO
    acc = tl.zeros([BCO, BCI], dtype=ACC)
    start = pid_t * PIX_PER_PROG
    end = tl.minimum(start + PIX_PER_PROG, total)
    for p0 in range(start, end, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask_p = offs_p < total
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
        ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, S, PAD, D)
        dyt = tl.load(
            dy_ptr + (n * sdn + oh * sdh + ow * sdw)[None, :] + offs_co[:, None] * sdc,
            mask=mask_p[None, :] & mask_co[:, None],
            other=0.0,
        )  # [BCO, BP]
        xt = tl.load(
            x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + offs_ci[None, :] * sxc,
            mask=ok[:, None] & mask_ci[None, :],
            other=0.0,
        )  # [BP, BCI]
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
    N, H, W, COUT, HO, WO, COUT_PG, PIX_PER_PROG,
    sdn, sdc, sdh, sdw,
    sxn, sxc, sxh, sxw,
    CIN_PG: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr,
    ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_z = tl.program_id(2)  # tap * CIN_PG + ci
    tap = pid_z // CIN_PG
    ci = pid_z % CIN_PG
    kh = tap // 3
    kw = tap % 3
    offs_co = pid_c * BC + tl.arange(0, BC)
    mask_co = offs_co < COUT
    cin = (offs_co // COUT_PG) * CIN_PG + ci
    total = N * HO * WO
    acc = tl.zeros([BC], dtype=ACC)
    start = pid_t * PIX_PER_PROG
    end = tl.minimum(start + PIX_PER_PROG, total)
    for p0 in range(start, end, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask_p = offs_p < total
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
        ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, S, PAD, D)
        dyt = tl.load(
            dy_ptr + (n * sdn + oh * sdh + ow * sdw)[:, None] + offs_co[None, :] * sdc,
            mask=mask_p[:, None] & mask_co[None, :],
            other=0.0,
        )
        xt = tl.load(
            x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + cin[None, :] * sxc,
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
    N, C, HO, WO, PIX_PER_PROG,
    sdn, sdc, sdh, sdw,
    ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    total = N * HO * WO
    acc = tl.zeros([BC], dtype=ACC)
    start = pid_t * PIX_PER_PROG
    end = tl.minimum(start + PIX_PER_PROG, total)
    for p0 in range(start, end, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask_p = offs_p < total
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
        dyt = tl.load(
            dy_ptr + (n * sdn + oh * sdh + ow * sdw)[:, None] + offs_c[None, :] * sdc,
            mask=mask_p[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc += tl.sum(dyt.to(ACC), axis=0)
    tl.store(part_ptr + pid_t * C + offs_c, acc, mask=mask_c)


# ----------------------------------------------------------------------------------------
# Fused depthwise-separable convolution: 3x3 depthwise (stride S, padding PAD, dilation D),
# optional ReLU, then 1x1 pointwise. The depthwise output ("mid", (N, C, HO, WO)) lives
# only in registers: the forward recomputes it per tile, the backward recomputes it (and
# its gradient) where needed, so it is never written to memory.


@triton.jit
def _dw_tile(
    x_ptr, wd_ptr, n, oh, ow, mask_p, offs_c, mask_c, H, W,
    sxn, sxc, sxh, sxw, swc, swh, sww,
    S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr, RELU: tl.constexpr,
    ACC: tl.constexpr, BP: tl.constexpr, BCM: tl.constexpr,
):  # fmt: skip
    # depthwise 3x3 at output pixels (n, oh, ow) [BP] for channels offs_c [BCM] -> [BP, BCM]
    mid = tl.zeros([BP, BCM], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, S, PAD, D)
            xt = tl.load(
                x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + offs_c[None, :] * sxc,
                mask=ok[:, None] & mask_c[None, :],
                other=0.0,
            )
            wv = tl.load(wd_ptr + offs_c * swc + kh * swh + kw * sww, mask=mask_c, other=0.0)
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
    sxn, sxc, sxh, sxw,
    swc, swh, sww,
    spo, spc,
    syn, syc, syh, syw,
    S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BP: tl.constexpr, BCM: tl.constexpr, BCO: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_o = pid_o * BCO + tl.arange(0, BCO)
    mask_p = offs_p < N * HO * WO
    mask_o = offs_o < COUT
    n, oh, ow = _pixel_coords(offs_p, HO, WO)
    acc = tl.zeros([BP, BCO], dtype=ACC)
    for c0 in range(0, C, BCM):
        offs_c = c0 + tl.arange(0, BCM)
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
            sxn,
            sxc,
            sxh,
            sxw,
            swc,
            swh,
            sww,
            S,
            PAD,
            D,
            RELU,
            ACC,
            BP,
            BCM,
        )
        wp = tl.load(
            wp_ptr + offs_c[:, None] * spc + offs_o[None, :] * spo,
            mask=mask_c[:, None] & mask_o[None, :],
            other=0.0,
        )  # [BCM, BCO]
        if USE_DOT:
            acc += tl.dot(mid.to(wp.dtype), wp, input_precision="ieee").to(ACC)
        else:
            acc += tl.sum(mid[:, :, None] * wp.to(ACC)[None, :, :], axis=1)
    y_off = n * syn + oh * syh + ow * syw
    tl.store(
        y_ptr + y_off[:, None] + offs_o[None, :] * syc,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_o[None, :],
    )


@triton.jit
def _grad_mid_tile(
    dy_ptr, wp_ptr, n, oh, ow, mask_p, offs_c, mask_c, COUT,
    sdn, sdc, sdh, sdw, spo, spc,
    USE_DOT: tl.constexpr, ACC: tl.constexpr, BP: tl.constexpr, BCM: tl.constexpr,
    BCO: tl.constexpr,
):  # fmt: skip
    # gradient of mid at pixels (n, oh, ow): dy [BP, COUT] @ wp^T [COUT, BCM] -> [BP, BCM]
    g = tl.zeros([BP, BCM], dtype=ACC)
    d_off = n * sdn + oh * sdh + ow * sdw
    for o0 in range(0, COUT, BCO):
        offs_o = o0 + tl.arange(0, BCO)
        mask_o = offs_o < COUT
        dyt = tl.load(
            dy_ptr + d_off[:, None] + offs_o[None, :] * sdc,
            mask=mask_p[:, None] & mask_o[None, :],
            other=0.0,
        )
        wpt = tl.load(
            wp_ptr + offs_o[:, None] * spo + offs_c[None, :] * spc,
            mask=mask_o[:, None] & mask_c[None, :],
            other=0.0,
        )  # [BCO, BCM]
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
    N, C, H, W, COUT, HO, WO, PIX_PER_PROG,
    sxn, sxc, sxh, sxw,
    swc, swh, sww,
    spo, spc,
    sdn, sdc, sdh, sdw,
    S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BP: tl.constexpr, BCM: tl.constexpr, BCO: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BCM + tl.arange(0, BCM)
    mask_c = offs_c < C
    total = N * HO * WO
    start = pid_t * PIX_PER_PROG
    end = tl.minimum(start + PIX_PER_PROG, total)
    gwd = tl.zeros([16, BCM], dtype=ACC)  # 9 taps, padded to a power of two
    taps = tl.arange(0, 16)
    for p0 in range(start, end, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask_p = offs_p < total
        n, oh, ow = _pixel_coords(offs_p, HO, WO)
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
            sxn,
            sxc,
            sxh,
            sxw,
            swc,
            swh,
            sww,
            S,
            PAD,
            D,
            RELU,
            ACC,
            BP,
            BCM,
        )
        g = _grad_mid_tile(dy_ptr, wp_ptr, n, oh, ow, mask_p, offs_c, mask_c, COUT,
                           sdn, sdc, sdh, sdw, spo, spc, USE_DOT, ACC, BP, BCM, BCO)  # fmt: skip
        if RELU:
            g = tl.where(mid > 0, g, 0.0)
        # pointwise weight: mid^T [BCM, BP] @ dy [BP, BCO], accumulated into this tile's partial
        d_off = n * sdn + oh * sdh + ow * sdw
        for o0 in range(0, COUT, BCO):
            offs_o = o0 + tl.arange(0, BCO)
            mask_o = offs_o < COUT
            dyt = tl.load(
                dy_ptr + d_off[:, None] + offs_o[None, :] * sdc,
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
                ih, iw, ok = _tap_source(oh, ow, mask_p, kh, kw, H, W, S, PAD, D)
                xt = tl.load(
                    x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + offs_c[None, :] * sxc,
                    mask=ok[:, None] & mask_c[None, :],
                    other=0.0,
                )
                s = tl.sum(g * xt.to(ACC), axis=0)  # [BCM]
                gwd += tl.where((taps == kh * 3 + kw)[:, None], s[None, :], 0.0)
    out = pd_ptr + pid_t * C * 9 + offs_c[None, :] * 9 + taps[:, None]
    tl.store(out, gwd, mask=(taps < 9)[:, None] & mask_c[None, :])


@triton.jit
def dwsep_bwd_input_kernel(
    x_ptr, wd_ptr, wp_ptr, dy_ptr,
    dx_ptr,  # grad of input (N, C, H, W)
    N, C, H, W, COUT, HO, WO,
    sxn, sxc, sxh, sxw,
    swc, swh, sww,
    spo, spc,
    sdn, sdc, sdh, sdw,
    sgn, sgc, sgh, sgw,
    S: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr, ACC: tl.constexpr,
    BP: tl.constexpr, BCM: tl.constexpr, BCO: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_c = pid_c * BCM + tl.arange(0, BCM)
    mask_p = offs_p < N * H * W
    mask_c = offs_c < C
    n, ih, iw = _pixel_coords(offs_p, H, W)
    acc = tl.zeros([BP, BCM], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            oh, ow, ok = _tap_target(ih, iw, mask_p, kh, kw, HO, WO, S, PAD, D)
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
                sdn,
                sdc,
                sdh,
                sdw,
                spo,
                spc,
                USE_DOT,
                ACC,
                BP,
                BCM,
                BCO,
            )
            if RELU:
                mid = _dw_tile(x_ptr, wd_ptr, n, oh, ow, ok, offs_c, mask_c, H, W,
                               sxn, sxc, sxh, sxw, swc, swh, sww, S, PAD, D, RELU, ACC, BP,
                               BCM)  # fmt: skip
                g = tl.where(mid > 0, g, 0.0)
            wv = tl.load(wd_ptr + offs_c * swc + kh * swh + kw * sww, mask=mask_c, other=0.0)
            acc += g * wv.to(ACC)[None, :]
    g_off = n * sgn + ih * sgh + iw * sgw
    tl.store(
        dx_ptr + g_off[:, None] + offs_c[None, :] * sgc,
        acc.to(dx_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_c[None, :],
    )
