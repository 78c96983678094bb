"""CUDA's autocast on CPU tensors: which operator runs in float32 and which in the low
dtype, as a CUDA user's ``torch.autocast("cuda")`` decides it, for a count that runs on
the CPU.

The policy is not a hand list: each operator is asked once (per operator, argument
dtypes and other arguments) by running it on fake CUDA tensors (``fake_cuda``) under
``torch.autocast("cuda")`` and recording which of its inputs autocast cast, and to what
(``aten._to_copy`` on an input, below autocast). CUDA's lists differ from the CPU's:
group_norm, layer_norm, softmax, exp and sum run in float32 on CUDA (a float32 output,
cast back before the next convolution), in the low dtype or untouched on the CPU.

Two ways to apply it: ``CudaAutocast``, a ``TorchFunctionMode`` for the eager count
(each call's inputs cast as CUDA's autocast would, then the call with no autocast); and
``cast_graph`` for the compile paths: Dynamo's graph run once on fake CUDA tensors under
CUDA's autocast, and the casts it made written into the graph before AOTAutograd traces
it with no autocast (so its forward and backward carry CUDA's casts, as on a GPU).
Autocast's cache of cast weights (a parameter used twice in one forward is cast once) is
not modelled: every use casts.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from fastcifar.roofline.fake_cuda import fake_cuda, fake_cuda_tensor
from fastcifar.roofline.gpus import get_gpu

__all__ = ["CudaAutocast", "autocast_casts", "cast_graph"]

_FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_NOT_OPERATORS = {torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad}
_LAYER_META = ("nn_module_stack", "stack_trace", "source_fn_stack")
_POLICY: dict[tuple, dict[int, torch.dtype]] = {}  # (func, dtype, arguments) -> casts


class _Casts(TorchDispatchMode):
    """Records ``aten._to_copy`` of any of ``inputs`` (by identity): autocast's casts."""

    def __init__(self, inputs: list):
        super().__init__()
        self.index = {id(t): i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)}
        self.casts: dict[int, torch.dtype] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and id(args[0]) in self.index:
            dtype = kwargs.get("dtype")
            if dtype is not None and dtype != args[0].dtype:
                self.casts.setdefault(self.index[id(args[0])], dtype)
        return func(*args, **kwargs)


def _key(value):
    """A hashable stand-in for an argument: a tensor by its dtype, anything else by
    itself, or its repr when unhashable."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype)
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def autocast_casts(func, leaves: list, spec, dtype: torch.dtype) -> dict[int, torch.dtype]:
    """{leaf index: dtype}: the inputs of ``func`` (its arguments flattened to ``leaves``
    with pytree ``spec``) that CUDA's autocast to ``dtype`` casts, and to what. Found by
    one call on fake CUDA tensors; remembered for the same function, dtypes and other
    arguments.

    Args:
        func: a torch function or operator.
        leaves: its arguments, flattened.
        spec: their pytree spec.
        dtype: the autocast dtype.

    Returns:
        {leaf index: dtype it is cast to}.
    """
    if not any(isinstance(t, torch.Tensor) and t.dtype in _FLOATING for t in leaves):
        return {}
    key = (func, dtype, spec, tuple(_key(v) for v in leaves))
    try:
        return _POLICY[key]
    except KeyError:
        pass
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [fake_cuda_tensor(t, mode) if isinstance(t, torch.Tensor) else t for t in leaves]
    args, kwargs = tree_unflatten(fakes, spec)
    casts = _Casts(fakes)
    try:
        with (
            _disable_current_modes(),
            fake_cuda(get_gpu("h100")),
            mode,
            torch.autocast("cuda", dtype=dtype),
            casts,
        ):
            func(*args, **kwargs)
    except Exception:  # noqa: BLE001 - an operator fake CUDA cannot run: autocast leaves it
        casts.casts = {}
    _POLICY[key] = casts.casts
    return casts.casts


class CudaAutocast(TorchFunctionMode):
    """Within: every torch function's inputs are cast as ``torch.autocast("cuda",
    dtype)`` would cast them (``autocast_casts``), on whatever device they are; the
    function then runs with no autocast. fastcifar's modules, which cast their
    convolution's arguments themselves when autocast is on for the input's device
    (``fastcifar.nn.modules.autocast_args``), cast to ``dtype`` as under CUDA's. For the
    eager counts on CPU (fake) tensors.

    Args:
        dtype: the autocast dtype (bfloat16 or float16).
    """

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self._modules = contextlib.ExitStack()

    def __enter__(self):
        from fastcifar.nn import chain, conv_bn, dwsep, modules, pool_chain

        def cast(x, weight, bias):
            bias = bias.to(self.dtype) if bias is not None else None
            return x.to(self.dtype), weight.to(self.dtype), bias

        for module in (modules, conv_bn, dwsep, chain, pool_chain):
            self._modules.enter_context(mock.patch.object(module, "autocast_args", cast))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._modules.close()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NOT_OPERATORS:
            return func(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        casts = autocast_casts(func, leaves, spec, self.dtype)
        if casts:
            leaves = [leaf.to(casts[i]) if i in casts else leaf for i, leaf in enumerate(leaves)]
            args, kwargs = tree_unflatten(leaves, spec)
        return func(*args, **kwargs)


class _CudaForward(torch.fx.Interpreter):
    """Runs a Dynamo graph on fake CUDA tensors under ``torch.autocast("cuda", dtype)``,
    recording for each call the inputs autocast cast (``casts``: node -> {leaf index of
    its flattened arguments: dtype})."""

    def __init__(self, gm: torch.fx.GraphModule, mode, dtype: torch.dtype):
        super().__init__(gm)
        self.mode, self.dtype = mode, dtype
        self.casts: dict[torch.fx.Node, dict[int, torch.dtype]] = {}

    def _fake(self, value):
        if isinstance(value, torch.Tensor):
            return fake_cuda_tensor(value, self.mode)
        return value

    def run_node(self, n):
        if n.op not in ("call_function", "call_method"):
            return tree_map(self._fake, super().run_node(n))
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        leaves, _ = tree_flatten((args, kwargs))
        casts = _Casts(leaves)
        with torch.autocast("cuda", dtype=self.dtype), casts:
            out = getattr(self, n.op)(n.target, args, kwargs)
        if casts.casts:
            self.casts[n] = casts.casts
        return out


def cast_graph(gm: torch.fx.GraphModule, example_inputs, dtype: torch.dtype) -> int:
    """Writes CUDA's autocast casts into ``gm`` (a Dynamo graph; ``example_inputs`` its
    inputs): the graph is run once on fake CUDA tensors under ``torch.autocast("cuda",
    dtype)`` (``fake_cuda``), and before each call a ``.to(dtype)`` is inserted on each
    input autocast cast there. Returns how many casts were written.

    Args:
        gm: the Dynamo graph, changed in place.
        example_inputs: its inputs.
        dtype: the autocast dtype.

    Returns:
        The number of casts written.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    forward = _CudaForward(gm, mode, dtype)
    with _disable_current_modes(), fake_cuda(get_gpu("h100")), mode:
        forward.run(*example_inputs)
    written = 0
    for node, casts in forward.casts.items():
        leaves, spec = tree_flatten((node.args, node.kwargs))
        for i, to in casts.items():
            with gm.graph.inserting_before(node):
                leaves[i] = gm.graph.call_method("to", (leaves[i], to))
            for key in _LAYER_META:  # the cast belongs to the layer of the call it feeds
                if key in node.meta:
                    leaves[i].meta[key] = node.meta[key]
            written += 1
        node.args, node.kwargs = tree_unflatten(leaves, spec)
    gm.recompile()
    return written
