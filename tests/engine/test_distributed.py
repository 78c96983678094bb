"""Data-parallel training under torchrun (gloo on the CPU): sharded loaders, the loss per
step against one process, rank 0's run directory, kill and resume, the world-size check."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastcifar.data.gpu_loader import GpuLoader
from fastcifar.data.loaders import AlbumentationsLoader, LoaderConfig
from fastcifar.engine.distributed import World, per_rank_batch
from fastcifar.errors import FastCifarError
from tests.conftest import ROOT, run_train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), np.arange(n)


@pytest.mark.parametrize("drop_last", [True, False])
def test_shards_are_disjoint_and_cover_the_epoch(drop_last):
    images, labels = _images(43)  # 43 = 2 global batches of 16 + 11
    seen = []
    for rank in (0, 1):
        config = LoaderConfig(
            "flip_translate",
            (0, 0, 0),
            (1, 1, 1),
            batch_size=8,
            drop_last=drop_last,
            seed=3,
            rank=rank,
            world_size=2,
        )
        loader = GpuLoader(images, labels, config)
        loader.set_epoch(1)
        assert len(loader) == (2 if drop_last else 3)
        sizes = [len(y) for _, y in loader]
        assert loader.last_step_size() == sizes[-1]  # the shape the compile warm-up adds
        seen.append([int(v) for _, y in loader for v in y])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0] + seen[1]) == (32 if drop_last else 43)  # only drop_last drops
    assert sorted(len(s) for s in seen) == ([16, 16] if drop_last else [21, 22])


def test_gpu_loader_ranks_see_exactly_the_single_process_batches():
    images, labels = _images(64)
    config = LoaderConfig(
        "alternating_flip_translate_jitter", (0.5,) * 3, (0.25,) * 3, batch_size=16, seed=2
    )
    whole = GpuLoader(images, labels, config)
    parts = []
    for rank in (0, 1):
        shard = dataclasses.replace(config, batch_size=8, rank=rank, world_size=2)
        parts.append(list(GpuLoader(images, labels, shard)))
    for step, (x, y) in enumerate(whole):
        torch.testing.assert_close(torch.cat([parts[0][step][0], parts[1][step][0]]), x)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)


def test_albumentations_loader_shards_by_rank():
    images, labels = _images(40)
    seen = []
    for rank in (0, 1):
        config = LoaderConfig(
            "flip_translate",
            (0.5,) * 3,
            (0.25,) * 3,
            batch_size=5,
            workers=0,
            seed=1,
            rank=rank,
            world_size=2,
        )
        loader = AlbumentationsLoader(images, labels, config)
        seen.append([int(v) for _, y in loader for v in y])
    assert sorted(seen[0] + seen[1]) == list(range(40)) and len(seen[0]) == 20


def test_global_batch_must_divide_among_ranks():
    assert per_rank_batch(512, World(0, 2)) == 256
    with pytest.raises(FastCifarError, match="multiple of 3"):
        per_rank_batch(512, World(0, 3))


def _kill_all(marker: str) -> None:
    """SIGKILL every process whose command line contains ``marker``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker in cmdline and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already


def _torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TORCHRUN, "-m", "fastcifar.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


COMMON = (
    "--train-subset",
    "256",
    "--test-subset",
    "50",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--loader",
    "gpu",
    "--augmentation",
    "flip_translate",
    "--no-evaluate",
)


@pytest.mark.slow
def test_two_processes_match_one_process_step_by_step(real_archive, tmp_path):
    # GroupNorm (resnet18_ln) makes a step independent of how the batch is split, so the
    # two-process loss per step equals the one-process loss (BatchNorm models differ by
    # their per-rank statistics unless --sync-bn, which is CUDA-only)
    # 4 steps of 32 (the first 128 of COMMON's 256 images)
    args = (
        "--recipe",
        "resnet18_ln",
        "--data",
        str(real_archive),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        *COMMON,
        "--train-subset",
        "128",
    )
    one = run_train(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(*args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "losses.json").read_text())
    b = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(b, a, rtol=2e-5)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["run"]["world_size"] == 2
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    assert two.stdout.count("train: recipe") == 1  # rank 0 alone prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one run dir


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_uninterrupted_metrics(real_archive, tmp_path):
    args = (
        "--recipe",
        "s7",
        "--data",
        str(real_archive),
        "--epochs",
        "3",
        "--batch-size",
        "64",
        *COMMON,
    )
    full = _torchrun(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*TORCHRUN, "-m", "fastcifar.train", *args, "--out", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "metrics.jsonl").exists():
        time.sleep(0.2)
    _kill_all(str(killed))  # torchrun and both ranks (in sessions of their own), mid-epoch 2
    proc.wait()
    assert (killed / "last.pt").exists() and not (killed / "summary.json").exists()
    single = run_train("--resume", str(killed))
    assert single.returncode == 2 and "torchrun --standalone --nproc_per_node 2" in single.stderr
    resumed = _torchrun("--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    got = [json.loads(line) for line in (killed / "metrics.jsonl").open()]
    assert len(got) == 3
    for w, g in zip(want, got, strict=True):
        assert g["test_acc"] == w["test_acc"] and g["train_acc"] == w["train_acc"]
        assert g["lr"] == w["lr"]
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)


def test_ctrl_c_under_torchrun_names_the_command_that_resumes_it(tmp_path, monkeypatch):
    from fastcifar import train
    from fastcifar.engine.distributed import World
    from fastcifar.recipes import get_recipe

    run = train._Run(tmp_path, get_recipe("s7"), None, True, None)
    said = train._interrupted(run, 2, World(rank=0, size=2))
    assert said.endswith(
        f"  torchrun --standalone --nproc_per_node 2 -m fastcifar.train --resume {tmp_path}"
    )
    # Ctrl-C reaches every rank; the others end quietly with 130, rank 0 says what was kept
    from fastcifar.engine import distributed

    monkeypatch.setattr(distributed, "init_from_env", lambda device: World(1, 2, 1))
    monkeypatch.setattr(distributed, "shutdown", lambda: None)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_train", interrupted)
    monkeypatch.setattr(train.sys, "stdout", train.sys.stdout)  # main() points rank 1's away
    assert train.main(["--out", str(tmp_path / "r")]) == 130
