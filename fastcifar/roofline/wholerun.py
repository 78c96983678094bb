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

__all__ = ["RECIPE_RECORDS", "RECORDS", "SUSPECT", "Record", "record_floors", "whole_run"]

CIFAR10_TEST = 10_000
VIEWS = {"none": 1, "flip": 2, "flip_translate": 6}


@dataclass(frozen=True)
class Record:
    """A published time to 94 % on CIFAR-10.

    Attributes:
        method: the method's name.
        seconds: the published time, seconds.
        gpu: a key of ``fastcifar.roofline.gpus.GPUS``.
        source: where it is written.
    """

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
# the published times of the method each speed-run recipe reproduces
RECIPE_RECORDS = {
    "speedrun94": ("airbench94_muon",),
    "speedrun94_fast": ("hiverge",),
    "speedrun94_progressive": ("record_2026",),
}
# the GPUs a record's "A100" may be: the records do not say which memory it had
RECORD_GPUS = {"a100": ("a100", "a100-40gb")}
# a floor above this fraction of a measured time is suspect: real runs reach 60-80 % of
# their roofline (a floor cannot be above the time it bounds)
SUSPECT = 0.8


def _seconds(count: StepCount, gpu: Gpu) -> float:
    return sum_lower_bound_s(((x.flops, x.bytes) for x in count.layers), gpu)


def _by_kind(count: StepCount, gpu: Gpu, times: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for x in count.layers:
        out[x.kind] = out.get(x.kind, 0.0) + times * lower_bound_s(x.flops, x.bytes, gpu)
    return out


def _whitening(recipe, setup: StepSetup) -> StepCount | None:
    """The eager count of the whitening's initialisation on ``recipe.whiten_images``
    images, or None (a model without one)."""
    if not (hasattr(setup.model, "init_whitening") and recipe.whiten_images):
        return None
    n, stats = recipe.whiten_images, (0.5,) * 3  # statistics' values do not matter

    def whiten_init(model):
        model.init_whitening(torch.zeros(n, 32, 32, 3, dtype=torch.uint8), stats, stats)

    return count_call(setup, whiten_init, "whiten")


def _tta(recipe, setup: StepSetup) -> tuple[StepCount, int, int]:
    """(one inference forward's count, its batch, the images the final TTA forwards):
    every test image once un-augmented and the least confident ``tta_fraction`` of them
    in all the views (all of them in all views when the fraction is 1)."""
    eval_batch = max(recipe.batch_size, 256)

    def forward(model):
        model.eval()
        x, _ = setup.example(eval_batch)
        model(x)

    infer = count_call(setup, forward, "inference")
    views = VIEWS[recipe.tta]
    if recipe.tta_fraction >= 1:
        return infer, eval_batch, CIFAR10_TEST * views
    return infer, eval_batch, CIFAR10_TEST + math.ceil(recipe.tta_fraction * CIFAR10_TEST) * views


def whole_run(
    recipe,
    setup: StepSetup,
    step: StepCount,
    gpu: Gpu,
    baseline: StepCount | None = None,
    maxpool_decomposition: bool = True,
) -> dict:
    """The floor of a whole run of ``recipe`` on ``gpu`` along ``step``'s path.

    A recipe whose resolution changes by epoch (``res_schedule``) has its steps' floor
    scaled by its run's FLOPs against the same steps at 32 px
    (``progressive.run_flops``): an approximation (bytes scale with the pixels as the
    convolutions' FLOPs do, the loss and optimizer do not).

    Returns a dict: seconds of the training steps, the whitening and the TTA and their
    sum; the training steps' seconds by kind; torch's version and whether the max-pool
    backward was decomposed (``maxpool_decomposition``); and ``records``
    (``record_floors``: each published time of the method the recipe follows against
    this floor on each GPU it may have run on, flagged when suspect, with the layers
    carrying the most floor above ``baseline``'s).

    Args:
        recipe: the recipe.
        setup: its step's setup.
        step: the step's count on this path.
        gpu: the GPU modelled.
        baseline: another path's count, the excess layers' reference, or None.
        maxpool_decomposition: as ``compiled_count``'s.

    Returns:
        The dict.
    """
    spe = steps_per_epoch(setup.batch_size, recipe.drop_last)
    steps = total_steps(recipe, spe)
    scale = 1.0
    if getattr(recipe, "res_schedule", None):
        from fastcifar.roofline.progressive import run_flops

        scale = run_flops(recipe)["fraction_of_32px"]
    train_s = steps * _seconds(step, gpu) * scale
    whiten = _whitening(recipe, setup)
    whiten_s = _seconds(whiten, gpu) if whiten is not None else 0.0
    infer, eval_batch, images = _tta(recipe, setup)
    tta_s = _seconds(infer, gpu) * images / eval_batch
    total = train_s + whiten_s + tta_s
    # what the floor is made of, for the same floor on another GPU: (count, times)
    parts = [(step, steps * scale), (infer, images / eval_batch)]
    parts += [(whiten, 1)] if whiten else []
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
        "train_by_kind_s": _by_kind(step, gpu, steps * scale),
        "resolution_scale": scale,
        "torch": torch.__version__,
        "lowered_for": step.lowered_for or None,
        "maxpool_backward": _maxpool_backward(step.path, maxpool_decomposition),
        "records": record_floors(recipe, parts, baseline),
    }
    return out


