"""The ``compile`` and ``fastcifar`` paths: Inductor's kernels of the model's forward and
backward graphs, read as it compiles them (``count``'s docstring says how and what
differs from a GPU)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator

import torch
from torch.utils.module_tracker import ModuleTracker

from fastcifar.roofline.kinds import kernel_kind, op_kind
from fastcifar.roofline.ledger import (
    ROOT,
    _EagerCounter,
    _Ledger,
    _Recorder,
)
from fastcifar.roofline.traffic import tensor_bytes

__all__ = ["fastcifar_op_costs"]

_MODULE_PATH = re.compile(r"\[['\"]([^'\"]+)['\"]\]")


def _module_path(key: str) -> str:
    """Dynamo's ``L['self'].blocks.0`` or ``L['self']._modules['blocks']._modules['0']``
    -> ``blocks.0``; the compiled module itself (``L['self']``, ``L['fn']``) -> ``""``."""
    key = _MODULE_PATH.sub(lambda m: "." + m.group(1), re.sub(r"^L\[['\"][^'\"]+['\"]\]", "", key))
    key = key.replace("._modules.", ".").replace("._modules", "")
    parts = [p for p in key.split(".") if p and p != "self"]
    return ".".join(parts)


class _InductorHook:
    """Reads every graph Inductor lowers: its kernels as the scheduler fuses them, their
    bytes, and the layer each comes from."""

    def __init__(
        self,
        recorder: _Recorder,
        fastcifar_costs,
        progress: Callable[[str], None],
        symbolic: tuple[int, int] | None = None,
    ):
        self.recorder = recorder
        self.fastcifar_costs = fastcifar_costs
        self.progress = progress
        self.by_seq: dict[int, str] = {}  # forward sequence number -> layer
        self.graphs = 0
        # the CPU control: the batch traced symbolic with symbolic[1] images, counted at
        # symbolic[0] (as the roofline counted before it lowered for CUDA)
        self.symbolic = symbolic

    def size(self, value) -> int:
        """A size: an int, or (the control) a symbolic size at the batch counted."""
        import sympy

        if isinstance(value, torch.SymInt):
            value = value.node.expr
        if isinstance(value, sympy.Expr):
            return int(value.xreplace({s: self.symbolic[0] for s in value.free_symbols}))
        return int(value)

    @contextlib.contextmanager
    def _batch_hints(self, graph) -> Iterator[None]:
        """The control: Inductor's size hints with the batch symbol at the batch counted
        (so its bytes are the counted batch's)."""
        if self.symbolic is None:
            yield
            return
        import sympy

        batch, traced = self.symbolic
        sizevars = graph.sizevars
        values = getattr(sizevars.shape_env, "backed_var_to_val", None)
        values = values or sizevars.shape_env.var_to_val  # torch 2.14, 2.11
        batch_syms = {s for s, v in values.items() if int(v) == traced}
        original = sizevars.optimization_hint

        def hint(expr, fallback=None):
            if isinstance(expr, int):
                return expr
            expr = sympy.sympify(expr)
            value = expr.xreplace({s: batch for s in expr.free_symbols if s in batch_syms})
            if getattr(value, "free_symbols", None):
                return original(value, fallback=fallback)
            return int(value)

        sizevars.optimization_hint = hint
        try:
            yield
        finally:
            del sizevars.optimization_hint

    def layer_of(self, fx_node) -> str | None:
        stack = fx_node.meta.get("nn_module_stack")
        seq = fx_node.meta.get("seq_nr")
        if stack:
            path = _module_path(list(stack.values())[-1][0])
            if seq is not None:
                self.by_seq.setdefault(seq, path)
            return path or ROOT
        return self.by_seq.get(seq) if seq is not None else None

    def _layer(self, origins) -> str:
        votes: dict[str, int] = {}
        for fx_node in sorted(origins, key=lambda n: n.name):
            layer = self.layer_of(fx_node)
            if layer is not None:
                votes[layer] = votes.get(layer, 0) + 1
        if not votes:
            return ROOT
        best = max(votes, key=votes.get)
        return best or ROOT

    def read(self, graph) -> None:
        """Called in place of ``GraphLowering.compile_to_module`` (``V.graph`` is
        ``graph``): the lowered graph scheduled (``Scheduler``: the fusions Inductor's
        code generation would make), each kernel recorded."""
        from torch._inductor.scheduler import Scheduler

        self.graphs += 1
        for fx_node in graph.graph.nodes:  # forward graphs name the layers first
            self.layer_of(fx_node)
        import torch._inductor.config as inductor_config

        # the control's CPU graph scheduled as Inductor's Triton backend (its CUDA
        # backend's scheduler) would, not its C++ one; a CUDA graph is Triton's anyway
        with self._batch_hints(graph), inductor_config.patch(cpu_backend="triton"):
            self._read(graph, Scheduler(graph.operations).nodes)

    def _read(self, graph, nodes) -> None:
        from torch._inductor import ir
        from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

        which = "backward" if graph.is_backward else "forward"
        self.progress(f"  Inductor's {which} graph: {len(nodes)} kernels read")
        for node in nodes:
            if isinstance(node, NopKernelSchedulerNode):
                continue
            if isinstance(node, ExternKernelSchedulerNode):
                if not isinstance(node.node, ir.MultiOutput):
                    self._extern(node)
                continue
            accesses = node.get_read_write_buffer_accesses(include_reads=True, include_writes=True)
            origins = set()
            for sub in node.get_nodes():
                origins |= set(getattr(sub.node, "origins", ()) or ())
            self._generated(node, origins, sum(accesses.values()))

    def _generated(self, node, origins, nbytes: int, kind_hint: str | None = None) -> None:
        layer = self._layer(origins)
        kinds = [op_kind(_op_name(o)) for o in origins if o.op == "call_function"]
        layer_kind = self.recorder.fused.get(layer) or self.recorder.kinds.get(layer) or kind_hint
        self.recorder.ledger.add(layer, kernel_kind(kinds, layer_kind), "", 0, [nbytes])

    def _ir_bytes(self, buffer) -> int:
        """Bytes of an Inductor buffer, its symbolic batch evaluated."""
        import sympy

        numel = sympy.Mul(*[sympy.sympify(s) for s in buffer.get_size()])
        return self.size(numel) * buffer.get_dtype().itemsize

    def _scatter(self, node) -> None:
        """An in-place scatter (Inductor's ``ScatterFallback``, what a max-pool backward
        becomes): reads the index and the source, writes as many elements as the source
        has (``traffic``'s scatter-add rule)."""
        kernel = node.node
        _, index, *src = kernel.inputs
        src_bytes = self._ir_bytes(src[0]) if src else 0
        nbytes = self._ir_bytes(index) + 2 * src_bytes
        origins = set(kernel.origins or ())
        pools = {o for o in origins if "pool" in str(o.target)}  # a max-pool's backward
        self._generated(node, pools or origins, nbytes, kind_hint="pooling" if pools else "other")

    def _extern(self, node) -> None:
        kernel = node.node
        if type(kernel).__name__ == "ScatterFallback":
            return self._scatter(node)
        op = getattr(kernel, "op_overload", None)
        origin = None
        for fx_node in getattr(kernel, "origins", ()) or ():
            ours = fx_node.target is op if op is not None else _is_extern_op(fx_node.target)
            if ours and (op is not None or origin is None):
                origin = fx_node
        if origin is None:
            accesses = node.get_read_write_buffer_accesses(include_reads=True, include_writes=True)
            nbytes = sum(accesses.values())
            self._generated(node, set(kernel.origins or ()), nbytes)
            return
        func = origin.target
        args, kwargs = _vals(origin.args), _vals(origin.kwargs)
        out = origin.meta.get("val")
        kernels = None
        if func.namespace == "fastcifar":
            kernels = self.fastcifar_costs(func, args, kwargs, self.size)
        layer = self._layer({origin})
        self.recorder.record(func, args, kwargs, out, layer, kernels)


def _op_name(fx_node) -> str:
    """The ATen operator an fx node of a lowered graph comes from: the one before
    decomposition (``original_aten``: ``native_batch_norm`` rather than the ``sub`` and
    ``mul`` it became), else its own."""
    op = fx_node.meta.get("original_aten") or fx_node.target
    schema = getattr(op, "_schema", None)
    return schema.name if schema is not None else ""


def _is_extern_op(target) -> bool:
    """An ATen operator that is not pointwise (the one an extern kernel runs)."""
    is_op = isinstance(target, torch._ops.OpOverload)
    return is_op and torch.Tag.pointwise not in target.tags


def _vals(tree):
    """fx nodes in ``tree`` replaced by their fake values."""
    from torch.fx import Node
    from torch.utils._pytree import tree_map

    return tree_map(lambda a: a.meta.get("val") if isinstance(a, Node) else a, tree)


def _meta_like(t, size: Callable) -> torch.Tensor:
    """A ``meta`` tensor with ``t``'s (evaluated) sizes, strides and dtype."""
    return torch.empty_strided(
        [size(s) for s in t.shape], [size(s) for s in t.stride()], dtype=t.dtype, device="meta"
    )


def fastcifar_op_costs(target: str | None) -> Callable:
    """A function costing one fastcifar custom-operator call: its launcher run on meta
    tensors, launches recorded (``target``'s tiles), each launch its distinct tensor
    arguments once, the PyTorch operators it runs by the eager rules.

    Args:
        target: the GPU target whose tiles the launchers take (``"sm_90"``), or None.

    Returns:
        ``(op, args, kwargs, size) -> [bytes, ...]``, one entry per kernel the call
        launches (``size`` turns a symbolic size into an int).
    """
    from torch._library.custom_ops import OPDEFS
    from torch.utils._pytree import tree_map

    from fastcifar.kernels.launch import record_launches
    from fastcifar.kernels.tiles import compile_target

    def cost(func, args, kwargs, size) -> list[int]:
        opdef = OPDEFS[func._schema.name]
        margs = tree_map(lambda a: _meta_like(a, size) if isinstance(a, torch.Tensor) else a, args)
        margs = tree_map(lambda a: size(a) if isinstance(a, torch.SymInt) else a, margs)
        inner = _Ledger()
        counter = _EagerCounter(_Recorder(inner, {}), ModuleTracker(), "")
        counter.phase, counter.on = "inside", True
        with compile_target(target), record_launches() as launches, counter:
            opdef._init_fn(*margs, **kwargs)
        kernels = []
        for launch in launches:
            tensors = [a for a in launch.args if isinstance(a, torch.Tensor)]
            distinct = {id(t): t for t in tensors}.values()  # a dummy pointer repeats one
            kernels.append(sum(tensor_bytes(t) for t in distinct))
        for row in inner.rows.values():
            kernels += [row.bytes // max(row.kernels, 1)] * row.kernels
        return kernels

    return cost


@contextlib.contextmanager
def _triton_recorded(target: str | None) -> Iterator[None]:
    """fastcifar's custom operators runnable on the CPU with their launches recorded
    (nothing computes: their outputs are uninitialised, which a count does not read)."""
    from fastcifar.kernels.launch import record_launches
    from fastcifar.kernels.tiles import compile_target

    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        with compile_target(target), record_launches():
            yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
