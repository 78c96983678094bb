"""The floor of a whole speed run: every training step, the whitening and the final
test-time augmentation at their lower bounds on a GPU, next to the published time of the
method the recipe follows.

A run is ``optim.total_steps`` training steps at the recipe's batch (the count of one
step, ``count.count_step``), the whitening's initialisation once (its eager count on
``whiten_images`` images) and the TTA evaluation of the 10,000 test images: one
inference forward per view (``tta.tta_views``: 6 for ``flip_translate``), every image
once un-augmented and the least confident ``tta_fraction`` of them with all views, as
``tta.tta_logits`` runs it (forward counted eagerly on every path: the record compiles
it too, so this is an upper bound on that part's floor). Per-epoch evaluation is outside
the records' timed span and so outside this floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastcifar.engine.optim import total_steps
from fastcifar.roofline.count import count_call
from fastcifar.roofline.gpus import Gpu, lower_bound_s, sum_lower_bound_s
from fastcifar.roofline.ledger import StepCount, StepSetup
from fastcifar.roofline.result import steps_per_epoch

__all__ = ["RECORDS", "Record", "whole_run"]

CIFAR10_TEST = 10_000
VIEWS = {"none": 1, "flip": 2, "flip_translate": 6}


@dataclass(frozen=True)
class Record:
    """A published time to 94 % on CIFAR-10 (``seconds``, on ``gpu``) and where it is
    written."""

    method: str
    seconds: float
    gpu: str
    source: str


RECORDS: dict[str, Record] = {
    "airbench94_muon": Record(
        "airbench94_muon",
        2.59,
        "a100",
        "KellerJordan/cifar10-airbench README (airbench94_muon.py, NVIDIA A100)",
    ),
    "hiverge": Record(
        "Hiverge",
        1.978,
        "a100",
        "fulcrumresearch/cifar-10-speedrun README: the Hiverge method under its harness, "
        "200 trials, A100-SXM4, 2026-07-06 (about 2.0 s as published by Hiverge)",
    ),
    "record_2026": Record(
        "2026 record (progressive resolution)",
        1.828,
        "a100",
        "fulcrumresearch/cifar-10-speedrun README: e1, 200 trials, A100-SXM4, 2026-07-06",
    ),
}
# the method each speed-run recipe reproduces (the 2026 record's recipe is issue 31's)
RECIPE_RECORD = {"speedrun94": "airbench94_muon", "speedrun94_fast": "hiverge"}


def _seconds(count: StepCount, gpu: Gpu) -> float:
    return sum_lower_bound_s(((x.flops, x.bytes) for x in count.layers), gpu)


def _by_kind(count: StepCount, gpu: Gpu, times: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for x in count.layers:
        out[x.kind] = out.get(x.kind, 0.0) + times * lower_bound_s(x.flops, x.bytes, gpu)
    return out


def whole_run(recipe, setup: StepSetup, step: StepCount, gpu: Gpu) -> dict:
    """The floor of a whole run of ``recipe`` on ``gpu`` along ``step``'s path.

    Returns a dict: seconds of the training steps, the whitening and the TTA and their
    sum; the training steps' seconds by kind; the record of the method the recipe
    follows, when there is one, and the fraction of the floor it reaches
    (floor / record time)."""
    spe = steps_per_epoch(setup.batch_size, recipe.drop_last)
    steps = total_steps(recipe, spe)
    train_s = steps * _seconds(step, gpu)
    whiten_s = 0.0
    if hasattr(setup.model, "init_whitening") and recipe.whiten_images:
        n, stats = recipe.whiten_images, (0.5,) * 3  # statistics' values do not matter

        def whiten_init(model):
            model.init_whitening(torch.zeros(n, 32, 32, 3, dtype=torch.uint8), stats, stats)

        whiten = count_call(setup, whiten_init, "whiten")
        whiten_s = _seconds(whiten, gpu)
    eval_batch = max(recipe.batch_size, 256)

    def forward(model):
        model.eval()
        x, _ = setup.example(eval_batch)
        model(x)

    infer = count_call(setup, forward, "inference")
    views = VIEWS[recipe.tta]
    uncertain = (
        CIFAR10_TEST if recipe.tta_fraction >= 1 else math.ceil(recipe.tta_fraction * CIFAR10_TEST)
    )
    images = CIFAR10_TEST * (views if recipe.tta_fraction >= 1 else 1)
    images += 0 if recipe.tta_fraction >= 1 else uncertain * views
    tta_s = _seconds(infer, gpu) * images / eval_batch
    total = train_s + whiten_s + tta_s
    out = {
        "recipe": recipe.name,
        "path": step.path,
        "gpu": gpu.key,
        "steps": steps,
        "batch_size": setup.batch_size,
        "train_s": train_s,
        "whiten_s": whiten_s,
        "tta_s": tta_s,
        "tta_forward_images": images,
        "floor_s": total,
        "train_by_kind_s": _by_kind(step, gpu, steps),
    }
    record = RECORDS.get(RECIPE_RECORD.get(recipe.name, ""))
    if record is not None:
        out.update(
            record=record.method,
            record_s=record.seconds,
            record_source=record.source,
            fraction_of_floor=total / record.seconds,
        )
    return out
