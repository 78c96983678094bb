"""The train command: real runs and their run directory, resume after a kill, Ctrl-C, bad input
and its one-line errors, --help. The Trainer's own paths are in tests/engine/test_trainer.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastcifar.engine.rundir import write_config
from fastcifar.engine.trainer import RunOptions
from fastcifar.errors import run_cli
from fastcifar.recipes import RECIPES, get_recipe
from fastcifar.train import main
from tests.conftest import ROOT, make_tar, make_tree, read_metrics, run_train, sigint_default

METRIC_KEYS = {
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epoch_time_s",
    "images_per_s",
}


# ---------------------------------------------------------------- real runs


@pytest.mark.slow
def test_cli_trains_s7_on_real_data(real_archive, tmp_path):
    out = tmp_path / "run"
    r = run_train(
        "--data",
        str(real_archive),
        "--train-subset",
        "200",
        "--test-subset",
        "200",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--workers",
        "0",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "done: test accuracy" in r.stdout
    for name in ("config.json", "metrics.jsonl", "summary.json", "last.pt", "best.pt"):
        assert (out / name).exists(), name
    rows = read_metrics(out)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(set(row) == METRIC_KEYS for row in rows)
    assert rows[1]["lr"] > rows[0]["lr"]  # OneCycleLR really stepped (warming up)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "s7" and summary["train_images"] == 200
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["best_test_acc"] == max(row["test_acc"] for row in rows)
    assert "torch" in summary["versions"] and summary["device"].startswith("cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["name"] == "s7" and config["recipe"]["batch_size"] == 50
    assert config["run"]["data"] == str(real_archive.resolve())  # the resolved source
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(real_archive, tmp_path):
    args = [
        "--recipe",
        "c1c2c3c40",
        "--data",
        str(real_archive),
        "--train-subset",
        "300",
        "--test-subset",
        "100",
        "--epochs",
        "3",
        "--batch-size",
        "50",
        "--workers",
        "1",
        "--no-evaluate",
    ]
    straight = tmp_path / "straight"
    r = run_train(*args, "--out", str(straight))
    assert r.returncode == 0, r.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastcifar.train", *args, "--out", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and read_metrics(killed):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 2, without warning
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert len(read_metrics(killed)) == 1

    r = run_train("--resume", str(killed))
    assert r.returncode == 0, r.stderr
    assert "resume:" in r.stdout and "from epoch 2/3" in r.stdout
    a, b = read_metrics(straight), read_metrics(killed)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        assert x["train_acc"] == y["train_acc"] and x["test_acc"] == y["test_acc"]
        assert x["lr"] == y["lr"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["test_loss"] == pytest.approx(y["test_loss"], rel=1e-5)
    assert json.loads((killed / "summary.json").read_text())["epochs"] == 3
    r = run_train("--resume", str(killed))  # a finished run has nothing left to do
    assert r.returncode == 0 and "already finished" in r.stdout


def _reported_recipes() -> set[str]:
    """The recipes whose report the test below renders: the first with each model and the
    first with each augmentation (the report's figures depend on those two; the five
    `_fast` zoo recipes but the first differ from their references in numbers only)."""
    seen, out = set(), set()
    for name, recipe in RECIPES.items():
        new = {("model", recipe.model), ("augmentation", recipe.augmentation)} - seen
        if new:
            out.add(name)
            seen |= new
    return out


# every registered recipe, end to end: a new recipe cannot ship without training, nor a new
# model or augmentation without its report
@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_trains_and_ends_with_its_report(name, tiny_tree, tmp_path):
    out = tmp_path / "run"
    report = name in _reported_recipes()
    r = run_train(
        "--recipe",
        name,
        "--data",
        str(tiny_tree),
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-lr-find",
        "--out",
        str(out),
        *([] if report else ["--no-evaluate"]),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # the real wall time and its parts, in summary.json and the last line
    wall = json.loads((out / "summary.json").read_text())["wall"]
    assert wall["startup_s"] > 0 and wall["epochs_s"] > 0 and "; wall time " in r.stdout
    if not report:
        assert "evaluation" not in wall and not (out / "report.html").exists()
        return
    assert "evaluation: figures and report in" in r.stdout
    for name_ in ("report.html", "augmented.png", "curves.png", "confusion_matrix.png"):
        assert (out / name_).stat().st_size > 0, name_
    assert wall["evaluation_s"] > 0 and "wall time" in (out / "report.md").read_text()


# ---------------------------------------------------------------- bad input


def _fails(argv: list[str], capsys, match: str) -> str:
    code = run_cli(main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert match in err, err
    return err


def test_bad_data_paths(tmp_path, capsys):
    out = tmp_path / "run"
    _fails(["--data", str(tmp_path / "missing"), "--out", str(out)], capsys, "does not exist")
    text = tmp_path / "x.txt"
    text.write_text("not data")
    _fails(["--data", str(text), "--out", str(out)], capsys, "is not a CIFAR-10 source")
    assert not out.exists()  # nothing that looks like a run is left behind


def test_bad_trees_and_archives(tmp_path, capsys):
    make_tree(tmp_path / "t1", per_class=1)
    for f in (tmp_path / "t1" / "train" / "dog").iterdir():
        f.unlink()
    (tmp_path / "t1" / "train" / "dog").rmdir()
    _fails(
        ["--data", str(tmp_path / "t1"), "--out", str(tmp_path / "r")],
        capsys,
        "no folder for class dog",
    )

    make_tree(tmp_path / "t2", per_class=1)
    bad = tmp_path / "t2" / "test" / "cat" / "0000.png"
    bad.write_bytes(b"broken")
    err = _fails(
        ["--data", str(tmp_path / "t2"), "--out", str(tmp_path / "r")], capsys, "does not decode"
    )
    assert str(bad) in err

    make_tree(tmp_path / "t3", per_class=2)
    archive = make_tar(tmp_path / "t3", tmp_path / "a.tar.gz")
    (tmp_path / "cut.tar.gz").write_bytes(archive.read_bytes()[:-400])
    _fails(
        ["--data", str(tmp_path / "cut.tar.gz"), "--out", str(tmp_path / "r")],
        capsys,
        "truncated or corrupt",
    )
    assert not (tmp_path / "r").exists()


def test_bad_names_and_numbers(tiny_tree, tmp_path, capsys):
    base = ["--data", str(tiny_tree), "--out", str(tmp_path / "r")]
    _fails([*base, "--recipe", "vgg"], capsys, "unknown recipe 'vgg': choose one of s7")
    _fails([*base, "--model", "vgg"], capsys, "unknown model 'vgg': choose one of s7")
    _fails([*base, "--batch-size", "0"], capsys, "--batch-size 0 is out of range: pass x >= 1")
    _fails([*base, "--epochs", "0"], capsys, "--epochs 0 is out of range: pass x >= 1")
    _fails([*base, "--train-subset", "0"], capsys, "--train-subset 0 is out of range: pass x >= 1")
    _fails([*base, "--workers", "-1"], capsys, "--workers -1 is out of range: pass x >= 0")
    _fails([*base, "--label-smoothing", "1"], capsys, "pass 0 <= x < 1")
    assert not (tmp_path / "r").exists()


def test_unwritable_output(tiny_tree, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    _fails(
        ["--data", str(tiny_tree), "--out", str(blocker / "run")],
        capsys,
        "cannot write the output directory",
    )


def test_resume_with_another_recipe(tiny_tree, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, get_recipe("s7"), RunOptions(data=str(tiny_tree)))
    _fails(
        ["--resume", str(run), "--recipe", "resnet18"],
        capsys,
        "was made with recipe s7, not resnet18",
    )
    _fails(["--resume", str(run), "--lr", "0.5"], capsys, "--lr differ from the run")
    _fails(["--resume", str(tmp_path / "nothing")], capsys, "is not a run directory")


def test_existing_run_is_not_overwritten(tiny_tree, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, get_recipe("s7"), RunOptions(data=str(tiny_tree)))
    _fails(["--data", str(tiny_tree), "--out", str(run)], capsys, "already holds a run")


def test_cli_error_is_one_line_without_traceback(tmp_path):
    r = run_train("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: data path")


def test_help_explains_every_flag():
    r = run_train("--help")
    assert r.returncode == 0
    for flag in (
        "--recipe",
        "--data",
        "--download",
        "--epochs",
        "--batch-size",
        "--lr",
        "--train-subset",
        "--out",
        "--seed",
        "--device",
        "--amp",
        "--no-amp",
        "--compile",
        "--no-compile",
        "--channels-last",
        "--resume",
    ):
        assert flag in r.stdout, flag


@pytest.mark.slow
def test_ctrl_c_leaves_no_worker_processes(real_archive, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastcifar.train",
            "--data",
            str(real_archive),
            "--train-subset",
            "2000",
            "--test-subset",
            "100",
            "--epochs",
            "3",
            "--batch-size",
            "20",
            "--workers",
            "2",
            "--no-evaluate",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )

    def workers() -> list[str]:
        ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if str(out) in line and "ps -eo" not in line]

    deadline = time.time() + 120
    while time.time() < deadline and len(workers()) < 3:  # the trainer and its 2 workers
        time.sleep(0.2)
    assert len(workers()) >= 3, "the data loader workers never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    time.sleep(1)
    assert workers() == []
