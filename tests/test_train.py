"""The training CLI and engine: run directory, resume after a kill, compile, AMP, NaN, bad input."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastcifar.engine import RunOptions, Trainer, TrainingDiverged
from fastcifar.errors import run_cli
from fastcifar.recipes import get_recipe
from fastcifar.rundir import write_config
from fastcifar.train import main
from tests.conftest import ROOT, make_tar, make_tree, run_train

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


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "tree"
    make_tree(root, per_class=4)
    return root


# ---------------------------------------------------------------- real runs


@pytest.mark.slow
def test_cli_trains_s7_on_real_data(real_archive, tmp_path):
    out = tmp_path / "run"
    r = run_train(
        "--data", str(real_archive), "--train-subset", "200", "--test-subset", "200",
        "--epochs", "2", "--batch-size", "50", "--workers", "0", "--out", str(out),
    )  # fmt: skip
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
        "--recipe", "c1c2c3c40", "--data", str(real_archive), "--train-subset", "300",
        "--test-subset", "100", "--epochs", "3", "--batch-size", "50", "--workers", "1",
        "--no-evaluate",
    ]  # fmt: skip
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


# ---------------------------------------------------------------- engine paths


def _options(tree: Path, **kw) -> RunOptions:
    return RunOptions(data=str(tree), workers=0, device="cpu", **kw)


def test_compiled_training_traces_and_trains(tiny_tree, tmp_path):
    recipe = get_recipe("s7").replace(epochs=1, batch_size=20)
    t = Trainer(recipe, _options(tiny_tree, compile=True, compile_backend="aot_eager"), tmp_path)
    # the compiled forward equals the eager one, and so do one step's gradients
    t.model.eval()  # no dropout: the two passes must see the same function
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    grads = []
    for fn in (t.model, t.forward):
        t.model.zero_grad()
        out = fn(x)
        t._criterion(out, y).backward()
        grads.append((out.detach(), [p.grad.clone() for p in t.model.parameters()]))
    assert t.forward.compiled is not None  # the compiled path ran, not the eager fallback
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    for g_compiled, g_eager in zip(grads[1][1], grads[0][1], strict=True):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-6)
    t.model.zero_grad()
    t.model.train()
    summary = t.fit()
    assert summary["compiled"] is True
    assert t.forward.compiled is not None


def test_compile_failure_says_why_and_continues_eagerly(tiny_tree, tmp_path, capsys):
    from torch._dynamo import register_backend

    @register_backend(name="fastcifar_test_broken")
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    recipe = get_recipe("attention").replace(epochs=1, batch_size=20)
    opts = _options(tiny_tree, compile=True, compile_backend="fastcifar_test_broken")
    summary = Trainer(recipe, opts, tmp_path).fit()
    out = capsys.readouterr().out
    assert "compile: torch.compile failed" in out and "continuing eagerly" in out
    assert summary["compiled"] is False and summary["epochs"] == 1


def test_amp_bfloat16_channels_last(tiny_tree, tmp_path):
    recipe = get_recipe("c1c2c3c40").replace(epochs=1, batch_size=20)
    t = Trainer(recipe, _options(tiny_tree, amp=True, amp_dtype="bfloat16"), tmp_path)
    x, y = next(iter(t.train_loader))
    # the loader hands over the AMP dtype, channels_last
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.bfloat16
    assert y.dtype == torch.int64
    with t._autocast():
        assert t.model(x).dtype == torch.bfloat16
    summary = t.fit()
    assert summary["amp"] == "bfloat16" and summary["channels_last"] is True
    assert torch.isfinite(torch.tensor(read_metrics(tmp_path)[0]["train_loss"]))


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(tiny_tree, tmp_path):
    recipe = get_recipe("attention").replace(epochs=3, batch_size=10)
    t = Trainer(recipe, _options(tiny_tree), tmp_path)
    write_config(tmp_path, recipe, t.options)
    real = t._criterion
    calls = {"n": 0}

    def criterion(out, y):
        calls["n"] += 1
        loss = real(out, y)
        return loss * float("nan") if calls["n"] == len(t.train_loader) + 3 else loss

    t._criterion = criterion
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2, step 3"):
        t.fit()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["state"]["epoch"] == 1
    assert not (tmp_path / "summary.json").exists()
    assert len(read_metrics(tmp_path)) == 1


def test_l1_penalty_value_gradient_and_step(tiny_tree, tmp_path):
    from fastcifar.optim import l1_penalty

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    value = l1_penalty(model)
    expected = sum(p.detach().abs().mean() for p in model.parameters())
    torch.testing.assert_close(value, expected)
    value.backward()
    for p in model.parameters():  # d/dp mean(|p|) = sign(p) / numel
        torch.testing.assert_close(p.grad, p.detach().sign() / p.numel())

    # one training step: the L1 term adds exactly lr * l1 * sign(p) / numel to the update
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    deltas, start = {}, None
    for l1 in (0.0, 0.5):
        recipe = get_recipe("s7").replace(l1=l1, batch_size=8)
        t = Trainer(recipe, _options(tiny_tree), tmp_path / f"l1-{l1}")
        if start is None:
            start = copy.deepcopy(t.model.state_dict())
        t.model.load_state_dict(start)  # both runs start from the same weights
        w0 = {n: p.detach().clone() for n, p in t.model.named_parameters()}
        lr = t.optimizer.param_groups[0]["lr"]
        torch.manual_seed(1)  # the same dropout masks
        t._train_step(x, y)
        deltas[l1] = {n: p.detach() - w0[n] for n, p in t.model.named_parameters()}
    name, w = next((n, w) for n, w in w0.items() if w.dim() == 4)
    extra = deltas[0.5][name] - deltas[0.0][name]
    torch.testing.assert_close(extra, -lr * 0.5 * w.sign() / w.numel(), rtol=1e-3, atol=1e-7)


def test_label_smoothing_reaches_the_loss(tiny_tree, tmp_path):
    recipe = get_recipe("s7").replace(label_smoothing=0.1)
    t = Trainer(recipe, _options(tiny_tree), tmp_path)
    logp = torch.log_softmax(torch.randn(4, 10), 1)
    y = torch.tensor([0, 1, 2, 3])
    plain = torch.nn.functional.nll_loss(logp, y)
    assert not torch.isclose(t._criterion(logp, y), plain)
    smoothed = 0.9 * plain - 0.1 * logp.mean(1).mean()
    torch.testing.assert_close(t._criterion(logp, y), smoothed)


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
    _fails(["--data", str(tmp_path / "t1"), "--out", str(tmp_path / "r")], capsys,
           "no folder for class dog")  # fmt: skip

    make_tree(tmp_path / "t2", per_class=1)
    bad = tmp_path / "t2" / "test" / "cat" / "0000.png"
    bad.write_bytes(b"broken")
    err = _fails(["--data", str(tmp_path / "t2"), "--out", str(tmp_path / "r")], capsys,
                 "does not decode")  # fmt: skip
    assert str(bad) in err

    make_tree(tmp_path / "t3", per_class=2)
    archive = make_tar(tmp_path / "t3", tmp_path / "a.tar.gz")
    (tmp_path / "cut.tar.gz").write_bytes(archive.read_bytes()[:-400])
    _fails(["--data", str(tmp_path / "cut.tar.gz"), "--out", str(tmp_path / "r")], capsys,
           "truncated or corrupt")  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_bad_names_and_numbers(tiny_tree, tmp_path, capsys):
    base = ["--data", str(tiny_tree), "--out", str(tmp_path / "r")]
    _fails([*base, "--recipe", "vgg"], capsys, "unknown recipe 'vgg': choose one of s7")
    _fails([*base, "--model", "vgg"], capsys, "unknown model 'vgg': choose one of s7")
    _fails([*base, "--batch-size", "0"], capsys, "--batch-size 0 is below 1")
    _fails([*base, "--epochs", "0"], capsys, "--epochs 0 is below 1")
    _fails([*base, "--train-subset", "0"], capsys, "--train-subset 0 is below 1")
    assert not (tmp_path / "r").exists()


def test_unwritable_output(tiny_tree, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    _fails(["--data", str(tiny_tree), "--out", str(blocker / "run")], capsys,
           "cannot write the output directory")  # fmt: skip


def test_resume_with_another_recipe(tiny_tree, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, get_recipe("s7"), RunOptions(data=str(tiny_tree)))
    _fails(["--resume", str(run), "--recipe", "resnet18"], capsys,
           "was made with recipe s7, not resnet18")  # fmt: skip
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
    for flag in ("--recipe", "--data", "--download", "--epochs", "--batch-size", "--lr",
                 "--train-subset", "--out", "--seed", "--device", "--amp", "--no-amp",
                 "--compile", "--no-compile", "--channels-last", "--resume"):  # fmt: skip
        assert flag in r.stdout, flag


@pytest.mark.slow
def test_ctrl_c_leaves_no_worker_processes(real_archive, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastcifar.train", "--data", str(real_archive), "--train-subset",
         "2000", "--test-subset", "100", "--epochs", "3", "--batch-size", "20", "--workers", "2",
         "--no-evaluate", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

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


def test_recipe_loss_drives_the_criterion():
    from fastcifar.optim import criterion

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 10, generator=gen)  # not log-probabilities: NLL and CE differ
    y = torch.randint(0, 10, (6,), generator=gen)
    nll, ce = criterion("nll")(scores, y), criterion("cross_entropy")(scores, y)
    assert torch.allclose(nll, torch.nn.functional.nll_loss(scores, y))
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(scores, y))
    assert not torch.allclose(nll, ce)
    # on log-probabilities, smoothed NLL is smoothed cross-entropy
    logp = scores.log_softmax(1)
    smoothed = criterion("nll", 0.1)(logp, y)
    by_hand = 0.9 * torch.nn.functional.nll_loss(logp, y) + 0.1 * (-logp.mean(1)).mean()
    assert torch.allclose(smoothed, by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        criterion("hinge")
