"""conv -> BatchNorm -> activation -> conv chains, with the normalisation and the
activation applied as the next convolution loads its input (layer 2).

A chain is two ``Sequential(Conv2d, BatchNorm2d[, activation])`` modules, the first's
output going to the second and nowhere else (the "link"). Converted
(``fuse_conv_bn_act``), both become ``FusedConvBNAct``:

* the producer runs its convolution in Triton with the BatchNorm statistics in the
  kernel's epilogue (``conv2d_relu_stats`` for 3x3/KxK grouped and depthwise,
  ``pointwise_conv2d`` for 1x1), folds the statistics with the BatchNorm's weight and
  bias into a per-channel center, scale and shift (updating the running statistics as
  ``nn.BatchNorm2d`` does), and returns a ``Pending``: the raw output, that (C, 3)
  prologue and the activation, not the normalised tensor;
* the consumer applies ``act((raw - center) * scale + shift)`` in its kernel's prologue
  (``pointwise_conv2d``, ``conv2d_prologue_stats``); its backward recomputes that from
  the raw tensor and takes the BatchNorm backward's reductions in its epilogue.

The normalised, activated tensor is never written, read back nor saved for the backward
(docs/DESIGN.md, "Fusions for the model zoo", has the bytes). Where chains are found:
consecutive children of an ``nn.Sequential``, and consecutive names of a block's
``CHAIN`` (a tuple of child names in the order its forward calls them, each taking the
previous one's output alone; the model zoo's blocks declare theirs). What cannot be
fused: a producer whose output is also used elsewhere (a residual's input, MobileNetV2's
stem feeding a block and its shortcut), the convolution after a squeeze-excitation (its
input is gated per image and channel, which a per-channel prologue cannot compute;
EfficientNet-B0's project), and a consumer the Triton kernels do not take (a strided 1x1,
a dense KxK other than 3x3). Consumers: 1x1 (``pointwise_conv2d``), dense 3x3, grouped
and depthwise KxK (``conv2d_prologue_stats``), and a squeeze-excitation
gate (``is_gate``: its pooling reads the raw tensor through the prologue and the gated
tensor is written once, the activated one never; EfficientNet-B0's depthwise -> SE).

Eval mode, ``revert_to_torch`` (both ends of a link go back together), checkpoints
(children and state-dict keys unchanged) and Grad-CAM (``fastcifar.nn.fusion.revert_all``
on its float32 copy) behave as PyTorch's modules do.
"""

from __future__ import annotations

import torch
from torch import nn

from fastcifar.kernels.conv_bn import conv2d_prologue_stats, conv2d_relu_stats
from fastcifar.kernels.pointwise import pointwise_conv2d
from fastcifar.nn.modules import (
    autocast_args,
    bn_prologue,
    config_supported,
    plain_bn,
    plain_conv,
)
from fastcifar.nn.pending import Pending, gated, pooled_activation

__all__ = [
    "ACTIVATION_NAMES",
    "activation_name",
    "FusedConvBNAct",
    "Pending",
    "bn_prologue",
    "find_links",
    "fuse_conv_bn_act",
    "is_pointwise",
]

# The activations a chain may hold, by module type: their names are pointwise_conv2d's.
ACTIVATION_NAMES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.GELU: "gelu",  # approximate="none" only (activation_name)
}


def activation_name(m: nn.Module) -> str | None:
    """The kernels' name of activation module ``m`` (``ACTIVATION_NAMES``; a GELU only
    when exact, ``approximate="none"``), or None when they do not compute it.

    Args:
        m: any module.

    Returns:
        ``"identity"``, ``"relu"``, ``"relu6"``, ``"silu"``, ``"gelu"``, or None.
    """
    if isinstance(m, nn.GELU) and m.approximate != "none":
        return None
    return ACTIVATION_NAMES.get(type(m))


