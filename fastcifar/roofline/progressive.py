"""FLOPs of a whole training run whose resolution changes by epoch (``Recipe.res_schedule``),
against the same steps at 32 px: what the 2026 record's progressive resolution saves.

    python -m fastcifar.roofline.progressive [--recipe speedrun94_progressive] [--json F]

One training step (forward, summed cross-entropy, backward) of the recipe's model is
counted at each resolution with ``torch.utils.flop_counter.FlopCounterMode`` (the FLOPs of
convolutions and matrix products, 2 per multiply-add; elementwise work, BatchNorm and
pooling are not in it) on a batch of ``COUNT_BATCH`` images, scaled to the recipe's batch
(every counted operator is linear in the batch). Steps per epoch: the 50,000 training
images at the recipe's batch (``optim.total_steps``). The record's own figure: "a 24px step
does 0.56x the arithmetic of a 32px step, and a 28px step 0.77x" (fulcrumresearch/
cifar-10-speedrun README).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fastcifar.engine.optim import total_steps
from fastcifar.roofline.result import steps_per_epoch

__all__ = ["run_flops", "step_flops"]

COUNT_BATCH = 8  # images per counted step; the count is scaled to the recipe's batch
FULL = 32  # CIFAR-10's resolution


def step_flops(model_name: str, res: int, batch: int = COUNT_BATCH) -> int:
    """FLOPs of one training step of ``model_name`` on ``batch`` 32 px images downsampled
    to ``res`` px (float32, on the CPU: the count does not depend on the device).

    Args:
        model_name: a key of ``fastcifar.models.MODELS``.
        res: the resolution, pixels.
        batch: images a step.

    Returns:
        FLOPs (``torch.utils.flop_counter``'s count).
    """
    from fastcifar.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name).train()
    x = torch.randn(batch, 3, FULL, FULL)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        if res != FULL:
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        F.cross_entropy(model(x), y, reduction="sum").backward()
    return counter.get_total_flops()


def run_flops(recipe) -> dict:
    """FLOPs of every training step of ``recipe``'s run (FLOPs, at its batch), by
    resolution, and the same steps at 32 px.

    Returns a dict: steps, per resolution (px -> steps, FLOPs per step), the run's FLOPs,
    the 32 px run's and their ratio.

    Args:
        recipe: the recipe (its ``res_schedule``, epochs and batch).

    Returns:
        The dict.
    """
    spe = steps_per_epoch(recipe.batch_size, recipe.drop_last)
    steps = total_steps(recipe, spe)
    per_res: dict[int, dict] = {}
    for step in range(steps):
        res = recipe.resolution(step // spe) or FULL
        per_res.setdefault(res, {"steps": 0})["steps"] += 1
    scale = recipe.batch_size / COUNT_BATCH
    full = step_flops(recipe.model, FULL) * scale
    for res, row in per_res.items():
        row["flops_per_step"] = full if res == FULL else step_flops(recipe.model, res) * scale
        row["fraction_of_32px"] = row["flops_per_step"] / full
    total = sum(row["steps"] * row["flops_per_step"] for row in per_res.values())
    return {
        "recipe": recipe.name,
        "model": recipe.model,
        "batch_size": recipe.batch_size,
        "steps": steps,
        "by_resolution": dict(sorted(per_res.items())),
        "run_flops": total,
        "run_flops_at_32px": steps * full,
        "fraction_of_32px": total / (steps * full),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.roofline.progressive``: print a recipe's FLOPs by resolution and its
    run's fraction of the same run at 32 px.

    Args:
        argv: the command-line arguments; None reads ``sys.argv``.

    Returns:
        0.
    """
    from fastcifar.recipes import get_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="speedrun94_progressive")
    p.add_argument("--json", help="also write the result to this JSON file")
    args = p.parse_args(argv)
    out = run_flops(get_recipe(args.recipe))
    for res, row in out["by_resolution"].items():
        print(
            f"{res} px: {row['steps']} steps x {row['flops_per_step'] / 1e12:.3f} TFLOP "
            f"({row['fraction_of_32px']:.3f} of a 32 px step)"
        )
    print(
        f"{out['recipe']}: {out['steps']} steps, {out['run_flops'] / 1e12:.1f} TFLOP; the same "
        f"steps at 32 px {out['run_flops_at_32px'] / 1e12:.1f} TFLOP "
        f"({out['fraction_of_32px']:.3f})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
