"""A Triton failure never ends a run: what ``--kernels auto`` does when a kernel cannot
compile, cannot launch, or computes wrong numbers on this GPU.

Three checks, each leaving what fails on PyTorch with one printed line and going on:

* ``validate_block``: a fused unit (any kind of ``fastcifar.nn.fusion.FUSIONS`` but single
  convolutions) against its unfused PyTorch sequence on this device, before it is timed, as
  ``fastcifar.kernels.validate`` checks single convolutions;
* ``fastcifar.nn.autotune.decide`` catches a failure of the Triton side while timing
  (``is_triton_failure`` says which errors are Triton's);
* ``trial_step``: one training step (forward + backward, in the run's dtype, at the real
  batch) of a copy of the dispatched model; where it fails, each Triton layer or block is
  run alone on its own input and those that fail go back to PyTorch.

``--kernels triton`` is not guarded: the user asked for the kernels, so a failure there
refuses to train (``fastcifar.engine.components``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from fastcifar.errors import first_line
from fastcifar.kernels.launch import acc_dtype
from fastcifar.kernels.validate import ConvConfig, error_bound, relative_error
from fastcifar.nn.fusion import fused_copy, revert_to_torch, runs_triton

__all__ = ["is_triton_failure", "run_block", "trial_step", "validate_block"]


def is_triton_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a Triton compile or launch failure: an exception of the triton
    package (``OutOfResources`` for shared memory or registers, ``CompilationError``, ...)
    or the driver error triton raises at launch (``RuntimeError('Triton Error [CUDA]: ...')``).

    Args:
        exc: any exception.

    Returns:
        True for a Triton compile or launch failure.
    """
    mod = type(exc).__module__ or ""
    return mod.startswith("triton") or "Triton Error" in str(exc)


def run_block(
    block: nn.Module, x: torch.Tensor, dtype: torch.dtype, seed: int | None = None
) -> list[torch.Tensor]:
    """Forward + backward of ``block`` on ``x`` as training runs it (float32 parameters,
    ``dtype`` compute under autocast when it is 16-bit); returns the output, the input's
    gradient and every parameter's gradient. The output's gradient is all ones, or
    standard normal from ``seed`` (a BatchNorm output's sum has no gradient at all).

    Args:
        block: the module to run, in training mode.
        x: its input (N, C, H, W); a detached copy requiring grad is used.
        dtype: the compute dtype.
        seed: the output gradient's random seed, or None for ones.

    Returns:
        [output, input gradient, each parameter's gradient (zeros where None)].
    """
    x = x.detach().requires_grad_()
    low = dtype in (torch.float16, torch.bfloat16)
    with torch.autocast(x.device.type, dtype=dtype, enabled=low):
        y = block(x)
    params = [p for p in block.parameters() if p.requires_grad]
    acc = acc_dtype(y.dtype)
    gy = torch.ones_like(y, dtype=acc)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        gy = torch.randn(y.shape, generator=gen).to(y.device, acc)  # same draws in any dtype
    grads = torch.autograd.grad((y.to(acc) * gy).sum(), [x, *params], allow_unused=True)
    return [
        y,
        *(
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(grads, [x, *params], strict=True)
        ),
    ]


