"""Shared fixtures: a private array cache, tiny synthetic sources and the real archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

# Without a GPU the Triton kernels run under the interpreter; it must be chosen before the
# first kernel is defined.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

from fastcifar.data import CLASSES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = Path(
    os.environ.get("FASTCIFAR_TEST_DATA", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test (and every CLI it starts) uses one fresh cache directory."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("FASTCIFAR_CACHE")
    os.environ["FASTCIFAR_CACHE"] = str(cache)
    os.environ.pop("FASTCIFAR_DATA", None)
    yield cache
    if old is None:
        os.environ.pop("FASTCIFAR_CACHE", None)
    else:
        os.environ["FASTCIFAR_CACHE"] = old


@pytest.fixture(scope="session")
def real_archive() -> Path:
    if not REAL_ARCHIVE.exists():
        pytest.skip(
            f"the CIFAR-10 JPEG archive is missing ({REAL_ARCHIVE}); set FASTCIFAR_TEST_DATA"
        )
    return REAL_ARCHIVE


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory) -> Path:
    """An image-folder tree of 4 random images per class and split (40 + 40), shared by
    the tests that need a run's data but not its accuracy."""
    root = tmp_path_factory.mktemp("tiny") / "tree"
    make_tree(root, per_class=4)
    return root


def read_metrics(run: Path) -> list[dict]:
    """A run directory's metrics.jsonl, one dict per epoch."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def make_tree(root: Path, per_class: int = 2, suffix: str = ".png", seed: int = 0) -> dict:
    """An image-folder tree of random 32x32 RGB images; returns {split: (images, labels)}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}{suffix}")
                images.append(img)
                labels.append(label)
        out[split] = (np.stack(images), np.array(labels))
    return out


def make_tar(tree_root: Path, target: Path, arcname: str = "cifar") -> Path:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(tree_root, arcname=arcname)
    return target


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: the default action,
    so Python installs its KeyboardInterrupt handler. A test run started in the background
    of a non-interactive shell inherits SIGINT ignored, and Python leaves an ignored SIGINT
    ignored: the child would never see the test's Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_train(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m fastcifar.train ARGS`` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "fastcifar.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
