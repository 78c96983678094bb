"""Epoch throughput for every recipe, the seeds' way and fastcifar's, on the same machine.

* ``seeds``: eager, float32, NCHW, PyTorch convolutions, the albumentations DataLoader.
* ``fastcifar``: --amp, channels_last, torch.compile, the measured kernel dispatch (on
  CUDA) and the GPU-resident loader where the recipe allows it (``auto`` choices of
  fastcifar.train).

Warm-up (compilation) is timed separately (``extra_info['warmup_s']``) from the
steady-state epochs the benchmark measures. Sizes (``sizes``): CPU-sized by default
(128 training images, one timed epoch after one untimed), the whole training set with
``scripts/bench.sh --full``, 32 images and no untimed epoch with ``--smoke`` (CI). On a
CPU-sized run torch.compile uses the ``aot_eager``
backend to keep CI short (recorded in ``extra_info['compile_backend']``); full runs use
inductor. GPU epochs are timed with CUDA events (the trainer synchronises).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from sizes import FULL, SMOKE, smoke_sample

from fastcifar.data.augment import AUGMENTATIONS
from fastcifar.engine.build import build_trainer
from fastcifar.engine.trainer import RunOptions
from fastcifar.recipes import RECIPES

# training images, test images and the largest batch per size (smoke: CI's "it runs")
IMAGES, TEST_IMAGES, MAX_BATCH = (
    (None, 100, None) if FULL else (32, 20, 16) if SMOKE else (128, 100, 64)
)
DATA = os.environ.get(
    "FASTCIFAR_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz")
)


def _options(config: str) -> RunOptions:
    cuda = torch.cuda.is_available()
    common = dict(
        data=DATA, train_subset=IMAGES, test_subset=TEST_IMAGES, workers=None if FULL else 2
    )
    if config == "seeds":
        return RunOptions(
            **common,
            amp=False,
            compile=False,
            channels_last=False,
            kernels="torch",
            loader="albumentations",
        )
    return RunOptions(
        **common,
        amp=True,
        compile=True,
        channels_last=True,
        kernels="auto",
        loader="auto",
        compile_backend="inductor" if FULL or cuda else "aot_eager",
    )


# CPU-sized (CI): the model zoo's _fast variants train the same networks as their reference
# recipes, so only the references run; --full measures every recipe
RECIPE_NAMES = smoke_sample(
    [n for n in RECIPES if FULL or not (n.endswith("_fast") and n != "speedrun94_fast")],
    key=lambda recipe: recipe.optimizer,
)


@pytest.mark.parametrize("config", ["seeds", "fastcifar"])
@pytest.mark.parametrize("recipe_name", RECIPE_NAMES)
def test_epoch(benchmark, tmp_path, recipe_name, config):
    if not Path(DATA).exists():
        pytest.skip(f"CIFAR-10 not found at {DATA}: set FASTCIFAR_DATA")
    recipe = RECIPES[recipe_name]
    if MAX_BATCH:
        recipe = recipe.replace(batch_size=min(recipe.batch_size, MAX_BATCH))
    opts = _options(config)
    if config == "seeds" and recipe.augmentation not in AUGMENTATIONS:
        # the seeds' way is the albumentations loader, which has no alternating flip (a
        # gpu-loader-only augmentation): the speed runs take the nearest it has
        recipe = recipe.replace(augmentation="flip_translate")
    t = build_trainer(recipe, opts, tmp_path)
    warmup = t.warm_up() if opts.compile else 0.0
    if not SMOKE:
        t.train_epoch(0)  # first epoch: loader start-up, remaining lazy initialisation
    benchmark.pedantic(lambda: t.train_epoch(0), rounds=3 if FULL else 1, iterations=1)
    images = len(t.components.train_loader.dataset)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        recipe=recipe_name,
        config=config,
        images=images,
        batch_size=recipe.batch_size,
        images_per_s=images / seconds,
        seconds_per_epoch_50k=50_000 / (images / seconds),
        warmup_s=warmup,
        device=str(t.components.device),
        amp=str(t.components.amp_dtype or "off"),
        channels_last=t.components.channels_last,
        compiled=t.forward.compiled is not None,
        compile_backend=opts.compile_backend if opts.compile else None,
        kernels=t.components.kernels,
        loader=t.components.loader_name,
    )
