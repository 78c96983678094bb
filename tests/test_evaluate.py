"""Evaluation: the report and its figures, Grad-CAM, the evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastcifar import FastCifarError
from fastcifar.evaluate import confusion_matrix, evaluate_run, grad_cam, misclassified
from fastcifar.models import create_model
from fastcifar.nn.modules import swap_convolutions
from tests.conftest import run_train


@pytest.fixture(scope="module")
def finished_run(real_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    r = run_train(
        "--data",
        str(real_archive),
        "--train-subset",
        "300",
        "--test-subset",
        "300",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--workers",
        "0",
        "--out",
        str(out),
        "--tensorboard",
    )
    assert r.returncode == 0, r.stderr
    assert "evaluation: figures and report" in r.stdout
    (out.parent / "stdout.txt").write_text(r.stdout)
    return out


FIGURES = [
    "curves.png",
    "lr.png",
    "confusion_matrix.png",
    "misclassified.png",
    "gradcam_dilated5A.png",
    "augmented.png",
]


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


def test_evaluate_needs_a_run_directory(tmp_path, capsys):
    with pytest.raises(FastCifarError, match="not a run directory"):
        evaluate_run(tmp_path)
    from fastcifar.errors import run_cli
    from fastcifar.evaluate import main

    assert run_cli(main, [str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path} is not a run directory (no config.json): pass a "
        f"directory that fastcifar.train created"
    )
    assert not (tmp_path / ".lock").exists()  # refused before it took anything


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


@pytest.mark.slow
def test_one_wall_time_is_shown_by_the_console_the_report_and_the_summary(finished_run):
    import re

    from fastcifar.evaluation.report import wall_time

    summary = json.loads((finished_run / "summary.json").read_text())
    _, shown = wall_time(summary)  # what the report and the console both write
    console = (finished_run.parent / "stdout.txt").read_text()
    assert f"wall time {shown};" in console
    assert f"<td>{shown}</td>" in (finished_run / "report.html").read_text()
    evaluation = re.search(r"evaluation and report ([^,)]+)", shown).group(1)
    assert evaluation != "0.00 s" and summary["wall"]["evaluation_s"] > 0
