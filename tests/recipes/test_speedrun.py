"""The speed-run recipes at a tiny size on the CPU: the record's network and method
(whitening, dirac init, frozen BatchNorm weights, whitening bias schedule, alternating
flip, timed span), the EMA, and both recipes end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastcifar.data.gpu_loader import GPU_AUGMENTATIONS, GpuAugmentation, GpuLoader
from fastcifar.data.loaders import LoaderConfig
from fastcifar.engine.averaging import EMA
from fastcifar.engine.build import build_trainer
from fastcifar.engine.trainer import RunOptions
from fastcifar.models.speedrun import SpeedrunNet, whitening_indices
from fastcifar.recipes import get_recipe
from tests.conftest import make_tree, run_train
from tests.sync_helpers import assert_no_host_sync


def test_whitening_layer_whitens_patches_uncentred():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (400, 8, 8, 3)).astype(np.float64)
    images = np.kron(base, np.ones((1, 4, 4, 1))).astype(np.uint8)  # correlated neighbours
    mean, std = (0.3, 0.5, 0.6), (0.3, 0.3, 0.3)  # off-centre: the uncentred moment differs
    net = SpeedrunNet()
    net.init_whitening(images, mean, std, eps=1e-6)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, net.whiten.weight[:12])  # the 12 (+ negatives)
    flat = out.permute(1, 0, 2, 3).reshape(12, -1).double()
    moment = flat @ flat.T / flat.shape[1]  # uncentred second moment, as the record
    torch.testing.assert_close(moment, torch.eye(12, dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(net.whiten.weight[12:], -net.whiten.weight[:12])
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad


def test_whitening_bias_starts_as_the_records_seeded_default_init():
    # the record's nn.Conv2d(3, 24, 2, bias=True) keeps PyTorch's default bias: uniform in
    # +-1/sqrt(fan_in), fan_in = 3 * 2 * 2
    torch.manual_seed(5)
    a = SpeedrunNet().whiten.bias.detach()
    torch.manual_seed(5)
    b = SpeedrunNet().whiten.bias.detach()
    torch.manual_seed(6)
    c = SpeedrunNet().whiten.bias.detach()
    bound = 1 / 12**0.5
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded
    assert a.abs().max() <= bound and a.abs().max() > bound / 2 and a.std() > 0.05
    torch.manual_seed(5)
    ref = torch.nn.Conv2d(3, 24, 2, bias=True).bias.detach()  # the same draws as the record's
    assert torch.equal(a, ref)


def test_whitening_sample_mixes_the_classes_of_a_class_sorted_source():
    labels = np.repeat(np.arange(10), 5000)  # the JPEG copy's order: class by class
    idx = whitening_indices(len(labels), 5000, seed=1)
    assert len(set(idx.tolist())) == 5000
    assert np.bincount(labels[idx.numpy()], minlength=10).min() > 400  # not one class
    assert torch.equal(idx, whitening_indices(len(labels), 5000, seed=1))  # seeded


def test_trainer_whitens_from_the_seeded_sample(tmp_path):
    make_tree(tmp_path / "tree", per_class=4)
    recipe = get_recipe("speedrun94").replace(epochs=1, batch_size=16, whiten_images=12)
    opts = RunOptions(data=str(tmp_path / "tree"), workers=0, device="cpu", loader="gpu")
    t = build_trainer(recipe, opts, tmp_path)
    t._init_from_data()
    expected, c = SpeedrunNet(), t.components
    idx = whitening_indices(len(c.train_images), 12, recipe.seed)
    expected.init_whitening(c.train_images[idx.numpy()], c.mean, c.std)
    torch.testing.assert_close(t.model.whiten.weight, expected.whiten.weight)


def test_record_initialisation_dirac_frozen_batchnorm_head_scale():
    torch.manual_seed(0)
    net = SpeedrunNet()
    conv1, conv2 = net.block1[0], net.block1[4]
    eye = torch.zeros(3, 3)
    eye[1, 1] = 1
    for i in range(24):  # the first C_in filters pass channel i through unchanged
        assert torch.equal(conv1.weight[i, i], eye)
        assert conv1.weight[i].abs().sum() == 1
    assert not torch.equal(conv1.weight[30, 0], eye)  # the rest keep PyTorch's init
    x = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(conv2(x), x)  # 64 -> 64: the identity at the start
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert not m.weight.requires_grad and m.bias.requires_grad
            assert m.eps == 1e-12 and m.momentum == pytest.approx(0.4)
    assert float(net.head.weight.detach().std()) == pytest.approx(1.0, rel=1e-5)
    assert net.scale == 1 / 256


def _flip_loader(n: int, epoch: int) -> dict[int, bool]:
    """{image index: flipped?} over one epoch of a GpuLoader with the alternating flip
    and no translation, read from asymmetric images labelled by their index."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    GPU_AUGMENTATIONS["_test_alternating"] = GpuAugmentation(flip="alternating")
    try:
        config = LoaderConfig("_test_alternating", (0, 0, 0), (1, 1, 1), batch_size=7, seed=5)
        loader = GpuLoader(images, np.arange(n), config)
        loader.set_epoch(epoch)
        plain = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        seen = {}
        for x, y in loader:
            for img, label in zip(x, y.tolist(), strict=True):
                if torch.equal(img, plain[label]):
                    seen[label] = False
                else:
                    assert torch.equal(img, plain[label].flip(-1))
                    seen[label] = True
        return seen
    finally:
        del GPU_AUGMENTATIONS["_test_alternating"]


