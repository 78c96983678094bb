"""The Trainer (fastcifar.engine.trainer): compiled and eager steps agree, the compile fallback,
AMP with channels_last, the stop on a NaN loss, the L1 and smoothing terms reaching the
step, the loggers, and the model hooks it calls on any model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from fastcifar.engine.build import build_trainer
from fastcifar.engine.components import build_components
from fastcifar.engine.rundir import write_config
from fastcifar.engine.trainer import RunOptions, Trainer, TrainingDiverged
from fastcifar.models import CifarNet
from fastcifar.recipes import get_recipe
from tests.conftest import read_metrics


def _options(tree: Path, **kw) -> RunOptions:
    return RunOptions(data=str(tree), workers=0, device="cpu", **kw)


def test_compiled_training_traces_and_trains(tiny_tree, tmp_path):
    recipe = get_recipe("s7").replace(epochs=1, batch_size=20)
    t = build_trainer(
        recipe, _options(tiny_tree, compile=True, compile_backend="aot_eager"), tmp_path
    )
    # the compiled forward equals the eager one, and so do one step's gradients
    t.model.eval()  # no dropout: the two passes must see the same function
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    grads = []
    for fn in (t.model, t.forward):
        t.model.zero_grad()
        out = fn(x)
        t.components.criterion(out, y).backward()
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
    summary = build_trainer(recipe, opts, tmp_path).fit()
    out = capsys.readouterr().out
    assert "compile: torch.compile failed" in out and "continuing eagerly" in out
    assert summary["compiled"] is False and summary["epochs"] == 1


def test_amp_bfloat16_channels_last(tiny_tree, tmp_path):
    recipe = get_recipe("c1c2c3c40").replace(epochs=1, batch_size=20)
    t = build_trainer(recipe, _options(tiny_tree, amp=True, amp_dtype="bfloat16"), tmp_path)
    x, y = next(iter(t.components.train_loader))
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
    t = build_trainer(recipe, _options(tiny_tree), tmp_path)
    write_config(tmp_path, recipe, t.options)
    real = t.components.criterion
    calls = {"n": 0}

    def criterion(out, y):
        calls["n"] += 1
        loss = real(out, y)
        return loss * float("nan") if calls["n"] == len(t.components.train_loader) + 3 else loss

    t.components.criterion = criterion
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2, step 3") as info:
        t.fit()
    # one epoch kept; a run without AMP is not told to turn it off
    assert f"(1 epoch) is kept in {tmp_path / 'last.pt'}; lower --lr" in str(info.value)
    assert str(info.value).endswith("lower --lr")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["state"]["epoch"] == 1
    assert not (tmp_path / "summary.json").exists()
    assert len(read_metrics(tmp_path)) == 1


def test_nan_loss_in_the_first_epoch_says_nothing_was_kept(tiny_tree, tmp_path):
    recipe = get_recipe("attention").replace(epochs=2, batch_size=10)
    t = build_trainer(recipe, _options(tiny_tree), tmp_path)
    t.components.criterion = lambda out, y: out.sum() * float("nan")
    with pytest.raises(TrainingDiverged) as info:
        t.fit()
    message = str(info.value)
    assert "at epoch 1, step 1: no epoch had finished, so no checkpoint was written" in message
    assert "last good checkpoint" not in message and "--no-amp" not in message


def test_l1_term_adds_exactly_its_gradient_to_a_step(tiny_tree, tmp_path):
    # one training step: the L1 term adds exactly lr * l1 * sign(p) / numel to the update
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    deltas, start = {}, None
    for l1 in (0.0, 0.5):
        recipe = get_recipe("s7").replace(l1=l1, batch_size=8)
        t = build_trainer(recipe, _options(tiny_tree), tmp_path / f"l1-{l1}")
        if start is None:
            start = copy.deepcopy(t.model.state_dict())
        t.model.load_state_dict(start)  # both runs start from the same weights
        w0 = {n: p.detach().clone() for n, p in t.model.named_parameters()}
        lr = t.opt.optimizer.param_groups[0]["lr"]
        torch.manual_seed(1)  # the same dropout masks
        t.train_step(x, y, 0)
        deltas[l1] = {n: p.detach() - w0[n] for n, p in t.model.named_parameters()}
    name, w = next((n, w) for n, w in w0.items() if w.dim() == 4)
    extra = deltas[0.5][name] - deltas[0.0][name]
    torch.testing.assert_close(extra, -lr * 0.5 * w.sign() / w.numel(), rtol=1e-3, atol=1e-7)


def test_label_smoothing_reaches_the_loss(tiny_tree, tmp_path):
    recipe = get_recipe("s7").replace(label_smoothing=0.1, batch_size=10)
    t = build_trainer(recipe, _options(tiny_tree), tmp_path)
    logp = torch.log_softmax(torch.randn(4, 10), 1)
    y = torch.tensor([0, 1, 2, 3])
    plain = torch.nn.functional.nll_loss(logp, y)
    assert not torch.isclose(t.components.criterion(logp, y), plain)
    smoothed = 0.9 * plain - 0.1 * logp.mean(1).mean()
    torch.testing.assert_close(t.components.criterion(logp, y), smoothed)


class _HookedNet(CifarNet):
    """A small net that records the engine's calls of the CifarNet hooks."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 10, 3)
        self.calls: list = []

    def forward(self, x):
        return self.conv(x).mean((2, 3))

    def init_from_data(self, images, n, seed, mean, std) -> bool:
        self.calls.append(("init", len(images), n, seed))
        return True

    def set_whiten_bias_trainable(self, trains: bool) -> None:
        self.calls.append(trains)


