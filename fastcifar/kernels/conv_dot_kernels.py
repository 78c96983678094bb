"""The ``tl.dot`` family's forward kernels (``fastcifar.kernels.conv``, ``conv_bn``,
``conv_pool``): the convolution (optional ReLU / BatchNorm-statistics epilogue), and the
convolution with a 2x2 max pool in its epilogue, as an implicit GEMM on ``tl.dot``
(pixels x reduced channels @ reduced channels x produced channels), for dense
convolutions and for groups of at least 8 channels (ResNeXt, RegNetX). A program's
channel block covers whole groups; the weight tile is block-diagonal (zero outside each
column's group), so one 16-wide K step holds two groups of 8 or one of 16. The previous
BatchNorm and activation run as a prologue (``PROLOGUE``: a chain's consumer,
``fastcifar.nn.chain``): the forward and the weight gradient apply it to each input tile
as they load it, the input gradient runs its backward as its epilogue (``_stencil``'s
``apply_prologue`` and ``prologue_backward``). Their input and weight gradients are
``conv_dot_bwd_kernels``; the elementwise family is ``conv_grouped_kernels``.

Private: the launchers in ``fastcifar.kernels.conv_launch`` (``_bwd``) call these. Every tensor is
addressed through its four strides (n, c, h, w), so NCHW, channels_last and stride-0
(expanded) gradients all work without copies. Accumulation is float32 (float64 for
float64 inputs); results are cast to the output's dtype on store.

Index conventions: ``P`` is the flattened (n, oh, ow) output pixel (or (n, ih, iw) input
pixel for the input gradient); ``STRIDE``, ``PADDING``, ``DILATION`` the convolution's;
``kh, kw`` the taps of the ``KSIZE`` x ``KSIZE`` window; ``CIN_PG``/``COUT_PG`` channels
per group (CIN and COUT when dense). Block names are ``tiles.Tiles``' fields: ``BLOCK_P``
pixels, ``BLOCK_N`` channels a dot kernel produces (its N), ``BLOCK_K`` channels it
reduces per step (its K). Gradients are ``dy``/``dx`` with strides
``stride_dy*``/``stride_dx*``. Weight gradients are deterministic: each program sums over
its own fixed range of pixels and writes a partial; the partials are summed afterwards in
a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcifar.kernels._pool import pool_update, store_positions
from fastcifar.kernels._stencil import (
    apply_prologue,
    load_tile,
    mac,
    pixel_coords,
    pixel_offset,
    program_tile,
    store_epilogue,
    tap_source,
    weight_index,
)


@triton.jit
def _conv_tile(
    x_ptr,
    w_ptr,
    pro_ptr,
    n,
    oh,
    ow,
    mask_p,
    offs_co,
    mask_co,
    ci_first,
    CIN,
    H,
    W,
    CIN_PG,
    COUT_PG,
    CI_SPAN,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wo,
    stride_wi,
    stride_wh,
    stride_ww,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # the [BLOCK_P, BLOCK_N] convolution (no bias) at output pixels (n, oh, ow) and output
    # channels offs_co, reducing the input channels ci_first .. ci_first + CI_SPAN of
    # their groups, BLOCK_K per step per tap, the prologue applied as each tile loads
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=ACC)
    for kh in tl.static_range(KSIZE):
        for kw in tl.static_range(KSIZE):
            ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
            x_off = pixel_offset(n, ih, iw, stride_xn, stride_xh, stride_xw)
            for ci0 in range(ci_first, ci_first + CI_SPAN, BLOCK_K):
                # x [BLOCK_P, BLOCK_K] @ w [BLOCK_K, BLOCK_N], zero outside each group
                offs_ci = ci0 + tl.arange(0, BLOCK_K)
                mask_ci = offs_ci < CIN
                xt = load_tile(x_ptr, x_off, offs_ci, stride_xc, ok, mask_ci)
                if PROLOGUE:  # normalised and activated in ACC, cast back for the tl.dot
                    xt = apply_prologue(xt, pro_ptr, offs_ci, ok, mask_ci, ACT, ACC)
                ci_local, w_mask = weight_index(
                    offs_ci, offs_co, mask_ci, mask_co, CIN_PG, COUT_PG, GROUPED
                )
                wt = tl.load(
                    w_ptr
                    + offs_co[None, :] * stride_wo
                    + ci_local * stride_wi
                    + kh * stride_wh
                    + kw * stride_ww,
                    mask=w_mask,
                    other=0.0,
                )
                acc = mac(acc, xt, wt, USE_DOT, ACC)
    return acc


# ------------------------------------------------------------------- tl.dot family


@triton.jit
def conv_fwd_dot_kernel(
    x_ptr,  # input (N, CIN, H, W)
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    b_ptr,  # bias (COUT,), or any pointer when HAS_BIAS is false
    pro_ptr,  # prologue (CIN, 3) center, scale, shift when PROLOGUE (x raw: act((x - center)
    #   * scale + shift) is what the taps read), else any pointer
    y_ptr,  # output (N, COUT, HO, WO)
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else any pointer
    # sizes; channels per group; input channels one output block reads (CIN when dense)
    N,
    CIN,
    H,
    W,
    COUT,
    HO,
    WO,
    CIN_PG,
    COUT_PG,
    CI_SPAN,
    # element strides (n, c, h, w) of x, w (out, in, h, w) and y: any layout
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wo,
    stride_wi,
    stride_wh,
    stride_ww,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    # the convolution, the epilogue and the tile, fixed at compile time
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    STATS: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    SPAN_ALIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Forward, y = conv2d(x, w, groups) + b, optional ReLU / BatchNorm-statistics epilogue;
    with PROLOGUE the previous BatchNorm and activation applied to each x tile as it is
    loaded, before the ``tl.dot`` (``_stencil.apply_prologue``: a tap outside the image
    reads as zero after them, not act(shift)).

    x (N, CIN, H, W), w (COUT, CIN_PG, KSIZE, KSIZE), y (N, COUT, HO, WO): any strides
    (NCHW or channels_last), one dtype (float32/16, bfloat16, float64); accumulation in
    ``ACC``. Grid: (cdiv(N*HO*WO, BLOCK_P), cdiv(COUT, BLOCK_N)); each program computes
    a BLOCK_P x BLOCK_N output tile, reducing BLOCK_K input channels of its groups per
    step per tap.
    """
    # this program's tile: BLOCK_P output pixels x BLOCK_N output channels
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_p, offs_co, mask_p, mask_co = program_tile(
        pid_p, pid_n, N * HO * WO, COUT, BLOCK_P, BLOCK_N
    )
    n, oh, ow = pixel_coords(offs_p, HO, WO)
    # the input channels of the groups these output channels belong to
    # (SPAN_ALIGN divides it: the compiler may then load 16 bytes at a time)
    ci_first = tl.multiple_of((pid_n * BLOCK_N // COUT_PG) * CIN_PG, SPAN_ALIGN)
    acc = _conv_tile(
        x_ptr,
        w_ptr,
        pro_ptr,
        n,
        oh,
        ow,
        mask_p,
        offs_co,
        mask_co,
        ci_first,
        CIN,
        H,
        W,
        CIN_PG,
        COUT_PG,
        CI_SPAN,
        stride_xn,
        stride_xc,
        stride_xh,
        stride_xw,
        stride_wo,
        stride_wi,
        stride_wh,
        stride_ww,
        KSIZE,
        STRIDE,
        PADDING,
        DILATION,
        PROLOGUE,
        ACT,
        GROUPED,
        USE_DOT,
        ACC,
        BLOCK_P,
        BLOCK_N,
        BLOCK_K,
    )
    # bias, then ReLU, the store and the BatchNorm statistics as asked
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(ACC)[None, :]
    store_epilogue(
        acc,
        y_ptr,
        stats_ptr,
        pid_p,
        n,
        oh,
        ow,
        offs_co,
        mask_p,
        mask_co,
        COUT,
        stride_yn,
        stride_yc,
        stride_yh,
        stride_yw,
        RELU,
        STATS,
        ACC,
    )


@triton.jit
def conv_pool_fwd_dot_kernel(
    x_ptr,  # input (N, CIN, H, W)
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    b_ptr,  # bias (COUT,), or any pointer when HAS_BIAS is false
    pro_ptr,  # prologue (CIN, 3) when PROLOGUE, as conv_fwd_dot_kernel's
    y_ptr,  # pooled output (N, COUT, HP, WP)
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) of the pooled output
    idx_ptr,  # (N * HP * WP, cdiv(COUT, 4)) uint8: each maximum's window position, packed
    # sizes: input, the convolution's output (HO, WO) and the pooled one (HO // 2, WO // 2)
    N,
    CIN,
    H,
    W,
    COUT,
    HO,
    WO,
    HP,
    WP,
    CIN_PG,
    COUT_PG,
    CI_SPAN,
    # element strides (n, c, h, w) of x, w (out, in, h, w) and the pooled y: any layout
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wo,
    stride_wi,
    stride_wh,
    stride_ww,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STATS: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    GROUPED: tl.constexpr,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    SPAN_ALIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Forward with the pool in the epilogue: y = max_pool2d(conv2d(x, w, groups) + b, 2),
    the pre-pool output never stored; the BatchNorm statistics of the pooled y and the
    packed window position of each maximum (``_pool``) in the same epilogue. PROLOGUE as
    ``conv_fwd_dot_kernel``'s.

    x (N, CIN, H, W), w (COUT, CIN_PG, KSIZE, KSIZE), y (N, COUT, HP, WP) with HP = HO //
    2, WP = WO // 2 (floor, as ``nn.MaxPool2d(2)``): any strides, one dtype; idx
    contiguous uint8. Grid: (cdiv(N*HP*WP, BLOCK_P), cdiv(COUT, BLOCK_N)); each program
    computes the four pre-pool tiles of its BLOCK_P pooled pixels one after the other
    (the convolution's FLOPs, once each) and keeps their maximum.
    """
    # this program's tile: BLOCK_P pooled pixels x BLOCK_N output channels
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_p, offs_co, mask_p, mask_co = program_tile(
        pid_p, pid_n, N * HP * WP, COUT, BLOCK_P, BLOCK_N
    )
    n, ph, pw = pixel_coords(offs_p, HP, WP)
    ci_first = tl.multiple_of((pid_n * BLOCK_N // COUT_PG) * CIN_PG, SPAN_ALIGN)
    bias = tl.zeros([BLOCK_N], dtype=ACC)
    if HAS_BIAS:  # added before the max, as the unfused convolution's output has it
        bias = tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(ACC)
    best = tl.full([BLOCK_P, BLOCK_N], float("-inf"), dtype=ACC)
    arg = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.int32)
    for q in range(4):  # window position: row q // 2, column q % 2
        acc = _conv_tile(
            x_ptr,
            w_ptr,
            pro_ptr,
            n,
            2 * ph + q // 2,
            2 * pw + q % 2,
            mask_p,
            offs_co,
            mask_co,
            ci_first,
            CIN,
            H,
            W,
            CIN_PG,
            COUT_PG,
            CI_SPAN,
            stride_xn,
            stride_xc,
            stride_xh,
            stride_xw,
            stride_wo,
            stride_wi,
            stride_wh,
            stride_ww,
            KSIZE,
            STRIDE,
            PADDING,
            DILATION,
            PROLOGUE,
            ACT,
            GROUPED,
            USE_DOT,
            ACC,
            BLOCK_P,
            BLOCK_N,
            BLOCK_K,
        )
        best, arg = pool_update(best, arg, acc + bias[None, :], q, y_ptr.dtype.element_ty)
    # the pooled store and its statistics, then the positions
    store_epilogue(
        best,
        y_ptr,
        stats_ptr,
        pid_p,
        n,
        ph,
        pw,
        offs_co,
        mask_p,
        mask_co,
        COUT,
        stride_yn,
        stride_yc,
        stride_yh,
        stride_yw,
        False,
        STATS,
        ACC,
    )
    store_positions(idx_ptr, arg, offs_p, mask_p, pid_n, COUT, BLOCK_P, BLOCK_N)
