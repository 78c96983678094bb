"""``fastcifar.kernels.conv2d``: Triton convolutions with the semantics of
``torch.nn.functional.conv2d``, registered as torch custom ops with autograd.

Supported (anything else raises ``NotImplementedError`` naming what is not):

* ``groups == 1`` (dense): kernel 3x3, weight (COUT, CIN, 3, 3);
* ``groups > 1`` (grouped, depthwise when groups == CIN): kernel KxK for K = 3, 5 or 7,
  weight (COUT, CIN / groups, K, K), at most 16 input channels per group (depthwise
  5x5 in EfficientNet, ResNeXt's groups of 4, 8 and 16, RegNetX's of 8, the s7
  seed's groups=32 on 64 channels);
* dilation 1, 2 or 3; stride 1 or 2; padding 0..dilation x (K - 1) / 2; the same in
  height and width;
* input (N, CIN, H, W) on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1``;
  NCHW or channels_last (channels_last in gives channels_last out);
* float32, float16, bfloat16 (float32 accumulation) and float64 (float64 accumulation,
  for gradcheck); input, weight and bias of one dtype.

Forward, input gradient, weight gradient and bias gradient are each a Triton kernel
(``conv_kernels``); no PyTorch convolution is called. Dense convolutions and groups of
at least ``DOT_MIN_PER_GROUP`` (8) channels reduce on tensor cores (``tl.dot``, a
block-diagonal weight tile for groups); depthwise and narrower groups elementwise
(``family``). Weight and bias gradients are
deterministic: per-tile partials summed afterwards in a fixed order, no atomics.

The ops are ``torch.library.custom_op``s with fake (meta) implementations and a
registered autograd formula, so ``torch.compile(fullgraph=True)`` traces a model that
uses them without a graph break, also under the Triton interpreter.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from fastcifar.kernels.launch import (
    MAX_INT32_ELEMENTS,
    acc_dtype,
    cdiv,
    empty_output,
    launch,
    memory_format,
    out_size,
    partial_pixels,
    prologue_dot_tiles,
    strides,
    tiles,
    tl_acc,
)

__all__ = ["SUPPORTED_DTYPES", "check_supported", "conv2d", "is_supported", "kernels_can_run"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_CIN_PER_GROUP = 16  # the grouped kernel unrolls its input channels: 16 x K x K loads
# Groups this wide (in and out) take the tl.dot kernels: a 16-wide K step holds two groups
# of 8 (half the block-diagonal weight tile is zeros) or one of 16; narrower groups would
# leave three quarters or more of each tensor-core step zero, so they run elementwise.
DOT_MIN_PER_GROUP = 8
GROUPED_KERNEL_SIZES = (3, 5, 7)


def _pair(v, name: str) -> int:
    if isinstance(v, int):
        return v
    v = tuple(v)
    if len(v) == 2 and v[0] == v[1]:
        return int(v[0])
    if len(v) == 1:
        return int(v[0])
    raise NotImplementedError(f"fastcifar.kernels.conv2d: {name}={v} differs between height "
                              f"and width; only equal values are supported")  # fmt: skip


def kernels_can_run(device: torch.device) -> bool:
    """True where the Triton kernels can launch: a CUDA device, or the CPU when
    ``TRITON_INTERPRET=1`` was set before the first kernel launch."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def check_supported(
    input_shape, weight_shape, dtype, device, stride=1, padding=0, dilation=1, groups=1,
    bias: bool = False,
) -> None:  # fmt: skip
    """Raise ``NotImplementedError`` naming the first unsupported part of a configuration."""
    stride, padding, dilation = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    prefix = "fastcifar.kernels.conv2d:"
    if len(input_shape) != 4 or len(weight_shape) != 4:
        raise NotImplementedError(f"{prefix} only 4-D input and weight are supported")
    cin, cout, k = input_shape[1], weight_shape[0], weight_shape[2]
    if weight_shape[2] != weight_shape[3]:
        raise NotImplementedError(f"{prefix} kernel {tuple(weight_shape[2:])} is not square")
    if groups == 1 and k != 3:
        raise NotImplementedError(f"{prefix} dense kernel {k}x{k} is not 3x3")
    if groups > 1 and k not in GROUPED_KERNEL_SIZES:
        raise NotImplementedError(f"{prefix} grouped kernel {k}x{k} is not 3x3, 5x5 or 7x7")
    if groups < 1 or cin % groups or cout % groups or weight_shape[1] != cin // groups:
        raise ValueError(
            f"{prefix} weight {tuple(weight_shape)} does not match input channels {cin} "
            f"with groups={groups}"
        )
    if groups > 1 and cin // groups > MAX_CIN_PER_GROUP:
        raise NotImplementedError(
            f"{prefix} groups={groups} gives {cin // groups} input channels per group; "
            f"at most {MAX_CIN_PER_GROUP} (or groups=1) is supported"
        )
    if dilation not in (1, 2, 3):
        raise NotImplementedError(f"{prefix} dilation {dilation} is not 1, 2 or 3")
    if stride not in (1, 2):
        raise NotImplementedError(f"{prefix} stride {stride} is not 1 or 2")
    if not 0 <= padding <= dilation * (k - 1) // 2:
        raise NotImplementedError(
            f"{prefix} padding {padding} is outside 0..dilation x (K - 1) / 2 "
            f"({dilation * (k - 1) // 2})"
        )
    if dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"{prefix} dtype {dtype} is not float32/16, bfloat16 or float64")
    h, w = input_shape[2], input_shape[3]
    span = dilation * (k - 1) + 1
    if h + 2 * padding < span or w + 2 * padding < span:
        raise NotImplementedError(
            f"{prefix} the dilated {k}x{k} kernel does not fit in a {h}x{w} input with "
            f"padding {padding}"
        )
    n = input_shape[0]
    ho, wo = out_size(h, stride, padding, dilation, k), out_size(w, stride, padding, dilation, k)
    for what, elements in (("input", n * cin * h * w), ("output", n * cout * ho * wo)):
        if elements >= MAX_INT32_ELEMENTS:
            raise NotImplementedError(
                f"{prefix} the {what} has {elements:,} elements, past the kernels' int32 "
                f"offsets (2**31): split the batch into chunks below that"
            )
    if not kernels_can_run(torch.device(device)):
        raise NotImplementedError(
            f"{prefix} device {device} cannot run Triton: use a CUDA tensor, or set "
            f"TRITON_INTERPRET=1 before the first launch to run on the CPU"
        )


