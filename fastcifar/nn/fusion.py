"""The one table of kernel kinds (layer 2): what ``--kernels triton`` and ``auto``
convert, how each is found, converted and put back on PyTorch.

``FUSIONS`` lists every kind once, in the order they are converted (a chain before the
blocks its modules could also form, single convolutions last, outside every fused unit):

=============  ================================================  ===================
kind           unit (unfused)                                    fused module
=============  ================================================  ===================
conv_bn_act    ``Sequential(conv, BN[, act])`` -> 1x1 or          ``FusedConvBNAct``
               depthwise conv + BN, or -> squeeze-excitation     (the gate: its own
                                                                 class, chained)
traced_chain   conv -> BN [-> act] -> conv found in a traced     ``LinkedConv2d`` (the
               forward: flat Sequentials, ``F.relu(self.bn1(     module: its forward
               self.conv1(x)))``, a unit -> a bare conv          the rewritten graph)
pooled_block   ``Sequential(conv 3x3, MaxPool2d(2), BN, act,    ``PooledBlock``
               conv 3x3, BN, act)`` (the speed run's blocks)
conv_relu_bn   ``Sequential(conv 3x3, ReLU, BN)`` (the seeds)    ``FusedConvReLUBN``
conv_bn        ``Sequential(conv, BN)``                          ``FusedConvBN``
dwsep          ``Sequential(depthwise 3x3, [ReLU], 1x1)``        ``FusedDepthwiseSeparable``
conv           a supported ``nn.Conv2d``                         ``fastcifar.nn.Conv2d``
=============  ================================================  ===================

Every reader goes through this table: the dispatch (``fastcifar.nn.autotune``: which units
a model has, their first convolution's configuration, a fused copy to validate and
time, converting the winners), the guard (``fastcifar.nn.kernel_guard``: which modules run
Triton, putting one back), the console summary (``fastcifar.engine.components``) and Grad-CAM
(``revert_all``). Adding a kind is one ``FusionKind`` here (and its module and kernel
below: docs/DESIGN.md, "Fusions for the model zoo", has the checklist).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fastcifar.nn.chain import find_links, fuse_conv_bn_act, is_chain_module, revert_link_end
from fastcifar.nn.conv_bn import (
    FusedConvBN,
    FusedConvReLUBN,
    fuse_conv_bn,
    fuse_conv_relu_bn,
    is_conv_bn,
    is_conv_relu_bn,
)
from fastcifar.nn.dwsep import (
    FusedDepthwiseSeparable,
    fuse_depthwise_separable,
    is_depthwise_separable,
)
from fastcifar.nn.modules import Conv2d, config_supported, plain_conv, swap_convolutions
from fastcifar.nn.pool_chain import (
    PooledBlock,
    find_pooled_blocks,
    fuse_pooled_blocks,
    revert_pooled_block,
)
from fastcifar.nn.traced_chain import LinkedConv2d, fuse_traced_links, traced_units

__all__ = [
    "FUSIONS",
    "FusionKind",
    "convert",
    "fused_copy",
    "get_kind",
    "revert_all",
    "revert_to_torch",
    "runs_triton",
    "summary_line",
]


@dataclass(frozen=True)
class FusionKind:
    """One kind of unit the Triton kernels take.

    Attributes:
        name: the key in the dispatch table, its cache and config.json.
        label: how the console summary counts converted units.
        find: ``model -> {unit name: module running the unit unfused}`` (a chain's unit is
            ``Sequential(producer, consumer)`` over the model's own modules).
        first_conv: unit name -> qualified name of its first convolution, whose
            configuration (``ConvConfig``) keys the unit's timing and validation.
        convert: ``(model, names or None for all) -> names converted``, in place.
        is_fused: whether a module is this kind's converted module, running Triton.
        revert: put such a module back on PyTorch in place (keys and parameters unchanged).
        triton: whether ``--kernels triton`` converts it (the others wait for ``auto``'s
            GPU timings: opt-in until a GPU shows them faster).
    """

    name: str
    label: str
    find: Callable[[nn.Module], dict[str, nn.Module]]
    first_conv: Callable[[str], str]
    convert: Callable[[nn.Module, set[str] | None], list[str]]
    is_fused: Callable[[nn.Module], bool]
    revert: Callable[[nn.Module], None]
    triton: bool


def _first_child(name: str) -> str:
    return f"{name}.0" if name else "0"


def _blocks_where(test: Callable[[nn.Module], bool]):
    return lambda model: {name: m for name, m in model.named_modules() if test(m)}


def _class_is(cls: type) -> Callable[[nn.Module], bool]:
    return lambda m: type(m) is cls


def _to_sequential(m: nn.Module) -> None:
    m.__class__ = nn.Sequential


def _chains(model: nn.Module) -> dict[str, nn.Module]:
    return {
        f"{p}>{c}": nn.Sequential(model.get_submodule(p), model.get_submodule(c))
        for p, c in find_links(model)
    }


def _swap_outside_fused(model: nn.Module, only: set[str] | None) -> list[str]:
    """Swap supported convolutions to ``Conv2d``, except those inside a fused unit (its
    kernel computes them)."""
    inside = {
        f"{name}.{child}" if name else child
        for name, m in model.named_modules()
        if runs_triton(m) and not isinstance(m, Conv2d)
        for child, _ in m.named_children()
    }
    candidates = {n for n, m in model.named_modules() if plain_conv(m)} - inside
    return swap_convolutions(model, only=candidates if only is None else candidates & only)


def _conv_off(m: nn.Module) -> None:
    m.uses_triton = False


FUSIONS: tuple[FusionKind, ...] = (
    FusionKind(
        "conv_bn_act",
        "conv-BN-activation chains",
        _chains,
        lambda name: _first_child(name.split(">")[0]),
        fuse_conv_bn_act,
        lambda m: is_chain_module(m) and not isinstance(m, LinkedConv2d),
        revert_link_end,
        triton=True,
    ),
    FusionKind(
        "traced_chain",
        "conv-BN-activation links in forward",
        traced_units,
        lambda name: name.split(">")[0],
        fuse_traced_links,
        lambda m: isinstance(m, LinkedConv2d),
        revert_link_end,
        triton=True,
    ),
    FusionKind(
        "pooled_block",
        "conv-pool-BN-activation blocks",
        find_pooled_blocks,
        _first_child,
        fuse_pooled_blocks,
        _class_is(PooledBlock),
        revert_pooled_block,
        triton=True,
    ),
    FusionKind(
        "conv_relu_bn",
        "conv+ReLU+BN",
        _blocks_where(is_conv_relu_bn),
        _first_child,
        fuse_conv_relu_bn,
        _class_is(FusedConvReLUBN),
        _to_sequential,
        triton=False,
    ),
    FusionKind(
        "conv_bn",
        "conv+BN",
        _blocks_where(is_conv_bn),
        _first_child,
        fuse_conv_bn,
        _class_is(FusedConvBN),
        _to_sequential,
        triton=False,
    ),
    FusionKind(
        "dwsep",
        "depthwise-separable blocks",
        _blocks_where(is_depthwise_separable),
        _first_child,
        fuse_depthwise_separable,
        _class_is(FusedDepthwiseSeparable),
        _to_sequential,
        triton=False,
    ),
    FusionKind(
        "conv",
        "convolutions in Triton",
        _blocks_where(lambda m: plain_conv(m) and config_supported(m)),
        lambda name: name,
        _swap_outside_fused,
        lambda m: isinstance(m, Conv2d) and m.uses_triton,
        _conv_off,
        triton=True,
    ),
)
_BY_NAME = {kind.name: kind for kind in FUSIONS}


def get_kind(name: str) -> FusionKind:
    """The kind called ``name``.

    Args:
        name: a kind's name.

    Returns:
        Its ``FusionKind``.

    Raises:
        KeyError: an unknown kind, naming the known ones.
    """
    if name not in _BY_NAME:
        raise KeyError(f"unknown kernel kind {name!r}: one of {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def convert(
    model: nn.Module, only: dict[str, set[str]] | None = None, kinds: tuple[str, ...] | None = None
) -> dict[str, list[str]]:
    """Convert ``model`` in place, kind by kind in table order: every unit of the kinds
    named in ``kinds`` (default: all), or only the units named in ``only[kind]``.
    Returns {kind: names converted} for every kind of the table.

    Args:
        model: the model, converted in place.
        only: {kind: unit names} to convert, or None for every unit.
        kinds: the kinds to convert, or None for all.

    Returns:
        {kind: qualified names converted}, every kind of the table a key.
    """
    done = {}
    for kind in FUSIONS:
        wanted = kinds is None or kind.name in kinds
        names = None if only is None else only.get(kind.name, set())
        done[kind.name] = kind.convert(model, names) if wanted else []
    return done


def fused_copy(kind: str, unit: nn.Module) -> nn.Module:
    """A converted deep copy of one unit (as ``find`` gives it), wrapped in a
    ``Sequential``: what the dispatch validates and times against the unit itself.

    Args:
        kind: a kind's name.
        unit: one unit of that kind; not modified.

    Returns:
        ``Sequential(converted copy)``.
    """
    wrapper = nn.Sequential(copy.deepcopy(unit))
    get_kind(kind).convert(wrapper, None)
    return wrapper


def runs_triton(m: nn.Module) -> bool:
    """Whether module ``m`` itself runs Triton kernels (a converted module of any kind).

    Args:
        m: any module.

    Returns:
        True for a converted module.
    """
    return any(kind.is_fused(m) for kind in FUSIONS)


def revert_to_torch(m: nn.Module) -> None:
    """Put a converted module back on PyTorch in place (a chain's modules go back
    together); anything else is left as it is.

    Args:
        m: any module, reverted in place.
    """
    for kind in FUSIONS:
        if kind.is_fused(m):
            kind.revert(m)
            return


def revert_all(model: nn.Module) -> None:
    """Put every converted module of ``model`` back on PyTorch, in place.

    Args:
        model: the model, reverted in place.
    """
    for m in list(model.modules()):
        revert_to_torch(m)


def summary_line(counts: dict[str, int], own_forward: list[str] = ()) -> str:
    """The console's line for {kind: units converted}: convolutions first, then each
    fused kind ``counts`` has; then the convolutions left on PyTorch because their class
    has a forward of its own (``own_forward``: ``modules.own_forward_convs``), and why.

    Args:
        counts: {kind: units converted}.
        own_forward: qualified names of convolutions left on PyTorch for their own forward.

    Returns:
        One line, e.g. ``"kernels: 12 convolutions in Triton, 4 conv-BN-activation chains
        fused; the rest PyTorch's"``.
    """
    fused = [
        f"{counts[k.name]} {k.label}" for k in FUSIONS if k.name != "conv" and k.name in counts
    ]
    line = (
        f"kernels: {counts.get('conv', 0)} convolutions in Triton, {', '.join(fused)} "
        f"fused; the rest PyTorch's"
    )
    if own_forward:
        names = ", ".join(own_forward[:3]) + (", ..." if len(own_forward) > 3 else "")
        line += (
            f" ({len(own_forward)} nn.Conv2d subclasses with a forward of their own stay "
            f"on PyTorch: the kernels cannot know what it computes: {names})"
        )
    return line
