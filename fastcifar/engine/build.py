"""``build_trainer``: a recipe and a run's options to a ready ``Trainer``, as the train
command, the library's users and the tests build one."""

from __future__ import annotations

from pathlib import Path

from fastcifar.engine.components import build_components
from fastcifar.engine.distributed import SINGLE, World
from fastcifar.engine.loggers import default_loggers
from fastcifar.engine.lr_range import with_found_lr
from fastcifar.engine.trainer import Trainer
from fastcifar.options import RunOptions
from fastcifar.recipes import Recipe

__all__ = ["build_trainer"]


def build_trainer(
    recipe: Recipe,
    options: RunOptions,
    run_dir: Path,
    resume: bool = False,
    world: World | None = None,
) -> Trainer:
    """What the train command trains with: the run's components (data, loaders, model,
    kernels; ``build_components``), its peak lr from an LR range test when the recipe
    asks and the run is new, and the ``Trainer`` with rank 0's loggers (the console,
    TensorBoard with ``--tensorboard``).

    Args:
        recipe: the recipe (``fastcifar.recipes.get_recipe`` and its overrides).
        options: how to run it (device, loader, kernels, AMP, compile, ...).
        run_dir: the run directory (created and locked by the caller:
            ``rundir.prepare_run_dir``).
        resume: continue from ``run_dir``'s last checkpoint (no LR range test then).
        world: this process's place under torchrun (default: one process).

    Returns:
        The ``Trainer``, its model on the device and its data loaded.

    Raises:
        FastCifarError: bad data, a loader or kernel choice that cannot run here, no
            checkpoint to resume, an LR range test without a suggestion.
    """
    world = world or SINGLE
    components = build_components(recipe, options, world=world)
    if recipe.lr_find and not resume:
        recipe = with_found_lr(recipe, components)
    loggers = default_loggers(recipe.epochs, run_dir, options.tensorboard) if world.is_main else []
    return Trainer(recipe, components, options, run_dir, resume, world, loggers)
