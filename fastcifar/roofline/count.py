"""FLOPs and bytes of one training step (forward, backward, optimizer step), per layer,
along the three ways fastcifar can run it.

- ``eager``: PyTorch as the seeds run it. A ``TorchDispatchMode`` sees every ATen
  operator of a steady-state step (the second: the first creates the optimizer's state)
  on fake tensors of the full batch (no arithmetic runs, so any batch counts in seconds);
  each operator costs the kernels ``traffic.op_kernels`` gives it; a module tracker
  names the layer, in the forward and the backward.
- ``compile``: ``torch.compile`` (Inductor) of the model, forward and backward graphs.
  Inductor's own count of the bytes each of its generated kernels accesses (every buffer
  once per kernel, ``BaseSchedulerNode.get_read_write_buffer_accesses``, what its
  metrics log sums) for the kernels it writes; ``traffic.op_kernels`` for the extern ones
  (convolutions, matmuls, custom ops), so that both paths use the same rules. The
  lowered graphs are scheduled again by Inductor's Triton backend, the scheduler its CUDA
  backend uses (``inductor._InductorHook._scheduled``). The batch dimension is traced
  symbolic with ``COMPILE_BATCH`` images and every size is evaluated at the batch counted
  (exact for the graph compiled; Inductor's choices at a symbolic batch can differ a
  little from a static one). Nothing runs: the compile stops once the backward graph is
  read. Each fused kernel is charged to the layer most of its operators come from (a
  max-pool's scatter to the pool). The loss and the optimizer step stay
  eager, as the train command runs them: their rows are the eager path's.
- ``fastcifar``: the model as ``--kernels triton`` converts it, counted as ``compile``;
  fastcifar's custom operators are extern kernels there, costed by running their
  launchers on ``meta`` tensors with the launches recorded (``launch.record_launches``):
  each launch moves its distinct tensor arguments once, and the PyTorch operators a
  launcher runs (the weight gradient's sum over partials) are costed like eager ones.

What differs from Inductor on a GPU, which this CPU cannot run: Inductor's CPU backend
fuses loops that share outer dimensions into one kernel (``OuterLoopFusedSchedulerNode``),
which its CUDA backend does not; those are counted as the separate kernels they would be
on a GPU. The CUDA backend splits large reductions in two (a partial buffer, a few KB) and
can fuse a BatchNorm backward's reductions with its elementwise pass
(``mix_order_reduction``), neither of which the CPU backend does: on a GPU the compile
paths move a little more (split reductions) or less (mixed-order) than counted here.
FLOPs are ``torch.utils.flop_counter``'s formulas (convolutions and matmuls, forward and
backward; elementwise work is not counted, as in that counter).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.module_tracker import ModuleTracker

from fastcifar.roofline.inductor import compiled_count
from fastcifar.roofline.ledger import (
    LOSS,
    PATHS,
    StepCount,
    StepSetup,
    _EagerCounter,
    _Ledger,
    _Recorder,
    module_kinds,
)

__all__ = ["count_call", "count_step"]


def _fake_copy(model: nn.Module, mode) -> nn.Module:
    """``model`` with every parameter and buffer a fake tensor of ``mode``."""
    model = copy.deepcopy(model)
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[key] = nn.Parameter(mode.from_tensor(p), p.requires_grad)
        for key, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[key] = mode.from_tensor(b)
    return model


def _fake_counting(setup: StepSetup):
    """(fake mode, a fake copy of ``setup.model`` in the setup's layout, an empty
    ledger, its recorder): what every eager count starts from."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    if setup.channels_last:
        setup.model.to(memory_format=torch.channels_last)
    model = _fake_copy(setup.model, mode)
    ledger = _Ledger()
    return mode, model, ledger, _Recorder(ledger, module_kinds(model))


