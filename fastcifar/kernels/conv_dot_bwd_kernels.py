"""The ``tl.dot`` family's gradient kernels (``fastcifar.kernels.conv``, ``conv_bn``,
``conv_pool``): the input gradient and the weight gradient of a dense or wide-grouped
convolution as implicit GEMMs, each with the optional BatchNorm-and-activation prologue
(the input gradient runs its backward as its epilogue, the weight gradient reads x
through it) and the optional un-pool on the gradient's load (``UNPOOL``: the convolution
was followed by a 2x2 max pool run in its forward's epilogue, ``conv_pool``; the kernels
read the pooled gradient and the packed window positions and expand them as they load,
``_pool.unpool_load``, so the pre-pool gradient is never written).

Private: the launchers in ``fastcifar.kernels.conv_launch`` (``_bwd``) call these. Conventions as
``conv_dot_kernels``' (its docstring): any strides, accumulation in ``ACC``, ``P`` the
flattened pixel, ``BLOCK_P``/``BLOCK_N``/``BLOCK_K`` ``tiles.Tiles``' fields. With
``UNPOOL``, ``HO``/``WO`` are the convolution's output size and ``dy`` (its strides
given) is the pooled gradient (N, COUT, HP, WP); ``idx`` its packed positions. Weight
gradients are deterministic: each program sums over its own fixed range of pixels and
writes a partial; the partials are summed afterwards in a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcifar.kernels._pool import unpool_load
from fastcifar.kernels._stencil import (
    apply_prologue,
    load_tile,
    mac,
    partial_range,
    pixel_coords,
    pixel_offset,
    program_tile,
    prologue_backward,
    store_tile,
    tap_source,
    tap_target,
    weight_index,
)


@triton.jit
def conv_bwd_input_dot_kernel(
    dy_ptr,  # output gradient (N, COUT, HO, WO), any strides (stride 0 too); pooled
    #   (N, COUT, HP, WP) when UNPOOL
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    x_ptr,  # raw input (N, CIN, H, W) when PROLOGUE, else any pointer
    pro_ptr,  # prologue (CIN, 3) center, scale, shift when PROLOGUE
    idx_ptr,  # (N * HP * WP, cdiv(COUT, 4)) uint8 window positions when UNPOOL
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
    HP,
    WP,
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
    UNPOOL: tl.constexpr,
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
                if UNPOOL:
                    dyt = unpool_load(
                        dy_ptr,
                        idx_ptr,
                        n,
                        oh,
                        ow,
                        offs_co,
                        ok,
                        mask_co,
                        stride_dyn,
                        stride_dyc,
                        stride_dyh,
                        stride_dyw,
                        COUT,
                        HP,
                        WP,
                    )
                else:
                    dyt = load_tile(dy_ptr, dy_off, offs_co, stride_dyc, ok, mask_co)
                ci_local, w_mask = weight_index(
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
    dy_ptr,  # output gradient (N, COUT, HO, WO); pooled (N, COUT, HP, WP) when UNPOOL
    x_ptr,  # input (N, CIN, H, W), raw when PROLOGUE
    pro_ptr,  # prologue (CIN, 3) when PROLOGUE (recomputed: the normalised x is never saved)
    idx_ptr,  # (N * HP * WP, cdiv(COUT, 4)) uint8 window positions when UNPOOL
    part_ptr,  # partials (T, COUT, CIN_PG, KSIZE * KSIZE), contiguous, ACC dtype
    # sizes; channels per group; input channels one output block reads; pixels a partial
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
    UNPOOL: tl.constexpr,
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
        if UNPOOL:
            dyt = tl.trans(
                unpool_load(
                    dy_ptr,
                    idx_ptr,
                    n,
                    oh,
                    ow,
                    offs_co,
                    mask_p,
                    mask_co,
                    stride_dyn,
                    stride_dyc,
                    stride_dyh,
                    stride_dyw,
                    COUT,
                    HP,
                    WP,
                )
            )  # [BLOCK_N, BLOCK_P]
        else:
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
    ci_local, keep = weight_index(
        offs_ci, offs_co, mask_ci, mask_co, CIN_PG, COUT_PG, GROUPED
    )  # [K, N]: transposed below
    TAPS = KSIZE * KSIZE
    out = part_ptr + pid_t * COUT * CIN_PG * TAPS + offs_co[:, None] * CIN_PG * TAPS
    out += tl.trans(ci_local) * TAPS + tap
    tl.store(out, acc, mask=tl.trans(keep))
