"""LR range test: ``python -m fastcifar.lr_find --recipe NAME``.

Runs torch-lr-finder's range test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017: the learning rate grows exponentially each step while the smoothed loss
is recorded) on the recipe's model, optimizer, loss and training loader, saves the
loss-vs-lr plot with the suggested value (the steepest descent of the loss, as seed 003
used it), and restores model and optimizer to their state before the test.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastcifar.errors import FastCifarError, run_cli


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


def main(argv: list[str] | None = None) -> int:
    from fastcifar.engine import RunOptions, Trainer
    from fastcifar.recipes import DEFAULT_RECIPE, get_recipe

    p = argparse.ArgumentParser(
        prog="python -m fastcifar.lr_find", description=__doc__.split("\n")[0]
    )
    p.add_argument("--recipe", default=DEFAULT_RECIPE)
    p.add_argument("--data", help="CIFAR-10 source (see python -m fastcifar.train --help)")
    p.add_argument("--train-subset", type=int, metavar="N")
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=0.9)
    p.add_argument("--num-iter", type=int, default=200)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int)
    p.add_argument("--out", default="lr_find.png", help="plot file (default lr_find.png)")
    args = p.parse_args(argv)
    if args.num_iter < 2:
        raise FastCifarError(f"--num-iter {args.num_iter} is below 2: pass 2 or more")
    if not 0 < args.start_lr < args.end_lr:
        raise FastCifarError("--start-lr must be positive and below --end-lr")
    recipe = get_recipe(args.recipe).replace(lr_find=False)
    opts = RunOptions(
        data=args.data,
        train_subset=args.train_subset,
        test_subset=1,
        device=args.device,
        workers=args.workers,
    )
    t = Trainer(recipe, opts, Path("."))
    result = range_test(
        t.model,
        t._make_optimizer(),
        t._criterion,
        t.train_loader,
        t.device,
        args.start_lr,
        args.end_lr,
        args.num_iter,
        plot=Path(args.out),
    )
    print(f"{recipe.name}: suggested lr {result.suggested_lr:.4g}; plot {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
