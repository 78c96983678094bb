"""The LR range test as a library function (``range_test``); its command is
``python -m fastcifar.lr_find``.

torch-lr-finder runs the test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017: the learning rate grows exponentially each step while the smoothed loss
is recorded); the suggestion is the steepest descent of the loss, as seed 003 used it.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastcifar.engine.components import Components
from fastcifar.engine.distributed import broadcast_object
from fastcifar.engine.loggers import progress_bar
from fastcifar.engine.optim import make_optimizer
from fastcifar.errors import FastCifarError
from fastcifar.recipes import Recipe

__all__ = ["RangeTest", "range_test", "with_found_lr"]


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    suggested_lr: float


# below this many steps the smoothed loss curve is too short to trust (the seeds used 200)
MIN_ITERS = 100


def _adapter(loader, progress):
    """Our loaders yield device batches; torch-lr-finder takes a TrainDataLoaderIter. Each
    batch it takes advances ``progress``."""
    from torch_lr_finder import TrainDataLoaderIter

    class Counted(TrainDataLoaderIter):
        def inputs_labels_from_batch(self, batch):
            progress.update(1)
            return super().inputs_labels_from_batch(batch)

    return Counted(loader)


@contextlib.contextmanager
def _quiet_library():
    """torch-lr-finder's own output away: its prints ("See the graph with
    {finder_name}.plot()", sic; "Suggested LR") and its tqdm bar, which it imports into its
    module and offers no switch for (the module's ``tqdm`` name is swapped for a plain
    iterator meanwhile): ``range_test`` reports progress and the result itself. A
    divergence notice it prints is passed on."""
    from torch_lr_finder import lr_finder

    out, bar = io.StringIO(), lr_finder.tqdm
    lr_finder.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        lr_finder.tqdm = bar
        if "diverged" in out.getvalue():
            print("lr_find: the loss diverged before --end-lr: the test stopped there")


def range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion,
    loader,
    device: torch.device,
    start_lr: float = 1e-6,
    end_lr: float = 0.9,
    num_iter: int = 200,
    plot: Path | None = None,
) -> RangeTest:
    """Range test from ``start_lr`` to ``end_lr`` over ``num_iter`` steps (exponential);
    ``model`` and ``optimizer`` come back exactly as they were. Defaults are seed 003's.
    Shows its progress (a bar on a terminal, lines every 30 s in a log), warns below
    ``MIN_ITERS`` steps and when the suggestion is the first point it considers.

    Raises:
        FastCifarError: the loss never gave a usable suggestion (too few steps).
    """
    from torch_lr_finder import LRFinder

    if num_iter < MIN_ITERS:
        print(
            f"warning: an LR range test of {num_iter} steps gives a rough suggestion: "
            f"{MIN_ITERS} or more are usual (the seeds used 200)"
        )
    finder = LRFinder(model, optimizer, criterion, device=device)
    for group in optimizer.param_groups:
        group["lr"] = start_lr
    progress = progress_bar(num_iter, "lr_find")
    with _quiet_library():
        finder.range_test(
            _adapter(loader, progress), end_lr=end_lr, num_iter=num_iter, step_mode="exp"
        )
    progress.close()
    lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
    skip_start = min(10, max(0, len(lrs) - 3))
    try:
        suggested = _plot(finder, skip_start, plot)
    finally:
        finder.reset()  # model and optimizer back to their state before the test
    if suggested <= lrs[skip_start]:
        print(
            "warning: the suggestion is the first point the test considers: the loss "
            "never fell faster later; raise --num-iter or lower --start-lr"
        )
    return RangeTest(lrs, losses, suggested)


def _plot(finder, skip_start: int, path: Path | None) -> float:
    """torch-lr-finder's loss-against-lr plot with its suggestion (the steepest descent
    of the smoothed loss), the rule written on it, saved to ``path``; the suggestion.

    Raises:
        FastCifarError: no suggestion.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    try:
        with _quiet_library():
            ax, suggested = finder.plot(skip_start=skip_start, skip_end=1, ax=ax, suggest_lr=True)
        if suggested is None:
            raise ValueError("no steepest descent")
        ax.set_title(
            f"LR range test: suggested lr {suggested:.3g}\n(the steepest descent of "
            f"the smoothed loss, red dot)",
            fontsize=10,
        )
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
    except (ValueError, IndexError, TypeError) as exc:
        raise FastCifarError(
            f"the LR range test gave no suggestion ({exc}): raise --num-iter"
        ) from None
    finally:
        plt.close(fig)
    return float(suggested)


def with_found_lr(recipe: Recipe, components: Components) -> Recipe:
    """``recipe`` with its peak lr from a range test on ``components`` (model, loss and
    training loader; ``recipe.lr_find_iters`` steps), for recipes that ask for it
    (``lr_find``, as seed 003 did); the train command calls it before the ``Trainer``
    exists. Model and optimizer come back as they were. Under torchrun every rank tests
    on its own shard and all take rank 0's answer.

    Raises:
        FastCifarError: the test gave no suggestion.
    """
    c = components
    optimizer = make_optimizer(c.model, recipe)
    result = range_test(
        c.model, optimizer, c.criterion, c.train_loader, c.device, num_iter=recipe.lr_find_iters
    )
    print(
        f"lr_find: suggested lr {result.suggested_lr:.4g} (steepest descent); the recipe "
        f"uses it as its peak lr"
    )
    return recipe.replace(lr=broadcast_object(float(result.suggested_lr)))
