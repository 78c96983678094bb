"""The train command's flags: its parser (``build_parser``: the command's own flags, every
``RunOptions`` field and every recipe field), the ``RunOptions`` and recipe overrides they
give, and a new run's recipe and options from them for the commands that run many
trainings (``fastcifar.sweep``, ``fastcifar.tune``: ``recipe_and_options``).

Torch-free, as the train command's top: ``--help`` answers before torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

from fastcifar import __version__
from fastcifar.cli import CommandParser, first_sentence, help_columns, prog_name
from fastcifar.errors import FastCifarError
from fastcifar.options import RunOptions, add_field_flags, check_fields
from fastcifar.recipes import (
    DEFAULT_RECIPE,
    RECIPE_DOCS,
    RECIPES,
    Recipe,
    get_recipe,
    overridable_fields,
)

__all__ = ["build_parser", "recipe_and_options", "recipe_overrides", "run_options"]


def run_options(args: argparse.Namespace, **fixed) -> RunOptions:
    """The ``RunOptions`` the flags give (fields not given keep their defaults), with
    ``fixed`` fields set.

    Args:
        args: the parsed flags.
        **fixed: fields the command sets itself.

    Returns:
        The ``RunOptions``.

    Raises:
        FastCifarError: a value out of its bounds (``options.check_fields``).
    """
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunOptions)
        if f.metadata["flag"] and getattr(args, f.name) is not None
    }
    options = RunOptions(**given, **fixed)
    check_fields(options)
    return options


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; each recipe-field flag's help ends with ``recipe``'s value
    (the default recipe's when ``recipe`` is None or unknown).

    Args:
        recipe: the recipe whose values the help shows, or None.

    Returns:
        The parser.
    """
    shown = RECIPES.get(recipe or DEFAULT_RECIPE, RECIPES[DEFAULT_RECIPE])
    columns = help_columns()
    indent = max(map(len, RECIPES)) + 4
    recipes = "\n".join(
        textwrap.fill(
            first_sentence(RECIPE_DOCS[name]),
            columns,
            subsequent_indent=" " * indent,
            initial_indent=f"  {name:<{indent - 2}}",
        )
        for name in RECIPES
    )
    p = CommandParser(
        prog=prog_name("fastcifar.train", "fastcifar-train"),
        usage="%(prog)s [--recipe NAME] [--resume RUN_DIR] [options]",
        description="Train a CIFAR-10 classifier from a named recipe.",
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
            prog, max_help_position=32, width=columns
        ),
        epilog=f"recipes (default {DEFAULT_RECIPE}):\n{recipes}",
    )
    p.add_argument("--version", action="version", version=f"fastcifar {__version__}")
    p.add_argument("--recipe", metavar="NAME", help=f"recipe name (default {DEFAULT_RECIPE})")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last completed epoch, with its own config",
    )
    p.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after training, write the evaluation figures and report.html into "
        "the run directory (python -m fastcifar.evaluate; default on)",
    )
    p.add_argument(
        "--cam-layers",
        help="comma-separated Grad-CAM layers for the evaluation "
        "(default: the model's last convolutional block)",
    )
    run = p.add_argument_group('how the run trains (saved in config.json as "run")')
    add_field_flags(run, RunOptions, RunOptions(), checked=True)
    group = p.add_argument_group(
        f"recipe fields (each overrides the recipe's value; in brackets {shown.name}'s: "
        f"`--recipe R --help` shows R's)"
    )
    names = tuple(f.name for f in overridable_fields())
    add_field_flags(group, Recipe, shown, dest=lambda name: f"r_{name}", only=names)
    return p


def recipe_overrides(args: argparse.Namespace) -> dict:
    """The recipe fields the flags set, by field name (flags not given are left out).

    Args:
        args: the parsed flags.

    Returns:
        {field: value}.
    """
    return {
        f.name: getattr(args, f"r_{f.name}")
        for f in overridable_fields()
        if getattr(args, f"r_{f.name}") is not None
    }


def recipe_and_options(
    recipe_name: str, argv: list[str], command: str
) -> tuple[Recipe, RunOptions]:
    """The recipe (its fields overridden) and the ``RunOptions`` that this command's flags
    in ``argv`` give, for ``command``, which runs many trainings of them (``fastcifar.sweep``,
    ``fastcifar.tune``: ``command`` its module) and owns the run directories.

    Args:
        recipe_name: the recipe.
        argv: the training flags the runs share.
        command: the command's module (``fastcifar.sweep``, ``fastcifar.tune``).

    Returns:
        (recipe, options).

    Raises:
        FastCifarError: a flag that is the command's own (``--out``, ``--resume``,
            ``--recipe``), or any error of a new run's recipe and options.
    """
    own = [a for a in argv if a.split("=")[0] in ("--out", "--resume", "--recipe", "--evaluate")]
    if own:
        raise FastCifarError(f"{own[0].split('=')[0]} is {command}'s own: drop it from the flags")
    parser = build_parser(recipe_name)
    parser.prog = prog_name(command)
    args = parser.parse_args(argv)
    recipe = get_recipe(recipe_name).replace(**recipe_overrides(args)).validate()
    return recipe, run_options(args)
