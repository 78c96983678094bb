"""Which recipe fields a run used, for the report's recipe table: the fields every run
uses, those of its optimizer and schedule, and any other away from its no-op value; and
how a field and its value are written for people (``--batch-size``, ``on``, ``10,000``)."""

from __future__ import annotations

import dataclasses

from fastcifar.units import number

__all__ = ["flag", "recipe_fields_used", "value"]

# recipe fields every run uses, then those that depend on a choice
ALWAYS = (
    "model",
    "augmentation",
    "batch_size",
    "epochs",
    "optimizer",
    "lr",
    "weight_decay",
    "scheduler",
    "loss",
    "label_smoothing",
    "seed",
)
BY_OPTIMIZER = {
    "sgd": ("momentum", "nesterov"),
    "adam": ("momentum",),
    "muon": (
        "momentum",
        "nesterov",
        "bias_lr",
        "head_lr",
        "sgd_momentum",
        "muon_weight_decay",
        "muon_ns_steps",
        "muon_ns",
        "muon_renorm_every",
        "muon_batched",
        "muon_by_shape",
        "muon_renorm_growth",
    ),
}
BY_SCHEDULER = {
    "onecycle": (
        "pct_start",
        "div_factor",
        "final_div_factor",
        "anneal_strategy",
        "cycle_momentum",
    ),
    "step": ("step_size", "gamma"),
    "plateau": ("plateau_factor", "plateau_patience"),
}
# (field, the value at which it does nothing): shown only when it does something
WHEN_SET = (
    ("l1", 0.0),
    ("ema", 0.0),
    ("tta", "none"),
    ("lr_find", False),
    ("loss_reduction", "mean"),
    ("drop_last", False),
    ("last_epoch_fraction", 1.0),
    ("compile_step", False),
    ("compile_mode", "default"),
    ("decay_epochs", 0.0),
    ("lr_floor", 0.0),
    ("res_schedule", ""),
    ("lookahead_start", 0),
    ("prebuild_augmentation", False),
)


def recipe_fields_used(recipe) -> tuple[list[str], list[str]]:
    """(the recipe fields this run used, the rest): the fields every run uses, those of
    its optimizer and schedule, TTA's fraction with TTA, the LR range test's length with
    it, whitening's with a whitening net, and any other field away from its no-op value.
    ``name`` and ``expected_accuracy`` are in the headline, not here.

    Args:
        recipe: the run's ``Recipe``.

    Returns:
        (used, rest): field names, in the recipe's field order.
    """
    used = list(ALWAYS) + list(BY_OPTIMIZER.get(recipe.optimizer, ()))
    used += BY_SCHEDULER.get(recipe.scheduler, ())
    used += [name for name, idle in WHEN_SET if getattr(recipe, name) != idle]
    if recipe.tta != "none":
        used.append("tta_fraction")
    if recipe.lr_find:
        used.append("lr_find_iters")
    if recipe.model.startswith("speedrun"):
        used += ["whiten_images", "whiten_bias_epochs"]
    names = [f.name for f in dataclasses.fields(recipe)]
    rest = [n for n in names if n not in used and n not in ("name", "expected_accuracy")]
    return [n for n in names if n in used], rest


def flag(name: str) -> str:
    """A recipe field as the flag that sets it: ``batch_size`` -> ``--batch-size``.

    Args:
        name: a recipe field name.

    Returns:
        Its flag.
    """
    return "--" + name.replace("_", "-")


def value(value) -> str:
    """A recipe value for people: on/off, 0.0125, 10,000, 1e-06.

    Args:
        value: a recipe field's value (bool, int, float, str, tuple or None).

    Returns:
        The value as text.
    """
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return number(value)
    if isinstance(value, float):
        return f"{value:g}"
    return "\u2014" if value is None else str(value)
