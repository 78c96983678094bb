"""What kind of layer a module or an operator is: the one table of the roofline's kinds.

A row of the roofline is a (module path, kind) pair. A leaf module of a known type gives
its kind (``nn.Conv2d``: dense, depthwise, grouped or 1x1 by its weight); an operator
called inside a container's own ``forward`` (``F.relu(x)``, a residual ``x + y``) takes
the kind of the operator.
"""

from __future__ import annotations

from torch import nn

__all__ = ["KINDS", "conv_kind", "fused_kind", "kernel_kind", "module_kind", "op_kind"]

# every kind, in the order tables list them
KINDS = (
    "dense",
    "depthwise",
    "grouped",
    "1x1",
    "batchnorm",
    "batchnorm+act",  # one kernel normalising and activating (a compiler's or ours)
    "activation",
    "pooling",
    "linear",
    "elementwise",  # a residual add, a gate's multiply
    "dropout",
    "copy",  # a dtype cast or a layout copy
    "loss",
    "optimizer",
    "other",
)

# fastcifar's fused modules (``fastcifar.nn``), by class name: the kind of the kernels
# they leave to the compiler (the BatchNorm statistics, the normalisation and activation
# between convolutions); their convolutions keep the convolution's kind
_FUSED_KINDS = {
    "FusedConvBNAct": "batchnorm+act",
    "FusedConvReLUBN": "batchnorm+act",
    "FusedDepthwiseSeparable": "batchnorm+act",
    "FusedConvBN": "batchnorm",
}

_MODULE_KINDS = (
    ((nn.BatchNorm2d, nn.BatchNorm1d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm), "batchnorm"),
    (
        (
            nn.ReLU,
            nn.ReLU6,
            nn.SiLU,
            nn.GELU,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.Mish,
            nn.LeakyReLU,
            nn.Sigmoid,
            nn.Tanh,
            nn.ELU,
            nn.PReLU,
        ),
        "activation",
    ),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), "pooling"),
    ((nn.Linear,), "linear"),
    ((nn.Dropout, nn.Dropout2d), "dropout"),
)

_OP_WORDS = (
    (("batch_norm", "group_norm", "layer_norm"), "batchnorm"),
    (
        (
            "relu",
            "hardtanh",
            "silu",
            "gelu",
            "sigmoid",
            "hardswish",
            "hardsigmoid",
            "mish",
            "threshold_backward",
            "leaky_relu",
            "elu",
            "tanh",
            "clamp",
        ),
        "activation",
    ),
    (("pool",), "pooling"),
    (("addmm", "mm", "linear"), "linear"),
    (("softmax", "nll_loss", "cross_entropy"), "loss"),
    (("dropout", "bernoulli"), "dropout"),
    (("_to_copy", "convert_element_type", "copy", "clone", "contiguous"), "copy"),
    (("add", "mul", "sub", "div", "where", "cat"), "elementwise"),
)


def conv_kind(in_channels: int, out_channels: int, groups: int, kernel: tuple[int, ...]) -> str:
    """``depthwise`` (one input channel a group), ``grouped``, ``1x1`` or ``dense``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        groups: the convolution's groups.
        kernel: its kernel's sides.

    Returns:
        The kind.
    """
    if groups > 1 and groups == in_channels:
        return "depthwise"
    if groups > 1:
        return "grouped"
    return "1x1" if all(k == 1 for k in kernel) else "dense"


def module_kind(module: nn.Module) -> str | None:
    """The kind of a leaf module of a known type; None for containers and others.

    Args:
        module: any module.

    Returns:
        The kind, or None.
    """
    if isinstance(module, nn.Conv2d):
        return conv_kind(module.in_channels, module.out_channels, module.groups, module.kernel_size)
    for types, kind in _MODULE_KINDS:
        if isinstance(module, types):
            return kind
    return None


def fused_kind(module: nn.Module) -> str | None:
    """The kind of the compiler's kernels inside one of fastcifar's fused modules (None
    for any other module).

    Args:
        module: any module.

    Returns:
        The kind, or None.
    """
    return _FUSED_KINDS.get(type(module).__name__)


def kernel_kind(op_kinds: list[str], layer_kind: str | None) -> str:
    """The kind of one compiled kernel from the kinds of the operators fused into it
    (``op_kind`` of each) and its layer's kind (a module's, when it has one): a kernel
    that both normalises and activates is ``batchnorm+act`` on any path; otherwise the
    layer's kind, else the operators' most common named kind.

    Args:
        op_kinds: the kinds of the operators fused into the kernel.
        layer_kind: its layer's kind, or None.

    Returns:
        The kind.
    """
    named = [k for k in op_kinds if k != "other"]
    if "batchnorm" in named and "activation" in named:
        return "batchnorm+act"
    if layer_kind is not None:
        return layer_kind
    return max(set(named), key=named.count) if named else "other"


def op_kind(name: str, weight_shape: tuple[int, ...] | None = None, groups: int = 1) -> str:
    """The kind of operator ``name`` (``convolution``, ``relu_``, ``fastcifar::conv2d``);
    convolutions need their weight's shape (COUT, CIN / groups, KH, KW) and groups.

    Args:
        name: the operator's name.
        weight_shape: a convolution's weight shape, or None.
        groups: a convolution's groups.

    Returns:
        The kind.
    """
    base = name.split("::")[-1]
    if "conv" in base and weight_shape is not None:
        cin = weight_shape[1] * groups
        return conv_kind(cin, weight_shape[0], groups, tuple(weight_shape[2:]))
    for words, kind in _OP_WORDS:
        if any(w in base for w in words):
            return kind
    return "other"
