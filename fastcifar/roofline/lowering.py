"""How the compile paths' graphs reach the roofline: traced on the CPU by Dynamo into a
``torch.compile`` backend of our own, lowered by Inductor for a fake CUDA device
(``fake_cuda``) at the static batch with CUDA's autocast casts in the graph
(``autocast.cast_graph``), and read by ``inductor._InductorHook`` in place of Inductor's
code generation. Nothing is generated, built or run; the compile ends once the backward
graph is read. The tests' control lowers for the CPU as the roofline did before."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from unittest import mock

import torch
from torch import nn

from fastcifar.roofline.autocast import cast_graph
from fastcifar.roofline.fake_cuda import fake_cuda, fake_cuda_tensor, require_cuda
from fastcifar.roofline.gpus import Gpu
from fastcifar.roofline.inductor import _InductorHook, _triton_recorded, fastcifar_op_costs
from fastcifar.roofline.ledger import StepSetup, _Ledger, _Recorder, fused_kinds, module_kinds

__all__ = ["CONTROL_TRACE_BATCH", "MAXPOOL_BACKWARD", "compiled_count"]


@contextlib.contextmanager
def _inductor_reading(hook: _InductorHook) -> Iterator[None]:
    """Inductor with its caches off (every graph is lowered, so the hook sees it), the
    backward compiled with the forward (``force_non_lazy_backward_lowering``), and each
    lowered graph read by the hook instead of turned into code (``_GraphRead`` ends its
    compile: nothing is generated, built or run)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.graph import GraphLowering

    def compile_to_module(graph):
        hook.read(graph)
        raise _GraphRead

    with (
        inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False),
        functorch_config.patch(enable_autograd_cache=False, force_non_lazy_backward_lowering=True),
        mock.patch.object(GraphLowering, "compile_to_module", compile_to_module),
    ):
        yield


class _GraphRead(Exception):
    """Raised out of Inductor's compile of one graph once the hook has read it."""


class _BothGraphsRead(Exception):
    """Raised out of torch.compile once the backward graph has been read: the count is
    done."""


def _raised(exc: BaseException, kind: type) -> bool:
    """Whether ``exc``, or an exception it was raised from (as torch.compile wraps them),
    is a ``kind``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _retyped(gm, example_inputs, device: torch.device):
    """(a copy of ``gm`` whose device arguments are ``device``, its inputs as fake tensors
    on ``device``): every node's value propagated again (``FakeTensorProp``) under the
    fake mode the inputs come from, so the lowering sees ``device``'s layouts."""
    from torch._guards import detect_fake_mode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))

    def retype(value):
        return device if isinstance(value, torch.device) else value

    for node in graph.nodes:
        node.args = torch.fx.node.map_aggregate(node.args, retype)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, retype)
        node.meta.pop("val", None)
        node.meta.pop("tensor_meta", None)
    lowered = torch.fx.GraphModule(gm, graph)
    mode = detect_fake_mode(example_inputs)
    inputs = [
        fake_cuda_tensor(t, mode, device) if isinstance(t, torch.Tensor) else t
        for t in example_inputs
    ]
    FakeTensorProp(lowered, mode).propagate_dont_convert_inputs(*inputs)
    return lowered, inputs


# the CPU control traces the batch symbolic with this many images (as the roofline did
# before it lowered for CUDA at the static batch)
CONTROL_TRACE_BATCH = 8
# torch 2.14's Inductor decomposes the max-pool backward into a zero-filled float32
# gradient at the pre-pool size and a scatter-add (every device but xpu/mps; PyTorch PR
# 167318, issue 195123); without its decomposition the max-pool backward is one kernel
MAXPOOL_BACKWARD = (torch.ops.aten.max_pool2d_with_indices_backward.default,)


class _Lowering:
    """A ``torch.compile`` backend that lowers the forward and backward graphs for
    ``gpu`` (a fake ``cuda:0`` with its ``CudaProfile``; None: the CPU, the tests'
    control) and has the hook read them, with CUDA's autocast casts written into the
    graph first when ``cuda_amp`` is a dtype."""

    def __init__(self, gpu: Gpu | None, cuda_amp: torch.dtype | None, maxpool_decomposition: bool):
        self.gpu, self.cuda_amp = gpu, cuda_amp
        self.maxpool_decomposition = maxpool_decomposition
        self.device = torch.device("cuda", 0) if gpu is not None else torch.device("cpu")

    def backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx
        from torch._inductor.decomposition import select_decomp_table

        table = select_decomp_table()
        if not self.maxpool_decomposition:
            table = {op: f for op, f in table.items() if op not in MAXPOOL_BACKWARD}
        if self.cuda_amp is None:
            return compile_fx(gm, example_inputs, inner_compile=self.inner, decompositions=table)
        cast_graph(gm, example_inputs, self.cuda_amp)
        with torch.autocast("cpu", enabled=False):  # AOTAutograd: CUDA's casts, no others
            return compile_fx(gm, example_inputs, inner_compile=self.inner, decompositions=table)

    def inner(self, gm, example_inputs, **kwargs):
        from torch._functorch.aot_autograd import make_boxed_func
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.utils import BoxedBool

        lowered, inputs = gm, example_inputs  # the control: as traced
        if self.gpu is not None:
            lowered, inputs = _retyped(gm, example_inputs, self.device)
        kwargs["cudagraphs"] = BoxedBool(False)
        device = fake_cuda(self.gpu) if self.gpu is not None else contextlib.nullcontext()
        try:
            with device:
                compile_fx_inner(lowered, inputs, **kwargs)
        except Exception as exc:
            if not _raised(exc, _GraphRead):
                where = f"CUDA ({self.gpu.name})" if self.gpu is not None else "the CPU"
                raise RuntimeError(f"Inductor failed to lower for {where}: {exc}") from exc
        if kwargs.get("is_backward"):
            raise _BothGraphsRead
        return make_boxed_func(gm.forward)  # never run: the backward's read ends the count


