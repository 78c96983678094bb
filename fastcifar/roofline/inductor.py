"""The ``compile`` and ``fastcifar`` paths: Inductor's kernels of the model's forward and
backward graphs, read as it compiles them (``count``'s docstring says how and what
differs from a GPU)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from unittest import mock

import torch
from torch import nn
from torch.utils.module_tracker import ModuleTracker

from fastcifar.roofline.kinds import op_kind
from fastcifar.roofline.ledger import (
    COMPILE_BATCH,
    ROOT,
    StepSetup,
    _EagerCounter,
    _Ledger,
    _Recorder,
    module_kinds,
)
from fastcifar.roofline.traffic import tensor_bytes

__all__ = ["compiled_count", "fastcifar_op_costs"]

_MODULE_PATH = re.compile(r"\[['\"]([^'\"]+)['\"]\]")


def _module_path(key: str) -> str:
    """Dynamo's ``L['self'].blocks.0`` or ``L['self']._modules['blocks']._modules['0']``
    -> ``blocks.0``; the compiled module itself (``L['self']``, ``L['fn']``) -> ``""``."""
    key = _MODULE_PATH.sub(lambda m: "." + m.group(1), re.sub(r"^L\[['\"][^'\"]+['\"]\]", "", key))
    key = key.replace("._modules.", ".").replace("._modules", "")
    parts = [p for p in key.split(".") if p and p != "self"]
    return ".".join(parts)


class _InductorHook:
    """Reads every graph Inductor compiles: its kernels, their bytes at ``batch`` (the
    symbolic batch evaluated there) and the layer each comes from."""

    def __init__(
        self,
        recorder: _Recorder,
        batch: int,
        run_batch: int,
        fastcifar_costs,
        progress: Callable[[str], None] = lambda line: None,
    ):
        self.recorder, self.batch, self.run_batch = recorder, batch, run_batch
        self.fastcifar_costs = fastcifar_costs
        self.progress = progress
        self.by_seq: dict[int, str] = {}  # forward sequence number -> layer
        self.graphs = 0
        self.scheduler = "triton"  # whose fusion decisions were counted

    def size(self, value) -> int:
        """An int, or a symbolic size with the batch symbol at ``batch``."""
        import sympy

        if isinstance(value, torch.SymInt):
            value = value.node.expr
        if isinstance(value, sympy.Expr):
            subs = {s: self.batch for s in value.free_symbols}
            return int(value.xreplace(subs))
        return int(value)

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
        """Called inside ``GraphLowering.compile_to_module``, after it (``V.graph`` is
        ``graph``)."""
        from torch._inductor import ir
        from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

        self.graphs += 1
        for fx_node in graph.graph.nodes:  # forward graphs name the layers first
            self.layer_of(fx_node)
        sizevars = graph.sizevars
        env = sizevars.shape_env
        values = getattr(env, "backed_var_to_val", None) or env.var_to_val  # torch 2.14, 2.11
        batch_syms = {s for s, v in values.items() if int(v) == self.run_batch}

        def hint(expr, fallback=None):
            import sympy

            if isinstance(expr, int):
                return expr
            expr = sympy.sympify(expr)
            value = expr.xreplace({s: self.batch for s in expr.free_symbols if s in batch_syms})
            if getattr(value, "free_symbols", None):
                return original(value, fallback=fallback)
            return int(value)

        original = sizevars.optimization_hint
        sizevars.optimization_hint = hint
        try:
            nodes = self._scheduled(graph)
            which = "backward" if graph.is_backward else "forward"
            self.progress(f"  Inductor's {which} graph: {len(nodes)} kernels read")
            for node in nodes:
                if isinstance(node, NopKernelSchedulerNode):
                    continue
                if isinstance(node, ExternKernelSchedulerNode):
                    if not isinstance(node.node, ir.MultiOutput):
                        self._extern(node)
                    continue
                accesses = node.get_read_write_buffer_accesses(
                    include_reads=True, include_writes=True
                )
                origins = set()
                for sub in node.get_nodes():
                    origins |= set(getattr(sub.node, "origins", ()) or ())
                self._generated(node, origins, sum(accesses.values()))
        finally:
            del sizevars.optimization_hint

    def _scheduled(self, graph) -> list:
        """The graph's kernels as Inductor's Triton backend (its CUDA backend's scheduler)
        fuses them: the lowered graph scheduled again with ``cpu_backend="triton"``. Where
        that fails (an Inductor version without it), the CPU backend's own kernels."""
        import torch._inductor.config as inductor_config
        from torch._inductor.scheduler import Scheduler

        try:
            with inductor_config.patch(cpu_backend="triton"):
                nodes = Scheduler(graph.operations).nodes
            self.scheduler = "triton"
            return nodes
        except Exception:  # noqa: BLE001 - any failure: the CPU backend's schedule stands
            self.scheduler = "cpp"
            return graph.scheduler.nodes

    def _generated(self, node, origins, nbytes: int, kind_hint: str | None = None) -> None:
        layer = self._layer(origins)
        kinds = [
            op_kind(getattr(o.target, "_schema", None) and o.target._schema.name or "")
            for o in origins
            if o.op == "call_function"
        ]
        kind = self.recorder.kinds.get(layer) or kind_hint or _dominant(kinds)
        self.recorder.ledger.add(layer, kind, "", 0, [nbytes])

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


def _is_extern_op(target) -> bool:
    """An ATen operator that is not pointwise (the one an extern kernel runs)."""
    is_op = isinstance(target, torch._ops.OpOverload)
    return is_op and torch.Tag.pointwise not in target.tags


def _vals(tree):
    """fx nodes in ``tree`` replaced by their fake values."""
    from torch.fx import Node
    from torch.utils._pytree import tree_map

    return tree_map(lambda a: a.meta.get("val") if isinstance(a, Node) else a, tree)


def _dominant(kinds: list[str]) -> str:
    named = [k for k in kinds if k != "other"]
    if not named:
        return "other"
    return max(set(named), key=named.count)


def _meta_like(t, size: Callable) -> torch.Tensor:
    """A ``meta`` tensor with ``t``'s (evaluated) sizes, strides and dtype."""
    return torch.empty_strided(
        [size(s) for s in t.shape], [size(s) for s in t.stride()], dtype=t.dtype, device="meta"
    )


def fastcifar_op_costs(target: str | None) -> Callable:
    """A function costing one fastcifar custom-operator call: its launcher run on meta
    tensors, launches recorded (``target``'s tiles), each launch its distinct tensor
    arguments once, the PyTorch operators it runs by the eager rules."""
    from torch._library.custom_ops import OPDEFS
    from torch.utils._pytree import tree_map

    from fastcifar.kernels.launch import compile_target, record_launches

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
def _inductor_reading(hook: _InductorHook) -> Iterator[None]:
    """Inductor with its caches off (every graph is lowered, so the hook sees it), the
    backward compiled with the forward (``force_non_lazy_backward_lowering``), the hook
    on every lowered graph, and no work that a count does not need: the forward's C++
    kernels are not built (``_zero_fill`` stands in), and once the backward graph is read
    ``_BothGraphsRead`` ends the compile before its code generation and before anything
    runs."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.async_compile import AsyncCompile
    from torch._inductor.graph import GraphLowering

    original = GraphLowering.compile_to_module

    def compile_to_module(graph):
        if graph.is_backward:
            hook.read(graph)
            raise _BothGraphsRead
        module = original(graph)
        hook.read(graph)
        return module

    with (
        inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False),
        functorch_config.patch(enable_autograd_cache=False, force_non_lazy_backward_lowering=True),
        mock.patch.object(GraphLowering, "compile_to_module", compile_to_module),
        mock.patch.object(AsyncCompile, "cpp", lambda self, source: _zero_fill),
        mock.patch.object(AsyncCompile, "cpp_pybinding", lambda self, types, source: _zero_fill),
    ):
        yield


class _BothGraphsRead(Exception):
    """Raised out of Inductor once the backward graph has been read: the count is done."""


def _ended_by_count(exc: BaseException) -> bool:
    """Whether ``exc`` (as torch.compile wraps it) is ``_BothGraphsRead``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _BothGraphsRead):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _zero_fill(*args, **kwargs) -> None:
    """What each of Inductor's generated C++ kernels does while counting: nothing but
    zero its tensors (indices read later stay in range). The count needs the kernels'
    shapes, not their values, and skipping the C++ build takes most of a compile's time."""
    for arg in args:
        if isinstance(arg, torch.Tensor):
            arg.zero_()


