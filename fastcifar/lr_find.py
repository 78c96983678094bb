"""LR range test: ``python -m fastcifar.lr_find --recipe NAME``.

Runs torch-lr-finder's range test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017: the learning rate grows exponentially each step while the smoothed loss
is recorded) on the recipe's model, optimizer, loss and training loader, saves the
loss-vs-lr plot with the suggested value (the steepest descent of the loss, as seed 003
used it), and restores model and optimizer to their state before the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastcifar.cli import CommandParser, prog_name
from fastcifar.components import build_components
from fastcifar.errors import FastCifarError, run_cli
from fastcifar.lr_range import range_test
from fastcifar.optim import make_optimizer
from fastcifar.recipes import DEFAULT_RECIPE, get_recipe
from fastcifar.rundir import RunOptions


def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog=prog_name("fastcifar.lr_find"), description=__doc__.split("\n")[0])
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
    # PyTorch's convolutions: the range test needs no kernel validation, and no test set
    opts = RunOptions(data=args.data, train_subset=args.train_subset, device=args.device,
                      workers=args.workers, kernels="torch")  # fmt: skip
    c = build_components(recipe, opts, with_test=False)
    c.model.init_from_data(c.train_images, recipe.whiten_images, recipe.seed, c.mean, c.std)
    result = range_test(
        c.model, make_optimizer(c.model, recipe), c.criterion, c.train_loader,
        c.device, args.start_lr, args.end_lr, args.num_iter, plot=Path(args.out),
    )  # fmt: skip
    print(f"{recipe.name}: suggested lr {result.suggested_lr:.4g}; plot {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