def validate_block(kind: str, block: nn.Module, cfg: ConvConfig, device) -> str:
    """Run the fused version of ``block`` (a unit of ``kind``, as
    ``fastcifar.nn.fusion.FUSIONS`` finds it: ``conv_bn_act``, ``pooled_block``,
    ``conv_relu_bn``, ``conv_bn``, ``dwsep``) and the unit itself in ``cfg.dtype``
    against a float64 PyTorch reference, on ``cfg``'s input shape and layout; "" when the
    fused output, input gradient and parameter gradients are within bounds, else what
    failed.

    Bounds (norm-wise relative error): float32 1e-5; 16-bit at most 3x PyTorch's own error
    in that dtype or 4 units of roundoff, whichever is larger (``fastcifar.kernels.validate``'s
    rule). A kernel that raises fails with its error's first line.

    Args:
        kind: the unit's kind of ``FUSIONS``.
        block: the unit, unfused; not modified.
        cfg: its first convolution's configuration (input shape, dtype, layout).
        device: where it runs.

    Returns:
        ``""`` when within bounds, else the failure in one line.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.input_shape, generator=gen).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)

    def prepared(m, dtype=None):
        m = m.to(device).train()
        m = m.to(dtype) if dtype is not None else m
        return m.to(memory_format=fmt) if cfg.channels_last else m

    ref = run_block(
        prepared(copy.deepcopy(block), torch.float64), x.double(), torch.float64, seed=1
    )
    theirs = run_block(prepared(copy.deepcopy(block)), x, cfg.dtype, seed=1)
    try:
        ours = run_block(prepared(fused_copy(kind, block)), x, cfg.dtype, seed=1)
    except Exception as exc:  # reported in the table, never hidden
        return first_line(exc)
    names = ["output", "input gradient"] + [f"gradient of {n}" for n, _ in block.named_parameters()]
    for name, a, r, t in zip(names, ours, ref, theirs, strict=False):
        err, bound = relative_error(a, r), error_bound(cfg.dtype, relative_error(t, r))
        if not err <= bound:  # NaN fails too
            return f"{name} relative error {err:.2e} > bound {bound:.2e}"
    return ""


def _triton_modules(model: nn.Module) -> list[str]:
    """Qualified names of the layers and blocks of ``model`` that run Triton kernels."""
    return [name for name, m in model.named_modules() if runs_triton(m)]


def trial_step(
    model: nn.Module,
    example: torch.Tensor,
    dtype: torch.dtype,
    report: Callable[[str], None] = print,
) -> dict[str, str]:
    """One training step of a copy of ``model`` on ``example`` (N, 3, 32, 32) in
    ``dtype``; where it raises, every Triton layer or block is run alone (on a copy, on
    the input it receives in a PyTorch-only forward) and those that fail are put back on
    PyTorch in ``model`` itself, one ``report`` line each. ``model`` is otherwise left as
    it was (BatchNorm statistics included).

    Returns {qualified name: the error} of what was put back.

    Args:
        model: the converted model; what fails is reverted in place.
        example: an input batch (N, 3, 32, 32) on the model's device.
        dtype: the compute dtype.
        report: where the one-line notes go.

    Returns:
        {qualified name: the error} of what was put back (empty when the step ran).

    Raises:
        Exception: the step's own error when no Triton layer fails alone (then the fault
            is not the kernels').
    """
    try:
        run_block(copy.deepcopy(model).train(), example, dtype)
        return {}
    except Exception as exc:  # isolated below; re-raised when no kernel is to blame
        failure = exc
    names = _triton_modules(model)
    plain = copy.deepcopy(model).train()
    for name in names:
        revert_to_torch(plain.get_submodule(name))
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        plain.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: inputs.setdefault(n, args[0].detach())
        )
        for n in names
    ]
    try:
        low = dtype in (torch.float16, torch.bfloat16)
        with torch.no_grad(), torch.autocast(example.device.type, dtype=dtype, enabled=low):
            plain(example)
    finally:
        for h in hooks:
            h.remove()
    failed = {}
    for name in names:
        if name not in inputs:
            continue
        try:
            run_block(copy.deepcopy(model.get_submodule(name)).train(), inputs[name].float(), dtype)
        except Exception as exc:  # this layer's kernels fail: PyTorch runs it
            failed[name] = first_line(exc)
            revert_to_torch(model.get_submodule(name))
            report(
                f"kernels: {name} stays on PyTorch: its Triton kernels failed at the first "
                f"training step ({failed[name]})"
            )
    if not failed:
        raise failure
    return failed
