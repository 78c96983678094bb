"""What every path of the roofline records into: the rows (``Layer``, ``StepCount``),
the ledger that sums operator calls into rows, the recorder that names an operator's
layer, kind, shape and FLOPs, the eager dispatch mode, and what a step is made of
(``StepSetup``). The paths themselves: ``count`` (eager) and ``inductor``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry
from torch.utils.module_tracker import ModuleTracker

from fastcifar.roofline.kinds import fused_kind, module_kind, op_kind
from fastcifar.roofline.traffic import op_kernels

__all__ = [
    "LOSS",
    "PATHS",
    "ROOT",
    "Layer",
    "StepCount",
    "StepSetup",
    "module_kinds",
]

PATHS = ("eager", "compile", "fastcifar")
ROOT = "(model)"  # operators in the model's own forward, outside any child module
LOSS = "loss"  # the loss and its backward: outside the model
_PHASE_KINDS = {LOSS: "loss", "optimizer": "optimizer", "ema": "optimizer"}


@dataclass
class Layer:
    """One row: a (module path, kind) pair of one training step at the whole batch.

    Attributes:
        name: the module's qualified name (the path).
        kind: its kind (``fastcifar.roofline.kinds``).
        shape: its first input's shape (N x C x H x W) and, for convolutions and linear
            layers, the weight's.
        flops: floating-point operations (multiply-add = 2).
        bytes: compulsory traffic, read + written.
        kernels: GPU kernels launched for it.
    """

    name: str
    kind: str
    shape: str = ""
    flops: int = 0
    bytes: int = 0
    kernels: int = 0


@dataclass
class StepCount:
    """One path's count of one training step of ``model`` at ``batch_size``.

    Attributes:
        model: the model's name.
        path: one of ``PATHS`` (or a part's name, ``count_call``'s: ``whiten``, ``inference``).
        batch_size: images a step.
        dtype: ``bfloat16``, ``float16`` or ``float32``.
        channels_last: the step's layout.
        layers: its rows.
        lowered_for: on the compile paths, the GPU whose fake ``cuda:0`` Inductor lowered
            for (``"h100"``), or ``"cpu"``; ``""`` on the eager path.
    """

    model: str
    path: str
    batch_size: int
    dtype: str
    channels_last: bool
    layers: list[Layer] = field(default_factory=list)
    lowered_for: str = ""

    @property
    def flops(self) -> int:
        """The step's FLOPs, summed over the layers."""
        return sum(layer.flops for layer in self.layers)

    @property
    def bytes(self) -> int:
        """The step's compulsory bytes, summed over the layers."""
        return sum(layer.bytes for layer in self.layers)

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """{kind: (flops, bytes)} summed over the layers.

        Returns:
            The dict, kinds in first-seen order.
        """
        out: dict[str, tuple[int, int]] = {}
        for layer in self.layers:
            f, b = out.get(layer.kind, (0, 0))
            out[layer.kind] = (f + layer.flops, b + layer.bytes)
        return out


class _Ledger:
    """Rows keyed by (module path, kind), in the order first seen."""

    def __init__(self):
        self.rows: dict[tuple[str, str], Layer] = {}
        self.lowered_for = ""  # the compile paths: the GPU key lowered for, or "cpu"

    def add(self, name: str, kind: str, shape: str, flops: int, kernels: list[int]) -> None:
        row = self.rows.get((name, kind))
        if row is None:
            row = self.rows[(name, kind)] = Layer(name, kind, shape)
        if shape and (not row.shape or (flops and not row.flops)):  # the computing op's
            row.shape = shape
        row.flops += int(flops)
        row.bytes += int(sum(kernels))
        row.kernels += len(kernels)


def _shape_text(shape, size: Callable = int) -> str:
    return "x".join(str(size(s)) for s in shape)


def _describe(args, size: Callable = int, weight: bool = False) -> str:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors:
        return ""
    text = _shape_text(tensors[0].shape, size)
    if weight and len(tensors) > 1:
        text += f", w {_shape_text(tensors[1].shape, size)}"
    return text


def _argument(func, args, *names):
    """The first of ``names`` among ``func``'s schema arguments, from ``args``; None if
    it has none of them."""
    schema = [a.name for a in func._schema.arguments]
    for name in names:
        if name in schema and schema.index(name) < len(args):
            return args[schema.index(name)]
    return None


def _conv_weight(func, args) -> tuple[tuple[int, ...] | None, int]:
    """(weight shape, groups) of a convolution operator's arguments; (None, 1) otherwise.
    ATen's by position; fastcifar's by their schema's names (``weight`` or
    ``weight_shape``, ``groups``; a 1x1 operator has no groups: 1)."""
    name = func._schema.name
    base = name.split("::")[-1]
    if base == "convolution":
        return tuple(args[1].shape), int(args[8])
    if base == "convolution_backward":
        return tuple(args[2].shape), int(args[9])
    weight = _argument(func, args, "weight", "weight_shape")
    if not name.startswith("fastcifar::") or weight is None:
        return None, 1
    groups = _argument(func, args, "groups")
    shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else tuple(weight)
    return shape, int(groups) if groups is not None else 1


