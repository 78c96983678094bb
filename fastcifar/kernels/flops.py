"""Each ``fastcifar::`` custom op's FLOP formula, registered with
``torch.utils.flop_counter.register_flop_formula`` beside the op (each op file calls
``register_conv_flops`` after its ``custom_op`` definitions), so that PyTorch's
``FlopCounterMode`` and the roofline (``fastcifar.roofline.ledger``) count our operators
as they count ATen's.

A convolution operator costs what the ATen convolution it computes costs:
``conv_flop_count`` (PyTorch's formula: 2 FLOPs per multiply-add, 2 * N * HO * WO * COUT
* CIN / groups * KH * KW), the weight's shape carrying the groups; a gradient operator
costs the same (one gradient each). A prologue's or an epilogue's elementwise work (the
BatchNorm affine map, the activation, the statistics) is not counted: it is bound by
bytes, which the roofline counts from the launches (``launch.record_launches``).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

__all__ = ["dwsep_flops", "register_conv_flops", "register_no_flops", "register_pooled_conv_flops"]


def _first_shape(shape):
    """The first tensor's shape of an output that may be a tuple of tensors."""
    while isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return list(shape)


def _argument_index(op: torch._ops.OpOverloadPacket, name: str) -> int:
    names = [a.name for a in op.default._schema.arguments]
    if name not in names:
        raise ValueError(f"{op} has no argument {name!r} (its arguments: {', '.join(names)})")
    return names.index(name)


def _grad_index(op: torch._ops.OpOverloadPacket) -> int | None:
    """The position of a gradient operator's ``grad`` argument (the output's gradient,
    whose shape the FLOPs follow); None for a forward operator (its output's shape)."""
    names = [a.name for a in op.default._schema.arguments]
    return names.index("grad") if "grad" in names else None


def register_conv_flops(op: torch._ops.OpOverloadPacket, input: str, weight: str) -> None:
    """Register ``op``'s FLOPs as the convolution of its arguments named ``input`` (a
    tensor (N, CIN, H, W) or its shape) and ``weight`` (a tensor (COUT, CIN / groups, KH,
    KW) or its shape), producing its argument ``grad`` (a gradient operator: the output's
    gradient, (N, COUT, HO, WO)) or else its first output.

    Args:
        op: the ``torch.ops.fastcifar`` op packet.
        input: the name of its input argument.
        weight: the name of its weight argument.

    Raises:
        ValueError: ``op`` has no argument of one of those names.
        RuntimeError: ``op`` already has a formula (torch refuses a second one).
    """
    x, w = _argument_index(op, input), _argument_index(op, weight)
    grad = _grad_index(op)

    @register_flop_formula(op)
    def formula(*args, out_shape=None, **kwargs) -> int:
        out = args[grad] if grad is not None else out_shape
        return conv_flop_count(list(args[x]), list(args[w]), _first_shape(out), False)


def register_pooled_conv_flops(op: torch._ops.OpOverloadPacket, weight: str) -> None:
    """Register ``op``, a convolution whose output is max-pooled in its epilogue (or a
    gradient of one, un-pooled on its load), as the convolution at its own, pre-pool
    output size: arguments ``input`` (N, CIN, H, W), ``weight`` (a tensor or its shape),
    ``stride``, ``padding``, ``dilation`` (ints) give (N, COUT, HO, WO); the pool's
    comparisons are elementwise and not counted.

    Args:
        op: the ``torch.ops.fastcifar`` op packet.
        weight: the name of its weight argument.

    Raises:
        ValueError: ``op`` lacks one of those arguments.
        RuntimeError: ``op`` already has a formula.
    """
    from fastcifar.kernels.launch import out_size

    names = ("input", weight, "stride", "padding", "dilation")
    x, w, s, p, d = (_argument_index(op, n) for n in names)

    @register_flop_formula(op)
    def formula(*args, out_shape=None, **kwargs) -> int:
        shape, wshape = list(args[x]), list(args[w])
        side = [out_size(shape[i], args[s], args[p], args[d], wshape[-1]) for i in (2, 3)]
        return conv_flop_count(shape, wshape, [shape[0], wshape[0], *side], False)


def register_no_flops(op: torch._ops.OpOverloadPacket) -> None:
    """Register ``op`` as doing no counted FLOPs (elementwise or a reduction: bound by
    bytes), so a FLOP counter knows it, rather than not knowing it.

    Args:
        op: the ``torch.ops.fastcifar`` op packet.

    Raises:
        RuntimeError: ``op`` already has a formula.
    """

    @register_flop_formula(op)
    def formula(*args, out_shape=None, **kwargs) -> int:
        return 0


def dwsep_flops(op: torch._ops.OpOverloadPacket, depthwise: int, pointwise: int) -> None:
    """Register the fused depthwise-separable op ``op`` (arguments ``input`` (N, C, H, W),
    ``w_dw`` (C, 1, K, K), ``w_pw`` (COUT, C, 1, 1)) as ``depthwise`` passes of its
    depthwise convolution and ``pointwise`` of its 1x1: (1, 1) for the forward; (3, 2)
    for the backward, which recomputes the depthwise output and computes the input's
    gradient through both convolutions and both weights' gradients. The output (or the
    ``grad`` argument) gives N, HO and WO.

    Args:
        op: the ``torch.ops.fastcifar`` op packet.
        depthwise: passes of the depthwise convolution it counts.
        pointwise: passes of the 1x1 convolution it counts.

    Raises:
        RuntimeError: ``op`` already has a formula.
    """
    x, wd, wp = (_argument_index(op, n) for n in ("input", "w_dw", "w_pw"))
    grad = _grad_index(op)

    @register_flop_formula(op)
    def formula(*args, out_shape=None, **kwargs) -> int:
        out = _first_shape(args[grad] if grad is not None else out_shape)
        n, ho, wo, c, cout = out[0], out[2], out[3], args[x][1], args[wp][0]
        dw = conv_flop_count(list(args[x]), list(args[wd]), [n, c, ho, wo], False)
        pw = conv_flop_count([n, c, ho, wo], list(args[wp]), [n, cout, ho, wo], False)
        return depthwise * dw + pointwise * pw
