"""``pointwise_conv2d``: the Triton 1x1 convolution, with the previous BatchNorm and
activation applied to its input as it loads it, and the next BatchNorm's batch
statistics taken from its output as it stores it.

In a training step of conv -> BatchNorm -> activation -> 1x1 conv, PyTorch writes the
normalised, activated tensor and reads it back into the 1x1 convolution, and saves it
for the backward. Here the 1x1 convolution reads the raw convolution output and applies
``act((x - center) * scale + shift)`` per input channel in its prologue (center: the
BatchNorm's batch mean; scale: its weight over the batch deviation; shift: its bias;
computed by the caller, ``fastcifar.nn.chain``); the normalised tensor is never written,
and the backward recomputes it from the raw tensor. This is the scale-bias-activation-convolution of
cuDNN's fused-ops API (``CUDNN_FUSED_SCALE_BIAS_ACTIVATION_CONV_BNSTATS``, the MLPerf
ResNet-50 kernels), written for the pointwise convolutions of the model zoo.

Shapes and layouts: input (N, CIN, H, W), NCHW or channels_last (channels_last in,
channels_last out); weight (COUT, CIN, 1, 1); bias (COUT,) or None; the prologue a
(CIN, 3) tensor of center, scale and shift, any floating dtype (float32 under autocast:
BatchNorm's), or None (a plain 1x1 convolution); stride 1, no padding. Input, weight
and bias share one dtype: float32, float16, bfloat16 (float32 accumulation) or float64
(float64 accumulation, for gradcheck). Differentiable in input, weight, bias and the
prologue (and through the statistics: mean and var carry gradients back into the
output).

Backward: the input gradient's kernel computes ``da = dy @ w``, then in its epilogue
``dz = da * act'(z)``, stores ``dz * scale`` (the raw input's direct gradient) and the
per-channel sums of ``dz`` and ``dz * (x - center)`` (the prologue's gradients follow):
the BatchNorm backward's reductions without a pass of their own. The weight gradient's
kernel recomputes the prologue from the raw input. Saved for the backward: the raw
input and the (CIN, 3) prologue only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcifar.kernels.conv import _grad_bias_op, kernels_can_run
from fastcifar.kernels.conv_bn import check_prologue, combine_stats, fold_stats_grad, prologue_grad
from fastcifar.kernels.flops import register_conv_flops
from fastcifar.kernels.launch import (
    ACTIVATIONS,
    MAX_INT32_ELEMENTS,
    acc_dtype,
    empty_output,
    memory_format,
)
from fastcifar.kernels.pointwise_launch import launch_forward, launch_grad_input, launch_grad_weight

__all__ = ["ACTIVATIONS", "pointwise_conv2d"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@torch.library.custom_op("fastcifar::pointwise_conv2d", mutates_args=())
def _op(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    prologue: Tensor | None,
    act: int,
    stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    y, part, block = launch_forward(input, weight, bias, prologue, act, stats)
    if not stats:
        empty = input.new_empty((0,), dtype=acc_dtype(input.dtype))
        return y, empty, empty.clone()
    mean, var = combine_stats(part, y.shape[0] * y.shape[2] * y.shape[3], block)
    return y, mean, var


@_op.register_fake
def _(input, weight, bias, prologue, act, stats):
    y = empty_output(input, weight.shape[0], 1, 0, 1, 1)
    size = (weight.shape[0],) if stats else (0,)
    stat = acc_dtype(input.dtype)
    return y, input.new_empty(size, dtype=stat), input.new_empty(size, dtype=stat)


@torch.library.custom_op("fastcifar::pointwise_conv2d_grad_input", mutates_args=())
def _grad_input_op(
    grad: Tensor,
    weight: Tensor,
    input: Tensor,
    prologue: Tensor | None,
    act: int,
) -> tuple[Tensor, Tensor]:
    return launch_grad_input(grad, weight, input, prologue, act)


@_grad_input_op.register_fake
def _(grad, weight, input, prologue, act):
    red = input.new_empty((input.shape[1], 2), dtype=acc_dtype(input.dtype))
    return torch.empty_like(input, memory_format=memory_format(input)), red


@torch.library.custom_op("fastcifar::pointwise_conv2d_grad_weight", mutates_args=())
def _grad_weight_op(
    grad: Tensor,
    input: Tensor,
    prologue: Tensor | None,
    act: int,
    weight_shape: list[int],
) -> Tensor:
    return launch_grad_weight(grad, input, prologue, act, weight_shape)


@_grad_weight_op.register_fake
def _(grad, input, prologue, act, weight_shape):
    return input.new_empty(weight_shape)


def _setup_context(ctx, inputs, output):
    input, weight, bias, prologue, act, stats = inputs
    y, mean, _ = output
    # the raw input and the (CIN, 3) prologue: the normalised input is recomputed
    ctx.save_for_backward(input, weight, prologue, y if stats else None, mean)
    ctx.act, ctx.stats, ctx.has_bias = act, stats, bias is not None


def _backward(ctx, gy, gmean, gvar):
    input, weight, prologue, y, mean = ctx.saved_tensors
    if ctx.stats:
        gy = fold_stats_grad(gy, gmean, gvar, y, mean).to(y.dtype)
    gi = gw = gb = gpro = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
        gi, red = _grad_input_op(gy, weight, input, prologue, ctx.act)
        if prologue is not None:
            gpro = prologue_grad(prologue, red)
    if ctx.needs_input_grad[1]:
        gw = _grad_weight_op(gy, input, prologue, ctx.act, list(weight.shape))
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _grad_bias_op(gy)
    return gi, gw, gb, gpro, None, None


_op.register_autograd(_backward, setup_context=_setup_context)
# FLOPs, for torch.utils.flop_counter and the roofline (kernels/flops.py)
register_conv_flops(torch.ops.fastcifar.pointwise_conv2d, "input", "weight")
register_conv_flops(torch.ops.fastcifar.pointwise_conv2d_grad_input, "input", "weight")
register_conv_flops(torch.ops.fastcifar.pointwise_conv2d_grad_weight, "input", "weight_shape")


def check_pointwise(
    input: Tensor, weight: Tensor, bias: Tensor | None, prologue: Tensor | None, activation: str
) -> None:
    """Raise ``ValueError`` / ``NotImplementedError`` naming what ``pointwise_conv2d``
    cannot take.

    Args:
        input: (N, CIN, H, W).
        weight: (COUT, CIN, 1, 1).
        bias: (COUT,) or None.
        prologue: (CIN, 3) or None.
        activation: the prologue's activation name.

    Raises:
        ValueError: mismatched shapes or dtypes, a bad prologue or activation.
        NotImplementedError: a device that cannot run Triton, an unsupported dtype or shape,
            a tensor past the kernels' int32 offsets.
    """
    prefix = "fastcifar.kernels.pointwise_conv2d:"
    if input.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise NotImplementedError(
            f"{prefix} input (N, CIN, H, W) and weight (COUT, CIN, 1, 1) only; got "
            f"{tuple(input.shape)} and {tuple(weight.shape)}"
        )
    if weight.shape[1] != input.shape[1]:
        raise ValueError(
            f"{prefix} weight {tuple(weight.shape)} does not match input channels {input.shape[1]}"
        )
    if input.dtype not in _DTYPES:
        raise NotImplementedError(
            f"{prefix} dtype {input.dtype} is not float32/16, bfloat16 or float64"
        )
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise ValueError(
            f"{prefix} input {input.dtype}, weight {weight.dtype} and bias must share one dtype"
        )
    check_prologue(prologue, input.shape[1], prefix, activation)
    biggest = max(input.numel(), input.shape[0] * weight.shape[0] * input[0, 0].numel())
    if biggest >= MAX_INT32_ELEMENTS:
        raise NotImplementedError(
            f"{prefix} {biggest:,} elements, past the kernels' int32 "
            f"offsets (2**31): split the batch"
        )
    if not kernels_can_run(input.device):
        raise NotImplementedError(
            f"{prefix} device {input.device} cannot run Triton: use a "
            f"CUDA tensor, or set TRITON_INTERPRET=1 before the first "
            f"launch to run on the CPU"
        )


def pointwise_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    prologue: Tensor | None = None,
    activation: str = "identity",
    stats: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """``conv2d(act((input - center) * scale + shift), weight, bias)`` for a 1x1
    ``weight``, in Triton.

    Args:
        input: (N, CIN, H, W), NCHW or channels_last.
        weight: (COUT, CIN, 1, 1), input's dtype.
        bias: (COUT,) or None, input's dtype.
        prologue: (CIN, 3) per input channel: center, scale, shift (made contiguous), or
            None (a plain 1x1 convolution). For a training BatchNorm with batch mean m and
            biased variance v: center m, scale ``weight / sqrt(v + eps)``, shift its bias.
            (Centring in the kernel keeps the scale's gradient a sum of dz (x - m): float32
            would cancel the uncentred sum of dz x against m sum dz.)
        activation: applied after the prologue's affine map: identity, relu, relu6, silu or gelu.
        stats: also return the output's per-channel batch mean and biased variance over
            (N, H, W), float32 (float64 for float64 input), as a training BatchNorm
            uses them.

    Returns:
        y (N, COUT, H, W) in the input's dtype and memory format; with ``stats``,
        (y, mean, var).

    Raises:
        NotImplementedError: not a 1x1 weight, an unsupported dtype, a device that cannot
            run Triton, or a tensor past int32 offsets.
        ValueError: mismatched shapes or dtypes, a prologue not (CIN, 3), an unknown
            activation.
    """
    check_pointwise(input, weight, bias, prologue, activation)
    prologue = prologue.contiguous() if prologue is not None else None
    out = _op(input, weight, bias, prologue, ACTIVATIONS[activation], stats)
    return out if stats else out[0]
