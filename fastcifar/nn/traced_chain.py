"""conv -> BatchNorm -> activation -> conv links found in a module's traced forward
(layer 2): the forms of a link that ``chain.find_links`` does not see.

``find_links`` links two ``Sequential(conv, BN[, act])`` units that follow each other in
an ``nn.Sequential`` or in a block's ``CHAIN``. Users' models are often written otherwise:

* flat: ``nn.Sequential(conv, BN, act, conv, BN, act, ...)``;
* in ``forward``: ``out = F.relu(self.bn1(self.conv1(x))); out = self.bn2(self.conv2(out))``
  (kuangliu's and torchvision's ResNet blocks);
* mixed: torchvision's MobileNetV2 ``InvertedResidual.conv``,
  ``Sequential(Conv2dNormActivation, Conv2dNormActivation, Conv2d, BatchNorm2d)``, whose
  depthwise unit feeds a bare 1x1.

``find_traced_links`` traces each module's ``forward`` with ``torch.fx``, its children as
leaves, in training and in eval mode. A producer is a *run* (a ``plain_conv`` node whose
only user is a ``plain_bn`` node whose only user is, optionally, an activation: a module
of ``chain.ACTIVATION_NAMES`` or ``F.relu``, ``torch.relu``, ``F.relu6``, ``F.silu``, the
exact ``F.gelu``, ``.relu()``) or a ``Sequential`` unit (``chain.is_chain_end``); its
value's only user is the consumer: a convolution the prologue kernels take (a 1x1, or a
KxK of ``config_supported``) or a unit, over the producer's channels. A link between two
units is ``find_links``' (kind ``conv_bn_act``); here at least one end is a bare
convolution.

Converted (``fuse_traced_links``), children, parameters and state-dict keys unchanged: a
bare convolution at either end becomes ``LinkedConv2d`` (its class swapped); a producing
run's convolution computes the BatchNorm statistics in its epilogue and returns a
``chain.Pending``, and the module's BatchNorm and activation calls are taken out of its
traced graph, whose code becomes the module's ``forward`` (its class swapped to a subclass);
a consuming convolution applies the ``Pending`` as it loads and returns its raw output (its
own BatchNorm stays PyTorch's). Reverting any end (``chain.revert_link_end``) puts back the
module's class and every link in it.

What is not converted is said one line a module by ``traced_link_notes``: a forward that
cannot be traced, or whose graph differs between training and eval (a ``self.training``
branch the rewritten forward would freeze), and a run feeding a convolution the kernels do
not take, or feeding more than one user.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastcifar.errors import first_line
from fastcifar.nn.chain import (
    ACTIVATION_NAMES,
    FusedConvBNAct,
    activation_name,
    is_chain_end,
    is_chain_module,
    is_pointwise,
    link_end,
)
from fastcifar.nn.modules import config_supported, plain_bn, plain_conv

__all__ = [
    "LinkedConv2d",
    "find_traced_links",
    "fuse_traced_links",
    "traced_link_notes",
    "traced_units",
]

# activations called as functions or tensor methods, by target: chain's names
_ACTIVATION_CALLS = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.silu: "silu",
    F.gelu: "gelu",
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu"}
_ACTIVATION_MODULES = {name: cls for cls, name in ACTIVATION_NAMES.items()}


class LinkedConv2d(nn.Conv2d):
    """A bare convolution at an end of a traced link: with ``_link_bn`` (its BatchNorm,
    held outside the module tree) it returns a ``Pending`` of its raw output and that
    BatchNorm folded (``chain.link_end``); without, it takes a ``Pending`` and returns its
    raw (N, COUT, HO, WO) output. Parameters and keys are the convolution's own."""

    chain_end = True  # chain.is_chain_module

    def forward(self, x):
        """The convolution through the chain's kernels.

        Args:
            x: (N, CIN, H, W), or a ``Pending`` handed on by the producer.

        Returns:
            The output (N, COUT, HO, WO): a ``Pending`` (its BatchNorm and activation not yet
                applied) when this convolution produces a link.
        """
        bn = self.__dict__.get("_link_bn")
        activation = self.__dict__.get("_link_activation", "identity")
        return link_end(self, bn, activation, x, gives_pending=bn is not None)


class _End(NamedTuple):
    """One end of a link in a traced graph."""

    node: fx.Node  # the convolution's (or the unit's) call
    out: fx.Node  # the node whose value goes on (the activation's, the BatchNorm's, the unit's)
    conv: str  # qualified name of its convolution (a unit's is its child 0)
    module: str  # the bare convolution's name, or the unit's
    bn: str | None  # a run's BatchNorm
    activation: str  # a run's activation ("identity" without one)
    removed: tuple[fx.Node, ...]  # a run's BatchNorm and activation calls


class _Link(NamedTuple):
    producer: _End
    consumer: _End

    def name(self, prefix: str) -> str:
        """``"producer conv>consumer conv"``, qualified under the owner's name ``prefix``."""
        return ">".join(f"{prefix}.{e.conv}" if prefix else e.conv for e in self)

    @property
    def rewrites(self) -> bool:  # a producing run: its BatchNorm and activation calls go
        return bool(self.producer.removed)


