"""``conv2d_relu_stats``: the Triton 3x3 convolution with a ReLU and a BatchNorm-statistics
epilogue, for the seeds' Conv -> ReLU -> BatchNorm blocks.

One kernel computes the convolution, applies the ReLU, stores the result and, from the
values it just stored, the per-channel batch mean and (biased) variance that a training
BatchNorm needs: the separate ReLU pass and the statistics pass over the activation are
saved. Statistics are combined from per-program partials (sum and sum of squared
deviations from the program's own mean; Chan et al., "Updating formulae and a pairwise
algorithm for computing sample variances", 1979) in a fixed order: deterministic.

Shapes: input (N, CIN, H, W) NCHW or channels_last; weight and groups as
``fastcifar.kernels.conv2d``; returns y (N, COUT, HO, WO) in the input's dtype and memory
format, mean and var (COUT,) in float32 (float64 for float64 input). Differentiable in
input, weight and bias through y, mean and var.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcifar.kernels.conv import _grad_bias_op, conv_grads, prepare_args
from fastcifar.kernels.conv_launch import launch_forward
from fastcifar.kernels.conv_launch_bwd import launch_grad_input, launch_grad_weight
from fastcifar.kernels.flops import register_conv_flops
from fastcifar.kernels.launch import ACTIVATIONS, acc_dtype, empty_output, memory_format

__all__ = ["conv2d_prologue_stats", "conv2d_relu_stats"]


def combine_stats(part: Tensor, pixels: int, block: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance per channel from (programs, C, 2) partials.

    Args:
        part: the kernel's partials (programs, C, 2): each program's (sum, sum of squared
            deviations from its own mean), accumulator dtype.
        pixels: pixels in all (N * HO * WO).
        block: pixels per program (every program's but the last's).

    Returns:
        (mean (C,), biased variance (C,)), the partials' dtype, combined by Chan et al.'s
        parallel variance formula.
    """
    programs = part.shape[0]
    counts = torch.full((programs,), float(block), dtype=part.dtype, device=part.device)
    counts[-1] = pixels - block * (programs - 1)
    sums, m2 = part[..., 0], part[..., 1]
    mean = sums.sum(0) / pixels
    tile_mean = sums / counts[:, None]
    m2_total = m2.sum(0) + (counts[:, None] * (tile_mean - mean) ** 2).sum(0)
    return mean, m2_total / pixels


@torch.library.custom_op("fastcifar::conv2d_relu_stats", mutates_args=())
def _op(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    y, part, block = launch_forward(
        input, weight, bias, stride, padding, dilation, groups, relu, stats=True
    )
    mean, var = combine_stats(part, y.shape[0] * y.shape[2] * y.shape[3], block)
    return y, mean, var


@_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, relu):
    return _fake_stats(input, weight, stride, padding, dilation)


def _fake_stats(input, weight, stride, padding, dilation):
    """Fake (y, mean, var) of the statistics ops: y as the convolution's output, the
    statistics (COUT,) in the accumulator dtype."""
    cout = weight.shape[0]
    y = empty_output(input, cout, stride, padding, dilation, weight.shape[-1])
    stat = acc_dtype(input.dtype)
    return y, input.new_empty((cout,), dtype=stat), input.new_empty((cout,), dtype=stat)


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu = inputs
    y, mean, _ = output
    ctx.save_for_backward(input, weight, y, mean)
    ctx.args = (stride, padding, dilation, groups)  # what conv_grads reads
    ctx.relu = relu
    ctx.has_bias = bias is not None
    ctx.channels_last = memory_format(input) == torch.channels_last


def _backward(ctx, gy, gmean, gvar):
    input, weight, y, mean = ctx.saved_tensors
    g = fold_stats_grad(gy, gmean, gvar, y, mean)
    if ctx.relu:
        g = g * (y > 0)
    g = g.to(y.dtype)
    return (*conv_grads(ctx, g, input, weight), None, None, None, None, None)


def fold_stats_grad(
    gy: Tensor | None, gmean: Tensor | None, gvar: Tensor | None, y: Tensor, mean: Tensor
) -> Tensor:
    """The gradient reaching ``y`` (N, C, HO, WO) from an op that returns y and its batch
    mean and biased variance per channel: ``gy + gmean / M + 2 gvar (y - mean) / M`` with
    M = N HO WO pixels, in float32 (float64 for float64 ``y``).

    Args:
        gy: the gradient of y (N, C, HO, WO), or None.
        gmean: the gradient of the mean (C,), or None.
        gvar: the gradient of the variance (C,), or None.
        y: the op's output (N, C, HO, WO).
        mean: its batch mean (C,).

    Returns:
        The total gradient of y (N, C, HO, WO), float32 (float64 for float64 ``y``).
    """
    pixels = y.shape[0] * y.shape[2] * y.shape[3]
    acc = acc_dtype(y.dtype)
    g = gy.to(acc) if gy is not None else torch.zeros_like(y, dtype=acc)
    if gmean is not None:  # d mean / d y = 1 / M
        g = g + (gmean / pixels).view(1, -1, 1, 1)
    if gvar is not None:  # d var / d y = 2 (y - mean) / M
        g = g + (2 * gvar / pixels).view(1, -1, 1, 1) * (y.to(acc) - mean.view(1, -1, 1, 1))
    return g


