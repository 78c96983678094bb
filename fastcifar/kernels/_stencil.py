"""``@triton.jit`` helpers every convolution kernel shares: a program's tile, pixel
coordinates and offsets, where a tap reads or writes (stride, padding and dilation
applied, borders masked), 2-D loads and stores of (pixels x channels) tiles, the channel
reduction (``tl.dot`` or a broadcast multiply-add), a grouped weight tile's index, the
pixel range of a weight-gradient partial, the BatchNorm-and-activation prologue and its
backward, and a forward's store epilogue (ReLU, BatchNorm statistics). The depthwise
window and its transpose are in ``_window``.

Index conventions: a flattened pixel index runs over (n, row, col); ``STRIDE``,
``PADDING``, ``DILATION`` are the convolution's; the taps of a ``KSIZE`` x ``KSIZE``
window are ``kh, kw``. Every tensor is addressed through its four element strides
(n, c, h, w), so any layout (NCHW, channels_last, stride-0 expanded) works unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pixel_coords(offs_p, H, W):
    # flattened pixel index over (N, H, W) -> (n, row, col)
    n = offs_p // (H * W)
    rem = offs_p % (H * W)
    return n, rem // W, rem % W


@triton.jit
def program_tile(pid_p, pid_c, PIXELS, CHANNELS, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # program (pid_p, pid_c)'s BLOCK_P pixels and BLOCK_C channels, and which of them exist
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    return offs_p, offs_c, offs_p < PIXELS, offs_c < CHANNELS


@triton.jit
def pixel_offset(n, h, w, stride_n, stride_h, stride_w):
    # element offset of pixel (n, h, w) of a 4-D tensor, channel 0
    return n * stride_n + h * stride_h + w * stride_w


@triton.jit
def load_tile(ptr, pix_off, offs_c, stride_c, mask_p, mask_c):
    # [pixels, channels] tile at pixel offsets pix_off and channels offs_c; zero where masked
    return tl.load(
        ptr + pix_off[:, None] + offs_c[None, :] * stride_c,
        mask=mask_p[:, None] & mask_c[None, :],
        other=0.0,
    )


@triton.jit
def store_tile(ptr, value, pix_off, offs_c, stride_c, mask_p, mask_c):
    # store a [pixels, channels] tile, cast to the tensor's dtype
    tl.store(
        ptr + pix_off[:, None] + offs_c[None, :] * stride_c,
        value.to(ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_c[None, :],
    )


@triton.jit
def mac(acc, a, b, USE_DOT: tl.constexpr, ACC: tl.constexpr):
    # acc [M, N] += a [M, K] @ b [K, N]: on tensor cores with USE_DOT (K >= 16; "ieee"
    # keeps float32 out of TF32), else as a broadcast multiply-add in ACC (float64,
    # bfloat16 under the interpreter)
    if USE_DOT:
        acc += tl.dot(a, b, input_precision="ieee").to(ACC)
    else:
        acc += tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[None, :, :], axis=1)
    return acc


@triton.jit
def weight_index(offs_ci, offs_co, mask_ci, mask_co, CIN_PG, COUT_PG, GROUPED: tl.constexpr):
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


# GELU's constants, 1 / sqrt(2) and 1 / sqrt(2 pi): constexpr instances (a compiled
# kernel reads no other global; the interpreter would not say so)
_RSQRT2 = tl.constexpr(0.7071067811865476)
_RSQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def activation(z, ACT: tl.constexpr):
    # act(z) for ACT 0 identity, 1 ReLU, 2 ReLU6, 3 SiLU, 4 GELU (exact, erf: PyTorch's
    # nn.GELU() default, Hendrycks & Gimpel 2016) (z in the accumulator dtype)
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.minimum(tl.maximum(z, 0.0), 6.0)
    elif ACT == 3:
        z = z / (1.0 + tl.exp(-z))
    elif ACT == 4:
        z = 0.5 * z * (1.0 + tl.erf(z * _RSQRT2))
    return z


@triton.jit
def activation_grad(z, ACT: tl.constexpr):
    # act'(z), the same codes: ReLU's and ReLU6's derivative is 0 at the kinks, as
    # PyTorch's threshold_backward and hardtanh_backward take it
    if ACT == 1:
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where((z > 0.0) & (z < 6.0), 1.0, 0.0)
    elif ACT == 3:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 + z * (1.0 - s))
    elif ACT == 4:  # Phi(z) + z phi(z)
        d = 0.5 * (1.0 + tl.erf(z * _RSQRT2)) + z * _RSQRT_2PI * tl.exp(-0.5 * z * z)
    else:
        d = tl.full(z.shape, 1.0, z.dtype)
    return d.to(z.dtype)


@triton.jit
def _prologue_params(pro_ptr, offs_c, mask_c, ACC: tl.constexpr):
    # (center, scale, shift) per channel from the (C, 3) prologue tensor
    center = tl.load(pro_ptr + offs_c * 3, mask=mask_c, other=0.0).to(ACC)
    scale = tl.load(pro_ptr + offs_c * 3 + 1, mask=mask_c, other=0.0).to(ACC)
    shift = tl.load(pro_ptr + offs_c * 3 + 2, mask=mask_c, other=0.0).to(ACC)
    return center, scale, shift


@triton.jit
def apply_prologue(xt, pro_ptr, offs_c, mask_p, mask_c, ACT: tl.constexpr, ACC: tl.constexpr):
    # a = act((x - center[c]) * scale[c] + shift[c]) of a [pixels, channels] tile, computed
    # in ACC and cast back to the tile's dtype (as PyTorch's BatchNorm -> activation
    # writes it); zero where masked, after the activation: a padded border or a pixel or
    # channel outside the tensor reads as zero (act(shift) need not be 0)
    center, scale, shift = _prologue_params(pro_ptr, offs_c, mask_c, ACC)
    z = (xt.to(ACC) - center[None, :]) * scale[None, :] + shift[None, :]
    valid = mask_p[:, None] & mask_c[None, :]
    return tl.where(valid, activation(z, ACT), 0.0).to(xt.dtype)


@triton.jit
def prologue_backward(
    da,
    x_ptr,
    x_off,
    offs_c,
    stride_xc,
    mask_p,
    mask_c,
    pro_ptr,
    red_ptr,
    pid_p,
    C,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
):
    # the prologue's backward for a [pixels, channels] tile of da (the gradient of its
    # output a): dz = da * act'(z) from the raw x; stores this program's partial sums of
    # dz and dz * (x - center) per channel at red[pid_p, c, 0:2] (the shift's and the
    # scale's gradients once summed; centred, so that float32 does not cancel them) and
    # returns dz * scale, the raw x's direct gradient
    valid = mask_p[:, None] & mask_c[None, :]
    center, scale, shift = _prologue_params(pro_ptr, offs_c, mask_c, ACC)
    xc = load_tile(x_ptr, x_off, offs_c, stride_xc, mask_p, mask_c).to(ACC) - center[None, :]
    dz = da * activation_grad(xc * scale[None, :] + shift[None, :], ACT)
    dz = tl.where(valid, dz, 0.0)
    base = red_ptr + pid_p * C * 2 + offs_c * 2
    tl.store(base, tl.sum(dz, axis=0), mask=mask_c)
    tl.store(base + 1, tl.sum(dz * xc, axis=0), mask=mask_c)
    return dz * scale[None, :]


@triton.jit
def partial_range(pid_t, PIXELS_PER_PARTIAL, total):
    # the pixels [start, end) whose sum weight-gradient partial pid_t holds
    start = pid_t * PIXELS_PER_PARTIAL
    return start, tl.minimum(start + PIXELS_PER_PARTIAL, total)


@triton.jit
def tap_source(
    oh,
    ow,
    mask_p,
    kh,
    kw,
    H,
    W,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
):
    # the input pixel tap (kh, kw) of output pixel (oh, ow) reads, and whether it lies inside
    ih = oh * STRIDE - PADDING + kh * DILATION
    iw = ow * STRIDE - PADDING + kw * DILATION
    return ih, iw, mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def tap_target(
    ih,
    iw,
    mask_p,
    kh,
    kw,
    HO,
    WO,
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    DILATION: tl.constexpr,
):
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
def store_epilogue(
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
    RELU: tl.constexpr,
    STATS: tl.constexpr,
    ACC: tl.constexpr,
):
    # a forward's last step: optional ReLU, the store, and optional BatchNorm statistics
    # of what was stored:
    # per program and channel the sum and the sum of squared deviations from the tile's
    # own mean (combined on the host with Chan's formula: no cancellation, deterministic)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out = acc.to(y_ptr.dtype.element_ty)
    y_off = pixel_offset(n, oh, ow, stride_yn, stride_yh, stride_yw)
    store_tile(y_ptr, out, y_off, offs_co, stride_yc, mask_p, mask_co)
    if STATS:
        valid = mask_p[:, None] & mask_co[None, :]
        v = tl.where(valid, out.to(ACC), 0.0)
        count = tl.sum(mask_p.to(ACC), axis=0)
        total = tl.sum(v, axis=0)
        mean = total / tl.maximum(count, 1.0)
        dev = tl.where(valid, v - mean[None, :], 0.0)
        m2 = tl.sum(dev * dev, axis=0)
        base = stats_ptr + pid_p * COUT * 2 + offs_co * 2
        tl.store(base, total, mask=mask_co)
        tl.store(base + 1, m2, mask=mask_co)
