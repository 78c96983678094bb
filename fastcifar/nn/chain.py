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

from typing import NamedTuple

import torch
from torch import nn

from fastcifar.kernels.conv_bn import conv2d_prologue_stats, conv2d_relu_stats, prologue_grad
from fastcifar.kernels.pointwise import pointwise_conv2d
from fastcifar.nn.modules import _autocast_args, bn_prologue, config_supported, plain_conv

__all__ = [
    "ACTIVATION_NAMES",
    "FusedConvBNAct",
    "Pending",
    "bn_prologue",
    "find_links",
    "fuse_conv_bn_act",
    "is_pointwise",
]

# The activations a chain may hold, by module type: their names are pointwise_conv2d's.
ACTIVATION_NAMES: dict[type, str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu"}


class Pending(NamedTuple):
    """A BatchNorm and activation not yet applied: ``act((raw - center) * scale + shift)``.

    raw: (N, C, H, W) the producing convolution's output, its dtype and layout;
    prologue: (C, 3) float32 (float64 for float64 ``raw``): per channel the center (the
    batch mean, or the running mean in eval), the scale (BatchNorm's weight over the
    deviation) and the shift (its bias); activation: a name of
    ``fastcifar.kernels.launch.ACTIVATIONS``.
    """

    raw: torch.Tensor
    prologue: torch.Tensor
    activation: str

    def materialise(self) -> torch.Tensor:
        """The normalised, activated tensor, in ``raw``'s dtype (what an unfused chain
        would have passed on)."""
        return _Materialise.apply(self.raw, self.prologue, self.activation)


_ACTIVATE = {
    "identity": lambda t: t,
    "relu": torch.relu,
    "relu6": lambda t: torch.clamp(t, 0, 6),
    "silu": torch.nn.functional.silu,
}


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


# act'(z) of each activation (0 at ReLU's and ReLU6's kinks, as PyTorch takes them)
_ACTIVATE_GRAD = {
    "identity": torch.ones_like,
    "relu": lambda z: (z > 0).to(z.dtype),
    "relu6": lambda z: ((z > 0) & (z < 6)).to(z.dtype),
    "silu": _silu_grad,
}


def _affine(raw: torch.Tensor, prologue: torch.Tensor) -> torch.Tensor:
    # (raw - center) * scale + shift in float32 (float64 for float64 raw)
    acc = torch.float64 if raw.dtype == torch.float64 else torch.float32
    center, scale, shift = (prologue[:, i].view(1, -1, 1, 1).to(acc) for i in range(3))
    return (raw.to(acc) - center) * scale + shift


def _prologue_backward(raw, prologue, activation, grad_a) -> tuple[torch.Tensor, torch.Tensor]:
    """(the raw tensor's gradient in its dtype, the (C, 3) prologue's) from ``grad_a``, the
    gradient of ``act((raw - center) * scale + shift)``, as the kernels take it: the
    affine map recomputed, the prologue's gradient from centred sums (float32 autograd
    over ``raw * scale`` would cancel ``sum g raw`` against ``center sum g``)."""
    z = _affine(raw, prologue)
    dz = grad_a.to(z.dtype) * _ACTIVATE_GRAD[activation](z)
    centred = raw.to(dz.dtype) - prologue[:, 0].view(1, -1, 1, 1).to(dz.dtype)
    scale = prologue[:, 1].view(1, -1, 1, 1).to(dz.dtype)
    sums = torch.stack((dz.sum((0, 2, 3)), (dz * centred).sum((0, 2, 3))), dim=1)
    return (dz * scale).to(raw.dtype), prologue_grad(prologue, sums)


class _Materialise(torch.autograd.Function):
    """``act((raw - center) * scale + shift)``, saving only ``raw`` and the (C, 3)
    prologue; the backward recomputes the affine map (``_prologue_backward``)."""

    @staticmethod
    def forward(ctx, raw, prologue, activation):
        ctx.save_for_backward(raw, prologue)
        ctx.activation = activation
        return _ACTIVATE[activation](_affine(raw, prologue)).to(raw.dtype)

    @staticmethod
    def backward(ctx, grad):
        raw, prologue = ctx.saved_tensors
        return (*_prologue_backward(raw, prologue, ctx.activation, grad), None)


class _PooledActivation(torch.autograd.Function):
    """The (N, C, 1, 1) spatial mean of ``act((raw - center) * scale + shift)`` in
    ``raw``'s dtype, without writing the activated tensor; saves ``raw`` and the
    prologue."""

    @staticmethod
    def forward(ctx, raw, prologue, activation):
        ctx.save_for_backward(raw, prologue)
        ctx.activation = activation
        return (
            _ACTIVATE[activation](_affine(raw, prologue)).mean((2, 3), keepdim=True).to(raw.dtype)
        )

    @staticmethod
    def backward(ctx, grad):
        raw, prologue = ctx.saved_tensors
        acc = torch.float64 if raw.dtype == torch.float64 else torch.float32
        grad_a = (grad.to(acc) / (raw.shape[2] * raw.shape[3])).expand(raw.shape)
        return (*_prologue_backward(raw, prologue, ctx.activation, grad_a), None)


class _Gated(torch.autograd.Function):
    """``act((raw - center) * scale + shift) * gate`` with a (N, C, 1, 1) gate, rounded
    once to ``raw``'s dtype; saves ``raw``, the prologue and the gate (the activated
    tensor is recomputed in the backward, not saved)."""

    @staticmethod
    def forward(ctx, raw, prologue, activation, gate):
        ctx.save_for_backward(raw, prologue, gate)
        ctx.activation = activation
        a = _ACTIVATE[activation](_affine(raw, prologue))
        return (a * gate.to(a.dtype)).to(raw.dtype)

    @staticmethod
    def backward(ctx, grad):
        raw, prologue, gate = ctx.saved_tensors
        a = _ACTIVATE[ctx.activation](_affine(raw, prologue))
        g = grad.to(a.dtype)
        dgate = (g * a).sum((2, 3), keepdim=True).to(gate.dtype)
        dx, dpro = _prologue_backward(raw, prologue, ctx.activation, g * gate.to(a.dtype))
        return dx, dpro, None, dgate


def is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 1x1, stride-1, unpadded, ungrouped ``nn.Conv2d``: what
    ``pointwise_conv2d`` computes."""
    return (
        plain_conv(conv)
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def _activation_of(m: nn.Module) -> str | None:
    """The activation name of a ``Sequential(conv, BatchNorm2d[, act])`` (identity
    without one), or None when ``m`` is not such a block."""
    if type(m) not in (nn.Sequential, FusedConvBNAct) or len(m) not in (2, 3):
        return None
    if not plain_conv(m[0]) or type(m[1]) is not nn.BatchNorm2d:
        return None
    if m[0].out_channels != m[1].num_features:
        return None
    return "identity" if len(m) == 2 else ACTIVATION_NAMES.get(type(m[2]))


def is_chain_end(m: nn.Module) -> bool:
    """A ``Sequential(conv, BatchNorm2d[, activation])`` whose convolution the Triton
    kernels take with both the statistics epilogue and the BatchNorm-and-activation
    prologue, so that it can end a link on either side: a 1x1 (``pointwise_conv2d``) or
    any KxK the convolution kernels take (dense 3x3, grouped, depthwise:
    ``conv2d_relu_stats``, ``conv2d_prologue_stats``)."""
    return _activation_of(m) is not None and (is_pointwise(m[0]) or config_supported(m[0]))


def is_gate(m: nn.Module) -> bool:
    """A squeeze-excitation gate that a chain feeds: its class says ``POOLED_GATE = True``,
    promising ``forward(x) == x * self.gate(adaptive_avg_pool2d(x, 1))`` with ``gate``
    (N, C, 1, 1) -> (N, C, 1, 1) (``fastcifar.models.mobile.SqueezeExcitation``)."""
    return bool(getattr(type(m), "POOLED_GATE", False)) and callable(getattr(m, "gate", None))


class _PendingGate:
    """Mixed into a gate's own class by ``fuse_conv_bn_act``: given a ``Pending``, the
    pooling reads the raw tensor through the prologue and the gated tensor is written
    once; the normalised and the activated tensors are neither written nor saved for
    the backward (``_PooledActivation``, ``_Gated``). A plain tensor takes the gate's own
    forward."""

    takes_pending = True

    def forward(self, x):
        if not isinstance(x, Pending):
            return super().forward(x)
        pooled = _PooledActivation.apply(x.raw, x.prologue, x.activation)
        return _Gated.apply(x.raw, x.prologue, x.activation, self.gate(pooled))


_GATE_CLASSES: dict[type, type] = {}


def _pending_gate_class(cls: type) -> type:
    """``cls`` with ``_PendingGate``'s forward, one class per gate class."""
    if cls not in _GATE_CLASSES:
        _GATE_CLASSES[cls] = type(
            f"Chained{cls.__name__}", (_PendingGate, cls), {"_unfused_class": cls}
        )
    return _GATE_CLASSES[cls]


def is_chain_module(m: nn.Module) -> bool:
    """Whether ``m`` is a converted end of a link: a ``FusedConvBNAct`` or a gate taking
    a ``Pending``."""
    return type(m) is FusedConvBNAct or isinstance(m, _PendingGate)


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
    consumer."""
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
    """``Sequential(conv, BatchNorm2d[, ReLU | ReLU6 | SiLU])`` at one or both ends of a
    chain: the convolution in Triton with the batch statistics in its epilogue; as a
    producer (``gives_pending``) it returns a ``Pending`` instead of the normalised,
    activated tensor; as a consumer (``takes_pending``) its convolution applies the
    ``Pending`` as it loads it.

    Input (N, CIN, H, W) tensor, NCHW or channels_last, or a ``Pending``; output (N, COUT,
    HO, WO) or a ``Pending``. Same children, parameters, buffers and state-dict keys as the
    block it replaces; BatchNorm semantics as PyTorch's (training and eval).
    """

    gives_pending = False
    takes_pending = False

    def forward(self, x):
        conv, bn = self[0], self[1]
        prologue = None
        if isinstance(x, Pending):  # its convolution takes the prologue (is_chain_end)
            x, prologue = x.raw, x
        x, weight, bias = _autocast_args(x, conv.weight, conv.bias)
        pro = (prologue.prologue, prologue.activation) if prologue else ()
        args = (conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups)
        if is_pointwise(conv):
            y, mean, var = pointwise_conv2d(x, weight, bias, *pro, stats=True)
        elif prologue is not None:
            y, mean, var = conv2d_prologue_stats(x, weight, bias, *pro, *args)
        else:
            y, mean, var = conv2d_relu_stats(x, weight, bias, *args, relu=False)
        count = y.numel() // y.shape[1]
        folded = bn_prologue(bn, mean, var, count)  # the running statistics in eval
        activation = "identity" if len(self) == 2 else ACTIVATION_NAMES[type(self[2])]
        out = Pending(y, folded, activation)
        return out if self.gives_pending else out.materialise()


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
        p.__class__ = FusedConvBNAct
        if is_gate(c):
            c.__class__ = _pending_gate_class(getattr(c, "_unfused_class", type(c)))
        else:
            c.__class__ = FusedConvBNAct
        p.gives_pending, c.takes_pending = True, True
        p.__dict__["_link_consumer"], c.__dict__["_link_producer"] = c, p
        converted.append(name)
    return converted


def revert_link_end(m: nn.Module) -> None:
    """Put a chain module back on PyTorch, and with it every module linked to it, end to
    end (a consumer reverted alone would receive a ``Pending``)."""
    if not is_chain_module(m):
        return
    partners = [m.__dict__.pop(k, None) for k in ("_link_consumer", "_link_producer")]
    m.__class__ = m._unfused_class if isinstance(m, _PendingGate) else nn.Sequential
    m.__dict__.pop("gives_pending", None)
    m.__dict__.pop("takes_pending", None)
    for partner in partners:
        if partner is not None:
            revert_link_end(partner)
