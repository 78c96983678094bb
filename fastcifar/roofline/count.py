"""FLOPs and bytes of one training step (forward, backward, optimizer step), per layer,
along the three ways fastcifar can run it.

- ``eager``: PyTorch as the seeds run it. A ``TorchDispatchMode`` sees every ATen
  operator of a steady-state step (the second: the first creates the optimizer's state)
  on fake tensors of the full batch (no arithmetic runs, so any batch counts in seconds),
  under CUDA's autocast policy (``autocast.CudaAutocast``: what ``torch.autocast("cuda")``
  casts, learnt from fake CUDA tensors); each operator costs the kernels
  ``traffic.op_kernels`` gives it; a module tracker names the layer, in the forward and
  the backward.
- ``compile``: ``torch.compile`` (Inductor) of the model, forward and backward graphs,
  lowered for a fake ``cuda:0`` with the GPU's profile at the recipe's static batch, CUDA's
  autocast casts in the graph (``lowering``: nothing is generated or run). Inductor's own
  count of the bytes each of its generated kernels accesses (every buffer once per kernel,
  ``BaseSchedulerNode.get_read_write_buffer_accesses``, what its metrics log sums) for the
  kernels its CUDA scheduler fuses; ``traffic.op_kernels`` for the extern ones
  (convolutions, matmuls, custom ops), so that both paths use the same rules. Each fused
  kernel is charged to the layer most of its operators come from (a max-pool's scatter to
  the pool), and named by ``kinds.kernel_kind`` (a BatchNorm fused with its activation is
  ``batchnorm+act``, on this path and the next alike). The loss and the optimizer step
  stay eager, as the train command runs them: their rows are the eager path's.
- ``fastcifar``: the model as ``--kernels triton`` converts it, counted as ``compile``;
  fastcifar's custom operators are extern kernels there, costed by running their
  launchers on ``meta`` tensors with the launches recorded (``launch.record_launches``):
  each launch moves its distinct tensor arguments once, and the PyTorch operators a
  launcher runs (the weight gradient's sum over partials) are costed like eager ones.

What still differs from a GPU: Inductor's autotuning (``max_autotune``) is off, as in the
train command, so every convolution and matmul is ATen's; and a count is of one lowering,
at one torch version (the JSON says which): torch 2.14 decomposes the max-pool backward
into a zero-filled float32 gradient and a scatter-add that 2.11 does not
(``lowering.MAXPOOL_BACKWARD``; ``--whole-run`` counts both). FLOPs are
``torch.utils.flop_counter``'s formulas (convolutions and matmuls, forward and backward;
elementwise work is not counted, as in that counter).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.module_tracker import ModuleTracker

from fastcifar.roofline.gpus import Gpu, get_gpu
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
from fastcifar.roofline.lowering import compiled_count

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


def _eager(setup: StepSetup, autocast: str = "cuda") -> _Ledger:
    """The eager path: two steps on fake tensors, the second counted, under ``autocast``'s
    policy (``StepSetup.autocast``)."""
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
                with setup.autocast(autocast):
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
    autocast; tensors ``fn`` makes inside are fake too. ``name`` becomes the path.

    Args:
        setup: the step's setup.
        fn: ``model -> anything``, the call to count.
        name: the count's path name.

    Returns:
        The ``StepCount``.
    """
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


def _compiled(
    setup: StepSetup, path: str, gpu: Gpu | None, progress: Callable, maxpool_decomposition: bool
):
    """The ledger of a compile path: the model as Inductor lowers it for ``gpu`` (None:
    the CPU) (``fastcifar``: as ``--kernels triton`` converts it first), forward and
    backward."""
    where = f"CUDA, {gpu.name} profile" if gpu is not None else "the CPU (control)"
    progress(
        f"{setup.name}: {path} (Inductor lowers forward and backward for {where}, "
        f"batch {setup.batch_size})"
    )
    model = copy.deepcopy(setup.model)
    if path == "fastcifar":  # what --kernels triton converts
        from fastcifar.nn.fusion import FUSIONS, convert

        convert(model, kinds=tuple(k.name for k in FUSIONS if k.triton))
    target = gpu.target if gpu is not None else "sm_90"
    triton = path == "fastcifar"
    return compiled_count(setup, model, target, triton, gpu, progress, maxpool_decomposition)


def count_step(
    setup: StepSetup,
    paths=PATHS,
    gpu: Gpu | None = None,
    progress: Callable | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
    cpu_control: bool = False,
    maxpool_decomposition: bool = True,
) -> dict[str, StepCount]:
    """Count one training step of ``setup`` along ``paths`` (``PATHS``).

    Args:
        setup: the model, loss, optimizer, batch, dtype and layout.
        paths: which of ``eager``, ``compile``, ``fastcifar``.
        gpu: the GPU the compile paths lower for (a fake ``cuda:0`` with its
            ``CudaProfile``; default the H100); its ``target``'s tiles are the ones
            fastcifar's launchers use (the weight gradient's partial sums depend on it).
        cpu_control: the tests' control: as the roofline counted before it lowered for
            CUDA (``lowering.compiled_count``).
        maxpool_decomposition: False: without ``lowering.MAXPOOL_BACKWARD``.
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
    gpu = None if cpu_control else (gpu or get_gpu("h100"))
    autocast = "cpu" if cpu_control else "cuda"
    amp = "no" if setup.amp_dtype is None else {"cpu": "the CPU's", "cuda": "CUDA's"}[autocast]
    progress(f"{setup.name}: eager (fake tensors, batch {setup.batch_size}, {amp} autocast)")
    eager = _eager(setup, autocast)
    outside = [row for (name, _), row in eager.rows.items() if name in (LOSS, "optimizer", "ema")]
    counts = {}
    for path in paths:
        if path == "eager":
            ledger = eager
        else:
            try:
                ledger = _compiled(setup, path, gpu, progress, maxpool_decomposition)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(path, exc)
                continue
            for row in outside:
                ledger.rows.setdefault((row.name, row.kind), copy.copy(row))
        step = (setup.name, path, setup.batch_size, setup.dtype_name, setup.channels_last)
        counts[path] = StepCount(*step, list(ledger.rows.values()), ledger.lowered_for)
    return counts
