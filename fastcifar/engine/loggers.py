"""What a run reports at the end of each epoch, besides its run directory: loggers with
one method, ``on_epoch_end(row, is_best)``, that ``Trainer.fit`` calls on rank 0 after the
epoch's checkpoint is written (Lightning Fabric's callbacks are the model).

``row`` is the epoch's ``metrics.jsonl`` object (docs/DESIGN.md, "Run directory"):
epoch, lr, train_loss, train_acc and test_acc in percent, test_loss, epoch_time_s,
images_per_s, and on a TTA recipe's last epoch tta_test_loss and tta_test_acc.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Protocol

import torch

from fastcifar.units import duration

__all__ = [
    "ConsoleLogger",
    "EpochLogger",
    "TensorBoardLogger",
    "default_loggers",
    "ProgressLines",
    "progress_bar",
]


class EpochLogger(Protocol):
    """What hears of every finished epoch (on rank 0): ``on_epoch_end(row, is_best)`` with
    the epoch's metrics row (``metrics.jsonl``'s) and whether its accuracy is the best so
    far."""

    def on_epoch_end(self, row: dict, is_best: bool) -> None:
        """Hear of a finished epoch.

        Args:
            row: the epoch's metrics row (``metrics.jsonl``'s).
            is_best: its test accuracy is the best so far.
        """


class ConsoleLogger:
    """One line per epoch on standard output: lr, losses, accuracies, images/s, seconds.

    Args:
        epochs: the run's epochs (shown as ``epoch k/epochs``).
    """

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, row: dict, is_best: bool) -> None:
        """Print the epoch's line.

        Args:
            row: the epoch's metrics row.
            is_best: its test accuracy is the best so far (the line says so).
        """
        print(
            f"epoch {row['epoch']}/{self.epochs}  lr {row['lr']:.4g}  "
            f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%  "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%  "
            + (f"TTA acc {row['tta_test_acc']:.2f}%  " if "tta_test_acc" in row else "")
            + f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f} s",
            flush=True,
        )


class TensorBoardLogger:
    """Every number of the row as a TensorBoard scalar (x axis: the epoch) in ``log_dir``;
    says where when it starts.

    Args:
        log_dir: the event files' folder; made if missing.
    """

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        print(f"tensorboard: logging to {log_dir} (view: tensorboard --logdir {log_dir})")

    def on_epoch_end(self, row: dict, is_best: bool) -> None:
        """Write every number of the row as a scalar at the epoch, and flush.

        Args:
            row: the epoch's metrics row.
            is_best: unused (the interface's).
        """
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()


def default_loggers(epochs: int, run_dir: Path, tensorboard: bool) -> list[EpochLogger]:
    """The console, and TensorBoard in ``run_dir/tensorboard`` when asked.

    Args:
        epochs: the run's epochs.
        run_dir: the run directory.
        tensorboard: also log to TensorBoard.

    Returns:
        The loggers.
    """
    loggers: list[EpochLogger] = [ConsoleLogger(epochs)]
    if tensorboard:
        loggers.append(TensorBoardLogger(Path(run_dir) / "tensorboard"))
    return loggers


def progress_bar(steps: int, description: str, every_s: float = 30.0):
    """The training epoch's progress: on a terminal a tqdm bar on standard error (refreshed
    at most once a second, removed when the epoch ends); otherwise (a log file) a
    ``ProgressLines``, one line every ``every_s`` seconds. Both take ``due()`` (whether
    the next ``update`` shows values: post them first), ``update(n)``,
    ``set_postfix(**values)`` and ``close()``.

    Args:
        steps: the epoch's steps.
        description: the bar's or line's prefix, e.g. ``"epoch 3/24"``.
        every_s: seconds between lines in a log (0: none).

    Returns:
        A ``TerminalBar`` or a ``ProgressLines``.
    """
    if not sys.stderr.isatty():
        return ProgressLines(steps, description, every_s)
    return TerminalBar(steps, description)


class TerminalBar:
    """A tqdm bar on standard error for one epoch, refreshed at most once a second and
    removed when the epoch ends; ``due()`` says when fresh values are worth posting (once
    a second), so the loop reads its running loss back from the device that often, not at
    every step.

    Args:
        steps: the epoch's steps.
        description: the bar's prefix.
    """

    REFRESH_S = 1.0

    def __init__(self, steps: int, description: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=steps, desc=description, unit="batch", leave=False, mininterval=self.REFRESH_S
        )
        self.last = time.perf_counter() - self.REFRESH_S  # the first step posts at once

    def due(self) -> bool:
        """Whether fresh values are worth posting now (at most once a second).

        Returns:
            True when a second has passed since the last post.
        """
        now = time.perf_counter()
        if now - self.last < self.REFRESH_S:
            return False
        self.last = now
        return True

    def set_postfix(self, **values) -> None:
        """Show ``values`` after the bar.

        Args:
            **values: name -> text.
        """
        self.bar.set_postfix(**values, refresh=False)

    def update(self, n: int = 1) -> None:
        """Advance the bar.

        Args:
            n: steps done since the last update.
        """
        self.bar.update(n)

    def close(self) -> None:
        """Remove the bar from the terminal."""
        self.bar.close()


class ProgressLines:
    """Progress for logs: every ``every_s`` seconds (0: never) one line on standard output,
    ``epoch 3/24: 120/390 batches (31 %), loss=1.234 acc=45.1 img_s=11823, 1 min 02 s
    left``; the time left is extrapolated from the epoch so far. Values not yet set (the
    first steps, before the loop posts any) are left out, not shown as an empty field.
    Lines go to the standard output of the moment it is made: a library that redirects
    ``sys.stdout`` meanwhile (torch-lr-finder's prints, quieted) does not swallow them.

    Args:
        steps: the epoch's steps.
        description: each line's prefix.
        every_s: seconds between lines (0: never).
    """

    def __init__(self, steps: int, description: str, every_s: float):
        self.steps, self.description, self.every_s = steps, description, every_s
        self.done, self.values = 0, {}
        self.start = self.last = time.perf_counter()
        self.stream = sys.stdout

    def set_postfix(self, **values) -> None:
        """The values the next line shows.

        Args:
            **values: name -> text.
        """
        self.values = values

    def due(self) -> bool:
        """Whether the next ``update(1)`` prints a line (post the values first).

        Returns:
            True when the next step's update prints.
        """
        now = time.perf_counter()
        return self.every_s > 0 and now - self.last >= self.every_s and self.done + 1 < self.steps

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps; print a line when ``every_s`` seconds have passed since the last
        one (none at the epoch's last step).

        Args:
            n: steps done since the last update.
        """
        self.done += n
        now = time.perf_counter()
        if self.every_s > 0 and now - self.last >= self.every_s and self.done < self.steps:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        """The progress line at time ``now`` (``time.perf_counter()`` seconds).

        Args:
            now: the time, ``time.perf_counter()`` seconds.

        Returns:
            The line, without its newline.
        """
        left = (now - self.start) / max(self.done, 1) * (self.steps - self.done)
        values = " ".join(f"{k}={v}" for k, v in self.values.items() if v not in ("", None))
        done = f"{self.description}: {self.done}/{self.steps} batches"
        parts = [f"{done} ({100 * self.done // self.steps} %)", values, f"{duration(left)} left"]
        return ", ".join(p for p in parts if p)

    def close(self) -> None:
        """End the epoch's progress: nothing to do (a log's lines need no clean-up)."""
        pass


def running_values(losses: torch.Tensor, correct: torch.Tensor, seen: int, start: float) -> dict:
    """The progress's running values of an epoch so far: mean train loss over the steps
    in ``losses``, accuracy (percent of the ``seen`` images ``correct``), images per second
    since ``start`` (``time.perf_counter()``), as text. One read back from the device.

    Args:
        losses: the epoch's per-step losses so far, on the device (float32 (steps,)).
        correct: correct predictions so far, a device scalar.
        seen: images seen so far.
        start: the epoch's start, ``time.perf_counter()`` seconds.

    Returns:
        ``{"loss": ..., "acc": ..., "img_s": ...}``, each formatted text.
    """
    loss_sum, right = torch.stack([losses.sum(), correct.to(losses.dtype)]).tolist()
    return {
        "loss": f"{loss_sum / max(len(losses), 1):.3f}",
        "acc": f"{100 * right / max(seen, 1):.1f}",
        "img_s": f"{seen / max(time.perf_counter() - start, 1e-9):.0f}",
    }
