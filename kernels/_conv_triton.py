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
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_co = pid_c * BCO + tl.arange(0, BCO)
    mask_p = offs_p < N * HO * WO
    mask_co = offs_co < COUT
    n = offs_p // (HO * WO)
    rem = offs_p % (HO * WO)
    oh = rem // WO
    ow = rem % WO
    acc = tl.zeros([BP, BCO], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih = oh * S - PAD + kh * D
            iw = ow * S - PAD + kw * D
            ok = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
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
    y_off = n * syn + oh * syh + ow * syw
    tl.store(
        y_ptr + y_off[:, None] + offs_co[None, :] * syc,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_co[None, :],
    )


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
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_co = pid_c * BC + tl.arange(0, BC)
    mask_p = offs_p < N * HO * WO
    mask_co = offs_co < COUT
    n = offs_p // (HO * WO)
    rem = offs_p % (HO * WO)
    oh = rem // WO
    ow = rem % WO
    group = offs_co // COUT_PG
    acc = tl.zeros([BP, BC], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih = oh * S - PAD + kh * D
            iw = ow * S - PAD + kw * D
            ok = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
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
    y_off = n * syn + oh * syh + ow * syw
    tl.store(
        y_ptr + y_off[:, None] + offs_co[None, :] * syc,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_co[None, :],
    )


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
    n = offs_p // (H * W)
    rem = offs_p % (H * W)
    ih = rem // W
    iw = rem % W
    acc = tl.zeros([BP, BCI], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            th = ih + PAD - kh * D
            tw = iw + PAD - kw * D
            ths = tl.where(th >= 0, th, 0)
            tws = tl.where(tw >= 0, tw, 0)
            oh = ths // S
            ow = tws // S
            ok = mask_p & (th >= 0) & (tw >= 0) & (ths % S == 0) & (tws % S == 0)
            ok = ok & (oh < HO) & (ow < WO)
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
    n = offs_p // (H * W)
    rem = offs_p % (H * W)
    ih = rem // W
    iw = rem % W
    group = offs_ci // CIN_PG
    ci_local = offs_ci % CIN_PG
    acc = tl.zeros([BP, BC], dtype=ACC)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            th = ih + PAD - kh * D
            tw = iw + PAD - kw * D
            ths = tl.where(th >= 0, th, 0)
            tws = tl.where(tw >= 0, tw, 0)
            oh = ths // S
            ow = tws // S
            ok = mask_p & (th >= 0) & (tw >= 0) & (ths % S == 0) & (tws % S == 0)
            ok = ok & (oh < HO) & (ow < WO)
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
        n = offs_p // (HO * WO)
        rem = offs_p % (HO * WO)
        oh = rem // WO
        ow = rem % WO
        ih = oh * S - PAD + kh * D
        iw = ow * S - PAD + kw * D
        ok = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
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
        n = offs_p // (HO * WO)
        rem = offs_p % (HO * WO)
        oh = rem // WO
        ow = rem % WO
        ih = oh * S - PAD + kh * D
        iw = ow * S - PAD + kw * D
        ok = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
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
        n = offs_p // (HO * WO)
        rem = offs_p % (HO * WO)
        oh = rem // WO
        ow = rem % WO
        dyt = tl.load(
            dy_ptr + (n * sdn + oh * sdh + ow * sdw)[:, None] + offs_c[None, :] * sdc,
            mask=mask_p[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc += tl.sum(dyt.to(ACC), axis=0)
    tl.store(part_ptr + pid_t * C + offs_c, acc, mask=mask_c)
