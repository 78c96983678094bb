"""The LR range test as a library function (``range_test``); its command is
``python -m fastcifar.lr_find``.

torch-lr-finder runs the test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017: the learning rate grows exponentially each step while the smoothed loss
is recorded). The suggestion is torch-lr-finder's own rule (``LRFinder.plot(suggest_lr=
True)``: the steepest descent, the most negative gradient of the smoothed loss), applied
to the curve up to the smoothed loss's minimum, as fastai's ``valley`` does: after the
minimum the loss is diverging, and a steep fall in a recovery there is no learning rate to
train at. The plot shows the whole curve, the part the rule left out in grey.
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
    """A range test's record: the lr of each step, the smoothed loss after it, and the
    suggestion (``suggested_lr``) with whether the loss diverged before ``end_lr``.

    Attributes:
        lrs: the learning rate of each step.
        losses: the smoothed loss after each step.
        suggested_lr: the suggestion.
        diverged: the loss diverged before ``end_lr``.
    """

    lrs: list[float]
    losses: list[float]
    suggested_lr: float
    diverged: bool = False


# below this many steps the smoothed loss curve is too short to trust (the seeds used 200)
MIN_ITERS = 100
# a suggestion this many times above or below the recipe's own lr gets a warning
FAR_FROM_RECIPE = 3.0
RULE = "steepest descent of the smoothed loss before its minimum"


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
    divergence notice it prints is recorded in the dict it yields (``"diverged"``)."""
    from torch_lr_finder import lr_finder

    out, bar = io.StringIO(), lr_finder.tqdm
    lr_finder.tqdm = lambda iterable, *args, **kwargs: iterable
    said: dict[str, bool] = {}
    try:
        with contextlib.redirect_stdout(out):
            yield said
    finally:
        lr_finder.tqdm = bar
        said["diverged"] = "diverged" in out.getvalue()


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
    reference_lr: float | None = None,
) -> RangeTest:
    """Range test from ``start_lr`` to ``end_lr`` over ``num_iter`` steps (exponential);
    ``model`` and ``optimizer`` come back exactly as they were. Defaults are seed 003's.
    Shows its progress (a bar on a terminal, lines every 30 s in a log), warns below
    ``MIN_ITERS`` steps and in one line each case of ``warnings`` (``reference_lr``: the
    recipe's lr, to warn when the suggestion is far from it).

    Args:
        model: the model on ``device``; restored afterwards.
        optimizer: its optimizer; restored afterwards.
        criterion: ``(outputs, labels) -> loss``.
        loader: the training loader.
        device: where it runs.
        start_lr: the first step's lr.
        end_lr: the last step's lr.
        num_iter: steps.
        plot: where to save the loss-against-lr plot (PNG), or None.
        reference_lr: the recipe's lr, or None.

    Returns:
        The ``RangeTest``.

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
    with _quiet_library() as said:
        finder.range_test(
            _adapter(loader, progress), end_lr=end_lr, num_iter=num_iter, step_mode="exp"
        )
    progress.close()
    lrs, losses = list(finder.history["lr"]), list(finder.history["loss"])
    skip_start = min(10, max(0, len(lrs) - 3))
    try:
        suggested = suggest(finder, skip_start, plot)
    finally:
        finder.reset()  # model and optimizer back to their state before the test
    result = RangeTest(lrs, losses, suggested, said["diverged"])
    for line in warnings(result, skip_start, reference_lr):
        print(f"warning: {line}")
    return result


def warnings(result: RangeTest, skip_start: int, reference_lr: float | None) -> list[str]:
    """One line each: the suggestion is the first point the rule considers; it is more
    than ``FAR_FROM_RECIPE`` times above or below ``reference_lr`` (the recipe's); the
    range ended before the loss diverged (the curve may not have reached its minimum).

    Args:
        result: the range test's record.
        skip_start: points left out at the start.
        reference_lr: the recipe's lr, or None.

    Returns:
        The warning lines (empty when none applies).
    """
    out = []
    if result.suggested_lr <= result.lrs[skip_start]:
        out.append(
            "the suggestion is the first point the test considers: the loss never fell "
            "faster later; raise --num-iter or lower --start-lr"
        )
    lr = result.suggested_lr
    if reference_lr and not reference_lr / FAR_FROM_RECIPE <= lr <= reference_lr * FAR_FROM_RECIPE:
        out.append(
            f"the suggested lr {lr:.4g} is {_times(lr, reference_lr)} the recipe's "
            f"{reference_lr:.4g}: check the plot before training at it"
        )
    if not result.diverged:
        out.append(
            f"the loss had not diverged by the last lr ({result.lrs[-1]:.3g}): the curve may "
            f"not have reached its minimum; raise --end-lr to see it"
        )
    return out


def _times(value: float, reference: float) -> str:
    ratio = value / reference
    return f"{ratio:.1f}x" if ratio >= 1 else f"1/{1 / ratio:.1f} of"


def before_minimum(losses: list[float], skip_start: int) -> int:
    """``skip_end`` for torch-lr-finder's ``plot``: the points after the smoothed loss's
    minimum (from ``skip_start`` on), which the suggestion rule leaves out.

    Args:
        losses: the smoothed losses.
        skip_start: points left out at the start.

    Returns:
        The number of points after the minimum.
    """
    tail = losses[skip_start:]
    lowest = skip_start + min(range(len(tail)), key=tail.__getitem__)
    return len(losses) - lowest - 1


def suggest(finder, skip_start: int, path: Path | None) -> float:
    """torch-lr-finder's suggestion (``plot(suggest_lr=True)``: the steepest descent of the
    smoothed loss) over the curve from ``skip_start`` up to the loss's minimum
    (``before_minimum``); the loss-against-lr plot with the whole curve (the part left
    out in grey), the suggestion as a red dot and the rule in its title, saved to ``path``.

    Args:
        finder: torch-lr-finder's ``LRFinder`` after its ``range_test``.
        skip_start: points left out at the start.
        path: where to save the plot (PNG), or None.

    Returns:
        The suggested lr.

    Raises:
        FastCifarError: no suggestion (fewer than two points before the minimum).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs, losses = finder.history["lr"], finder.history["loss"]
    skip_end = before_minimum(losses, skip_start)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    try:
        if len(losses) - skip_end - skip_start < 2:
            raise ValueError("the loss was lowest at the first points considered")
        ax.plot(lrs[skip_start:], losses[skip_start:], color="#bbbbbb", label="after the minimum")
        with _quiet_library():
            ax, suggested = finder.plot(
                skip_start=skip_start, skip_end=skip_end, ax=ax, suggest_lr=True
            )
        ax.set_title(f"LR range test: suggested lr {suggested:.3g}\n({RULE}, red dot)", fontsize=10)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
    except (ValueError, IndexError, TypeError) as exc:
        raise FastCifarError(
            f"the LR range test gave no suggestion ({exc}): raise --num-iter or lower --start-lr"
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

    Args:
        recipe: the recipe (its ``lr_find`` and ``lr_find_iters``).
        components: the run's model, criterion and training loader.

    Returns:
        The recipe with ``lr`` replaced by the suggestion.

    Raises:
        FastCifarError: the test gave no suggestion.
    """
    c = components
    optimizer = make_optimizer(c.model, recipe)
    result = range_test(
        c.model,
        optimizer,
        c.criterion,
        c.train_loader,
        c.device,
        num_iter=recipe.lr_find_iters,
        reference_lr=recipe.lr,
    )
    print(
        f"lr_find: suggested lr {result.suggested_lr:.4g} ({RULE}); the recipe uses it as "
        f"its peak lr"
    )
    return recipe.replace(lr=broadcast_object(float(result.suggested_lr)))