_op.register_autograd(_backward, setup_context=_setup_context)
register_conv_flops(torch.ops.fastcifar.conv2d_relu_stats, "input", "weight")


def conv2d_relu_stats(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    relu: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): y = relu(conv2d(...)) (or without the ReLU), and y's per-channel
    batch mean and biased variance over (N, HO, WO), as training BatchNorm uses them.

    Args:
        input: (N, CIN, H, W), float32, float16, bfloat16 or float64, CUDA (or the CPU under
            the interpreter), any memory format.
        weight: (COUT, CIN / groups, 3, 3), ``input``'s dtype.
        bias: (COUT,) or None.
        stride: int or pair of equal ints.
        padding: int or pair of equal ints.
        dilation: int or pair of equal ints.
        groups: the convolution's groups.
        relu: apply ReLU before the statistics.

    Returns:
        (y (N, COUT, HO, WO) in ``input``'s dtype and memory format, mean (COUT,) and biased
        variance (COUT,) in float32, float64 for float64 input).

    Raises:
        NotImplementedError / ValueError: as ``fastcifar.kernels.conv2d``.
    """
    stride, padding, dilation = prepare_args(input, weight, bias, stride, padding, dilation, groups)
    return _op(input, weight, bias, stride, padding, dilation, groups, relu)


# ---------------------------------------- with the BatchNorm-and-activation prologue


def prologue_grad(prologue: Tensor, red: Tensor) -> Tensor:
    """The (CIN, 3) prologue's gradient from the (CIN, 2) sums (sum dz, sum dz (x -
    center)): (-scale sum dz, sum dz (x - center), sum dz).

    Args:
        prologue: the (CIN, 3) center, scale, shift.
        red: the (CIN, 2) sums (sum dz, sum dz * (x - center)).

    Returns:
        The (CIN, 3) gradient of (center, scale, shift), ``red``'s dtype.
    """
    sums = red.to(prologue.dtype)
    return torch.stack((-prologue[:, 1] * sums[:, 0], sums[:, 1], sums[:, 0]), dim=1)


def check_prologue(
    prologue: Tensor | None, channels: int, prefix: str, activation: str = "identity"
) -> None:
    """Raise ``ValueError`` unless ``prologue`` is None or a floating (C, 3) and
    ``activation`` is one of ``launch.ACTIVATIONS`` (checked in that order); ``prefix``
    starts the message.

    Args:
        prologue: the (C, 3) center, scale, shift, or None.
        channels: C, the input's channels.
        prefix: the op's name, starting the message.
        activation: the prologue's activation name.

    Raises:
        ValueError: ``activation`` is not in ``launch.ACTIVATIONS``, or ``prologue`` is not
            a floating (C, 3) tensor.
    """
    bad_shape = prologue is not None and (
        tuple(prologue.shape) != (channels, 3) or not prologue.is_floating_point()
    )
    if bad_shape:
        raise ValueError(
            f"{prefix} the prologue must be a floating ({channels}, 3) tensor of "
            f"center, scale and shift per input channel; got "
            f"{tuple(prologue.shape)} {prologue.dtype}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{prefix} activation {activation!r} is not one of {', '.join(ACTIVATIONS)}"
        )


@torch.library.custom_op("fastcifar::conv2d_prologue_stats", mutates_args=())
def _prologue_op(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    prologue: Tensor,
    act: int,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> tuple[Tensor, Tensor, Tensor]:
    y, part, block = launch_forward(
        input, weight, bias, stride, padding, dilation, groups, stats=True, prologue=(prologue, act)
    )
    mean, var = combine_stats(part, y.shape[0] * y.shape[2] * y.shape[3], block)
    return y, mean, var


@_prologue_op.register_fake
def _(input, weight, bias, prologue, act, stride, padding, dilation, groups):
    return _fake_stats(input, weight, stride, padding, dilation)


@torch.library.custom_op("fastcifar::conv2d_prologue_grad_input", mutates_args=())
def _prologue_grad_input_op(
    grad: Tensor,
    weight: Tensor,
    input: Tensor,
    prologue: Tensor,
    act: int,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> tuple[Tensor, Tensor]:
    return launch_grad_input(
        grad,
        weight,
        input.shape,
        memory_format(input),
        stride,
        padding,
        dilation,
        groups,
        prologue=(prologue, act),
        x=input,
    )


@_prologue_grad_input_op.register_fake
def _(grad, weight, input, prologue, act, stride, padding, dilation, groups):
    stat = acc_dtype(input.dtype)
    red = input.new_empty((input.shape[1], 2), dtype=stat)
    return torch.empty_like(input, memory_format=memory_format(input)), red


@torch.library.custom_op("fastcifar::conv2d_prologue_grad_weight", mutates_args=())
def _prologue_grad_weight_op(
    grad: Tensor,
    input: Tensor,
    prologue: Tensor,
    act: int,
    weight_shape: list[int],
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> Tensor:
    return launch_grad_weight(
        grad, input, weight_shape, stride, padding, dilation, groups, prologue=(prologue, act)
    )


@_prologue_grad_weight_op.register_fake
def _(grad, input, prologue, act, weight_shape, stride, padding, dilation, groups):
    return input.new_empty(weight_shape)


def _prologue_setup_context(ctx, inputs, output):
    input, weight, bias, prologue, act, stride, padding, dilation, groups = inputs
    y, mean, _ = output
    # the raw input and the (CIN, 3) prologue: the normalised input is recomputed
    ctx.save_for_backward(input, weight, prologue, y, mean)
    ctx.args = (stride, padding, dilation, groups)
    ctx.act, ctx.has_bias = act, bias is not None


def _prologue_backward(ctx, gy, gmean, gvar):
    input, weight, prologue, y, mean = ctx.saved_tensors
    g = fold_stats_grad(gy, gmean, gvar, y, mean).to(y.dtype)
    gi = gw = gb = gpro = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
        gi, red = _prologue_grad_input_op(g, weight, input, prologue, ctx.act, *ctx.args)
        gpro = prologue_grad(prologue, red)
    if ctx.needs_input_grad[1]:
        gw = _prologue_grad_weight_op(g, input, prologue, ctx.act, list(weight.shape), *ctx.args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _grad_bias_op(g)
    return gi, gw, gb, gpro, None, None, None, None, None


_prologue_op.register_autograd(_prologue_backward, setup_context=_prologue_setup_context)
# FLOPs, for torch.utils.flop_counter and the roofline (kernels/flops.py)
register_conv_flops(torch.ops.fastcifar.conv2d_prologue_stats, "input", "weight")
register_conv_flops(torch.ops.fastcifar.conv2d_prologue_grad_input, "input", "weight")
register_conv_flops(torch.ops.fastcifar.conv2d_prologue_grad_weight, "input", "weight_shape")


def conv2d_prologue_stats(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    prologue: Tensor,
    activation: str = "identity",
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): y = conv2d(act((input - center) * scale + shift), weight, bias, ...)
    for any convolution ``fastcifar.kernels.conv2d`` takes (dense 3x3, grouped and depthwise
    KxK), and y's per-channel batch mean and biased variance, as ``conv2d_relu_stats``. The prologue
    ((CIN, 3) center, scale, shift; ``activation`` one of ``launch.ACTIVATIONS``) is
    applied as the kernel reads the input; the padded border reads as zero after it.
    The backward recomputes it from the raw input and takes the sums of dz and
    dz * (x - center) in the input gradient's epilogue.

    Args:
        input: the raw input (N, CIN, H, W), as ``conv2d_relu_stats``'.
        weight: (COUT, CIN / groups, K, K), ``input``'s dtype.
        bias: (COUT,) or None.
        prologue: (CIN, 3) center, scale, shift, float32 (float64 for float64 input).
        activation: ``"identity"``, ``"relu"``, ``"relu6"``, ``"silu"`` or ``"gelu"``.
        stride: int or pair of equal ints.
        padding: int or pair of equal ints.
        dilation: int or pair of equal ints.
        groups: the convolution's groups.

    Returns:
        (y (N, COUT, HO, WO) in ``input``'s dtype and memory format, mean (COUT,), biased
        variance (COUT,)), as ``conv2d_relu_stats``.

    Raises:
        NotImplementedError / ValueError: as ``fastcifar.kernels.conv2d``; a prologue not
            (CIN, 3); an unknown activation.
    """
    stride, padding, dilation = prepare_args(input, weight, bias, stride, padding, dilation, groups)
    prefix = "fastcifar.kernels.conv2d_prologue_stats:"
    check_prologue(prologue, input.shape[1], prefix, activation)
    return _prologue_op(
        input,
        weight,
        bias,
        prologue.contiguous(),
        ACTIVATIONS[activation],
        stride,
        padding,
        dilation,
        groups,
    )
