"""The speedrun94 recipe at a tiny size on the CPU: whitening, EMA, TTA, warm-up, timing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from fastcifar.engine import RunOptions, Trainer
from fastcifar.models.speedrun import SpeedrunNet
from fastcifar.optim import ema_avg as _ema_avg
from fastcifar.recipes import get_recipe
from tests.conftest import make_tree, run_train


def test_whitening_layer_whitens_patches():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (400, 8, 8, 3)).astype(np.float64)
    images = np.kron(base, np.ones((1, 4, 4, 1))).astype(np.uint8)  # correlated neighbours
    mean, std = (0.5, 0.5, 0.5), (0.3, 0.3, 0.3)
    net = SpeedrunNet()
    net.init_whitening(images, mean, std, eps=1e-6)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = (x / 255 - 0.5) / 0.3
    with torch.no_grad():
        out = net.whiten(x)[:, :12]  # the 12 filters (the other 12 are their negatives)
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1).double())
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=0.05, rtol=0)
    assert not net.whiten.weight.requires_grad


def test_ema_warms_up_then_holds_its_decay():
    avg = _ema_avg(0.99)
    a, c = torch.zeros(()), torch.ones(())
    assert float(avg(a, c, 0)) == pytest.approx(0.9)  # (1 + 0) / (10 + 0) kept
    assert float(avg(a, c, 10_000)) == pytest.approx(0.01)


@pytest.fixture()
def tiny(tmp_path):
    make_tree(tmp_path / "tree", per_class=4)
    return tmp_path


def test_speedrun_trains_compiled_with_the_gpu_loader(tiny):
    recipe = get_recipe("speedrun94").replace(epochs=2, batch_size=16)
    opts = RunOptions(data=str(tiny / "tree"), workers=0, device="cpu", loader="gpu",
                      compile=True, compile_backend="aot_eager")  # fmt: skip
    t = Trainer(recipe, opts, tiny)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    lr_before = t.optimizer.param_groups[0]["lr"]
    seconds = t.warm_up()
    assert seconds > 0
    for k, v in t.model.state_dict().items():  # the warm-up left no trace
        assert torch.equal(v, before[k]), k
    assert t.optimizer.param_groups[0]["lr"] == lr_before and not t.optimizer.state
    wall = time.perf_counter()
    summary = t.fit()
    wall = time.perf_counter() - wall
    assert summary["loader"] == "gpu" and summary["compiled"] is True
    assert summary["epochs"] == 2
    # the timed span is the training loops: inside the wall time of fit(), and at least
    # the sum of the per-epoch training times printed in metrics (each a loop of its own)
    metrics = [json.loads(line) for line in (tiny / "metrics.jsonl").read_text().splitlines()]
    loops = sum(m["epoch_time_s"] for m in metrics)
    assert 0 < summary["train_time_s"] <= loops <= wall
    assert summary["compile_time_s"] > 0  # fit() warmed up again, apart from the timed span
    ckpt = torch.load(tiny / "last.pt", weights_only=True)
    assert ckpt["ema"] is not None
    # the evaluated weights are the EMA's, not the last step's
    assert not torch.equal(ckpt["model"]["head.weight"], ckpt["train_model"]["head.weight"])


def test_tta_averages_the_mirror_image(tiny):
    recipe = get_recipe("speedrun94").replace(epochs=1, batch_size=16, ema=0.0)
    t = Trainer(recipe, RunOptions(data=str(tiny / "tree"), workers=0, device="cpu"), tiny)
    x, y = next(iter(t.test_loader))
    t.model.eval()
    with torch.no_grad():
        expected = (t.model(x) + t.model(x.flip(-1))) / 2
    loss = torch.nn.functional.cross_entropy(expected, y, reduction="sum") / len(y)
    assert t.evaluate()["test_loss"] == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.slow
def test_speedrun_cli_reports_its_time(real_archive, tmp_path):
    r = run_train(
        "--recipe", "speedrun94", "--data", str(real_archive), "--train-subset", "256",
        "--test-subset", "100", "--epochs", "1", "--batch-size", "64", "--loader", "gpu",
        "--workers", "0", "--no-evaluate", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "speedrun: " in r.stdout and "s of training" in r.stdout
    assert "evaluation excluded" in r.stdout