def test_alternating_flip_flips_a_fixed_random_half_then_the_other_half():
    n = 64
    epochs = [_flip_loader(n, e) for e in range(4)]
    for seen in epochs:
        assert sorted(seen) == list(range(n))  # every image once per epoch
    first = {i for i, f in epochs[0].items() if f}
    assert 12 < len(first) < 52  # a random set (about half), not all or none
    assert {i for i, f in epochs[1].items() if f} == set(range(n)) - first
    assert {i for i, f in epochs[2].items() if f} == first  # the same half again
    assert {i for i, f in epochs[3].items() if f} == set(range(n)) - first


def test_ema_warms_up_then_holds_its_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, 0.99)
    model.weight.data.fill_(1.0)
    ema.update(model)  # step 0: decay (1 + 0) / (10 + 0) = 0.1
    assert float(ema.module.weight) == pytest.approx(0.9)
    ema.num_updates.fill_(10_000)  # decay capped at 0.99
    ema.module.weight.data.zero_()
    ema.update(model)
    assert float(ema.module.weight) == pytest.approx(0.01)
    restored = EMA(model, 0.99)
    restored.load_state_dict(ema.state_dict())
    assert float(restored.num_updates) == 10_001


def test_ema_update_never_synchronises_with_the_host():
    model = SpeedrunNet().to("meta")
    ema = EMA(model, 0.99)
    assert ema.num_updates.device.type == "meta"  # the counter lives with the weights
    assert_no_host_sync(lambda: [ema.update(model) for _ in range(2)])


@pytest.fixture()
def tiny(tmp_path):
    make_tree(tmp_path / "tree", per_class=4)  # 40 training images
    return tmp_path


def _options(tiny, **kw) -> RunOptions:
    return RunOptions(data=str(tiny / "tree"), workers=0, device="cpu", loader="gpu", **kw)


def test_whitening_bias_trains_for_exactly_its_epochs_and_bn_weights_stay_one(tiny):
    # batch 10: 4 steps per epoch; the bias trains for 1.5 epochs = 6 steps
    recipe = get_recipe("speedrun94").replace(
        epochs=3, batch_size=10, whiten_bias_epochs=1.5, tta="none"
    )
    t = build_trainer(recipe, _options(tiny), tiny)
    assert t.whiten_bias_steps == 6 and t.total_steps == 12
    biases = []
    step = t.train_step

    def recording_step(*args):
        out = step(*args)
        biases.append(t.model.whiten.bias.detach().clone())
        return out

    t.train_step = recording_step
    t.fit()
    assert len(biases) == 12
    moved = [not torch.equal(biases[i], biases[i - 1]) for i in range(1, 12)]
    assert all(moved[:5]), moved  # steps 2..6 change it (step 1 moved it from zero)
    assert not any(moved[5:]), moved  # steps 7..12 leave it as it is
    assert not torch.equal(biases[0], torch.zeros(24))
    lrs = json.loads((tiny / "lr.json").read_text())
    assert len(lrs) == 12
    bias_group = next(g for g in t.opt.optimizer.param_groups if g["name"] == "whiten_bias")
    assert bias_group["lr"] == 0.0  # decayed to zero over its own 6 steps
    for m in t.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))