class _Leaves(fx.Tracer):
    """Traces one module's forward only: every submodule call is a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _takes_prologue(m: nn.Module) -> bool:
    # a bare convolution both the statistics epilogue and the prologue kernels take
    return plain_conv(m) and (is_pointwise(m) or config_supported(m))


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _activation(node: fx.Node | None, arg: fx.Node, modules: dict) -> str | None:
    """The activation ``node`` applies to ``arg`` alone, or None."""
    if node is None or not node.args or node.args[0] is not arg:
        return None
    if node.op == "call_module":
        return activation_name(modules[node.target])
    if node.op == "call_function":
        if node.target is F.gelu:  # the exact GELU only, not approximate="tanh"
            given = node.args[1] if len(node.args) > 1 else node.kwargs.get("approximate")
            if given not in (None, "none"):
                return None
        return _ACTIVATION_CALLS.get(node.target)
    if node.op == "call_method":
        return _ACTIVATION_METHODS.get(node.target)
    return None


def _end(node: fx.Node, modules: dict) -> _End | None:
    """The link end starting at ``node``: a unit, or a run of a convolution the kernels
    take, its BatchNorm and its activation; None otherwise."""
    if node.op != "call_module":
        return None
    m = modules[node.target]
    if is_chain_end(m):
        return _End(node, node, f"{node.target}.0", node.target, None, "identity", ())
    if not _takes_prologue(m):
        return None
    bn = _only_user(node)
    ok = bn is not None and bn.op == "call_module" and bn.args == (node,)
    if not ok or not plain_bn(modules[bn.target], m.out_channels):
        return _End(node, node, node.target, node.target, None, "identity", ())  # consumer
    act = _only_user(bn)
    activation = _activation(act, bn, modules)
    if activation is None:
        return _End(node, bn, node.target, node.target, bn.target, "identity", (bn,))
    return _End(node, act, node.target, node.target, bn.target, activation, (bn, act))


def _channels(end: _End, modules: dict) -> tuple[int, int]:
    m = modules[end.module]
    conv = m[0] if isinstance(m, nn.Sequential) else m
    return conv.in_channels, conv.out_channels


def _trace(module: nn.Module) -> tuple[fx.Graph | None, str]:
    """``module``'s graph (its children as leaves), or None and why not."""
    training = module.training
    try:
        codes = []
        for mode in (True, False):
            module.training = mode  # the module's own flag: its children are not run
            graph = _Leaves().trace(module)
            codes.append(graph.python_code("self").src)
    except Exception as exc:  # fx raises many kinds: each means "not traceable"
        return None, f"its forward cannot be traced ({first_line(exc)})"
    finally:
        module.training = training
    if codes[0] != codes[1]:
        return None, "its forward differs in training and eval (a self.training branch)"
    return graph, ""


def _candidate(module: nn.Module) -> bool:
    # a module worth tracing: a bare convolution and a BatchNorm among its children, or a
    # unit and a bare convolution, not converted already: by this kind, or by another (a
    # converted module's class is fastcifar.nn's own: the pooled blocks, the fused units)
    if is_chain_module(module) or "_link_ends" in module.__dict__ or is_chain_end(module):
        return False
    if type(module).__module__.startswith("fastcifar.nn."):
        return False
    kids = list(module.children())
    has_conv = any(_takes_prologue(k) for k in kids)
    return has_conv and any(isinstance(k, nn.BatchNorm2d) or is_chain_end(k) for k in kids)


def _links_in(module: nn.Module, graph: fx.Graph) -> tuple[list[_Link], list[str]]:
    """The links of one traced graph, and a note on each run that feeds no link but would
    (its value goes to a convolution the kernels do not take, or to more than one user)."""
    modules = dict(module.named_modules())
    # a module called twice in the forward cannot be an end: its other call would hand
    # (or be handed) a Pending where the forward expects a tensor
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    links, notes, producers, consumers = [], [], set(), set()
    for node in graph.nodes:
        producer = _end(node, modules)
        unit = producer is not None and isinstance(modules[producer.module], nn.Sequential)
        if producer is None or not (unit or producer.removed):
            continue  # a bare convolution without its BatchNorm produces nothing to link
        user = _only_user(producer.out)
        consumer = _end(user, modules) if user is not None else None
        if consumer is None or user.args != (producer.out,):
            notes += _why_not(producer, user, modules)
            continue
        if unit and isinstance(modules[consumer.module], nn.Sequential):
            continue  # two units: chain.find_links' kind
        if _channels(consumer, modules)[0] != _channels(producer, modules)[1]:
            continue
        if producer.module in producers or consumer.module in consumers:
            continue
        if calls[producer.module] > 1 or calls[consumer.module] > 1:
            notes.append(f"{producer.module} -> {consumer.module}: a module called twice")
            continue
        links.append(_Link(producer, consumer._replace(out=consumer.node, bn=None, removed=())))
        producers.add(producer.module)
        consumers.add(consumer.module)
    return links, notes