@contextlib.contextmanager
def _triton_recorded(target: str | None) -> Iterator[None]:
    """fastcifar's custom operators runnable on the CPU with their launches recorded
    (nothing computes: their outputs are uninitialised, which a count does not read)."""
    from fastcifar.kernels.launch import compile_target, record_launches

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


def compiled_count(
    setup: StepSetup,
    model: nn.Module,
    target: str | None,
    triton: bool,
    progress: Callable[[str], None] = lambda line: None,
) -> _Ledger:
    """The model's forward and backward graphs as Inductor compiles them (the batch
    symbolic, traced with ``COMPILE_BATCH`` images; nothing runs), counted at the batch;
    ``progress`` hears of each graph as it is read."""
    ledger = _Ledger()
    recorder = _Recorder(ledger, module_kinds(model))
    costs = fastcifar_op_costs(target)
    hook = _InductorHook(recorder, setup.batch_size, COMPILE_BATCH, costs, progress)
    recorder.size = hook.size
    model = model.train()
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, _ = setup.example(COMPILE_BATCH)
    torch._dynamo.mark_dynamic(x, 0)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=None)
    running = _triton_recorded(target) if triton else contextlib.nullcontext()
    try:
        with _inductor_reading(hook), running, setup.autocast():
            compiled(x)  # traces, compiles the forward and then the backward graph
    except Exception as exc:
        if not _ended_by_count(exc):
            raise
    finally:
        torch._dynamo.reset()
    ledger.scheduler = hook.scheduler
    if hook.graphs < 2:
        raise RuntimeError(
            f"Inductor compiled {hook.graphs} graph(s) of {setup.name}; "
            f"expected a forward and a backward"
        )
    return ledger