def test_timed_span_is_whitening_plus_training_plus_final_tta(tiny, monkeypatch):
    recipe = get_recipe("speedrun94").replace(epochs=2, batch_size=16)
    t = build_trainer(recipe, _options(tiny), tiny)
    calls = []
    init = t.model.init_whitening
    monkeypatch.setattr(t.model, "init_whitening", lambda *a: calls.append("whiten") or init(*a))
    evaluate = t.evaluate
    monkeypatch.setattr(t, "evaluate", lambda **kw: calls.append(kw) or evaluate(**kw))
    summary = t.fit()
    assert calls[0] == "whiten"  # before the first epoch
    assert calls.count({"tta": True}) == 1  # once, after the last epoch
    parts = summary["whiten_time_s"], summary["train_time_s"], summary["tta_time_s"]
    assert all(p > 0 for p in parts)
    assert summary["timed_span_s"] == pytest.approx(sum(parts))
    rows = [json.loads(line) for line in (tiny / "metrics.jsonl").read_text().splitlines()]
    assert "tta_test_acc" not in rows[0] and "tta_test_acc" in rows[1]
    assert summary["final_test_acc"] == rows[1]["tta_test_acc"]


def test_speedrun94_trains_compiled_with_the_gpu_loader(tiny, capsys):
    recipe = get_recipe("speedrun94").replace(epochs=2, batch_size=16, whiten_bias_epochs=1.0)
    opts = _options(tiny, compile=True, compile_backend="aot_eager")
    t = build_trainer(recipe, opts, tiny)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    lr_before = [g["lr"] for g in t.opt.optimizer.param_groups]
    assert t.warm_up() > 0
    # the first step's loss is shown as soon as it is done (a cold CPU compile is minutes)
    line = next(x for x in capsys.readouterr().out.splitlines() if "warm-up step 1/" in x)
    assert 0 < float(line.split("loss=")[1].split()[0]) < 10
    for k, v in t.model.state_dict().items():  # the warm-up left no trace
        assert torch.equal(v, before[k]), k
    optimizer = t.opt.optimizer
    assert [g["lr"] for g in optimizer.param_groups] == lr_before and not optimizer.state
    assert t.model.whiten.bias.requires_grad  # restored after the warm-up froze it
    summary = t.fit()
    assert summary["loader"] == "gpu" and summary["compiled"] is True
    assert summary["epochs"] == 2 and summary["compile_time_s"] > 0
    assert np.isfinite(summary["final_test_acc"])


def test_speedrun94_fast_trains_its_fraction_of_the_last_epoch(tiny):
    # 40 images, batch 10: 4 steps per epoch; 2 epochs with 0.5 of the last = 6 steps
    recipe = get_recipe("speedrun94_fast").replace(
        epochs=2, batch_size=10, whiten_images=20, last_epoch_fraction=0.5
    )
    opts = _options(tiny, compile=True, compile_backend="aot_eager")
    t = build_trainer(recipe, opts, tiny)
    assert t.total_steps == 6
    assert t.forward_loss.compiled is not None  # forward + loss as one graph
    summary = t.fit()
    assert len(json.loads((tiny / "lr.json").read_text())) == 6
    assert summary["tta"] == "flip_translate" and np.isfinite(summary["final_test_acc"])


def test_recipes_carry_the_published_hyper_parameters():
    r = get_recipe("speedrun94")
    assert (r.batch_size, r.epochs, r.optimizer, r.lr, r.momentum) == (2000, 8, "muon", 0.24, 0.6)
    assert (r.bias_lr, r.head_lr, r.sgd_momentum) == (0.053, 0.67, 0.85)
    assert r.weight_decay == pytest.approx(2e-6 * 2000) and r.muon_weight_decay == 0
    assert (r.scheduler, r.loss_reduction, r.label_smoothing) == ("linear", "sum", 0.2)
    assert (r.tta, r.tta_fraction, r.whiten_bias_epochs, r.ema) == ("flip_translate", 1, 3, 0)
    assert (r.augmentation, r.compile_mode) == ("alternating_flip_translate", "max-autotune")
    f = get_recipe("speedrun94_fast")
    assert (f.batch_size, f.epochs, f.last_epoch_fraction) == (1536, 8, 0.63)
    assert (f.model, f.muon_batched, f.muon_renorm_every, f.compile_step) == (
        "speedrun94_silu",
        True,
        8,
        True,
    )
    assert (f.label_smoothing, f.whiten_images, f.tta_fraction) == (0.09, 960, 0.25)


@pytest.mark.slow
def test_speedrun_cli_reports_its_timed_span(real_archive, tmp_path):
    r = run_train(
        "--recipe",
        "speedrun94",
        "--data",
        str(real_archive),
        "--train-subset",
        "256",
        "--test-subset",
        "100",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--workers",
        "0",
        "--no-evaluate",
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stderr
    assert "loader: gpu on the CPU" in r.stdout  # the alternating flip exists only there
    assert "speedrun: " in r.stdout and "final TTA" in r.stdout
    assert "per-epoch evaluation excluded" in r.stdout
    assert "(the reference reported 94" in r.stdout  # a speed record is no course seed