def is_supported(input: Tensor, weight: Tensor, stride=1, padding=0, dilation=1, groups=1) -> bool:
    """Whether ``conv2d`` accepts these tensors and arguments (no exception raised)."""
    try:
        check_supported(input.shape, weight.shape, input.dtype, input.device, stride, padding,
                        dilation, groups)  # fmt: skip
    except (NotImplementedError, ValueError):
        return False
    return input.dtype == weight.dtype


def _k():
    # imported at the first launch: triton is a Linux-only dependency
    from fastcifar.kernels import conv_kernels

    return conv_kernels


# ------------------------------------------------------------------------- launchers


def family(cin: int, cout: int, groups: int, stride: int = 1) -> str:
    """The kernel and tile family of a convolution: ``dense`` (groups == 1) and
    ``grouped_dot`` (at least ``DOT_MIN_PER_GROUP`` channels a group, in and out) run the
    ``tl.dot`` kernels; ``depthwise`` (one input channel per group; at stride 2
    ``depthwise_strided``, smaller tiles) and ``grouped`` (narrower groups) the
    elementwise ones."""
    if groups == 1:
        return "dense"
    if cin == groups:
        return "depthwise_strided" if stride > 1 else "depthwise"
    return "grouped_dot" if min(cin, cout) // groups >= DOT_MIN_PER_GROUP else "grouped"