def _eager(setup: StepSetup) -> _Ledger:
    """The eager path: two steps on fake tensors, the second counted."""
    mode, model, ledger, recorder = _fake_counting(setup)
    model.train()
    with mode:
        optimizer = setup.optimizer(model)
        ema = setup.ema(model) if setup.ema else None
        x, y = setup.example(setup.batch_size)
        with (
            ModuleTracker() as tracker,
            _EagerCounter(recorder, tracker, type(model).__name__) as c,
        ):
            for counted in (False, True):
                c.on = counted
                optimizer.zero_grad(set_to_none=True)
                with setup.autocast():
                    loss = setup.loss(model(x), y)
                loss.backward()
                c.phase = "optimizer"
                optimizer.step()
                if ema is not None:
                    c.phase = "ema"
                    ema.update(model)
                c.phase = None
    return ledger


def count_call(setup: StepSetup, fn: Callable[[nn.Module], object], name: str) -> StepCount:
    """The eager count of ``fn(model)`` once (an evaluation forward, the whitening's
    initialisation) on a fake copy of ``setup.model``, under no_grad and the setup's
    autocast; tensors ``fn`` makes inside are fake too. ``name`` becomes the path."""
    mode, model, ledger, recorder = _fake_counting(setup)
    root = type(model).__name__
    with (
        mode,
        torch.no_grad(),
        setup.autocast(),
        ModuleTracker() as tracker,
        _EagerCounter(recorder, tracker, root) as counter,
    ):
        counter.on = True
        fn(model)
    return StepCount(
        setup.name,
        name,
        setup.batch_size,
        setup.dtype_name,
        setup.channels_last,
        list(ledger.rows.values()),
    )


def _compiled(setup: StepSetup, path: str, target: str | None, progress: Callable):
    """The ledger of a compile path: the model as Inductor compiles it (``fastcifar``: as
    ``--kernels triton`` converts it first), forward and backward."""
    progress(f"{setup.name}: {path} (Inductor compiles forward and backward)")
    model = copy.deepcopy(setup.model)
    if path == "fastcifar":  # what --kernels triton converts
        from fastcifar.nn.fusion import FUSIONS, convert

        convert(model, kinds=tuple(k.name for k in FUSIONS if k.triton))
    return compiled_count(setup, model, target, path == "fastcifar", progress)


def count_step(
    setup: StepSetup,
    paths=PATHS,
    target: str | None = "sm_90",
    progress: Callable | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> dict[str, StepCount]:
    """Count one training step of ``setup`` along ``paths`` (``PATHS``).

    Args:
        setup: the model, loss, optimizer, batch, dtype and layout.
        paths: which of ``eager``, ``compile``, ``fastcifar``.
        target: the GPU target whose kernel tiles fastcifar's launchers use
            (``fastcifar.kernels.targets``; the weight gradient's partial sums depend
            on it).
        progress: called with a line before each path starts (None: silent).
        on_error: called with (path, exception) when a compile path fails, which is then
            left out of the result (None: the exception propagates).

    Returns:
        {path: StepCount}, bytes and FLOPs for the whole batch.

    Raises:
        ValueError: an unknown path.
    """
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown path {unknown[0]!r}: one of {', '.join(PATHS)}")
    progress = progress or (lambda line: None)
    progress(f"{setup.name}: eager (fake tensors, batch {setup.batch_size})")
    eager = _eager(setup)
    outside = [row for (name, _), row in eager.rows.items() if name in (LOSS, "optimizer", "ema")]
    counts = {}
    for path in paths:
        if path == "eager":
            ledger = eager
        else:
            try:
                ledger = _compiled(setup, path, target, progress)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(path, exc)
                continue
            for row in outside:
                ledger.rows.setdefault((row.name, row.kind), copy.copy(row))
        counts[path] = StepCount(
            setup.name,
            path,
            setup.batch_size,
            setup.dtype_name,
            setup.channels_last,
            list(ledger.rows.values()),
            ledger.scheduler,
        )
    return counts
