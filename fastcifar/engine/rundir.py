"""Files of a run directory written so that a crash never leaves a half-written one, and
checkpoints read so that a file from elsewhere cannot run code.

* ``atomic_write`` / ``atomic_save``: write to ``NAME.tmp``, then ``os.replace`` onto the
  name; the previous file stays whole until the new one is complete.
* ``load_checkpoint``: ``torch.load(..., weights_only=True)``. A checkpoint holds only
  tensors, numbers, strings and lists/dicts of them, which is what weights-only
  unpickling allows; anything else, a truncated file or no checkpoint at all ends in
  one ``FastCifarError`` line naming the file.
* ``prepare_run_dir``: create the directory, prove it writable and lock it (``RunLock``).
* ``write_config`` / ``read_config``: ``config.json``, the recipe and the options
  (``fastcifar.options.RunOptions``) a run was started with (the layout: docs/DESIGN.md,
  "Run directory").
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fastcifar._io import atomic_replace, atomic_write
from fastcifar.engine.runlock import RunLock
from fastcifar.errors import FastCifarError
from fastcifar.options import TIMINGS, RunOptions  # RunOptions re-exported: config.json's "run"
from fastcifar.recipes import Recipe
from fastcifar.units import plural

__all__ = [
    "RunOptions",
    "RunState",
    "atomic_save",
    "atomic_write",
    "checkpoint",
    "diverged_note",
    "load_last",
    "load_checkpoint",
    "nothing_to_resume",
    "prepare_run_dir",
    "read_config",
    "save_epoch",
    "summarise",
    "write_config",
    "write_summary",
]


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file and an atomic rename.

    Args:
        obj: what ``torch.save`` takes.
        path: the file to (re)write.
    """
    atomic_replace(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, map_location, fix: str) -> dict:
    """The checkpoint at ``path``, unpickled weights-only onto ``map_location``.

    Args:
        path: the checkpoint file.
        map_location: as ``torch.load``'s (a device).
        fix: what the user should do instead (ends the message).

    Returns:
        The checkpoint dict.

    Raises:
        FastCifarError: the file is missing, truncated, corrupt, or holds objects that
            weights-only loading refuses; ``fix`` ends the message (what to do instead).
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every way a file fails to load is one line
        text = str(exc).strip()
        if isinstance(exc, pickle.UnpicklingError) and "Weights only" in text:
            why = "it holds objects other than tensors, numbers and strings"
        elif "central directory" in text or "zip archive" in text:
            why = "it is truncated or corrupt: not a whole zip archive"
        else:  # the first sentence of the first line, whole
            first = text.splitlines()[0].split(". ")[0] if text else "unreadable"
            why = f"{type(exc).__name__}: {first.rstrip('.')}"
        raise FastCifarError(f"checkpoint {path} does not load ({why}): {fix}") from None
    if not isinstance(ckpt, dict):
        raise FastCifarError(f"checkpoint {path} is not a fastcifar checkpoint: {fix}")
    return ckpt


def prepare_run_dir(out: Path, resume: bool) -> RunLock:
    """Create ``out``, prove it writable and lock it for this process (``RunLock``), then
    check that a new run does not start over an old one. Keep the returned lock for the
    life of the run: the directory is free again when it is released or the process ends.

    Args:
        out: the run directory; made if missing.
        resume: this run continues the one there.

    Returns:
        The held ``RunLock``.

    Raises:
        FastCifarError: it cannot be written, a live run holds it (the message names the
            process), or it already holds a run and this is no resume.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise FastCifarError(
            f"cannot write the output directory {out} ({exc.strerror or exc}): pass --out with "
            f"a writable path"
        ) from None
    fix = "wait for it to end, or pass another --out" if not resume else "wait for it to end"
    lock = RunLock(out).acquire(fix)
    if not resume and (out / "config.json").exists():
        lock.release()
        raise FastCifarError(
            f"{out} already holds a run: pass --resume {out} to continue it, or choose "
            f"another --out"
        )
    return lock


