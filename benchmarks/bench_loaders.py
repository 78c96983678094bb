"""Loader throughput per backend and recipe: the loader alone, and inside a training step.

Images per second in ``extra_info['images_per_s']``. CPU-sized by default (512 images for
the loader alone; the in-step benchmark on s7 and speedrun94 only); full size with
``scripts/bench.sh --full``, every recipe; 64 images, no warm-up, with ``--smoke`` (CI,
``sizes``). Goals on an H100 or
H200 (issue 4): DALI at least 100,000 images/s with the heaviest recipe, and under 5 % of
the step time of every recipe (compare ``loader_alone`` with ``in_step``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sizes import FULL, SMOKE, smoke_sample

from fastcifar.data import AUGMENTATIONS, LoaderConfig
from fastcifar.data.dali_loader import DALI_AUGMENTATIONS, dali_available
from fastcifar.data.factory import make_train_loader
from fastcifar.data.gpu_loader import GPU_AUGMENTATIONS
from fastcifar.engine.build import build_trainer
from fastcifar.engine.trainer import RunOptions
from fastcifar.recipes import RECIPES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DATA = os.environ.get(
    "FASTCIFAR_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz")
)


def _supported(backend: str, aug: str) -> bool:
    if backend == "gpu":
        return aug in GPU_AUGMENTATIONS
    if backend == "dali":
        return dali_available() and aug in DALI_AUGMENTATIONS
    return aug in AUGMENTATIONS  # albumentations: the alternating flip is the gpu loader's


def _recipe_for(backend: str, recipe_name: str):
    """The recipe, or a skip naming why ``backend`` cannot run it."""
    recipe = RECIPES[recipe_name]
    if not _supported(backend, recipe.augmentation):
        pytest.skip(f"{backend} does not implement {recipe.augmentation!r} (or is not installed)")
    return recipe


def _make(backend: str, aug: str, images, labels, batch: int):
    config = LoaderConfig(
        aug, MEAN, STD, batch, DEVICE, channels_last=True, workers=os.cpu_count() or 2
    )
    return make_train_loader(backend, images, labels, config)  # the path training takes


@pytest.mark.parametrize("backend", ["albumentations", "dali", "gpu"])
@pytest.mark.parametrize("recipe_name", smoke_sample(RECIPES, key=lambda r: r.augmentation))
def test_loader_alone(benchmark, backend, recipe_name):
    recipe = _recipe_for(backend, recipe_name)
    n = 50_000 if FULL else 64 if SMOKE else 512
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    loader = _make(backend, recipe.augmentation, images, rng.integers(0, 10, n), min(n, 512))

    def epoch():
        for _batch in loader:
            pass
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    if not SMOKE:
        epoch()  # warm-up: worker start, pipeline build
    benchmark.pedantic(epoch, rounds=3 if FULL else 1, iterations=1)
    benchmark.extra_info.update(
        backend=backend,
        recipe=recipe_name,
        images=n,
        device=str(DEVICE),
        images_per_s=n / benchmark.stats.stats.median,
        gb_per_s=n * 3 * 32 * 32 * 4 / benchmark.stats.stats.median / 1e9,  # float32 written
    )


@pytest.mark.parametrize("backend", ["albumentations", "dali", "gpu"])
@pytest.mark.parametrize("recipe_name", list(RECIPES) if FULL else ["s7", "speedrun94"])
def test_in_step(benchmark, tmp_path, backend, recipe_name):
    recipe = _recipe_for(backend, recipe_name)
    if not Path(DATA).exists():
        pytest.skip(f"CIFAR-10 not found at {DATA}: set FASTCIFAR_DATA")
    if not FULL:
        recipe = recipe.replace(batch_size=16 if SMOKE else 64)
    opts = RunOptions(
        data=DATA,
        train_subset=None if FULL else 32 if SMOKE else 128,
        test_subset=20 if SMOKE else 100,
        amp=True,
        channels_last=True,
        loader=backend,
    )
    t = build_trainer(recipe, opts, tmp_path)
    if not SMOKE:
        t.train_epoch(0)
    start = time.perf_counter()
    benchmark.pedantic(lambda: t.train_epoch(0), rounds=2 if FULL else 1, iterations=1)
    images = len(t.components.train_loader.dataset)
    benchmark.extra_info.update(
        backend=backend,
        recipe=recipe_name,
        images=images,
        device=str(DEVICE),
        images_per_s=images / benchmark.stats.stats.median,
        wall_s=time.perf_counter() - start,
    )
