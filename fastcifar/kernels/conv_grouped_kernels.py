"""The elementwise family of ``fastcifar.kernels.conv`` (and ``conv_bn``): forward
(optional ReLU / BatchNorm-statistics epilogue), input gradient and weight gradient with
elementwise math per channel, for depthwise convolutions and groups of 2-4 channels,
where a ``tl.dot`` tile would be mostly zeros (``conv_dot_kernels`` has the other
family), and the bias gradient of both. The previous BatchNorm and activation run as a
prologue, as in ``conv_dot_kernels``.

Private: the launchers in ``fastcifar.kernels.conv_launch`` (``_bwd``) call these. Index, block and
stride conventions as ``conv_dot_kernels``'; ``BLOCK_C`` is the channels of an
elementwise program. Weight and bias gradients are deterministic per-program partials.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcifar.kernels._stencil import (
    apply_prologue,
    load_tile,
    partial_range,
    pixel_coords,
    pixel_offset,
    program_tile,
    prologue_backward,
    store_epilogue,
    store_tile,
    tap_source,
)
from fastcifar.kernels._window import window, window_transposed


@triton.jit
def conv_fwd_grouped_kernel(
    x_ptr,  # input (N, CIN, H, W)
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    b_ptr,  # bias (COUT,), or any pointer when HAS_BIAS is false
    pro_ptr,  # prologue (CIN, 3) center, scale, shift when PROLOGUE (x raw: act((x - center)
    #   * scale + shift) is what the window reads)
    y_ptr,  # output (N, COUT, HO, WO)
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else any pointer
    # sizes: batch, input height and width, output channels, output height and width,
    # output channels per group
    N,
    H,
    W,
    COUT,
    HO,
    WO,
    COUT_PG,
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
    CIN_PG: tl.constexpr,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    STATS: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grouped KSIZE x KSIZE forward (depthwise when CIN_PG == COUT_PG == 1), elementwise
    math; with PROLOGUE the previous BatchNorm and activation applied to x as it is read
    (``_stencil.apply_prologue``; the padded border reads as zero after them).

    x (N, COUT/COUT_PG*CIN_PG, H, W), w (COUT, CIN_PG, KSIZE, KSIZE), y (N, COUT, HO, WO):
    any strides, one dtype; accumulation in ``ACC``. Grid: (cdiv(N*HO*WO, BLOCK_P),
    cdiv(COUT, BLOCK_C)); epilogue as the dot kernel.
    """
    # this program's tile: BLOCK_P output pixels x BLOCK_C output channels
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p, offs_co, mask_p, mask_co = program_tile(
        pid_p, pid_c, N * HO * WO, COUT, BLOCK_P, BLOCK_C
    )
    n, oh, ow = pixel_coords(offs_p, HO, WO)
    group = offs_co // COUT_PG
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    # each input channel of each output channel's group: its window, one column a channel
    for ci in tl.static_range(CIN_PG):
        acc = window(
            acc,
            x_ptr,
            w_ptr,
            n,
            oh,
            ow,
            mask_p,
            group * CIN_PG + ci,
            offs_co * stride_wo + ci * stride_wi,
            mask_co,
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
def conv_bwd_input_grouped_kernel(
    dy_ptr,  # output gradient (N, COUT, HO, WO)
    w_ptr,  # weight (COUT, CIN_PG, KSIZE, KSIZE)
    x_ptr,  # raw input (N, CIN, H, W) when PROLOGUE, else any pointer
    pro_ptr,  # prologue (CIN, 3) center, scale, shift when PROLOGUE
    dx_ptr,  # input gradient (N, CIN, H, W): of the raw input when PROLOGUE (direct part)
    red_ptr,  # (pixel programs, CIN, 2) partial (sum dz, sum dz * x) when PROLOGUE
    # sizes: batch, input channels, input and output height and width, outputs per group
    N,
    CIN,
    H,
    W,
    HO,
    WO,
    COUT_PG,
    # element strides (n, c, h, w) of dy, w (out, in, h, w), x and dx: any layout
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
    CIN_PG: tl.constexpr,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grouped KSIZE x KSIZE input gradient (depthwise included), elementwise math; with
    PROLOGUE the prologue's backward as the epilogue (``_stencil.prologue_backward``).

    dy (N, COUT, HO, WO), w (COUT, CIN_PG, KSIZE, KSIZE), dx (N, CIN, H, W): any strides,
    one dtype. Grid: (cdiv(N*H*W, BLOCK_P), cdiv(CIN, BLOCK_C)).
    """
    # this program's tile: BLOCK_P input pixels x BLOCK_C input channels
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p, offs_ci, mask_p, mask_ci = program_tile(pid_p, pid_c, N * H * W, CIN, BLOCK_P, BLOCK_C)
    n, ih, iw = pixel_coords(offs_p, H, W)
    group = offs_ci // CIN_PG
    ci_local = offs_ci % CIN_PG
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    # each output channel of the group: the transposed window of its filter for this input
    for j in range(COUT_PG):
        co = group * COUT_PG + j
        acc = window_transposed(
            acc,
            dy_ptr,
            w_ptr,
            n,
            ih,
            iw,
            mask_p,
            co,
            co * stride_wo + ci_local * stride_wi,
            mask_ci,
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
    if PROLOGUE:
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
def conv_bwd_weight_grouped_kernel(
    dy_ptr,  # output gradient (N, COUT, HO, WO)
    x_ptr,  # input (N, CIN, H, W), raw when PROLOGUE
    pro_ptr,  # prologue (CIN, 3) when PROLOGUE (recomputed: the normalised x is never saved)
    part_ptr,  # partials (T, COUT, CIN_PG, KSIZE * KSIZE), contiguous, ACC dtype
    # sizes, outputs per group, and the output pixels each partial sums over
    N,
    H,
    W,
    COUT,
    HO,
    WO,
    COUT_PG,
    PIXELS_PER_PARTIAL,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    CIN_PG: tl.constexpr,
    KSIZE: tl.constexpr,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Grouped KSIZE x KSIZE weight gradient (depthwise included), per-program partials;
    with PROLOGUE, x is read through the prologue.

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
    start, end = partial_range(pid_t, PIXELS_PER_PARTIAL, total)
    # dw[co, ci, tap] += sum over the range's pixels of dy[co] x (x the tap reads)[ci]
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        ih, iw, ok = tap_source(oh, ow, mask_p, kh, kw, H, W, STRIDE, PADDING, DILATION)
        dy_off = pixel_offset(n, oh, ow, stride_dyn, stride_dyh, stride_dyw)
        dyt = load_tile(dy_ptr, dy_off, offs_co, stride_dyc, mask_p, mask_co)
        x_off = pixel_offset(n, ih, iw, stride_xn, stride_xh, stride_xw)
        xt = load_tile(x_ptr, x_off, cin, stride_xc, ok, mask_co)
        if PROLOGUE:
            xt = apply_prologue(xt, pro_ptr, cin, ok, mask_co, ACT, ACC)
        acc += tl.sum(dyt.to(ACC) * xt.to(ACC), axis=0)
    TAPS = KSIZE * KSIZE
    out = part_ptr + pid_t * COUT * CIN_PG * TAPS + offs_co * CIN_PG * TAPS + ci * TAPS + tap
    tl.store(out, acc, mask=mask_co)


@triton.jit
def bias_grad_kernel(
    dy_ptr,  # output gradient (N, C, HO, WO)
    part_ptr,  # partials (T, C), contiguous, ACC dtype
    N,
    C,
    HO,
    WO,
    PIXELS_PER_PARTIAL,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
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
    start, end = partial_range(pid_t, PIXELS_PER_PARTIAL, total)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, oh, ow = pixel_coords(offs_p, HO, WO)
        dy_off = pixel_offset(n, oh, ow, stride_dyn, stride_dyh, stride_dyw)
        acc += tl.sum(load_tile(dy_ptr, dy_off, offs_c, stride_dyc, mask_p, mask_c).to(ACC), axis=0)
    tl.store(part_ptr + pid_t * C + offs_c, acc, mask=mask_c)