def _maxpool_backward(path: str, decomposed: bool) -> str:
    if path == "eager":
        return "ATen's kernel (eager)"
    if decomposed:
        return "Inductor's decomposition (zero-filled float32 gradient + scatter-add)"
    return "one kernel (Inductor's decomposition taken out)"


def _floor_on(parts: list[tuple[StepCount, float]], gpu: Gpu) -> float:
    """A whole run's floor on ``gpu`` from its parts: (count, how many times it runs)."""
    return sum(times * _seconds(count, gpu) for count, times in parts)


def _excess_layers(step: StepCount, baseline: StepCount | None, gpu: Gpu, top: int = 3):
    """The ``top`` layers whose floor on ``gpu`` is most above ``baseline``'s same layer
    (the costliest layers when there is no baseline): [(name, kind, microseconds a
    step)]."""
    base = {}
    if baseline is not None:
        for x in baseline.layers:
            base[x.name] = base.get(x.name, 0.0) + lower_bound_s(x.flops, x.bytes, gpu)
    mine: dict[tuple[str, str], float] = {}
    for x in step.layers:
        key = (x.name, x.kind)
        mine[key] = mine.get(key, 0.0) + lower_bound_s(x.flops, x.bytes, gpu)
    by_name: dict[str, float] = {}
    for (name, _), s in mine.items():
        by_name[name] = by_name.get(name, 0.0) + s
    kind_of = {name: kind for (name, kind), _ in sorted(mine.items(), key=lambda kv: kv[1])}
    excess = {name: s - base.get(name, 0.0) for name, s in by_name.items()}
    ranked = sorted(excess.items(), key=lambda kv: -kv[1])[:top]
    return [(name, kind_of[name], round(s * 1e6, 1)) for name, s in ranked if s > 0]


def record_floors(recipe, parts: list[tuple[StepCount, float]], baseline=None) -> list[dict]:
    """Each published time of the method ``recipe`` follows (``RECIPE_RECORDS``) against
    the whole-run floor of ``parts`` (the training step's count first: (count, times
    run)) on each GPU the record may have used
    (``RECORD_GPUS``: an "A100" is 40GB or 80GB). A floor above ``SUSPECT`` of the time
    on any of them is ``suspect`` (a real run reaches 60-80 % of its floor), with
    ``excess_layers``: the layers carrying the most floor above ``baseline``'s.

    Args:
        recipe: the recipe.
        parts: (count, times run) pairs, the training step's first.
        baseline: another path's training-step count, or None.

    Returns:
        One dict per record: its time, the floor and their ratio on each GPU it may have
        run on, ``suspect`` and ``excess_layers``.
    """
    from fastcifar.roofline.gpus import get_gpu

    out = []
    for key in RECIPE_RECORDS.get(recipe.name, ()):
        record = RECORDS[key]
        gpus = [get_gpu(k) for k in RECORD_GPUS.get(record.gpu, (record.gpu,))]
        floors = {g.key: _floor_on(parts, g) for g in gpus}
        fractions = {k: f / record.seconds for k, f in floors.items()}
        suspect = max(fractions.values()) > SUSPECT
        out.append(
            {
                "record": record.method,
                "record_s": record.seconds,
                "source": record.source,
                "floor_s": floors,
                "floor_over_record": fractions,
                "suspect": suspect,
                "excess_layers": _excess_layers(parts[0][0], baseline, gpus[-1]) if suspect else [],
            }
        )
    return out