def _why_not(producer: _End, user: fx.Node | None, modules: dict) -> list[str]:
    # a note where the producer's value reaches a convolution but no link can be made
    def conv_call(n: fx.Node) -> bool:
        return n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)

    users = list(producer.out.users)
    if user is None and any(conv_call(u) for u in users):
        names = ", ".join(str(u.target) for u in users)
        return [f"{producer.module}: its output feeds {names}: a link needs one user"]
    if user is not None and conv_call(user) and not _takes_prologue(modules[user.target]):
        return [f"{producer.module} -> {user.target}: a convolution the kernels do not take"]
    return []


def _walk(model: nn.Module):
    """(owner name, owner, its links, notes) for every module worth tracing."""
    for name, module in list(model.named_modules()):
        if not _candidate(module):
            continue
        graph, why = _trace(module)
        if graph is None:
            yield name, module, graph, [], [f"{name or 'the model'}: {why}"]
            continue
        links, notes = _links_in(module, graph)
        yield name, module, graph, links, notes


def find_traced_links(model: nn.Module) -> list[str]:
    """Every link ``fuse_traced_links`` converts, as ``"producer conv>consumer conv"``
    (qualified names of their convolutions).

    Args:
        model: any model.

    Returns:
        The links' names, in module order.
    """
    found = []
    for prefix, _, _, links, _ in _walk(model):
        found += [lk.name(prefix) for lk in links]
    return found


def traced_link_notes(model: nn.Module) -> list[str]:
    """One line a module on what the traced links leave unconverted, and why.

    Args:
        model: any model.

    Returns:
        The notes, one line each.
    """
    return [note for *_, notes in _walk(model) for note in notes]


def traced_units(model: nn.Module) -> dict[str, nn.Module]:
    """{link name: ``Sequential`` of the link's own modules, unfused} (a run's activation
    called as a function is a new module of its type): what ``--kernels auto`` validates
    and times.

    Args:
        model: any model; not modified.

    Returns:
        {link name: Sequential}.
    """
    units = {}
    for prefix, owner, _, links, _ in _walk(model):
        for lk in links:
            mods = []
            for end in lk:
                mods.append(owner.get_submodule(end.module))
                if end.bn is not None and end.removed:
                    mods.append(owner.get_submodule(end.bn))
                    if len(end.removed) == 2:
                        mods.append(_ACTIVATION_MODULES[end.activation]())
            units[lk.name(prefix)] = nn.Sequential(*mods)
    return units


def _convert_end(m: nn.Module, cls: type) -> None:
    m.__dict__.setdefault("_unfused_class", type(m))
    m.__class__ = cls


def fuse_traced_links(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Convert the traced links of ``model`` in place (module docstring).

    Args:
        model: any module; its links are ``find_traced_links``'.
        only: links to convert, named ``"producer conv>consumer conv"``; None: every one.

    Returns:
        The links converted, by the same names.
    """
    converted = []
    for prefix, owner, graph, links, _ in _walk(model):
        chosen = [lk for lk in links if only is None or lk.name(prefix) in only]
        ends = []
        for lk in chosen:
            p, c = (owner.get_submodule(e.module) for e in lk)
            seq = (FusedConvBNAct, LinkedConv2d)
            _convert_end(p, seq[0] if isinstance(p, nn.Sequential) else seq[1])
            _convert_end(c, seq[0] if isinstance(c, nn.Sequential) else seq[1])
            p.gives_pending, c.takes_pending = True, True
            if lk.rewrites:
                p.__dict__["_link_bn"] = owner.get_submodule(lk.producer.bn)
                p.__dict__["_link_activation"] = lk.producer.activation
            p.__dict__["_link_consumer"], c.__dict__["_link_producer"] = c, p
            ends += [p, c]
            converted.append(lk.name(prefix))
        if any(lk.rewrites for lk in chosen):
            _rewrite(owner, graph, [lk for lk in chosen if lk.rewrites], ends)
    return converted


def _rewrite(owner: nn.Module, graph: fx.Graph, links: list[_Link], ends: list) -> None:
    """Take the producing runs' BatchNorm and activation calls out of ``owner``'s graph and
    make its code ``owner``'s forward (a subclass of its class, one per module)."""
    for lk in links:
        run = lk.producer
        run.out.replace_all_uses_with(run.node)
        for node in reversed(run.removed):
            graph.erase_node(node)
    code = fx.GraphModule(owner, graph)  # compiles the graph's code; owner's modules
    cls = type(owner)
    owner.__dict__["_unfused_class"] = cls
    owner.__dict__["_link_ends"] = ends
    owner.__class__ = type(f"Linked{cls.__name__}", (cls,), {"forward": type(code).forward})
    for end in ends:
        end.__dict__["_link_owner"] = owner