def is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 1x1, stride-1, unpadded, ungrouped ``nn.Conv2d``: what
    ``pointwise_conv2d`` computes.

    Args:
        conv: any module.

    Returns:
        True for such a convolution.
    """
    return plain_conv(conv) and _pointwise_shape(conv)


def _pointwise_shape(conv: nn.Conv2d) -> bool:
    # the geometry alone (a converted end's class is no longer a plain convolution's)
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def _activation_of(m: nn.Module) -> str | None:
    """The activation name of a ``Sequential(conv, BatchNorm2d[, act])`` (identity
    without one), or None when ``m`` is not such a block. A subclass of ``nn.Sequential``
    keeping its forward (torchvision's ``Conv2dNormActivation``) is one."""
    sequential = isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward
    if not (sequential or type(m) is FusedConvBNAct) or len(m) not in (2, 3):
        return None
    if not plain_conv(m[0]) or not plain_bn(m[1], m[0].out_channels):
        return None
    return "identity" if len(m) == 2 else activation_name(m[2])


def is_chain_end(m: nn.Module) -> bool:
    """A ``Sequential(conv, BatchNorm2d[, activation])`` whose convolution the Triton
    kernels take with both the statistics epilogue and the BatchNorm-and-activation
    prologue, so that it can end a link on either side: a 1x1 (``pointwise_conv2d``) or
    any KxK the convolution kernels take (dense 3x3, grouped, depthwise:
    ``conv2d_relu_stats``, ``conv2d_prologue_stats``).

    Args:
        m: any module.

    Returns:
        True for such a Sequential.
    """
    return _activation_of(m) is not None and (is_pointwise(m[0]) or config_supported(m[0]))


def is_gate(m: nn.Module) -> bool:
    """A squeeze-excitation gate that a chain feeds: its class says ``POOLED_GATE = True``,
    promising ``forward(x) == x * self.gate(adaptive_avg_pool2d(x, 1))`` with ``gate``
    (N, C, 1, 1) -> (N, C, 1, 1) (``fastcifar.models.mobile.SqueezeExcitation``).

    Args:
        m: any module.

    Returns:
        True for such a gate.
    """
    return bool(getattr(type(m), "POOLED_GATE", False)) and callable(getattr(m, "gate", None))


class _PendingGate:
    """Mixed into a gate's own class by ``fuse_conv_bn_act``: given a ``Pending``, the
    pooling reads the raw tensor through the prologue and the gated tensor is written
    once; the normalised and the activated tensors are neither written nor saved for
    the backward (``_PooledActivation``, ``_Gated``). A plain tensor takes the gate's own
    forward."""

    takes_pending = True
    chain_end = True  # is_chain_module

    def forward(self, x):
        if not isinstance(x, Pending):
            return super().forward(x)
        return gated(x, self.gate(pooled_activation(x)))


_GATE_CLASSES: dict[type, type] = {}


def _pending_gate_class(cls: type) -> type:
    """``cls`` with ``_PendingGate``'s forward, one class per gate class."""
    if cls not in _GATE_CLASSES:
        _GATE_CLASSES[cls] = type(f"Chained{cls.__name__}", (_PendingGate, cls), {})
    return _GATE_CLASSES[cls]


def is_chain_module(m: nn.Module) -> bool:
    """Whether ``m`` is a converted end of a link: a ``FusedConvBNAct``, a gate taking a
    ``Pending`` or a ``traced_chain.LinkedConv2d`` (their classes say ``chain_end``).

    Args:
        m: any module.

    Returns:
        True for a converted chain end.
    """
    return getattr(type(m), "chain_end", False)


def _candidate_pairs(model: nn.Module):
    """(parent name, producer child, consumer child) for consecutive children of every
    ``nn.Sequential`` and consecutive names of every block's ``CHAIN``."""
    for name, parent in model.named_modules():
        if isinstance(parent, nn.Sequential) and not isinstance(parent, FusedConvBNAct):
            names = [n for n, _ in parent.named_children()]
        else:
            names = [
                n
                for n in getattr(type(parent), "CHAIN", ())
                if getattr(parent, n, None) is not None
            ]
        for a, b in zip(names, names[1:], strict=False):
            yield name, a, b


def find_links(model: nn.Module) -> list[tuple[str, str]]:
    """(producer, consumer) qualified names of every chain of ``model`` that
    ``fuse_conv_bn_act`` converts; a module is in at most one link as producer and one as
    consumer.

    Args:
        model: any model.

    Returns:
        The links, in module order.
    """
    links, producers, consumers = [], set(), set()
    for parent_name, a, b in _candidate_pairs(model):
        prefix = f"{parent_name}." if parent_name else ""
        pa, pb = f"{prefix}{a}", f"{prefix}{b}"
        ma, mb = model.get_submodule(pa), model.get_submodule(pb)
        if pa in producers or pb in consumers:
            continue
        if not is_chain_end(ma):
            continue
        if is_gate(mb) or (is_chain_end(mb) and ma[0].out_channels == mb[0].in_channels):
            links.append((pa, pb))
            producers.add(pa)
            consumers.add(pb)
    return links


class FusedConvBNAct(nn.Sequential):
    """``Sequential(conv, BatchNorm2d[, ReLU | ReLU6 | SiLU | GELU])`` at one or both ends of a
    chain: the convolution in Triton with the batch statistics in its epilogue; as a
    producer (``gives_pending``) it returns a ``Pending`` instead of the normalised,
    activated tensor; as a consumer (``takes_pending``) its convolution applies the
    ``Pending`` as it loads it.

    Input (N, CIN, H, W) tensor, NCHW or channels_last, or a ``Pending``; output (N, COUT,
    HO, WO) or a ``Pending``. Same children, parameters, buffers and state-dict keys as the
    block it replaces; BatchNorm semantics as PyTorch's (training and eval). Built by
    converting a block in place (``fuse_conv_bn_act``), not constructed directly.

    Args:
        *args: the block's children, as ``nn.Sequential`` takes them: a convolution the
            kernels support, ``nn.BatchNorm2d``, optionally ``nn.ReLU``, ``nn.ReLU6``,
            ``nn.SiLU`` or the exact ``nn.GELU``.
    """

    gives_pending = False
    takes_pending = False
    chain_end = True  # is_chain_module

    def forward(self, x):
        """The block's output, or what its consumer applies as it loads.

        Args:
            x: (N, CIN, H, W) tensor, NCHW or channels_last, float32, float16, bfloat16 or
                float64; or, at a consumer end, the producer's ``Pending``.

        Returns:
            (N, COUT, HO, WO) in the input's memory format; at a producer end a
            ``Pending`` (the raw convolution output and its (COUT, 3) float32 prologue).
        """
        activation = "identity" if len(self) == 2 else activation_name(self[2])
        return link_end(self[0], self[1], activation, x, self.gives_pending)


def link_end(
    conv: nn.Conv2d, bn: nn.BatchNorm2d | None, activation: str, x, gives_pending: bool
) -> torch.Tensor | Pending:
    """One end of a link: ``conv`` in Triton on ``x`` (a tensor, or a ``Pending`` that its
    kernel applies as it loads), then ``bn`` from the statistics in its epilogue.

    Args:
        conv: a ``plain_conv`` that ``is_chain_end`` accepts (1x1, or a KxK the kernels
            take); its weight and bias, cast to the autocast dtype when autocast is on.
        bn: its BatchNorm2d (training: batch statistics, running ones updated; eval: the
            running ones), or None for a consumer whose BatchNorm stays PyTorch's.
        activation: after ``bn``: a name of ``ACTIVATION_NAMES``' values or "identity".
        x: (N, CIN, H, W) NCHW or channels_last, or a ``Pending`` of CIN channels.
        gives_pending: return the ``Pending`` (raw output, folded ``bn``, activation)
            instead of the normalised, activated tensor.

    Returns:
        (N, COUT, HO, WO) in the compute dtype (``conv``'s raw output when ``bn`` is None),
        or a ``Pending``.
    """
    prologue = None
    if isinstance(x, Pending):  # its convolution takes the prologue (is_chain_end)
        x, prologue = x.raw, x
    x, weight, bias = autocast_args(x, conv.weight, conv.bias)
    pro = (prologue.prologue, prologue.activation) if prologue else ()
    args = (conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups)
    if _pointwise_shape(conv):
        y, mean, var = pointwise_conv2d(x, weight, bias, *pro, stats=True)
    elif prologue is not None:
        y, mean, var = conv2d_prologue_stats(x, weight, bias, *pro, *args)
    else:
        y, mean, var = conv2d_relu_stats(x, weight, bias, *args, relu=False)
    if bn is None:
        return y
    folded = bn_prologue(bn, mean, var, y.numel() // y.shape[1])  # running ones in eval
    out = Pending(y, folded, activation)
    return out if gives_pending else out.materialise()


def fuse_conv_bn_act(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Convert every chain conv -> BatchNorm2d -> activation -> conv of ``model`` in place.

    Both modules of a link become ``FusedConvBNAct`` (a squeeze-excitation consumer: its
    own class with ``_PendingGate``'s forward), keeping their children, parameters,
    buffers and state-dict keys; the producer then hands its raw output and folded
    BatchNorm to the consumer, whose kernel applies them as it loads (module docstring).

    Args:
        model: any module; its links are found by ``find_links`` (consecutive in an
            ``nn.Sequential`` or declared in a block's ``CHAIN``).
        only: links to convert, named ``"producer>consumer"``; None: every link.

    Returns:
        The links converted, as ``"producer>consumer"``.
    """
    converted = []
    for producer, consumer in find_links(model):
        name = f"{producer}>{consumer}"
        if only is not None and name not in only:
            continue
        p, c = model.get_submodule(producer), model.get_submodule(consumer)
        for m in (p, c):
            m.__dict__.setdefault("_unfused_class", type(m))
        p.__class__ = FusedConvBNAct
        if is_gate(c):
            c.__class__ = _pending_gate_class(c.__dict__["_unfused_class"])
        else:
            c.__class__ = FusedConvBNAct
        p.gives_pending, c.takes_pending = True, True
        p.__dict__["_link_consumer"], c.__dict__["_link_producer"] = c, p
        converted.append(name)
    return converted


def revert_link_end(m: nn.Module) -> None:
    """Put a chain module back on PyTorch (its class before the conversion), and with it
    every module linked to it, end to end (a consumer reverted alone would receive a
    ``Pending``), and the module whose forward was rewritten around it
    (``_link_owner``: ``fastcifar.nn.traced_chain``) with all of that module's links.

    Args:
        m: a chain module of a converted model (``is_chain_module``), reverted in place.
    """
    if not is_chain_module(m):
        return
    partners = [m.__dict__.pop(k, None) for k in ("_link_consumer", "_link_producer")]
    owner = m.__dict__.pop("_link_owner", None)
    m.__class__ = m.__dict__.pop("_unfused_class")
    for key in ("gives_pending", "takes_pending", "_link_bn", "_link_activation"):
        m.__dict__.pop(key, None)
    for partner in partners:
        if partner is not None:
            revert_link_end(partner)
    if owner is not None and "_unfused_class" in owner.__dict__:
        owner.__class__ = owner.__dict__.pop("_unfused_class")
        for end in owner.__dict__.pop("_link_ends"):
            revert_link_end(end)
