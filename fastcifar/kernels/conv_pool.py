"""``conv2d_pool_stats``: a convolution whose 2x2 max pool runs in its epilogue, with the
BatchNorm statistics of the pooled output, for the speed run's ``conv -> MaxPool2d(2) ->
BatchNorm`` (each block of ``fastcifar.models.speedrun``).

The forward (``conv_dot_kernels.conv_pool_fwd_dot_kernel``) computes the four pre-pool
pixels of each window, keeps the maximum and writes only the pooled output (a quarter of
the convolution's bytes), its per-channel batch statistics and each maximum's window
position, 2 bits a channel (``_pool``). The backward never writes the pre-pool gradient:
the input- and weight-gradient kernels (``conv_dot_bwd_kernels``, ``UNPOOL``) read the
pooled gradient and the positions and expand them as they load. Against PyTorch's
convolution, ``max_pool2d`` with indices and a BatchNorm statistics pass, the pre-pool
output (written, read by the pool), the int64 indices (8 bytes an element) and the
pre-pool gradient (written by the pool's backward, read by both gradient convolutions)
are not moved at all.

Shapes: input (N, CIN, H, W) NCHW or channels_last; weight (COUT, CIN / groups, K, K)
of a stride-1 dense or wide-grouped convolution (the ``tl.dot`` family); returns y (N, COUT, HO //
2, WO // 2) (floor, as ``nn.MaxPool2d(2)``) in the input's dtype and memory format,
mean and var (COUT,) in float32 (float64 for float64 input). Differentiable in input,
weight, bias and the prologue through y, mean and var. Ties go where PyTorch's
``max_pool2d`` sends them (the first maximum in row-major window order).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcifar.kernels.conv import _grad_bias_op, prepare_args
from fastcifar.kernels.conv_bn import check_prologue, combine_stats, fold_stats_grad, prologue_grad
from fastcifar.kernels.conv_launch import empty_pooled_output, launch_pool_forward
from fastcifar.kernels.conv_launch_bwd import launch_grad_input, launch_grad_weight
from fastcifar.kernels.flops import register_pooled_conv_flops
from fastcifar.kernels.launch import ACTIVATIONS, acc_dtype, cdiv, memory_format, out_size

__all__ = ["conv2d_pool_stats"]


def _prologue(prologue: Tensor | None, act: int):
    return None if prologue is None else (prologue, act)


@torch.library.custom_op("fastcifar::conv2d_pool_stats", mutates_args=())
def _op(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    prologue: Tensor | None,
    act: int,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y, part, block, idx = launch_pool_forward(
        input, weight, bias, stride, padding, dilation, groups, _prologue(prologue, act)
    )
    mean, var = combine_stats(part, y.shape[0] * y.shape[2] * y.shape[3], block)
    return y, mean, var, idx


@_op.register_fake
def _(input, weight, bias, prologue, act, stride, padding, dilation, groups):
    cout = weight.shape[0]
    y = empty_pooled_output(input, cout, stride, padding, dilation, weight.shape[-1])
    stat = input.new_empty((cout,), dtype=acc_dtype(input.dtype))
    idx_shape = (y.shape[0] * y.shape[2] * y.shape[3], cdiv(cout, 4))
    return y, stat, torch.empty_like(stat), input.new_empty(idx_shape, dtype=torch.uint8)


def _pre_pool_size(input: Tensor, weight: Tensor, stride: int, padding: int, dilation: int):
    k = weight.shape[-1] if isinstance(weight, Tensor) else weight[-1]
    return tuple(out_size(input.shape[i], stride, padding, dilation, k) for i in (2, 3))


@torch.library.custom_op("fastcifar::conv2d_unpool_grad_input", mutates_args=())
def _grad_input_op(
    grad: Tensor,
    weight: Tensor,
    idx: Tensor,
    input: Tensor,
    prologue: Tensor | None,
    act: int,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> tuple[Tensor, Tensor]:
    ho, wo = _pre_pool_size(input, weight, stride, padding, dilation)
    out = launch_grad_input(
        grad,
        weight,
        input.shape,
        memory_format(input),
        stride,
        padding,
        dilation,
        groups,
        prologue=_prologue(prologue, act),
        x=input,
        unpool=(idx, ho, wo),
    )
    if prologue is None:  # no prologue: no sums (an empty (0, 2) in their place)
        return out, input.new_empty((0, 2), dtype=acc_dtype(input.dtype))
    return out


@_grad_input_op.register_fake
def _(grad, weight, idx, input, prologue, act, stride, padding, dilation, groups):
    rows = 0 if prologue is None else input.shape[1]
    red = input.new_empty((rows, 2), dtype=acc_dtype(input.dtype))
    return torch.empty_like(input, memory_format=memory_format(input)), red


@torch.library.custom_op("fastcifar::conv2d_unpool_grad_weight", mutates_args=())
def _grad_weight_op(
    grad: Tensor,
    idx: Tensor,
    input: Tensor,
    prologue: Tensor | None,
    act: int,
    weight_shape: list[int],
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> Tensor:
    ho, wo = _pre_pool_size(input, weight_shape, stride, padding, dilation)
    return launch_grad_weight(
        grad,
        input,
        weight_shape,
        stride,
        padding,
        dilation,
        groups,
        prologue=_prologue(prologue, act),
        unpool=(idx, ho, wo),
    )


@_grad_weight_op.register_fake
def _(grad, idx, input, prologue, act, weight_shape, stride, padding, dilation, groups):
    return input.new_empty(weight_shape)


def _setup_context(ctx, inputs, output):
    input, weight, bias, prologue, act, stride, padding, dilation, groups = inputs
    y, mean, _, idx = output
    # the raw input, the pooled output and the positions: nothing of the pre-pool size
    ctx.save_for_backward(input, weight, prologue, y, mean, idx)
    ctx.args = (stride, padding, dilation, groups)
    ctx.act, ctx.has_bias = act, bias is not None


def _backward(ctx, gy, gmean, gvar, gidx):
    input, weight, prologue, y, mean, idx = ctx.saved_tensors
    g = fold_stats_grad(gy, gmean, gvar, y, mean).to(y.dtype)
    gi = gw = gb = gpro = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
        gi, red = _grad_input_op(g, weight, idx, input, prologue, ctx.act, *ctx.args)
        if prologue is not None:
            gpro = prologue_grad(prologue, red)
    if ctx.needs_input_grad[1]:
        gw = _grad_weight_op(g, idx, input, prologue, ctx.act, list(weight.shape), *ctx.args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _grad_bias_op(g)  # the bias reaches every pre-pool pixel: the pooled sum
    return gi, gw, gb, gpro, None, None, None, None, None


_op.register_autograd(_backward, setup_context=_setup_context)
# FLOPs at the convolution's own (pre-pool) size (kernels/flops.py)
register_pooled_conv_flops(torch.ops.fastcifar.conv2d_pool_stats, "weight")
register_pooled_conv_flops(torch.ops.fastcifar.conv2d_unpool_grad_input, "weight")
register_pooled_conv_flops(torch.ops.fastcifar.conv2d_unpool_grad_weight, "weight_shape")


def conv2d_pool_stats(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    prologue: Tensor | None = None,
    activation: str = "identity",
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): y = max_pool2d(conv2d(x, weight, bias, ...), 2) with x the input,
    or ``act((input - center) * scale + shift)`` with a ``prologue`` ((CIN, 3) center,
    scale, shift; ``activation`` one of ``launch.ACTIVATIONS``; as
    ``conv2d_prologue_stats``'s), and y's per-channel batch mean and biased variance over
    (N, HO // 2, WO // 2), as training BatchNorm uses them. See the module docstring.

    Args:
        input: (N, CIN, H, W), as ``conv2d_relu_stats``'.
        weight: (COUT, CIN / groups, K, K); dense or at least 8 channels a group.
        bias: (COUT,) or None.
        prologue: (CIN, 3) center, scale, shift, or None.
        activation: the prologue's activation name.
        stride: 1.
        padding: int or pair of equal ints.
        dilation: int or pair of equal ints.
        groups: the convolution's groups.

    Returns:
        (y (N, COUT, HO // 2, WO // 2) in ``input``'s dtype and memory format, mean (COUT,),
        biased variance (COUT,)).

    Raises:
        NotImplementedError: as ``fastcifar.kernels.conv2d``; a depthwise or
            narrow-grouped convolution (the pool runs in the ``tl.dot`` kernels only); a
            stride other than 1.
        ValueError: as ``fastcifar.kernels.conv2d``; a prologue not (CIN, 3); an unknown
            activation; an output smaller than the 2x2 window.
    """
    stride, padding, dilation = prepare_args(input, weight, bias, stride, padding, dilation, groups)
    prefix = "fastcifar.kernels.conv2d_pool_stats:"
    check_prologue(prologue, input.shape[1], prefix, activation)
    if min(_pre_pool_size(input, weight, stride, padding, dilation)) < 2:
        raise ValueError(
            f"{prefix} the convolution's output of input {tuple(input.shape)} is smaller "
            "than the 2x2 pooling window; pool a larger map"
        )
    pro = None if prologue is None else prologue.contiguous()
    act = ACTIVATIONS[activation]
    y, mean, var, _ = _op(input, weight, bias, pro, act, stride, padding, dilation, groups)
    return y, mean, var
