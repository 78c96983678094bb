"""One run per directory at a time (fastcifar.engine.runlock), with real processes: a second
training, a resume or an evaluation of a directory a live run holds is refused in one
line naming the holder; a killed run's directory is free at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastcifar.engine.runlock import RunLock
from fastcifar.errors import FastCifarError
from tests.conftest import ROOT, read_metrics, run_train, sigint_default

# takes the lock, then forks a child that inherits its descriptors and outlives it, as a
# DataLoader worker of a SIGKILLed run does for a moment
HOLD = (
    "import os, sys, time; from fastcifar.engine.runlock import RunLock; "
    "lock = RunLock(sys.argv[1]).acquire('x'); child = os.fork(); "
    "child or time.sleep(60); print('held', child, flush=True); time.sleep(60)"
)


def _train_args(tree: Path, out: Path, epochs: int) -> list[str]:
    return [
        "--data",
        str(tree),
        "--epochs",
        str(epochs),
        "--batch-size",
        "10",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-evaluate",
        "--out",
        str(out),
    ]


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, "the process ended first"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_held_directory_is_refused_naming_the_holder_and_freed_by_a_kill(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        word, child = holder.stdout.readline().split()
        assert word == "held"
        with pytest.raises(FastCifarError) as info:
            RunLock(tmp_path).acquire("wait for it to end")
        message = str(info.value)
        assert f"is in use by a live run (PID {holder.pid} on " in message
        assert "started 20" in message and message.endswith(": wait for it to end")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    try:
        # at once, though the forked child still holds the lock file open
        os.kill(int(child), 0)  # alive (raises if not)
        with RunLock(tmp_path).acquire("x") as lock:
            holder_info = json.loads(lock.path.read_text())
            assert holder_info["pid"] == os.getpid()
        RunLock(tmp_path).acquire("x").release()  # and released again
    finally:
        os.kill(int(child), signal.SIGKILL)


def test_a_second_training_into_a_live_runs_directory_is_refused(tiny_tree, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "fastcifar.train", *_train_args(tiny_tree, out, 40)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    try:
        lock = out / ".lock"
        _wait_for(lambda: lock.exists() and str(first.pid) in lock.read_text(), first)
        _wait_for(lambda: (out / "config.json").exists(), first)  # a --resume reads it first
        for argv in (_train_args(tiny_tree, out, 2), ["--resume", str(out)]):
            second = run_train(*argv)
            assert second.returncode == 2, second.stderr
            err = second.stderr.strip()
            assert len(err.splitlines()) == 1 and err.startswith("error: "), err
            assert f"in use by a live run (PID {first.pid} on" in err
        evaluated = subprocess.run(
            [sys.executable, "-m", "fastcifar.evaluate", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert evaluated.returncode == 2 and f"(PID {first.pid} on" in evaluated.stderr
        # the first run goes on untouched; it is stopped here (Ctrl-C) rather than waited
        # for, its files then checked whole
        _wait_for(lambda: (out / "metrics.jsonl").exists() and read_metrics(out), first)
        first.send_signal(signal.SIGINT)
        _, err_text = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err_text
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["epochs"] == 40  # the first run's own files, whole
    done = [row["epoch"] for row in read_metrics(out)]
    assert done == list(range(1, len(done) + 1)) and 1 <= len(done) < 40
    assert torch.load(out / "last.pt", weights_only=True)["state"]["epoch"] == len(done)
    RunLock(out).acquire("x").release()  # and the directory is free again


def test_sigint_says_what_was_kept_and_the_resume_command(tiny_tree, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastcifar.train", *_train_args(tiny_tree, out, 4)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    _wait_for(lambda: (out / "metrics.jsonl").exists() and read_metrics(out), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-2].startswith("interrupted in epoch ") and " of 4: epoch" in lines[-2]
    assert f" saved in {out / 'last.pt'}; resume with:" in lines[-2]
    assert lines[-1] == f"  python -m fastcifar.train --resume {out}"
    resumed = run_train("--resume", str(out), "--epochs", "4")  # the same run, at once
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_metrics(out)) == 4


def test_a_directory_that_cannot_be_written_is_one_line(tmp_path):
    with pytest.raises(FastCifarError, match="cannot lock .* the run directory must be writable"):
        RunLock(tmp_path / "missing").acquire("x")
