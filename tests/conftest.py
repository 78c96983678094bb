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

# pytest-xdist runs one worker a core (-n auto): each worker's torch, and every command
# line it starts, gets its share of the cores' threads instead of all of them, so that the
# workers' OpenMP pools do not spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))

# Without a GPU the Triton kernels run under the interpreter; it must be chosen before the
# first kernel is defined.
try:
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

from fastcifar.data import CLASSES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = Path(
    os.environ.get("FASTCIFAR_TEST_DATA", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
)


# the kernel test modules that ``--stack-sample`` samples (tests/kernel_helpers.py)
KERNEL_TEST_MODULES = ("test_conv.py", "test_gpu_tiles.py", "test_dwsep.py", "test_conv_bn.py")


def pytest_addoption(parser):
    parser.addoption(
        "--stack-sample",
        action="store_true",
        help="in the kernel test modules, run a sample that covers every kernel family, "
        "window size, dtype and layout (the second torch/triton stack in .ci/run)",
    )


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--stack-sample"):
        return
    from tests.kernel_helpers import stack_sample

    kernel = [i for i in items if i.path.name in KERNEL_TEST_MODULES]
    kept = set(stack_sample(kernel))
    dropped = [i for i in kernel if i not in kept]
    items[:] = [i for i in items if i not in dropped]
    config.hook.pytest_deselected(items=dropped)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test (and every CLI it starts) uses one fresh cache directory, shared by the
    pytest-xdist workers of one run (the cache's writes are atomic), so that the real
    archive's 60,000 JPEGs are decoded once a run, not once a worker."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp is <run>/popen-gwN: share <run>
        base = base.parent
    cache = base / "cache"
    cache.mkdir(exist_ok=True)
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


def make_tree(
    root: Path, per_class: int = 2, suffix: str = ".png", seed: int = 0, signal: float = 0.0
) -> dict:
    """An image-folder tree of random 32x32 RGB images; returns {split: (images, labels)}.
    ``signal`` (0 to 1): how much of each image is its class's own colour pattern rather
    than noise (0: noise only; 0.5: a model learns the classes within a few steps)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(1234).integers(0, 256, (len(CLASSES), 4, 4, 3))
    patterns = np.kron(patterns, np.ones((8, 8, 1)))  # 4x4 blocks of 8x8 pixels
    out = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                if signal:
                    img = ((1 - signal) * img + signal * patterns[label]).astype(np.uint8)
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


def run_train(
    *args: str, timeout: float = 600, subprocess_: bool = False, module: str = "fastcifar.train"
) -> subprocess.CompletedProcess:
    """``python -m fastcifar.train ARGS`` as a user runs it: its exit code, standard output
    and standard error.

    By default in this process: the command's ``main`` under ``errors.run_cli``, the exit
    code argparse or the command returns, both streams captured. That is the whole command
    but for the interpreter's start-up and ``import torch`` (several seconds a run), so the
    tests whose subject is the process boundary itself (exit through a signal, a lock a
    process holds, what the console script or the interpreter prints before ``main``) pass
    ``subprocess_=True`` and get a real child process (``timeout`` applies to it alone).
    ``module`` names another command (``fastcifar.evaluate``)."""
    if subprocess_:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    import contextlib
    import importlib
    import io

    from fastcifar.errors import run_cli

    main = importlib.import_module(module).main
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run_cli(main, list(args))
            except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())
