"""fastcifar.tune on a real local Ray (no mocks of Ray): an ASHA study of s7 whose best
command reproduces its trial alone, a worker killed mid-trial and retried from its
checkpoint (Optuna's searcher, a YAML space), Ctrl-C and --resume, and bad input refused
in one line before Ray starts."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_tree, sigint_default

pytest.importorskip("ray.tune", reason="fastcifar[tune] is not installed")

# one CPU thread a trial, as Ray gives a 1-CPU trial (OMP_NUM_THREADS=1): the same
# arithmetic in the trial and in its command run alone
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
RUN = ["--device", "cpu", "--workers", "0", "--no-compile", "--no-amp"]


@pytest.fixture(scope="module")
def learnable_tree(tmp_path_factory) -> Path:
    """260 + 260 images whose classes are 80 % a colour pattern of their own: s7 learns
    them within three epochs of 128 images at a batch of 16, so trials differ by epoch 2."""
    root = tmp_path_factory.mktemp("learnable") / "tree"
    make_tree(root, per_class=26, signal=0.8)
    return root


def tune(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastcifar.tune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=ENV,
    )


def start_tune(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastcifar.tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=ENV,
        preexec_fn=sigint_default,
    )


def study_flags(tree: Path, out: Path, more: str) -> list[str]:
    """s7 for three epochs of 128 images at a batch of 16 (50 test images), then ``more``
    (split at spaces)."""
    s7 = "--recipe s7 --epochs 3 --train-subset 128 --test-subset 50 --batch-size 16"
    return [*s7.split(), "--out", str(out), "--data", str(tree), *RUN, *more.split()]


def test_an_asha_study_stops_trials_early_and_its_best_command_reproduces_it(
    learnable_tree, tmp_path
):
    out = tmp_path / "study"
    asha = "--samples 4 --grace-period 1 --reduction-factor 2"
    r = tune(*study_flags(learnable_tree, out, f"--space lr=loguniform(0.01,1.0) {asha}"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = json.loads((out / "tune.json").read_text())
    trials = study["trials"]
    assert len(trials) == 4 and len({t["config"]["lr"] for t in trials}) == 4
    stopped = [t for t in trials if t["stopped"].startswith("stopped by ASHA")]
    assert stopped, [t["stopped"] for t in trials]
    assert all(t["epochs_run"] < 3 for t in stopped)
    assert all(len(t["test_acc"]) == t["epochs_run"] for t in trials)
    # every trial is a normal run directory under the study's folder, its log beside it
    for t in trials:
        run_dir = out / "trials" / f"trial-{t['trial']}"
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [row["test_acc"] for row in rows] == t["test_acc"]
        assert (out / "trials" / f"trial-{t['trial']}.log").exists()
    md = (out / "tune.md").read_text()
    assert md.count("| stopped by ASHA after epoch") == len(stopped)
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the best configuration as a ready command, which trains the same run alone
    best = study["best"]
    assert best["stopped"] == "completed" and best["command"] in r.stdout
    alone = tmp_path / "alone"
    argv = shlex.split(best["command"])[1:] + ["--out", str(alone), "--no-evaluate"]
    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((alone / "summary.json").read_text())
    assert summary["final_test_acc"] == pytest.approx(best["final_acc"], abs=1e-9)


def _first_epoch_run(out: Path, timeout: float = 300) -> Path:
    """The run directory of the first trial that has finished an epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for metrics in (out / "trials").glob("*/metrics.jsonl"):
            if metrics.read_text().strip():
                return metrics.parent
        time.sleep(0.2)
    raise AssertionError(f"no trial finished an epoch in {timeout} s")


def test_a_killed_worker_is_retried_from_its_checkpoint(tiny_tree, tmp_path):
    """Optuna's searcher over a space from a YAML file, two trials; one trial's Ray worker
    is killed after its first epoch: Ray retries it in a new worker, which resumes from the
    checkpoint, and the study ends with both trials complete."""
    space = tmp_path / "space.yaml"
    space.write_text("lr: loguniform(0.05, 0.5)\nlabel_smoothing: {choice: [0.0, 0.1]}\n")
    out = tmp_path / "study"
    study = "--recipe s7 --epochs 4 --batch-size 16 --samples 2 --searcher optuna"
    flags = [*study.split(), "--scheduler", "fifo", "--space", str(space), "--out", str(out)]
    proc = start_tune(*flags, "--data", str(tiny_tree), *RUN)
    try:
        run_dir = _first_epoch_run(out)
        pid = json.loads((run_dir / "ray.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)  # the trial's Ray worker, mid-run
        output, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    study = json.loads((out / "tune.json").read_text())
    assert [t["stopped"] for t in study["trials"]] == ["completed", "completed"]
    for t in study["trials"]:
        assert 0.05 <= t["config"]["lr"] < 0.5 and t["config"]["label_smoothing"] in (0.0, 0.1)
    # retried in a new worker from its last epoch, not from the start: epochs once each
    assert json.loads((run_dir / "ray.json").read_text())["pid"] != pid
    assert "resume: " in (run_dir.parent / f"{run_dir.name}.log").read_text()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]


def test_ctrl_c_saves_the_study_and_resume_repeats_no_finished_trial(tiny_tree, tmp_path):
    out = tmp_path / "study"
    study = "--recipe s7 --epochs 3 --batch-size 16 --space lr=grid(0.1,0.2,0.3) --samples 1"
    proc = start_tune(
        *study.split(), "--scheduler", "fifo", "--out", str(out), "--data", str(tiny_tree), *RUN
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.rstrip().endswith(" finished"):  # one trial done, the third not yet
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert f"python -m fastcifar.tune --resume --out {out}" in rest
    finished = lines[-1].split()[2]  # "tune: trial ID finished"
    summary = out / "trials" / f"trial-{finished}" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    r = tune("--resume", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = json.loads((out / "tune.json").read_text())
    assert [t["stopped"] for t in study["trials"]] == ["completed"] * 3
    assert summary.stat().st_mtime_ns == stamp  # not trained again
    assert f"trial {finished} epoch" not in r.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "lrr=uniform(0.1,1)"], "'lrr' is not a recipe field: did you mean lr?"),
        (["--space", "lr=logunif(0.1,1)"], "is not a distribution"),
        (["--space", "label_smoothing=uniform(0.5,1.5)"], "out of range"),
        (["--space", "lr=uniform(0.1,1)", "--lr", "0.1"], "lr is both searched"),
        (["--space", "lr=grid(0.1,1)", "--searcher", "optuna"], "write grid(...) as choice"),
        (["--space", "lr=uniform(0.1,1)", "--address", "127.0.0.2:PORT"], "no Ray cluster"),
        (["--space", "lr=uniform(0.1,1)", "--samples", "0"], "--samples 0 is below 1"),
        (["--space", "lr=uniform(0.1,1)", "--cpus-per-trial", "512"], "the largest node"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
    out = tmp_path / "study"
    args = [a.replace("PORT", str(_closed_port())) for a in args]
    start = time.monotonic()
    r = tune("--recipe", "s7", "--out", str(out), *args, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and time.monotonic() - start < 30


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, capsys):
    from fastcifar.errors import run_cli
    from fastcifar.tune import main

    monkeypatch.setitem(sys.modules, "ray", None)
    code = run_cli(
        main, ["--recipe", "s7", "--space", "lr=uniform(0.1,1)", "--out", "/nonexistent"]
    )
    assert code == 2
    assert "pip install 'fastcifar[tune]'" in capsys.readouterr().err