def channel_span(block: int, per_group: int, other_per_group: int, other_total: int) -> int:
    """Channels of the other side (``other_per_group`` a group, ``other_total`` in all) that
    a block of ``block`` consecutive channels (``per_group`` a group, starting at a
    multiple of ``block``) is connected to: the groups it touches times their width."""
    if block % per_group == 0:
        touched = block // per_group
    elif per_group % block == 0:
        touched = 1
    else:  # blocks straddle group borders: at most two partial groups more
        touched = block // per_group + 2
    return min(other_total, touched * other_per_group)


def _dot_kernels(fam: str) -> bool:
    return fam in ("dense", "grouped_dot")


def span_align(per_group: int, groups: int) -> int:
    """A power of two (at most 16) dividing the first channel of every program's reduced
    span in the ``tl.dot`` kernels, a multiple of ``per_group`` (0 when dense): the
    ``SPAN_ALIGN`` hint that lets the compiler prove 16-byte aligned channel loads."""
    return 16 if groups == 1 else min(16, per_group & -per_group)


def _prologue_args(prologue, dummy: Tensor) -> tuple[Tensor, bool, int]:
    """(pro, PROLOGUE, ACT) kernel arguments of ``prologue`` = (the (CIN, 3) tensor of
    center, scale and shift, activation code) or None (``dummy`` stands for the pointer)."""
    if prologue is None:
        return dummy, False, 0
    pro, act = prologue
    return pro, True, act


def launch_forward(
    x: Tensor, w: Tensor, b: Tensor | None, stride, padding, dilation, groups,
    relu: bool = False, stats: bool = False, prologue=None,
) -> tuple[Tensor, Tensor | None, int]:  # fmt: skip
    """The output (N, COUT, HO, WO), ReLU applied if asked; with ``stats`` the per-program
    BatchNorm partials (programs, COUT, 2): (sum, sum of squared deviations), else None;
    and the pixels per program (every program's count but the last's). ``prologue``:
    (the (CIN, 3) center, scale and shift, activation code) applied to ``x`` as it is read,
    or None."""
    k = _k()
    n, cin, h, wd = x.shape
    cout, ksize = w.shape[0], w.shape[-1]
    fam = family(cin, cout, groups, stride)
    pro, has_prologue, act = _prologue_args(prologue, w)
    t = tiles(x.dtype, fam)
    if has_prologue and _dot_kernels(fam):
        t = prologue_dot_tiles(t)
    y = empty_output(x, cout, stride, padding, dilation, ksize)
    ho, wo = y.shape[2], y.shape[3]
    programs = cdiv(n * ho * wo, t.block_p)
    part = None
    if stats:
        part = torch.empty((programs, cout, 2), dtype=acc_dtype(x.dtype), device=x.device)
    pointers = (x, w, b if b is not None else w, y, part if stats else y)
    conv = dict(KSIZE=ksize, STRIDE=stride, PADDING=padding, DILATION=dilation,
                HAS_BIAS=b is not None, RELU=relu, STATS=stats, PROLOGUE=has_prologue,
                ACT=act, ACC=tl_acc(x.dtype), BLOCK_P=t.block_p,
                **t.launch_options)  # fmt: skip
    layout = (*strides(x), *strides(w), *strides(y))
    cin_pg, cout_pg = cin // groups, cout // groups
    if _dot_kernels(fam):
        span = channel_span(t.block_n, cout_pg, cin_pg, cin)
        launch(
            k.conv_fwd_dot_kernel, (programs, cdiv(cout, t.block_n)),
            *pointers[:3], pro, *pointers[3:], n, cin, h, wd, cout, ho, wo, cin_pg, cout_pg,
            span, *layout, USE_DOT=t.use_dot, GROUPED=groups > 1,
            SPAN_ALIGN=span_align(cin_pg, groups), BLOCK_N=t.block_n, BLOCK_K=t.block_k, **conv,
        )  # fmt: skip
    else:
        launch(
            k.conv_fwd_grouped_kernel, (programs, cdiv(cout, t.block_c)),
            *pointers[:3], pro, *pointers[3:], n, h, wd, cout, ho, wo, cout_pg, *layout,
            CIN_PG=cin_pg, BLOCK_C=t.block_c, **conv,
        )  # fmt: skip
    return y, part, t.block_p