class _Recorder:
    def __init__(self):
        self.epochs: list[tuple[dict, bool]] = []

    def on_epoch_end(self, row: dict, is_best: bool) -> None:
        self.epochs.append((row, is_best))


def test_trainer_calls_the_model_hooks_and_tells_the_loggers(tiny_tree, tmp_path):
    # 40 images, batch 10: 4 steps an epoch; the "whitening bias" trains for 1.5 epochs
    recipe = get_recipe("s7").replace(
        epochs=3, batch_size=10, loss="cross_entropy", whiten_bias_epochs=1.5, whiten_images=7
    )
    components = build_components(recipe, _options(tiny_tree))
    components.model = net = _HookedNet()  # any CifarNet: the engine looks for no attribute
    recorder = _Recorder()
    trainer = Trainer(recipe, components, _options(tiny_tree), tmp_path, loggers=[recorder])
    net.calls.clear()  # the construction sets the bias's starting state
    summary = trainer.fit()
    assert net.calls[0] == ("init", 40, 7, recipe.seed)  # once, before the first step
    steps = net.calls[1:]
    assert steps == [True] * 6 + [False] * 6  # one call a step: trains for 6 of 12 steps
    assert summary["whiten_time_s"] > 0  # the initialisation is timed
    rows = read_metrics(tmp_path)
    assert [row for row, _ in recorder.epochs] == rows  # the loggers hear every saved row
    best = [
        row["test_acc"] > max([-1] + [r["test_acc"] for r in rows[:i]])
        for i, row in enumerate(rows)
    ]
    assert [is_best for _, is_best in recorder.epochs] == best


def test_resumed_trainer_restores_the_step_state(tiny_tree, tmp_path):
    recipe = get_recipe("resnet18_ln").replace(epochs=2, batch_size=20, ema=0.9)
    options = _options(tiny_tree)
    first = build_trainer(recipe, options, tmp_path)
    first.train_epoch(0)
    first.state.epoch = 1
    first.save_epoch(is_best=True)
    resumed = build_trainer(recipe, options, tmp_path, resume=True)
    assert resumed.state.epoch == 1 and len(resumed.state.lrs) == len(first.state.lrs)
    for (name, a), b in zip(
        first.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    ema_a, ema_b = first.opt.ema.module.state_dict(), resumed.opt.ema.module.state_dict()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert resumed.opt.optimizer.state_dict()["state"].keys() == (
        first.opt.optimizer.state_dict()["state"].keys()
    )
    assert resumed.opt.lr == first.opt.lr