def _flops(func, args, kwargs, out, size: Callable = int) -> int:
    """torch.utils.flop_counter's count for ``func``, except the convolution backward:
    each gradient it computes costs the forward's multiply-adds (``conv_flop_count``).
    torch's own ``conv_backward_flop`` ignores groups in the weight gradient, so it
    counts a depthwise layer's weight gradient CIN times over (torch 2.11-2.14).
    fastcifar's operators register their own formulas (``fastcifar.kernels.flops``): a
    convolution operator counts as the ATen convolution it computes (a prologue's and an
    epilogue's elementwise work is not counted: it is bytes-bound)."""
    packet = func._overloadpacket
    if packet is torch.ops.aten.convolution_backward:
        dy, x, w, mask = args[0], args[1], args[2], args[10]
        shapes = [[size(s) for s in t.shape] for t in (x, w, dy)]
        return int(conv_flop_count(*shapes)) * (int(mask[0]) + int(mask[1]))
    if packet in flop_registry:
        return int(size(flop_registry[packet](*args, **(kwargs or {}), out_val=out)))
    return 0


class _Recorder:
    """Turns one operator call into a ledger row: its layer, kind, shape, FLOPs, bytes."""

    def __init__(self, ledger: _Ledger, kinds: dict[str, str], size: Callable = int):
        self.ledger, self.kinds, self.size = ledger, kinds, size
        self.fused: dict[str, str] = {}  # the compile paths: ``fused_kinds``

    def record(self, func, args, kwargs, out, layer: str, kernels: list[int] | None = None):
        if kernels is None:
            kernels = op_kernels(func, args, kwargs, out, self.size)
        flops = _flops(func, args, kwargs, out, self.size)
        if not kernels and not flops:
            return
        name = func._schema.name
        weight, groups = _conv_weight(func, args)
        kind = _PHASE_KINDS.get(layer) or self.kinds.get(layer) or op_kind(name, weight, groups)
        shape = _describe(args, self.size, weight=weight is not None or "mm" in name)
        self.ledger.add(layer, kind, shape, flops, kernels)


class _EagerCounter(TorchDispatchMode):
    """Records every operator below autograd while ``on``. Its layer: ``phase`` when set
    (the optimizer); in the forward, the innermost module the tracker says runs; in the
    backward, the layer whose forward operator created the autograd node running (its
    sequence number), so a gradient is charged to the layer it belongs to."""

    def __init__(self, recorder: _Recorder, tracker: ModuleTracker, root: str):
        super().__init__()
        self.recorder, self.tracker, self.root = recorder, tracker, root
        self.on, self.phase = False, None
        self.by_seq: dict[int, str] = {}

    def _forward_layer(self) -> str:
        deepest = max(self.tracker.parents, key=lambda p: (p.count("."), p))
        if deepest == "Global":
            return LOSS
        if deepest == self.root:
            return ROOT
        return deepest[len(self.root) + 1 :] if deepest.startswith(self.root + ".") else deepest

    def layer(self) -> str:
        if self.phase:
            return self.phase
        node = torch._C._current_autograd_node()
        if node is not None:
            return self.by_seq.get(node._sequence_nr(), ROOT)
        layer = self._forward_layer()
        # the autograd node this operator created, if any, is the last one numbered
        self.by_seq.setdefault(torch._C._autograd._get_sequence_nr() - 1, layer)
        return layer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        layer = self.layer()
        if self.on:
            self.recorder.record(func, args, kwargs, out, layer)
        return out


def fused_kinds(model: nn.Module) -> dict[str, str]:
    """{qualified name: kind of the compiler's kernels inside it} of ``model``'s fused
    modules (``kinds.fused_kind``).

    Args:
        model: any model.

    Returns:
        {qualified name: kind}.
    """
    return {name: k for name, m in model.named_modules() if (k := fused_kind(m)) is not None}


def module_kinds(model: nn.Module) -> dict[str, str]:
    """{qualified name: kind} of ``model``'s leaf modules of known type.

    Args:
        model: any model.

    Returns:
        {qualified name: kind}.
    """
    kinds = {}
    for name, module in model.named_modules():
        kind = module_kind(module)
        if name and kind is not None:
            kinds[name] = kind
    return kinds


@dataclass
class StepSetup:
    """What a step is made of.

    Attributes:
        model: the model (real, on the CPU).
        name: its name.
        loss: ``(outputs, labels) -> loss`` (``fastcifar.engine.optim.criterion``).
        optimizer: ``model -> optimizer``.
        batch_size: images a step.
        amp_dtype: the autocast dtype, or None (float32).
        channels_last: the step's layout.
        ema: ``model -> EMA``, or None.
    """

    model: nn.Module
    name: str
    loss: Callable
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batch_size: int
    amp_dtype: torch.dtype | None = torch.bfloat16
    channels_last: bool = True
    ema: Callable[[nn.Module], object] | None = None

    def example(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of the step's layout.

        Args:
            batch: images.
            device: where to make it, or None for the CPU.

        Returns:
            (images (batch, 3, 32, 32) float32, labels (batch,) int64).
        """
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        return x, torch.randint(0, 10, (batch,), device=device)

    def autocast(self, device: str = "cuda"):
        """The autocast of the step's forward: CUDA's policy (``autocast.CudaAutocast``,
        what a GPU user's ``torch.autocast("cuda")`` casts) on the CPU's fake tensors, or
        the CPU's own (``device="cpu"``, the tests' control); nothing without a dtype.

        Args:
            device: ``"cuda"`` (CUDA's policy) or ``"cpu"``.

        Returns:
            The context manager.
        """
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        if device == "cpu":
            return torch.autocast("cpu", dtype=self.amp_dtype)
        from fastcifar.roofline.autocast import CudaAutocast

        return CudaAutocast(self.amp_dtype)

    @property
    def dtype_name(self) -> str:
        """The step's compute dtype's name (``bfloat16``, ``float16`` or ``float32``)."""
        return str(self.amp_dtype or torch.float32).removeprefix("torch.")
