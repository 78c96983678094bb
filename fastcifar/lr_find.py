"""LR range test: ``python -m fastcifar.lr_find --recipe NAME``.

Runs torch-lr-finder's range test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017: the learning rate grows exponentially each step while the smoothed loss
is recorded) on the recipe's model, optimizer, loss and training loader, saves the
loss-vs-lr plot with the suggested value (torch-lr-finder's steepest descent of the
smoothed loss, taken before the loss's minimum: ``fastcifar.engine.lr_range``), warns
when it is far from the recipe's lr or the loss never diverged, and restores model and
optimizer to their state before the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastcifar.cli import CommandParser, prog_name
from fastcifar.errors import FastCifarError, run_cli
from fastcifar.options import RunOptions, add_field_flags, check_fields
from fastcifar.recipes import DEFAULT_RECIPE, Recipe, get_recipe

# the run options and recipe fields this command shares with fastcifar.train, their flags
# built from the same field metadata
RUN_FLAGS = ("data", "train_subset", "device", "workers")
RECIPE_FLAGS = ("batch_size",)


def build_parser() -> CommandParser:
    """The command's parser: the recipe, the run and recipe flags it shares with the
    train command, and the range's start, end and length.

    Returns:
        The parser.
    """
    p = CommandParser(
        prog=prog_name("fastcifar.lr_find"),
        description="LR range test (Smith, 2017): train with a learning rate growing "
        "exponentially each step, plot the smoothed loss against it and suggest the lr of "
        "its steepest descent, as seed 003 did",
    )
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        metavar="NAME",
        help=f"the recipe whose model, optimizer, loss and data are tested "
        f"(default {DEFAULT_RECIPE})",
    )
    add_field_flags(p, RunOptions, RunOptions(), only=RUN_FLAGS)
    add_field_flags(p, Recipe, dest=lambda name: f"r_{name}", only=RECIPE_FLAGS)
    p.add_argument(
        "--start-lr",
        type=float,
        default=1e-6,
        metavar="LR",
        help="the first step's learning rate (default 1e-6)",
    )
    p.add_argument(
        "--end-lr",
        type=float,
        default=0.9,
        metavar="LR",
        help="the last step's learning rate (default 0.9, seed 003's)",
    )
    p.add_argument(
        "--num-iter",
        type=int,
        default=200,
        metavar="N",
        help="steps, the lr growing exponentially from --start-lr to --end-lr "
        "(default 200, as the seeds; under 100: a rough suggestion)",
    )
    p.add_argument("--out", default="lr_find.png", help="plot file (default lr_find.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.lr_find``: the LR range test of a recipe's model, its suggestion and
    the loss-against-lr plot.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0.

    Raises:
        FastCifarError: ``--start-lr`` not positive or not below ``--end-lr``, ``--num-iter``
            below 2, or the test gave no suggestion.
    """
    args = build_parser().parse_args(argv)
    if args.num_iter < 2:
        raise FastCifarError(f"--num-iter {args.num_iter} is below 2: pass 2 or more")
    if not 0 < args.start_lr < args.end_lr:
        raise FastCifarError("--start-lr must be positive and below --end-lr")
    recipe = get_recipe(args.recipe).replace(lr_find=False)
    changed = {n: getattr(args, f"r_{n}") for n in RECIPE_FLAGS if getattr(args, f"r_{n}")}
    recipe = recipe.replace(**changed).validate()
    # PyTorch's convolutions: the range test needs no kernel validation, and no test set
    given = {n: getattr(args, n) for n in RUN_FLAGS if getattr(args, n) is not None}
    opts = RunOptions(**given, kernels="torch")
    check_fields(opts)
    from fastcifar.engine.components import build_components
    from fastcifar.engine.lr_range import RULE, range_test
    from fastcifar.engine.optim import make_optimizer

    c = build_components(recipe, opts, with_test=False)
    c.model.init_from_data(c.train_images, recipe.whiten_images, recipe.seed, c.mean, c.std)
    result = range_test(
        c.model,
        make_optimizer(c.model, recipe),
        c.criterion,
        c.train_loader,
        c.device,
        args.start_lr,
        args.end_lr,
        args.num_iter,
        plot=Path(args.out),
        reference_lr=recipe.lr,
    )
    print(f"{recipe.name}: suggested lr {result.suggested_lr:.4g} ({RULE}); plot {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
