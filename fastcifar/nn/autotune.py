"""Measured kernel dispatch: what ``--kernels auto`` does on CUDA.

For each distinct convolution configuration a model meets (input shape, weight shape,
stride, padding, dilation, groups, bias, dtype, memory format:
``fastcifar.kernels.validate.collect_conv_configs``) and each unit a fused kernel covers
(every kind of ``fastcifar.nn.fusion.FUSIONS``: conv-BN-activation chains, conv+ReLU+BN,
conv+BN, depthwise-separable blocks), forward + backward is timed on the device both
ways, Triton and PyTorch (cuDNN; for a block, its unfused sequence), at first use, as
``torch.backends.cudnn.benchmark`` times cuDNN's own algorithms; the faster side wins.
It is designed so that a user who keeps the default never trains slower than with
PyTorch's convolutions (up to timing noise: a tie goes to PyTorch); no GPU has measured
it yet.

Decisions are cached in ``<cache>/kernel_dispatch.json`` (``fastcifar._io.cache_dir``)
under the environment (GPU name, driver, torch, triton) and the configuration: the same
model on the same machine is measured once; a new driver or version measures again.
``format_table`` prints them (configuration, Triton ms, PyTorch ms, choice); the run
records them in config.json (``kernel_dispatch``).

Timing is a function ``timer(runner) -> milliseconds`` (``cuda_timer`` by default: CUDA
events, median of 10 after 3 warm-ups); tests pass a fake one, so everything but the
timing itself runs on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from fastcifar.errors import FastCifarError, first_line
from fastcifar.kernels.validate import ConvConfig, collect_conv_configs
from fastcifar.nn.autotune_cache import DispatchCache, default_cache, environment_key
from fastcifar.nn.autotune_timing import Runner, Timer, block_runner, conv_runner, cuda_timer
from fastcifar.nn.fusion import FUSIONS, convert, summary_line
from fastcifar.nn.kernel_guard import is_triton_failure, trial_step, validate_block
from fastcifar.nn.modules import own_forward_convs
from fastcifar.nn.traced_chain import traced_link_notes

__all__ = [
    "Decision",
    "DispatchCache",
    "Runner",
    "apply",
    "choose_kernels",
    "cuda_timer",
    "decide",
    "format_table",
]


@dataclass
class Decision:
    """What ``--kernels auto`` chose for one convolution configuration or fused unit, and the
    timings it chose by.

    Attributes:
        kind: a kind of ``fastcifar.nn.fusion.FUSIONS`` (``conv`` for a single convolution).
        config: ``ConvConfig.describe()`` of the (first) convolution.
        layers: the convolution layers, or the units, that have it.
        triton_ms: forward + backward with the Triton kernels, milliseconds; None when not
            timed (failed validation or launch).
        torch_ms: the same with PyTorch (cuDNN; for a unit its unfused modules), milliseconds.
        choice: ``"triton"`` or ``"torch"``, followed by the reason in brackets where
            Triton failed (validation, a launch, the first training step).
        cached: read from the cache rather than measured in this run.
    """

    kind: str
    config: str  # ConvConfig.describe() of the (first) convolution
    layers: list[str] = field(default_factory=list)  # conv layers, or the blocks
    triton_ms: float | None = None  # None: not timed (failed validation)
    torch_ms: float | None = None
    choice: str = "torch"
    cached: bool = False


# ---------------------------------------------------------------------- decisions


def _blocks(model: nn.Module, configs: dict[ConvConfig, list[str]]):
    """(kind, unit name, unit, config of its first conv) for every fused unit of every
    kind of ``fastcifar.nn.fusion.FUSIONS`` but single convolutions."""
    conv_config = {layer: cfg for cfg, layers in configs.items() for layer in layers}
    for kind in FUSIONS:
        if kind.name == "conv":
            continue
        for name, unit in kind.find(model).items():
            first = kind.first_conv(name)
            if first in conv_config:
                yield kind.name, name, unit, conv_config[first]


def decide(
    model: nn.Module,
    example: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
    timer: Timer = cuda_timer,
    cache: DispatchCache | None = None,
    env: str | None = None,
    exclude: set[ConvConfig] = frozenset(),
    validate: Callable[..., str] = validate_block,
    report: Callable[[str], None] = print,
) -> list[Decision]:
    """Measure (or read from ``cache``) every convolution configuration and fusable block
    of ``model`` met by ``example`` (N, 3, 32, 32) in ``dtype``; configurations in
    ``exclude`` (failed validation) stay on PyTorch without timing. Fused blocks are
    validated on ``device`` first (``validate``, ``fastcifar.nn.kernel_guard.validate_block``);
    one that fails, or a Triton side that fails to compile or launch while it is timed,
    stays on PyTorch with one ``report`` line and its reason in the table. The cache is
    saved.

    Args:
        model: the model, on ``device``; not modified.
        example: an input batch (N, 3, 32, 32) on ``device``.
        dtype: the compute dtype (the autocast dtype, or float32).
        device: the CUDA device timed on.
        timer: ``runner -> milliseconds`` (``cuda_timer``; tests pass a fake).
        cache: the decisions' cache (``default_cache()`` when None).
        env: the cache's environment key (``environment_key(device)`` when None).
        exclude: configurations that failed validation.
        validate: ``(kind, unit, cfg, device) -> "" or the failure``.
        report: where the one-line notes go.

    Returns:
        One ``Decision`` per configuration and unit, in the order met.
    """
    cache = cache if cache is not None else default_cache()
    env = env or environment_key(device)
    configs = collect_conv_configs(model, example, dtype)
    items = [("conv", layers, cfg, None) for cfg, layers in configs.items()]
    merged: dict[tuple[str, ConvConfig], list] = {}
    for kind, name, block, cfg in _blocks(model, configs):
        merged.setdefault((kind, cfg), [kind, [], cfg, block])[1].append(name)
    items += [tuple(v) for v in merged.values()]
    decisions = []
    for kind, layers, cfg, block in items:
        d = Decision(kind, cfg.describe(), list(layers))
        decisions.append(d)
        if cfg in exclude:
            d.choice = "torch (failed validation)"
            continue
        # fused blocks are validated on this device every run, as convolutions are
        failed = validate(kind, block, cfg, device) if kind != "conv" else ""
        why = f"failed validation: {failed}" if failed else ""
        hit = None if why else cache.get(env, kind, d.config)
        if hit is not None:
            d.cached = True
        elif not why:
            hit, why = _measure(kind, block, cfg, device, timer)
            if not why:
                cache.put(env, kind, d.config, hit["triton_ms"], hit["torch_ms"])
        if why:  # stays on PyTorch, untimed or half-timed; not cached: a fix may come
            d.choice = f"torch ({why})"
            report(f"kernels: {kind} {d.config} stays on PyTorch: {why}")
            continue
        d.triton_ms, d.torch_ms = hit["triton_ms"], hit["torch_ms"]
        d.choice = "triton" if d.triton_ms < d.torch_ms else "torch"
    cache.save()
    return decisions


def _measure(kind, block, cfg, device, timer) -> tuple[dict | None, str]:
    """Time Triton against PyTorch for one configuration or block: ({"triton_ms",
    "torch_ms"}, "") or (None, why not): a Triton side that fails to compile or launch."""
    if kind == "conv":
        runners = [conv_runner(cfg, side, device) for side in ("triton", "torch")]
    else:
        runners = [block_runner(kind, block, cfg, s, device) for s in ("triton", "torch")]
    try:
        triton_ms = timer(runners[0])
    except Exception as exc:
        if not is_triton_failure(exc):
            raise
        return None, f"Triton failed: {first_line(exc)}"
    return {"triton_ms": triton_ms, "torch_ms": timer(runners[1])}, ""


def apply(model: nn.Module, decisions: list[Decision]) -> dict[str, list[str]]:
    """Convert what won, kind by kind in ``FUSIONS``' order: fused units first (their
    convolutions run inside the fused kernels), then single Triton convolutions outside
    them. Returns the names changed per kind.

    Args:
        model: the model, converted in place.
        decisions: ``decide``'s result.

    Returns:
        {kind: qualified names converted}.
    """
    wins = {
        kind.name: {
            n for d in decisions if d.kind == kind.name and d.choice == "triton" for n in d.layers
        }
        for kind in FUSIONS
    }
    return convert(model, only=wins)


def mark_reverted(decisions: list[Decision], reverted: dict[str, str]) -> None:
    """Record in ``decisions`` the layers ``kernel_guard.trial_step`` put back on PyTorch
    ({name: error}) in the choice of their decision.

    Args:
        decisions: the decisions, updated in place.
        reverted: ``trial_step``'s {qualified name: error}.
    """
    for d in decisions:
        gone = [n for n in d.layers if n in reverted]
        if not gone or d.choice != "triton":
            continue
        if len(gone) == len(d.layers):
            d.choice = f"torch (failed at the first step: {reverted[gone[0]]})"
        else:
            d.choice = f"triton; {', '.join(gone)} on PyTorch (failed at the first step)"


def format_table(decisions: list[Decision]) -> str:
    """One line per decision: kind, configuration, Triton ms, PyTorch ms, choice, layers.

    Args:
        decisions: ``decide``'s result.

    Returns:
        The table, one line a decision after a header line.
    """
    head = f"{'kind':<13} {'configuration':<44} {'triton ms':>10} {'torch ms':>10}  choice"
    lines = [head, "-" * len(head)]
    for d in decisions:
        cached = " (cached)" if d.cached else ""
        ms = [f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in (d.triton_ms, d.torch_ms)]
        more = ", ..." if len(d.layers) > 3 else ""
        lines.append(
            f"{d.kind:<13} {d.config:<44} {ms[0]} {ms[1]}  {d.choice}{cached}  "
            f"[{', '.join(d.layers[:3])}{more}]"
        )
    return "\n".join(lines)


def as_records(decisions: list[Decision]) -> list[dict]:
    """The decisions as JSON-ready dicts (config.json's ``kernel_dispatch``).

    Args:
        decisions: the decisions.

    Returns:
        One dict per decision, its fields by name.
    """
    return [asdict(d) for d in decisions]


# ---------------------------------------------------------------------- the one entry


def choose_kernels(
    kernels: str,
    model: nn.Module,
    batch: int,
    device,
    channels_last: bool,
    dtype,
    timer=None,
    cache=None,
    env: str | None = None,
    validate=None,
) -> list[dict]:
    """Put ``model`` on the kernels ``--kernels`` resolved to (``torch``, ``triton`` or
    ``auto``), in place; what ``fastcifar.engine.components`` asks, once. Returns the decisions
    as records for config.json (``auto`` only; empty otherwise).

    * ``triton``: every convolution configuration validated against PyTorch, and one
      unit of each configuration of every kind ``FUSIONS`` marks ``triton`` validated
      against float64 (``validate``, ``kernel_guard.validate_block``); any failure
      refuses to train; then those kinds converted.
    * ``auto`` (CUDA): validated and timed against PyTorch per configuration and unit
      (``decide``, with ``timer``, ``cache`` and ``env`` as there), the winners
      converted, a trial step of a copy putting back what fails (``trial_step``).

    Args:
        kernels: ``"torch"``, ``"triton"`` or ``"auto"``, as ``--kernels`` resolved.
        model: the model, on ``device``; converted in place.
        batch: the training batch size (the example's N).
        device: the training device.
        channels_last: the run trains channels_last.
        dtype: the compute dtype (the autocast dtype, or float32).
        timer: as ``decide``'s (None: ``cuda_timer``).
        cache: as ``decide``'s.
        env: as ``decide``'s.
        validate: as ``decide``'s (None: ``kernel_guard.validate_block``).

    Returns:
        The decisions as records (``as_records``) for ``auto``; an empty list otherwise.

    Raises:
        FastCifarError: ``triton`` and a configuration or unit fails validation.
    """
    if kernels == "torch":
        return []
    example = _example(batch, device, channels_last)
    dtype = dtype or torch.float32
    results = _validate(model, example, device, dtype)
    failed = {r.config for r in results if not r.passed}
    validate = validate or validate_block
    if kernels == "triton":
        _use_triton(model, example, device, dtype, results, validate)
        return []
    decisions = decide(
        model,
        example,
        dtype,
        device,
        cache=cache,
        env=env,
        exclude=failed,
        validate=validate,
        **({"timer": timer} if timer else {}),
    )
    changed = apply(model, decisions)
    reverted = trial_step(model, example, dtype)
    mark_reverted(decisions, reverted)
    print("kernels: auto, measured (forward + backward, Triton against PyTorch):")
    print(format_table(decisions))
    counts = {kind: len([x for x in names if x not in reverted]) for kind, names in changed.items()}
    _print_summary(model, counts)
    return as_records(decisions)


def _print_summary(model: nn.Module, counts: dict[str, int]) -> None:
    """The console's kernels line, then one line per module whose links were left and why
    (``traced_link_notes``: a forward that cannot be traced, a consumer not taken)."""
    print(summary_line(counts, own_forward_convs(model)))
    for note in traced_link_notes(model):
        print(f"kernels: not linked: {note}")
    print(end="", flush=True)


def _example(batch: int, device, channels_last: bool) -> torch.Tensor:
    # the real batch on a GPU; 2 images under the (slow) interpreter on a CPU
    batch = batch if torch.device(device).type == "cuda" else 2
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)


def _validate(model: nn.Module, example: torch.Tensor, device, dtype) -> list:
    """Validate every distinct conv configuration of ``model`` against PyTorch and print
    the table; returns the results."""
    from fastcifar.kernels import validate

    configs = validate.collect_conv_configs(model, example, dtype)
    results = validate.validate_configs(configs, device)
    print(f"kernels: validating {len(configs)} Triton conv configurations (batch {len(example)})")
    print(validate.format_table(results), flush=True)
    return results


def _use_triton(model, example, device, dtype, results: list, validate) -> None:
    """--kernels triton: refuse to train on a failed convolution or unit, else convert
    every kind ``FUSIONS`` marks ``triton``."""
    for r in results:
        if not r.passed:
            raise FastCifarError(
                f"Triton kernel validation failed on layer {r.layers[0]} "
                f"({r.config.describe()}): {r.message}; train with --kernels torch"
            )
    configs = collect_conv_configs(model, example, dtype)
    kinds = tuple(k.name for k in FUSIONS if k.triton)
    seen = set()
    for kind, name, unit, cfg in _blocks(model, configs):
        if kind in kinds and (kind, cfg) not in seen:
            seen.add((kind, cfg))
            why = validate(kind, unit, cfg, device)
            if why:
                raise FastCifarError(
                    f"Triton {kind} validation failed on {name} ({cfg.describe()}): {why}; "
                    f"train with --kernels torch"
                )
    converted = convert(model, kinds=kinds)
    counts = {kind: len(converted[kind]) for kind in kinds}
    _print_summary(model, counts)
