"""The ``tl.dot`` family of ``fastcifar.kernels.conv`` (and ``conv_bn``): forward
(optional ReLU / BatchNorm-statistics epilogue), input gradient and weight gradient as an
implicit GEMM on ``tl.dot`` (pixels x reduced channels @ reduced channels x produced
channels), for dense convolutions and for groups of at least 8 channels (ResNeXt,
RegNetX). A program's channel block covers whole groups; the weight tile is
block-diagonal (zero outside each column's group), so one 16-wide K step holds two groups
of 8 or one of 16. The previous BatchNorm and activation run as a prologue
(``PROLOGUE``: a chain's consumer, ``fastcifar.nn.chain``): the forward and the weight
gradient apply it to each input tile as they load it, the input gradient runs its
backward as its epilogue (``_stencil``'s ``apply_prologue`` and ``prologue_backward``).
The elementwise family is ``conv_grouped_kernels``.

Private: the launchers in ``fastcifar.kernels.conv_launch`` call these. Every tensor is
addressed through its four strides (n, c, h, w), so NCHW, channels_last and stride-0
(expanded) gradients all work without copies. Accumulation is float32 (float64 for
float64 inputs); results are cast to the output's dtype on store.

Index conventions: ``P`` is the flattened (n, oh, ow) output pixel (or (n, ih, iw) input
pixel for the input gradient); ``STRIDE``, ``PADDING``, ``DILATION`` the convolution's;
``kh, kw`` the taps of the ``KSIZE`` x ``KSIZE`` window; ``CIN_PG``/``COUT_PG`` channels
per group (CIN and COUT when dense). Block names are ``launch.Tiles``' fields: ``BLOCK_P``
pixels, ``BLOCK_N`` channels a dot kernel produces (its N), ``BLOCK_K`` channels it
reduces per step (its K). Gradients are ``dy``/``dx`` with strides
``stride_dy*``/``stride_dx*``. Weight gradients are deterministic: each program sums over
its own fixed range of pixels and writes a partial; the partials are summed afterwards in
a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcifar.kernels._stencil import (
    apply_prologue,
    load_tile,
    mac,
    partial_range,
    pixel_coords,
    pixel_offset,
    program_tile,
    prologue_backward,
    store_epilogue,
    store_tile,
    tap_source,
    tap_target,
)


@triton.jit
def _weight_index(offs_ci, offs_co, mask_ci, mask_co, CIN_PG, COUT_PG, GROUPED: tl.constexpr):
    # for a weight tile (input channels offs_ci x output channels offs_co): the index along
    # the weight's input-channel axis and where to load it. Grouped, an input channel's
    # index is its place inside the output channel's group, and outside that group the
    # tile stays zero (block-diagonal); dense needs neither (fewer registers: the dense
    # forward spilled 72 bytes on sm_75 with the group arithmetic in)
    mask = mask_ci[:, None] & mask_co[None, :]
    if GROUPED:
        ci_local = offs_ci[:, None] - (offs_co[None, :] // COUT_PG) * CIN_PG
        mask = mask & (ci_local >= 0) & (ci_local < CIN_PG)
    else:
        ci_local = offs_ci[:, None]
    return ci_local, mask


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
                ci_local, w_mask = _weight_index(
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
def conv_bwd_input_dot_kernel(
    dy_ptr,  # output gradient (N, COUT, HO, WO), any strides (stride 0 too)
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    x_ptr,  # raw input (N, CIN, H, W) when PROLOGUE, else any pointer
    pro_ptr,  # prologue (CIN, 3) center, scale, shift when PROLOGUE
    dx_ptr,  # input gradient (N, CIN, H, W): of the raw input when PROLOGUE (direct part)
    red_ptr,  # (pixel programs, CIN, 2) partial (sum dz, sum dz * x) when PROLOGUE
    # sizes; channels per group; output channels one input block feeds (COUT when dense)
    N,
    CIN,
    H,
    W,
    COUT,
    HO,
    WO,
    CIN_PG,
    COUT_PG,
    CO_SPAN,
    # element strides (n, c, h, w) of dy, w (out, in, h, w), x and dx
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_wo,
    stride_wi,
    stride_wh,
    stride_ww,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_dxn,
    stride_dxc,
    stride_dxh,
    stride_dxw,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
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
    """Input gradient, dx = conv_transpose2d(dy, w, groups); with PROLOGUE the prologue's
    backward as the epilogue (``_stencil.prologue_backward``: dz from the raw x, the raw
    input's direct gradient dz * scale stored, the per-channel partial sums in ``red``).

    dy (N, COUT, HO, WO), w (COUT, CIN_PG, KSIZE, KSIZE), dx (N, CIN, H, W): any strides,
    one dtype. Grid: (cdiv(N*H*W, BLOCK_P), cdiv(CIN, BLOCK_N)); each input pixel gathers
    the output pixels whose taps read it, BLOCK_K output channels of its groups per step.
    """
    # this program's tile: BLOCK_P input pixels x BLOCK_N input channels
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_p, offs_ci, mask_p, mask_ci = program_tile(pid_p, pid_n, N * H * W, CIN, BLOCK_P, BLOCK_N)
    n, ih, iw = pixel_coords(offs_p, H, W)
    # the output channels of the groups these input channels feed
    co_first = tl.multiple_of((pid_n * BLOCK_N // CIN_PG) * COUT_PG, SPAN_ALIGN)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=ACC)
    for kh in tl.static_range(KSIZE):
        for kw in tl.static_range(KSIZE):
            oh, ow, ok = tap_target(ih, iw, mask_p, kh, kw, HO, WO, STRIDE, PADDING, DILATION)
            dy_off = pixel_offset(n, oh, ow, stride_dyn, stride_dyh, stride_dyw)
            for co0 in range(co_first, co_first + CO_SPAN, BLOCK_K):
                # dy [BLOCK_P, BLOCK_K] @ w [BLOCK_K, BLOCK_N], zero outside each group
                offs_co = co0 + tl.arange(0, BLOCK_K)
                mask_co = offs_co < COUT
                dyt = load_tile(dy_ptr, dy_off, offs_co, stride_dyc, ok, mask_co)
                ci_local, w_mask = _weight_index(
                    offs_ci, offs_co, mask_ci, mask_co, CIN_PG, COUT_PG, GROUPED
                )  # [N, K]: transposed below
                wt = tl.load(
                    w_ptr
                    + offs_co[:, None] * stride_wo
                    + tl.trans(ci_local) * stride_wi
                    + kh * stride_wh
                    + kw * stride_ww,
                    mask=tl.trans(w_mask),
                    other=0.0,
                )
                acc = mac(acc, dyt, wt, USE_DOT, ACC)
    if PROLOGUE:  # the BatchNorm-and-activation backward, from the raw input
        x_off = pixel_offset(n, ih, iw, stride_xn, stride_xh, stride_xw)
        acc = prologue_backward(
            acc,
            x_ptr,
            x_off,
            offs_ci,
            stride_xc,
            mask_p,
            mask_ci,
            pro_ptr,
            red_ptr,
            pid_p,
            CIN,
            ACT,
            ACC,
        )
    dx_off = pixel_offset(n, ih, iw, stride_dxn, stride_dxh, stride_dxw)
    store_tile(dx_ptr, acc, dx_off, offs_ci, stride_dxc, mask_p, mask_ci)


@triton.jit
def conv_bwd_weight_dot_kernel(
    dy_ptr,  # output gradient (N, COUT, HO, WO)
    x_ptr,  # input (N, CIN, H, W), raw when PROLOGUE
    pro_ptr,  # prologue (CIN, 3) when PROLOGUE (recomputed: the normalised x is never saved)
    part_ptr,  # partials (T, COUT, CIN_PG, KSIZE * KSIZE), contiguous, ACC dtype
    # sizes; channels per group; input channels one output block reads; pixels a partial
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
    PIXELS_PER_PARTIAL,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
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
    """Weight gradient, as per-program partials (summed on the host in order); with
    PROLOGUE, x is read through the prologue.

    dy (N, COUT, HO, WO), x (N, CIN, H, W): any strides, one dtype; part (T, COUT, CIN_PG,
    KSIZE * KSIZE) contiguous in ``ACC``. Grid: (T = cdiv(N*HO*WO, PIXELS_PER_PARTIAL),
    cdiv(COUT, BLOCK_N), KSIZE * KSIZE * cdiv(CI_SPAN, BLOCK_K)): pixel range, output
    channel block, tap x input-channel block. Each program sums dy^T [BLOCK_N, BLOCK_P] @
    x [BLOCK_P, BLOCK_K] over its pixels and keeps the entries inside a group.
    """
    # this program: one pixel range (a partial), BLOCK_N output channels, one tap and
    # BLOCK_K input channels of their groups
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)  # tap * ci_blocks + ci block
    ci_blocks = tl.cdiv(CI_SPAN, BLOCK_K)
    tap = pid_z // ci_blocks
    kh = tap // KSIZE
    kw = tap % KSIZE
    offs_co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_first = tl.multiple_of((pid_n * BLOCK_N // COUT_PG) * CIN_PG, SPAN_ALIGN)
    offs_ci = ci_first + (pid_z % ci_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_co = offs_co < COUT
    mask_ci = offs_ci < CIN
    total = N * HO * WO
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
    start, end = partial_range(pid_t, PIXELS_PER_PARTIAL, total)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
        dy_off = pixel_offset(n, oh, ow, stride_dyn, stride_dyh, stride_dyw)
        dyt = tl.load(
            dy_ptr + dy_off[None, :] + offs_co[:, None] * stride_dyc,
            mask=mask_p[None, :] & mask_co[:, None],
            other=0.0,
        )  # [BLOCK_N, BLOCK_P]
        x_off = pixel_offset(n, ih, iw, stride_xn, stride_xh, stride_xw)
        xt = load_tile(x_ptr, x_off, offs_ci, stride_xc, ok, mask_ci)  # [BLOCK_P, BLOCK_K]
        if PROLOGUE:
            xt = apply_prologue(xt, pro_ptr, offs_ci, ok, mask_ci, ACT, ACC)
        acc = mac(acc, dyt, xt, USE_DOT, ACC)
    # keep what lies inside a group: part[t, co, ci - its group's first channel, tap]
    ci_local, keep = _weight_index(
        offs_ci, offs_co, mask_ci, mask_co, CIN_PG, COUT_PG, GROUPED
    )  # [K, N]: transposed below
    TAPS = KSIZE * KSIZE
    out = part_ptr + pid_t * COUT * CIN_PG * TAPS + offs_co[:, None] * CIN_PG * TAPS
    out += tl.trans(ci_local) * TAPS + tap
    tl.store(out, acc, mask=tl.trans(keep))