@dataclass
class RunState:
    """Where a run stands, saved in every checkpoint: completed epochs, best accuracy,
    the per-epoch metrics rows, every step's lr and loss, the device-timed seconds.

    Attributes:
        epoch: completed epochs.
        best_acc: the best test accuracy so far, percent.
        metrics: one row per epoch (``metrics.jsonl``'s).
        lrs: every step's learning rate.
        step_losses: every step's training loss.
        train_time_s: the training loops' device-timed seconds.
        whiten_time_s: the whitening initialisation's seconds.
        augment_time_s: the prebuilt augmentation's seconds.
        tta_time_s: the final test-time augmentation's seconds.
        compile_time_s: the compile warm-up's seconds (outside both timing contracts).
    """

    epoch: int = 0  # completed epochs
    best_acc: float = -1.0
    metrics: list[dict] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rate of every step
    step_losses: list[float] = field(default_factory=list)  # every step's loss (all ranks)
    train_time_s: float = 0.0  # training loops only, device-timed (no evaluation)
    whiten_time_s: float = 0.0  # whitening initialisation, device-timed
    augment_time_s: float = 0.0  # augmented epochs built before training, device-timed
    tta_time_s: float = 0.0  # the final TTA evaluation, device-timed
    compile_time_s: float = 0.0  # warm-up before the timed epochs


def checkpoint(weights: dict, training: dict, state: RunState, recipe: Recipe, mean, std) -> dict:
    """A checkpoint (last.pt, best.pt): ``weights``, the evaluated model's state dict (the
    EMA's when used), saved as "model"; ``training``, everything a step changes
    (``train_model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``); the run's state,
    its recipe and the normalisation statistics (``mean``, ``std``, [0, 1] units).

    Args:
        weights: the evaluated model's state dict.
        training: the training state dicts by name.
        state: the run's state.
        recipe: its recipe.
        mean: per-channel mean, [0, 1] units.
        std: per-channel standard deviation, [0, 1] units.

    Returns:
        The checkpoint dict, as ``torch.save`` writes it.
    """
    return {
        "model": weights,
        **training,
        "state": asdict(state),
        "recipe": asdict(recipe),
        "mean": list(mean),
        "std": list(std),
    }


def load_last(run_dir: Path, device: torch.device) -> tuple[dict, RunState] | None:
    """(the checkpoint, its ``RunState``) of ``run_dir``'s last.pt, to resume from; None
    when there is none yet (the run stopped before its first epoch ended: it starts from
    the beginning, with its own config).

    Args:
        run_dir: the run directory.
        device: where to load the tensors.

    Returns:
        (checkpoint, state), or None.

    Raises:
        FastCifarError: a last.pt that is not a checkpoint.
    """
    path = run_dir / "last.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path, device, "start a new run (drop --resume)")
    return ckpt, RunState(**ckpt["state"])


def save_epoch(run_dir: Path, checkpoint: dict, state: RunState, is_best: bool) -> None:
    """An epoch's files, each written atomically: ``checkpoint`` to last.pt (and best.pt
    when ``is_best``), and from ``state`` metrics.jsonl, lr.json (every step's learning
    rate) and losses.json (every step's loss).

    Args:
        run_dir: the run directory.
        checkpoint: ``checkpoint()``'s dict.
        state: the run's state.
        is_best: this epoch has the best accuracy so far.
    """
    atomic_save(checkpoint, run_dir / "last.pt")
    if is_best:
        atomic_save(checkpoint, run_dir / "best.pt")
    lines = "".join(json.dumps(m) + "\n" for m in state.metrics)
    atomic_write(run_dir / "metrics.jsonl", lines)
    atomic_write(run_dir / "lr.json", json.dumps(state.lrs))
    atomic_write(run_dir / "losses.json", json.dumps(state.step_losses))


def summarise(recipe: Recipe, state: RunState, **facts) -> dict:
    """summary.json's dict: the accuracies (final with TTA when the recipe has it, single
    view, best and its epoch, the seed's expected), the times (seconds; the two timing
    contracts of ``options.TIMINGS``: ``timed_span_s`` = whitening + prebuilt augmentation +
    training loops + final TTA, ``record_span_s`` = the same without the TTA; compile
    warm-up apart) and
    ``facts`` about what the run ran on (device, amp, loader, kernels, versions, ...).

    Args:
        recipe: the run's recipe.
        state: its final state.
        **facts: device, amp, loader, kernels, versions, ... as summary.json keys.

    Returns:
        summary.json's dict.
    """
    m = state.metrics
    best = max(m, key=lambda row: row["test_acc"])
    prepare = state.whiten_time_s + state.augment_time_s  # both contracts charge them
    return {
        "recipe": recipe.name,
        "model": recipe.model,
        "epochs": len(m),
        "final_test_acc": m[-1].get("tta_test_acc", m[-1]["test_acc"]),
        "final_test_acc_single_view": m[-1]["test_acc"],
        "tta": recipe.tta,
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "expected_accuracy": recipe.expected_accuracy,
        "total_time_s": sum(row["epoch_time_s"] for row in m),
        "train_time_s": state.train_time_s,
        "whiten_time_s": state.whiten_time_s,
        "tta_time_s": state.tta_time_s,
        "augment_time_s": state.augment_time_s,
        "timed_span_s": prepare + state.train_time_s + state.tta_time_s,
        "record_span_s": prepare + state.train_time_s,
        "compile_time_s": state.compile_time_s,
        "mean_images_per_s": sum(row["images_per_s"] for row in m) / len(m),
        **facts,
    }


