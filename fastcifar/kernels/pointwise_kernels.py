"""Triton kernels of ``fastcifar.kernels.pointwise``: the 1x1 convolution as a GEMM over
(pixels x input channels) @ (input channels x output channels), with the previous
BatchNorm and activation applied to its input as it is loaded (the prologue) and the
next BatchNorm's statistics taken from its output as it is stored (the epilogue).

Private: the launchers in ``fastcifar.kernels.pointwise`` call these. Conventions are
``conv_dot_kernels``': ``P`` the flattened (n, h, w) pixel, every 4-D tensor addressed
through its four strides (NCHW, channels_last and stride-0 gradients without copies),
``BLOCK_P`` pixels, ``BLOCK_N`` channels a program produces, ``BLOCK_K`` channels it
reduces per step; accumulation in ``ACC`` (float32, float64 for float64).

The prologue: ``a = act((x - center[c]) * scale[c] + shift[c])`` per input channel ``c``
(``center`` the batch mean, ``scale`` the BatchNorm weight over the deviation,
``shift`` its bias: a (CIN, 3) tensor), computed in
``ACC`` and cast back to the input's dtype before the ``tl.dot`` (what PyTorch's
BatchNorm -> activation -> convolution computes, whose normalised tensor is in the
input's dtype too). ``ACT``: 0 identity, 1 ReLU, 2 ReLU6, 3 SiLU, 4 GELU (``launch.ACTIVATIONS``).
The prologue and its backward are ``_stencil``'s (``apply_prologue``,
``prologue_backward``), shared with the depthwise and grouped kernels.
The backward recomputes ``a`` from the raw ``x`` (it is never saved) and produces, as
the input gradient's epilogue, the raw input's direct gradient ``dz * scale`` and the
per-channel sums ``sum dz`` and ``sum dz * (x - center)``, the shift's and scale's
gradients (the center's is ``-scale * sum dz``), with ``dz = da * act'(z)``.
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
)


@triton.jit
def pointwise_fwd_kernel(
    x_ptr,  # input (N, CIN, H, W), raw: the prologue normalises it when PROLOGUE
    w_ptr,  # weight (COUT, CIN), the 1x1 filter's two meaningful strides
    b_ptr,  # bias (COUT,), or any pointer when HAS_BIAS is false
    pro_ptr,  # prologue (CIN, 3): center, scale, shift; any pointer when PROLOGUE is false
    y_ptr,  # output (N, COUT, H, W)
    stats_ptr,  # (pixel programs, COUT, 2) partial (sum, M2) when STATS, else any pointer
    N,
    CIN,
    H,
    W,
    COUT,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wo,
    stride_wi,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    HAS_BIAS: tl.constexpr,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    STATS: tl.constexpr,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Forward, y = act((x - center) * scale + shift) @ w^T + b, with the BatchNorm-statistics
    epilogue (``_stencil.store_epilogue``) when STATS.

    x (N, CIN, H, W), y (N, COUT, H, W): any strides, one dtype. Grid:
    (cdiv(N*H*W, BLOCK_P), cdiv(COUT, BLOCK_N)); each program computes a BLOCK_P x
    BLOCK_N output tile, BLOCK_K input channels per step.
    """
    # this program's tile: BLOCK_P pixels x BLOCK_N output channels
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_p, offs_co, mask_p, mask_co = program_tile(pid_p, pid_n, N * H * W, COUT, BLOCK_P, BLOCK_N)
    n, h, w = pixel_coords(offs_p, H, W)
    x_off = pixel_offset(n, h, w, stride_xn, stride_xh, stride_xw)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=ACC)
    for ci0 in range(0, CIN, BLOCK_K):
        # a [BLOCK_P, BLOCK_K] (normalised and activated as loaded) @ w^T [BLOCK_K, BLOCK_N]
        offs_ci = ci0 + tl.arange(0, BLOCK_K)
        mask_ci = offs_ci < CIN
        xt = load_tile(x_ptr, x_off, offs_ci, stride_xc, mask_p, mask_ci)
        if PROLOGUE:
            xt = apply_prologue(xt, pro_ptr, offs_ci, mask_p, mask_ci, ACT, ACC)
        wt = tl.load(
            w_ptr + offs_co[None, :] * stride_wo + offs_ci[:, None] * stride_wi,
            mask=mask_ci[:, None] & mask_co[None, :],
            other=0.0,
        )
        acc = mac(acc, xt, wt, USE_DOT, ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(ACC)[None, :]
    store_epilogue(
        acc,
        y_ptr,
        stats_ptr,
        pid_p,
        n,
        h,
        w,
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


@triton.jit
def pointwise_bwd_input_kernel(
    dy_ptr,  # output gradient (N, COUT, H, W), any strides (stride 0 too)
    w_ptr,  # weight (COUT, CIN)
    x_ptr,  # raw input (N, CIN, H, W) when PROLOGUE (the prologue is recomputed), else any
    pro_ptr,  # prologue (CIN, 3): center, scale, shift, when PROLOGUE
    dx_ptr,  # input gradient (N, CIN, H, W): of the raw input, direct part dz * scale
    red_ptr,  # (pixel programs, CIN, 2) partial (sum dz, sum dz * x) when PROLOGUE
    N,
    CIN,
    H,
    W,
    COUT,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_wo,
    stride_wi,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_dxn,
    stride_dxc,
    stride_dxh,
    stride_dxw,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Input gradient: da = dy @ w; without a prologue dx = da. With one, the epilogue
    recomputes z = (x - center) * scale + shift, takes dz = da * act'(z), stores dx = dz * scale and
    per-program partial sums of dz and dz * (x - center) per input channel (summed on the host in a
    fixed order: deterministic).

    Grid: (cdiv(N*H*W, BLOCK_P), cdiv(CIN, BLOCK_N)); each program produces BLOCK_P
    pixels x BLOCK_N input channels, reducing BLOCK_K output channels per step.
    """
    # this program's tile: BLOCK_P pixels x BLOCK_N input channels
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_p, offs_ci, mask_p, mask_ci = program_tile(pid_p, pid_n, N * H * W, CIN, BLOCK_P, BLOCK_N)
    n, h, w = pixel_coords(offs_p, H, W)
    dy_off = pixel_offset(n, h, w, stride_dyn, stride_dyh, stride_dyw)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=ACC)
    for co0 in range(0, COUT, BLOCK_K):
        # dy [BLOCK_P, BLOCK_K] @ w [BLOCK_K, BLOCK_N]
        offs_co = co0 + tl.arange(0, BLOCK_K)
        mask_co = offs_co < COUT
        dyt = load_tile(dy_ptr, dy_off, offs_co, stride_dyc, mask_p, mask_co)
        wt = tl.load(
            w_ptr + offs_co[:, None] * stride_wo + offs_ci[None, :] * stride_wi,
            mask=mask_co[:, None] & mask_ci[None, :],
            other=0.0,
        )
        acc = mac(acc, dyt, wt, USE_DOT, ACC)
    if PROLOGUE:  # the BatchNorm-and-activation backward's epilogue, from the raw input
        x_off = pixel_offset(n, h, w, stride_xn, stride_xh, stride_xw)
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
    dx_off = pixel_offset(n, h, w, stride_dxn, stride_dxh, stride_dxw)
    store_tile(dx_ptr, acc, dx_off, offs_ci, stride_dxc, mask_p, mask_ci)


@triton.jit
def pointwise_bwd_weight_kernel(
    dy_ptr,  # output gradient (N, COUT, H, W)
    x_ptr,  # raw input (N, CIN, H, W)
    pro_ptr,  # prologue (CIN, 3): center, scale, shift, when PROLOGUE
    part_ptr,  # partials (T, COUT, CIN), contiguous, ACC dtype
    N,
    CIN,
    H,
    W,
    COUT,
    PIXELS_PER_PARTIAL,
    stride_dyn,
    stride_dyc,
    stride_dyh,
    stride_dyw,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    PROLOGUE: tl.constexpr,
    ACT: tl.constexpr,
    USE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Weight gradient as per-program partials: dy^T [BLOCK_N, BLOCK_P] @ a [BLOCK_P,
    BLOCK_K] over the program's pixel range, ``a`` the prologue recomputed from the raw
    input (the normalised, activated tensor is never saved).

    Grid: (T = cdiv(N*H*W, PIXELS_PER_PARTIAL), cdiv(COUT, BLOCK_N), cdiv(CIN, BLOCK_K)).
    """
    # this program: one pixel range (a partial), BLOCK_N output x BLOCK_K input channels
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_ci = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_co = offs_co < COUT
    mask_ci = offs_ci < CIN
    total = N * H * W
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
    start, end = partial_range(pid_t, PIXELS_PER_PARTIAL, total)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < total
        n, h, w = pixel_coords(offs_p, H, W)
        dy_off = pixel_offset(n, h, w, stride_dyn, stride_dyh, stride_dyw)
        dyt = tl.load(
            dy_ptr + dy_off[None, :] + offs_co[:, None] * stride_dyc,
            mask=mask_p[None, :] & mask_co[:, None],
            other=0.0,
        )  # [BLOCK_N, BLOCK_P]
        x_off = pixel_offset(n, h, w, stride_xn, stride_xh, stride_xw)
        xt = load_tile(x_ptr, x_off, offs_ci, stride_xc, mask_p, mask_ci)  # [BLOCK_P, BLOCK_K]
        if PROLOGUE:
            xt = apply_prologue(xt, pro_ptr, offs_ci, mask_p, mask_ci, ACT, ACC)
        acc = mac(acc, dyt, xt, USE_DOT, ACC)
    out = part_ptr + pid_t * COUT * CIN + offs_co[:, None] * CIN + offs_ci[None, :]
    tl.store(out, acc, mask=mask_co[:, None] & mask_ci[None, :])
