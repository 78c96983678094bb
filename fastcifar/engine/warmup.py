"""What runs before the timed training loop: the graphs the compile warm-up calls
(``warm_up_variants``, ``last_partial_batch``), its first line (``announce_first_step``)
and the augmented epochs built ahead (``prebuild``)."""

from __future__ import annotations

import torch

from fastcifar.engine.components import Components
from fastcifar.engine.runtime import Timer
from fastcifar.recipes import Recipe

__all__ = ["announce_first_step", "last_partial_batch", "prebuild", "warm_up_variants"]


def warm_up_variants(
    recipe: Recipe, epoch: int, whiten_bias_steps: int, steps: int
) -> list[tuple[int | None, bool]]:
    """The (resolution, whitening bias frozen) of each warm-up step from epoch ``epoch``:
    every graph the run will call, at least ``steps`` steps: the epoch's resolution with
    the whitening bias training (when it trains), then each resolution of
    ``res_schedule`` with it frozen.

    Args:
        recipe: the recipe (``res_schedule``, the whitening bias).
        epoch: the epoch the run starts at.
        whiten_bias_steps: steps the whitening bias trains.
        steps: the least warm-up steps.

    Returns:
        One (resolution or None, frozen) per warm-up step.
    """
    resolutions = sorted(set(recipe.resolutions())) or [None]
    if not whiten_bias_steps:
        variants = [(r, False) for r in resolutions]
    else:
        variants = [(recipe.resolution(epoch), False)] + [(r, True) for r in resolutions]
    return [variants[0]] * max(1, steps - len(variants) + 1) + variants[1:]


def last_partial_batch(loader, x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    """``[(x, y)]`` cut to the size of the epoch's last, partial step
    (``EpochLoader.last_step_size``), which torch.compile would otherwise compile inside
    the first timed epoch; ``[]`` when every step of the epoch is full.

    Args:
        loader: the training loader.
        x: a full batch of images.
        y: its labels.

    Returns:
        ``[(x, y)]`` cut, or ``[]``.
    """
    rest = loader.last_step_size()
    return [(x[:rest], y[:rest])] if rest < len(y) else []


def announce_first_step(loss: torch.Tensor, seconds: float, steps: int) -> None:
    """The compile warm-up's first line: the first step's loss as soon as it is known (a
    cold compile on a CPU takes minutes), and that the warm-up is undone.

    Args:
        loss: the first step's loss (a device scalar).
        seconds: seconds since the warm-up began.
        steps: the warm-up's steps.
    """
    print(
        f"compile: warm-up step 1/{steps}: loss={float(loss.detach()):.3f} after "
        f"{seconds:.1f} s (compiling, mostly; the warm-up's steps are undone before epoch 1)",
        flush=True,
    )


def prebuild(components: Components, recipe: Recipe, epochs: range) -> float:
    """With ``recipe.prebuild_augmentation``, the training loader's batches of ``epochs``
    built now (the gpu loader's ``prebuild``); returns its device-timed seconds (0 when
    off), which both timing contracts charge. Another loader says in one line that it
    builds batches as it goes.

    Args:
        components: the run's components (its training loader).
        recipe: the recipe (``prebuild_augmentation``).
        epochs: the epochs to build.

    Returns:
        Seconds.
    """
    loader = components.train_loader
    if not recipe.prebuild_augmentation:
        return 0.0
    if not hasattr(loader, "prebuild"):
        print(
            f"prebuild-augmentation: the {components.loader_name} loader augments as it "
            f"goes (only --loader gpu builds epochs ahead); training without it"
        )
        return 0.0
    timer = Timer(components.device)
    loader.prebuild(epochs)
    return timer.stop()
