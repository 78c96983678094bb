"""The LR range test as a library function (``range_test``); its command is
``python -m fastcifar.lr_find``.

torch-lr-finder runs the test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017: the learning rate grows exponentially each step while the smoothed loss
is recorded); the suggestion is the steepest descent of the loss, as seed 003 used it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastcifar.components import Components
from fastcifar.distributed import broadcast_object
from fastcifar.errors import FastCifarError
from fastcifar.optim import make_optimizer
from fastcifar.recipes import Recipe

__all__ = ["RangeTest", "range_test", "with_found_lr"]


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    suggested_lr: float


def _adapter(loader):
    """Our loaders yield device batches; torch-lr-finder takes a TrainDataLoaderIter."""
    from torch_lr_finder import TrainDataLoaderIter

    return TrainDataLoaderIter(loader)


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

    Raises:
        FastCifarError: the loss never gave a usable suggestion (too few steps).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch_lr_finder import LRFinder

    finder = LRFinder(model, optimizer, criterion, device=device)
    for group in optimizer.param_groups:
        group["lr"] = start_lr
    finder.range_test(_adapter(loader), end_lr=end_lr, num_iter=num_iter, step_mode="exp")
    fig, ax = plt.subplots(figsize=(6, 4))
    skip_start = min(10, max(0, len(finder.history["lr"]) - 3))
    try:
        ax, suggested = finder.plot(skip_start=skip_start, skip_end=1, ax=ax, suggest_lr=True)
    except (ValueError, IndexError, TypeError) as exc:
        plt.close(fig)
        finder.reset()
        raise FastCifarError(
            f"the LR range test gave no suggestion ({exc}): raise --num-iter"
        ) from None
    finder.reset()  # model and optimizer back to their state before the test
    if suggested is None:
        plt.close(fig)
        raise FastCifarError("the LR range test gave no suggestion: raise --num-iter")
    ax.set_title(f"LR range test: suggested lr {suggested:.3g}")
    if plot is not None:
        fig.savefig(plot, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return RangeTest(list(finder.history["lr"]), list(finder.history["loss"]), float(suggested))


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
    result = range_test(c.model, optimizer, c.criterion, c.train_loader, c.device,
                        num_iter=recipe.lr_find_iters)  # fmt: skip
    print(f"lr_find: suggested lr {result.suggested_lr:.4g} (steepest descent); the recipe "
          f"uses it as its peak lr")  # fmt: skip
    return recipe.replace(lr=broadcast_object(float(result.suggested_lr)))