def _compile(model: nn.Module, x: torch.Tensor, lowering: _Lowering, static: bool) -> None:
    """``torch.compile`` of ``model`` with ``lowering``'s backend, called on ``x``: Dynamo
    traces, the backend lowers the forward and then the backward graph, and the count's
    end (``_BothGraphsRead``) stops it before anything runs."""
    torch._dynamo.reset()
    dynamic = False if static else None
    compiled = torch.compile(model, backend=lowering.backend, fullgraph=True, dynamic=dynamic)
    try:
        compiled(x)
    except Exception as exc:
        if not _raised(exc, _BothGraphsRead):
            raise
    finally:
        torch._dynamo.reset()


def compiled_count(
    setup: StepSetup,
    model: nn.Module,
    target: str | None,
    triton: bool,
    gpu: Gpu | None,
    progress: Callable[[str], None] = lambda line: None,
    maxpool_decomposition: bool = True,
) -> _Ledger:
    """The model's forward and backward graphs as Inductor lowers them for ``gpu`` (a
    fake ``cuda:0`` with its ``CudaProfile``), at the static batch ``setup.batch_size``
    (traced on the CPU, nothing runs), with CUDA's autocast casts in the graph. ``gpu``
    None: the tests' control, the roofline's count before it lowered for CUDA (for the
    CPU, the CPU's autocast, the batch traced symbolic with ``CONTROL_TRACE_BATCH``
    images and every size evaluated at the batch). ``progress`` hears of each
    graph as it is read. ``maxpool_decomposition`` False: Inductor's decomposition of the
    max-pool backward taken out of its table (``MAXPOOL_BACKWARD``: what torch's lowering
    costs).

    Args:
        setup: the step's setup.
        model: the model to compile (converted when ``triton``).
        target: the GPU target whose tiles fastcifar's launchers take, or None.
        triton: the fastcifar path (fastcifar's custom operators costed by their launches).
        gpu: the GPU lowered for, or None.
        progress: hears one line a graph.
        maxpool_decomposition: keep Inductor's max-pool backward decomposition.

    Returns:
        The ledger of the step's kernels by layer.

    Raises:
        FastCifarError: a torch whose Inductor internals are untested (``fake_cuda``), or
            a GPU with no CUDA profile.
        RuntimeError: Inductor failed to lower a graph (never a silent fallback).
    """
    if gpu is not None:
        require_cuda(gpu)  # before any tracing
    ledger = _Ledger()
    recorder = _Recorder(ledger, module_kinds(model))
    recorder.fused = fused_kinds(model)
    symbolic = None if gpu is not None else (setup.batch_size, CONTROL_TRACE_BATCH)
    hook = _InductorHook(recorder, fastcifar_op_costs(target), progress, symbolic)
    recorder.size = hook.size
    model = model.train()
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, _ = setup.example(setup.batch_size if gpu is not None else CONTROL_TRACE_BATCH)
    if gpu is None:
        torch._dynamo.mark_dynamic(x, 0)
    cuda_amp = setup.amp_dtype if gpu is not None else None
    lowering = _Lowering(gpu, cuda_amp, maxpool_decomposition)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_inductor_reading(hook))
        if triton:  # fastcifar's operators, as on the GPU
            stack.enter_context(_triton_recorded(target))
        # Dynamo traces under the CPU's autocast (fastcifar's modules cast for their
        # kernels, as under CUDA's on a GPU); for CUDA, _Lowering replaces its casts
        stack.enter_context(setup.autocast(device="cpu"))
        _compile(model, x, lowering, static=gpu is not None)
    ledger.lowered_for = gpu.key if gpu is not None else "cpu"
    if hook.graphs < 2:
        raise RuntimeError(
            f"Inductor compiled {hook.graphs} graph(s) of {setup.name}; "
            f"expected a forward and a backward"
        )
    return ledger