def launch_grad_input(dy: Tensor, w: Tensor, x_shape, x_format, stride, padding, dilation, groups,
                      prologue=None, x: Tensor | None = None):  # fmt: skip
    """The input gradient (N, CIN, H, W) of output gradient ``dy``, in ``x_format``. With
    ``prologue`` (as ``launch_forward``'s; ``x`` the raw input): (the raw input's direct
    gradient, (CIN, 2) sums of (dz, dz * (x - center))), the prologue's backward in the
    epilogue."""
    k = _k()
    n, cin, h, wd = x_shape
    cout, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    fam = family(cin, cout, groups, stride)
    pro, has_prologue, act = _prologue_args(prologue, w)
    # With the prologue's backward as its epilogue, the depthwise input gradient takes the
    # stride-2 tile (32 x 8): at 64 x 8 x 4 warps ptxas (triton 3.6, the GPU machines'
    # stack) spilled 12 bytes on sm_90 in float16 (72 registers); 32 x 8 compiles in 62.
    t = tiles(dy.dtype, "depthwise_strided" if has_prologue and fam == "depthwise" else fam)
    dx = torch.empty(x_shape, dtype=dy.dtype, device=dy.device, memory_format=x_format)
    programs = cdiv(n * h * wd, t.block_p)
    # the prologue's per program and input channel (sum dz, sum dz * (x - center)); without
    # one, the kernel reads neither pointer (dx stands in: no allocation, no fill launch)
    red, xp = dx, dx
    if has_prologue:
        red = torch.zeros((programs, cin, 2), dtype=acc_dtype(dy.dtype), device=dy.device)
        xp = x
    conv = dict(KSIZE=w.shape[-1], STRIDE=stride, PADDING=padding, DILATION=dilation,
                PROLOGUE=has_prologue, ACT=act, ACC=tl_acc(dy.dtype), BLOCK_P=t.block_p,
                **t.launch_options)  # fmt: skip
    layout = (*strides(dy), *strides(w), *strides(xp), *strides(dx))
    cin_pg, cout_pg = cin // groups, cout // groups
    if _dot_kernels(fam):
        span = channel_span(t.block_n, cin_pg, cout_pg, cout)
        launch(
            k.conv_bwd_input_dot_kernel, (programs, cdiv(cin, t.block_n)),
            dy, w, xp, pro, dx, red, n, cin, h, wd, cout, ho, wo, cin_pg, cout_pg, span,
            *layout, USE_DOT=t.use_dot, GROUPED=groups > 1,
            SPAN_ALIGN=span_align(cout_pg, groups), BLOCK_N=t.block_n, BLOCK_K=t.block_k,
            **conv,
        )  # fmt: skip
    else:
        launch(
            k.conv_bwd_input_grouped_kernel, (programs, cdiv(cin, t.block_c)),
            dy, w, xp, pro, dx, red, n, cin, h, wd, ho, wo, cout_pg, *layout,
            CIN_PG=cin_pg, BLOCK_C=t.block_c, **conv,
        )  # fmt: skip
    if has_prologue:
        return dx, red.sum(0)  # fixed-order sum of the partials: deterministic
    return dx


