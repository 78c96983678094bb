"""What the progress line costs a training epoch: the same epoch with no progress lines
(``--progress-every 0``), with the default (one line every 30 s in a log) and with a line
after every step (``--progress-every`` 1e-9: the worst case, a host read-back of the
running loss and accuracy each step).

The training loop keeps each step's loss and the correct count on the device and reads
them back (``.item()``, ``engine.loggers.running_values``) only when a line is due, so the
default's cost is one read-back per line, not per step. On a CPU a read-back is no
device synchronisation; the CPU figure bounds the formatting and the reads, and a GPU run
(``--full``) measures the synchronisations themselves. Sizes as ``bench_epoch_throughput``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from sizes import FULL, SMOKE

from fastcifar.engine.build import build_trainer
from fastcifar.engine.trainer import RunOptions
from fastcifar.recipes import RECIPES

IMAGES, BATCH = (None, None) if FULL else (32, 16) if SMOKE else (512, 32)
DATA = os.environ.get(
    "FASTCIFAR_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz")
)
# seconds between progress lines: none, the default in a log, after every step
EVERY = {"none": 0.0, "default": 30.0, "every step": 1e-9}


@pytest.mark.parametrize("lines", list(EVERY))
def test_progress_lines(benchmark, tmp_path, lines):
    if not Path(DATA).exists():
        pytest.skip(f"CIFAR-10 not found at {DATA}: set FASTCIFAR_DATA")
    recipe = RECIPES["speedrun94"].replace(epochs=50)  # an epoch of the middle of a run
    if BATCH:
        recipe = recipe.replace(batch_size=BATCH)
    cuda = torch.cuda.is_available()
    options = RunOptions(
        data=DATA,
        train_subset=IMAGES,
        test_subset=20,
        workers=0,
        amp=cuda,
        compile=False,
        kernels="torch",
        loader="auto",
        progress_every=EVERY[lines],
    )
    trainer = build_trainer(recipe, options, tmp_path)
    trainer.train_epoch(0)  # untimed: first-call allocations
    epoch = iter(range(1, 10_000))
    result = benchmark.pedantic(
        lambda: trainer.train_epoch(next(epoch)), rounds=1 if SMOKE else 5, iterations=1
    )
    benchmark.extra_info.update(
        lines=lines,
        images=len(trainer.components.train_loader.dataset),
        images_per_s=result["images_per_s"],
        device=str(trainer.components.device),
    )
