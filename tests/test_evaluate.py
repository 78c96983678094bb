"""Evaluation: the report and its figures, Grad-CAM, receptive fields, summary, LR finder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastcifar import FastCifarError
from fastcifar.components import build_components
from fastcifar.engine import RunOptions, Trainer
from fastcifar.evaluate import confusion_matrix, evaluate_run, grad_cam, misclassified
from fastcifar.lr_range import range_test
from fastcifar.models import create_model
from fastcifar.nn import swap_convolutions
from fastcifar.optim import make_optimizer
from fastcifar.receptive import receptive_field_table
from fastcifar.recipes import get_recipe
from fastcifar.summary import main as summary_main
from tests.conftest import make_tree, run_train


@pytest.fixture(scope="module")
def finished_run(real_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    r = run_train(
        "--data", str(real_archive), "--train-subset", "300", "--test-subset", "300",
        "--epochs", "2", "--batch-size", "50", "--workers", "0", "--out", str(out),
        "--tensorboard",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "evaluation: figures and report" in r.stdout
    return out


FIGURES = ["curves.png", "lr.png", "confusion_matrix.png", "misclassified.png",
           "gradcam_dilated5A.png", "augmented.png"]  # fmt: skip


@pytest.mark.slow
def test_training_writes_the_evaluation(finished_run):
    ev = json.loads((finished_run / "eval.json").read_text())
    summary = json.loads((finished_run / "summary.json").read_text())
    assert ev["test_acc"] == pytest.approx(summary["final_test_acc"])  # same model, same images
    cm = np.array(ev["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 300 == ev["test_images"]
    assert np.trace(cm) / 3 == pytest.approx(ev["test_acc"])
    wrong = 300 - np.trace(cm)
    assert len(ev["misclassified_indices"]) == min(20, wrong)
    html = (finished_run / "report.html").read_text()
    md = (finished_run / "report.md").read_text()
    for name in FIGURES:
        img = Image.open(finished_run / name)
        assert img.size[0] > 300 and img.size[1] > 200, name
        assert f"src='{name}'" in html and f"({name})" in md
    lrs = json.loads((finished_run / "lr.json").read_text())
    assert len(lrs) == 2 * 6 and lrs[0] == pytest.approx(0.025)  # s7 OneCycle starts at 0.2 / 8
    events = list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"


@pytest.mark.slow
def test_evaluate_cli_again_and_bad_layer(finished_run, capsys):
    from fastcifar.errors import run_cli
    from fastcifar.evaluate import main

    assert run_cli(main, [str(finished_run), "--misclassified", "5"]) == 0
    assert len(json.loads((finished_run / "eval.json").read_text())["misclassified_indices"]) == 5
    assert run_cli(main, [str(finished_run), "--cam-layers", "nope"]) == 2
    assert "'nope' is not a layer of the model" in capsys.readouterr().err


def test_evaluate_needs_a_run_directory(tmp_path):
    with pytest.raises(FastCifarError, match="not a run directory"):
        evaluate_run(tmp_path)


def test_confusion_and_misclassified_order():
    labels = np.array([0, 1, 2, 3, 4, 5])
    preds = np.array([0, 2, 2, 1, 4, 0])
    cm = confusion_matrix(preds, labels)
    assert cm[1, 2] == 1 and cm[3, 1] == 1 and cm[5, 0] == 1 and np.trace(cm) == 3
    wrong = misclassified(preds, labels, 2)
    assert len(wrong) == 2 and all(preds[i] != labels[i] for i in wrong)
    np.testing.assert_array_equal(wrong, misclassified(preds, labels, 2))


def test_grad_cam_on_resnet_layers_leaves_the_model_alone():
    torch.manual_seed(0)
    model = create_model("resnet18").to(memory_format=torch.channels_last).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        maps = grad_cam(model, x, [0, 1, 2], layer)
        assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert model.training
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_grad_cam_on_a_triton_model_uses_an_eager_copy():
    torch.manual_seed(0)
    plain = create_model("s7").eval()
    model = create_model("s7")
    model.load_state_dict(plain.state_dict())
    swap_convolutions(model)
    images = torch.randn(2, 3, 32, 32)
    maps = grad_cam(model, images, [3, 4], "dilated5A")
    assert maps.shape == (2, 32, 32)
    assert model.dilated5A[0].uses_triton  # the model itself is unchanged
    # the same weights on PyTorch's convolutions give the same CAMs
    reference = grad_cam(plain, images, [3, 4], "dilated5A")
    assert reference.std() > 0  # a real map, not a constant
    np.testing.assert_allclose(maps, reference, atol=1e-4)


def test_receptive_fields_match_the_seeds():
    assert receptive_field_table(create_model("s7"))[-1].receptive_field == 61
    assert receptive_field_table(create_model("c1c2c3c40"))[-1].receptive_field == 59


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)  # RF 3, jump 1
        self.b = nn.Conv2d(4, 4, 3, stride=2, dilation=2, padding=2)  # RF 3 + 4 = 7, jump 2
        self.skip = nn.Conv2d(4, 4, 1, stride=2)  # RF 3, jump 2
        self.c = nn.Conv2d(4, 4, 3, padding=1)  # max(7, 3) + 2 * 2 = 11, jump 2

    def forward(self, x):
        x = self.a(x)
        x = torch.relu(self.b(x)) + self.skip(x)
        x = self.c(x)
        return nn.functional.max_pool2d(x, 2)  # 11 + 1 * 2 = 13, jump 4


def test_receptive_field_by_hand():
    rows = receptive_field_table(_Branchy(), input_size=16)
    by_layer = {r.layer: r for r in rows}
    assert [by_layer[n].receptive_field for n in ("a", "b", "skip", "c")] == [3, 7, 3, 11]
    assert by_layer["b"].jump_in == 1 and by_layer["c"].jump_in == 2
    assert rows[-1].receptive_field == 13 and rows[-1].output_size == 4


def test_summary_cli(capsys):
    assert summary_main(["--model", "c1c2c3c40"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 178,178" in out
    assert "receptive field 59" in out and "dilation" in out and "jump" in out


def test_lr_range_test_restores_model_and_optimizer(tmp_path):
    make_tree(tmp_path / "tree", per_class=2)
    recipe = get_recipe("c1c2c3c40").replace(batch_size=10)
    c = build_components(recipe, RunOptions(data=str(tmp_path / "tree"), workers=0,
                                            device="cpu"), with_test=False)  # fmt: skip
    assert c.test_loader is None
    optimizer = make_optimizer(c.model, recipe)
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    opt_before = optimizer.state_dict()["param_groups"][0]["lr"]
    result = range_test(c.model, optimizer, c.criterion, c.train_loader, c.device,
                        num_iter=12, plot=tmp_path / "lr.png")  # fmt: skip
    assert 1e-6 <= result.suggested_lr <= 0.9 and len(result.lrs) == 12
    assert result.lrs[-1] > result.lrs[0] * 1e4  # exponential sweep
    assert (tmp_path / "lr.png").exists()
    for k, v in c.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert optimizer.state_dict()["param_groups"][0]["lr"] == opt_before
    assert not optimizer.state_dict()["state"]


def test_recipe_can_ask_for_the_lr_finder_first(tmp_path, capsys):
    make_tree(tmp_path / "tree", per_class=2)
    recipe = get_recipe("c1c2c3c40").replace(batch_size=10, lr_find=True, lr_find_iters=20)
    t = Trainer(recipe, RunOptions(data=str(tmp_path / "tree"), workers=0, device="cpu"), tmp_path)
    assert "lr_find: suggested lr" in capsys.readouterr().out
    assert t.recipe.lr != recipe.lr and 1e-6 <= t.recipe.lr <= 0.9
    assert t.optimizer.param_groups[0]["lr"] == t.recipe.lr  # StepLR starts at the found lr


def test_lr_find_command_plots_and_suggests(tmp_path, capsys):
    from fastcifar.lr_find import main as lr_find_main

    make_tree(tmp_path / "tree", per_class=2)
    plot = tmp_path / "lr.png"
    assert lr_find_main(["--recipe", "c1c2c3c40", "--data", str(tmp_path / "tree"),
                         "--num-iter", "6", "--device", "cpu", "--workers", "0",
                         "--out", str(plot)]) == 0  # fmt: skip
    assert "c1c2c3c40: suggested lr" in capsys.readouterr().out and plot.stat().st_size > 0