def launch_grad_weight(dy: Tensor, x: Tensor, w_shape, stride, padding, dilation, groups,
                       prologue=None):  # fmt: skip
    """The weight gradient (COUT, CIN / groups, K, K): per-program partials summed in a
    fixed order (deterministic). ``prologue`` as ``launch_forward``'s (``x`` raw)."""
    k = _k()
    n, cin, h, wd = x.shape
    cout, cin_pg, ksize = w_shape[0], w_shape[1], w_shape[-1]
    cout_pg, taps = cout // groups, ksize * ksize
    fam = family(cin, cout, groups, stride)
    pro, has_prologue, act = _prologue_args(prologue, x)
    dot = _dot_kernels(fam)
    t = tiles(x.dtype, fam if dot else "reduce")
    ho, wo = dy.shape[2], dy.shape[3]
    total = n * ho * wo
    if dot:
        span = channel_span(t.block_n, cout_pg, cin_pg, cin)
        grid_nz = (cdiv(cout, t.block_n), taps * cdiv(span, t.block_k))
    else:
        grid_nz = (cdiv(cout, t.block_c), taps * cin_pg)
    pixels_per_partial = partial_pixels(total, grid_nz[0] * grid_nz[1], t, x.device)
    parts = cdiv(total, pixels_per_partial)
    part = torch.empty((parts, cout, cin_pg, taps), dtype=acc_dtype(x.dtype), device=x.device)
    conv = dict(KSIZE=ksize, STRIDE=stride, PADDING=padding, DILATION=dilation,
                PROLOGUE=has_prologue, ACT=act, ACC=tl_acc(x.dtype), BLOCK_P=t.block_p,
                **t.launch_options)  # fmt: skip
    layout = (*strides(dy), *strides(x))
    if dot:
        launch(
            k.conv_bwd_weight_dot_kernel, (parts, *grid_nz),
            dy, x, pro, part, n, cin, h, wd, cout, ho, wo, cin_pg, cout_pg, span,
            pixels_per_partial, *layout,
            USE_DOT=t.use_dot, GROUPED=groups > 1, SPAN_ALIGN=span_align(cin_pg, groups),
            BLOCK_N=t.block_n, BLOCK_K=t.block_k, **conv,
        )  # fmt: skip
    else:
        launch(
            k.conv_bwd_weight_grouped_kernel, (parts, *grid_nz),
            dy, x, pro, part, n, h, wd, cout, ho, wo, cout_pg, pixels_per_partial,
            *layout, CIN_PG=cin_pg, BLOCK_C=t.block_c, **conv,
        )  # fmt: skip
    # fixed-order sum of the per-tile partials: deterministic
    return part.sum(0).view(cout, cin_pg, ksize, ksize).to(x.dtype)


def launch_grad_bias(dy: Tensor) -> Tensor:
    k = _k()
    t = tiles(dy.dtype, "reduce")
    n, c, ho, wo = dy.shape
    total = n * ho * wo
    pixels_per_partial = partial_pixels(total, cdiv(c, t.block_c), t, dy.device)
    parts = cdiv(total, pixels_per_partial)
    part = torch.empty((parts, c), dtype=acc_dtype(dy.dtype), device=dy.device)
    launch(
        k.bias_grad_kernel, (parts, cdiv(c, t.block_c)),
        dy, part, n, c, ho, wo, pixels_per_partial, *strides(dy),
        ACC=tl_acc(dy.dtype), BLOCK_P=t.block_p, BLOCK_C=t.block_c, **t.launch_options,
    )  # fmt: skip
    return part.sum(0).to(dy.dtype)


# ------------------------------------------------------------------------- custom ops


