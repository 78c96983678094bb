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
(``conv_dot_kernels``, ``conv_grouped_kernels``), launched by ``conv_launch``; no PyTorch
convolution is called. Dense convolutions and groups of
at least ``conv_launch.DOT_MIN_PER_GROUP`` (8) channels reduce on tensor cores (``tl.dot``, a
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

from fastcifar.kernels.conv_launch import launch_forward
from fastcifar.kernels.conv_launch_bwd import (
    launch_grad_bias,
    launch_grad_input,
    launch_grad_weight,
)
from fastcifar.kernels.flops import register_conv_flops, register_no_flops
from fastcifar.kernels.launch import (
    MAX_INT32_ELEMENTS,
    empty_output,
    memory_format,
    out_size,
)

__all__ = ["SUPPORTED_DTYPES", "check_supported", "conv2d", "is_supported", "kernels_can_run"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_CIN_PER_GROUP = 16  # the grouped kernel unrolls its input channels: 16 x K x K loads
GROUPED_KERNEL_SIZES = (3, 5, 7)


def _pair(v, name: str) -> int:
    if isinstance(v, int):
        return v
    v = tuple(v)
    if len(v) == 2 and v[0] == v[1]:
        return int(v[0])
    if len(v) == 1:
        return int(v[0])
    raise NotImplementedError(
        f"fastcifar.kernels.conv2d: {name}={v} differs between height "
        f"and width; only equal values are supported"
    )


def kernels_can_run(device: torch.device) -> bool:
    """Whether the Triton kernels can launch on ``device``.

    Args:
        device: a torch device.

    Returns:
        True for a CUDA (or ROCm) device, or the CPU when ``TRITON_INTERPRET=1`` was set
        before the first kernel launch.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def check_supported(
    input_shape,
    weight_shape,
    dtype,
    device,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    bias: bool = False,
) -> None:
    """Check a convolution configuration against the kernels' subset (module docstring).

    Args:
        input_shape: (N, CIN, H, W).
        weight_shape: (COUT, CIN / groups, K, K).
        dtype: the input's (and weight's) torch dtype.
        device: where it would run (a CUDA device, or the CPU under ``TRITON_INTERPRET=1``).
        stride, padding, dilation: ints or equal (height, width) pairs.
        groups: the convolution's groups.
        bias: whether a bias is added (every configuration takes one).

    Raises:
        NotImplementedError: the first unsupported part, named, with the fix where one
            exists (a batch past int32 offsets: split it).
        ValueError: a weight that does not match the input channels and groups.
    """
    stride, padding, dilation = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    prefix = "fastcifar.kernels.conv2d:"
    if len(input_shape) != 4 or len(weight_shape) != 4:
        raise NotImplementedError(f"{prefix} only 4-D input and weight are supported")
    _check_window(input_shape, weight_shape, stride, padding, dilation, groups, prefix)
    if dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"{prefix} dtype {dtype} is not float32/16, bfloat16 or float64")
    _check_sizes(input_shape, weight_shape, stride, padding, dilation, prefix)
    if not kernels_can_run(torch.device(device)):
        raise NotImplementedError(
            f"{prefix} device {device} cannot run Triton: use a CUDA tensor, or set "
            f"TRITON_INTERPRET=1 before the first launch to run on the CPU"
        )


def _check_window(input_shape, weight_shape, stride, padding, dilation, groups, prefix) -> None:
    """The kernel size, groups, dilation, stride and padding the kernels take."""
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


def _check_sizes(input_shape, weight_shape, stride, padding, dilation, prefix) -> None:
    """The dilated window fits in the padded input; input and output below int32 offsets."""
    n, cin, h, w = input_shape
    cout, k = weight_shape[0], weight_shape[2]
    span = dilation * (k - 1) + 1
    if h + 2 * padding < span or w + 2 * padding < span:
        raise NotImplementedError(
            f"{prefix} the dilated {k}x{k} kernel does not fit in a {h}x{w} input with "
            f"padding {padding}"
        )
    ho, wo = out_size(h, stride, padding, dilation, k), out_size(w, stride, padding, dilation, k)
    for what, elements in (("input", n * cin * h * w), ("output", n * cout * ho * wo)):
        if elements >= MAX_INT32_ELEMENTS:
            raise NotImplementedError(
                f"{prefix} the {what} has {elements:,} elements, past the kernels' int32 "
                f"offsets (2**31): split the batch into chunks below that"
            )


def is_supported(input: Tensor, weight: Tensor, stride=1, padding=0, dilation=1, groups=1) -> bool:
    """Whether ``conv2d`` accepts these tensors and arguments, as ``check_supported``
    decides, with input and weight of one dtype.

    Args:
        input: (N, CIN, H, W).
        weight: (COUT, CIN / groups, KH, KW).
        stride: int or pair.
        padding: int or pair.
        dilation: int or pair.
        groups: the convolution's groups.

    Returns:
        True when ``conv2d(input, weight, None, stride, padding, dilation, groups)`` would
        run (no exception raised).
    """
    try:
        check_supported(
            input.shape, weight.shape, input.dtype, input.device, stride, padding, dilation, groups
        )
    except (NotImplementedError, ValueError):
        return False
    return input.dtype == weight.dtype


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


# FLOPs, for torch.utils.flop_counter and the roofline (kernels/flops.py)
register_conv_flops(torch.ops.fastcifar.conv2d, "input", "weight")
register_conv_flops(torch.ops.fastcifar.conv2d_grad_input, "input_shape", "weight")
register_conv_flops(torch.ops.fastcifar.conv2d_grad_weight, "input", "weight_shape")
register_no_flops(torch.ops.fastcifar.conv2d_grad_bias)


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
    convolution.

    Args:
        ctx: the autograd context of the op's forward.
        grad: the output's gradient (N, COUT, HO, WO).
        input: the saved input (N, CIN, H, W).
        weight: the saved weight (COUT, CIN / groups, K, K).

    Returns:
        (grad input or None, grad weight or None, grad bias or None), each in its tensor's
        dtype.
    """
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

    Args:
        input: (N, CIN, H, W).
        weight: (COUT, CIN / groups, K, K).
        bias: (COUT,) or None.
        stride: int or pair of equal ints.
        padding: int or pair of equal ints.
        dilation: int or pair of equal ints.
        groups: the convolution's groups.

    Returns:
        (stride, padding, dilation) as ints.

    Raises:
        NotImplementedError: an unsupported configuration (named).
        ValueError: shapes that do not match, or dtypes that differ.
    """
    stride, padding, dilation = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    check_supported(
        input.shape, weight.shape, input.dtype, input.device, stride, padding, dilation, groups
    )
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
    stride, padding, dilation = prepare_args(input, weight, bias, stride, padding, dilation, groups)
    return _conv2d_op(input, weight, bias, stride, padding, dilation, groups)