def write_summary(run_dir: Path, summary: dict) -> None:
    """Write summary.json (``summarise``'s dict, with what the commands add to it)
    atomically into ``run_dir``: the one writer of the file.

    Args:
        run_dir: the run directory.
        summary: its contents.
    """
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def write_config(
    run_dir: Path, recipe: Recipe, options: RunOptions, kernel_dispatch: list[dict] | None = None
) -> None:
    """``config.json``: the recipe, the run options, the command line and, with
    ``--kernels auto`` on CUDA, the measured kernel choices (``fastcifar.nn.autotune``).

    Args:
        run_dir: the run directory.
        recipe: the recipe.
        options: the run options.
        kernel_dispatch: ``--kernels auto``'s records, or None.
    """
    config = {"recipe": asdict(recipe), "run": asdict(options), "argv": sys.argv[1:]}
    if kernel_dispatch:
        config["kernel_dispatch"] = kernel_dispatch
    atomic_write(run_dir / "config.json", json.dumps(config, indent=2) + "\n")


def read_config(run_dir: Path) -> tuple[Recipe, RunOptions]:
    """The recipe and options a run was started with.

    Args:
        run_dir: the run directory.

    Returns:
        (recipe, options).

    Raises:
        FastCifarError: the directory holds no readable config.json.
    """
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
        recipe = config["recipe"]
        if isinstance(recipe.get("tta"), bool):  # before 0.2: tta was flip on/off
            recipe["tta"] = "flip" if recipe["tta"] else "none"
        return Recipe(**recipe), RunOptions(**config["run"])
    except FileNotFoundError:
        raise FastCifarError(
            f"{run_dir} is not a run directory (no config.json): pass a directory that "
            f"fastcifar.train created"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FastCifarError(f"{path} is not a fastcifar config ({exc}): start a new run") from None


def speedrun_line(summary: dict, cuda: bool) -> str:
    """A speed run's closing line from its ``summary.json`` contents: the timed span under
    each contract of ``options.TIMINGS`` (the run's own first), its parts in seconds,
    how they were timed (CUDA events when ``cuda``, else the wall clock), and the final
    test accuracy.

    Args:
        summary: summary.json's dict.
        cuda: the run was timed with CUDA events.

    Returns:
        The line.
    """
    first = summary.get("timing", "fastcifar")
    spans = "; ".join(
        f"{summary[key]:.2f} s under --timing {name} ({what})"
        for name, (key, what) in sorted(TIMINGS.items(), key=lambda kv: kv[0] != first)
    )
    return (
        f"speedrun: {spans}, on {summary['device']} (whitening "
        f"{summary['whiten_time_s']:.2f} + augmentation built ahead "
        f"{summary.get('augment_time_s', 0.0):.2f} + training "
        f"{summary['train_time_s']:.2f} + final TTA {summary['tta_time_s']:.2f}; timed with "
        f"{'CUDA events' if cuda else 'the wall clock'}; compile "
        f"warm-up {summary['compile_time_s']:.1f} s and per-epoch evaluation excluded); "
        f"final test accuracy {summary['final_test_acc']:.2f}%"
    )


def diverged_note(epochs_done: int, run_dir: Path, amp_dtype) -> str:
    """A diverged run's error, after its loss: the checkpoint kept, and the fix.

    Args:
        epochs_done: epochs finished before the loss diverged.
        run_dir: the run directory.
        amp_dtype: the autocast dtype, or None (float32).

    Returns:
        The text, one line.
    """
    kept = (
        f"the last good checkpoint ({plural(epochs_done, 'epoch')}) is kept in "
        f"{run_dir / 'last.pt'}"
        if epochs_done
        else "no epoch had finished, so no checkpoint was written"
    )
    return f"{kept}; {'lower --lr or try --no-amp' if amp_dtype else 'lower --lr'}"


def nothing_to_resume(run_dir: Path) -> str:
    """What a resume says when the run stopped before its first epoch ended.

    Args:
        run_dir: the run directory.

    Returns:
        The line.
    """
    return (
        f"resume: {run_dir} has no checkpoint yet (it stopped before its first "
        "epoch ended): training it from the beginning"
    )