@torch.library.custom_op("fastcifar::conv2d", mutates_args=())
def _conv2d_op(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> Tensor:
    return launch_forward(input, weight, bias, stride, padding, dilation, groups)[0]


@_conv2d_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    return empty_output(input, weight.shape[0], stride, padding, dilation, weight.shape[-1])


@torch.library.custom_op("fastcifar::conv2d_grad_input", mutates_args=())
def _grad_input_op(
    grad: Tensor,
    weight: Tensor,
    input_shape: list[int],
    channels_last: bool,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return launch_grad_input(grad, weight, input_shape, fmt, stride, padding, dilation, groups)


@_grad_input_op.register_fake
def _(grad, weight, input_shape, channels_last, stride, padding, dilation, groups):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(input_shape, dtype=grad.dtype, device=grad.device, memory_format=fmt)


@torch.library.custom_op("fastcifar::conv2d_grad_weight", mutates_args=())
def _grad_weight_op(
    grad: Tensor,
    input: Tensor,
    weight_shape: list[int],
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> Tensor:
    return launch_grad_weight(grad, input, weight_shape, stride, padding, dilation, groups)


@_grad_weight_op.register_fake
def _(grad, input, weight_shape, stride, padding, dilation, groups):
    return torch.empty(weight_shape, dtype=input.dtype, device=input.device)


@torch.library.custom_op("fastcifar::conv2d_grad_bias", mutates_args=())
def _grad_bias_op(grad: Tensor) -> Tensor:
    return launch_grad_bias(grad)


@_grad_bias_op.register_fake
def _(grad):
    return torch.empty((grad.shape[1],), dtype=grad.dtype, device=grad.device)


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None
    ctx.channels_last = memory_format(input) == torch.channels_last


def conv_grads(ctx, grad: Tensor, input: Tensor, weight: Tensor):
    """(grad input, grad weight, grad bias) of a 3x3 convolution for ``grad`` of its
    output, as ``ctx.needs_input_grad`` asks; ``ctx`` carries ``args`` (stride, padding,
    dilation, groups), ``has_bias`` and ``channels_last``. Shared by every op built on the
    convolution."""
    gi = gw = gb = None
    if ctx.needs_input_grad[0]:
        gi = _grad_input_op(grad, weight, list(input.shape), ctx.channels_last, *ctx.args)
    if ctx.needs_input_grad[1]:
        gw = _grad_weight_op(grad, input, list(weight.shape), *ctx.args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _grad_bias_op(grad)
    return gi, gw, gb


def _backward(ctx, grad):
    input, weight = ctx.saved_tensors
    return (*conv_grads(ctx, grad, input, weight), None, None, None, None)


_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def prepare_args(input, weight, bias, stride, padding, dilation, groups) -> tuple[int, int, int]:
    """Check a call of a convolution op and return (stride, padding, dilation) as ints.

    Raises:
        NotImplementedError: an unsupported configuration (named).
        ValueError: shapes that do not match, or dtypes that differ.
    """
    stride, padding, dilation = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    check_supported(input.shape, weight.shape, input.dtype, input.device, stride, padding,
                    dilation, groups)  # fmt: skip
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise ValueError(
            f"fastcifar.kernels.conv2d: input {input.dtype}, weight {weight.dtype} and bias "
            f"must share one dtype (under autocast, fastcifar.nn.Conv2d casts them)"
        )
    return stride, padding, dilation


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """``torch.nn.functional.conv2d`` for the supported subset (module docstring), in Triton.

    Args:
        input: (N, CIN, H, W), NCHW or channels_last, float32/float16/bfloat16/float64.
        weight: (COUT, CIN, 3, 3), or (COUT, CIN / groups, K, K) with K = 3, 5 or 7 when
            groups > 1; same dtype.
        bias: (COUT,) or None.
        stride, padding, dilation: ints or equal pairs.
        groups: 1, or a value giving at most 16 input channels per group.

    Returns:
        (N, COUT, HO, WO) with HO = (H + 2 padding - dilation (K - 1) - 1) // stride + 1,
        the input's dtype and memory format.

    Raises:
        NotImplementedError: the configuration is outside the supported subset (named).
        ValueError: the weight does not match the input channels and groups, or the
            dtypes differ.
    """
    stride, padding, dilation = prepare_args(input, weight, bias, stride, padding, dilation,
                                             groups)  # fmt: skip
    return _conv2d_op(input, weight, bias, stride, padding, dilation, groups)
