"""fastcifar.evaluation.report: a report written for people, checked as text: human
numbers, no raw floats or Python literals, the banner of a run that is not comparable
with its seed, the recipe fields the run used, the note of a model near chance."""

from __future__ import annotations

import html
import re

import pytest

from fastcifar.evaluation.recipe_fields import recipe_fields_used
from fastcifar.evaluation.render import render_html, render_markdown, write_report
from fastcifar.evaluation.report import build_report
from fastcifar.recipes import get_recipe

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _metrics(epochs: int, tta: bool = False) -> list[dict]:
    rows = [
        {
            "epoch": e,
            "lr": 0.1 / e,
            "train_loss": 2.0 / e + 0.123456789,
            "train_acc": 40 + e * 1.23456789,
            "test_loss": 1.9 / e + 0.0987654321,
            "test_acc": 38 + e * 1.1111111,
            "epoch_time_s": 282.22876033000034,
            "images_per_s": 11823.456789,
        }
        for e in range(1, epochs + 1)
    ]
    if tta:
        rows[-1].update(tta_test_loss=0.5, tta_test_acc=94.0123456)
    return rows


def _summary(train_images: int, epochs: int, **kw) -> dict:
    return {
        "train_images": train_images,
        "epochs": epochs,
        "final_test_acc": 93.41234567,
        "final_test_acc_single_view": 93.1011,
        "total_time_s": 282.22876033000034,
        "train_time_s": 250.123456,
        "whiten_time_s": 0.0,
        "tta_time_s": 0.0,
        "timed_span_s": 250.123456,
        "compile_time_s": 0.0,
        "mean_images_per_s": 11823.4567,
        "device": "NVIDIA H200",
        "world_size": 1,
        "amp": "bfloat16",
        "channels_last": True,
        "compiled": False,
        "kernels": "auto",
        "loader": "gpu",
        "expected_accuracy": 87.17,
        "versions": {"torch": "2.11.0", "python": "3.12.3"},
        **kw,
    }


def _result(test_images: int, acc: float = 93.41234567) -> dict:
    return {
        "test_acc": acc,
        "test_images": test_images,
        "cam_layers": ["dilated5A"],
        "per_class_acc": {c: 90.123456 for c in CLASSES},
        "checkpoint_epoch": 3,
    }


def _visible_text(page: str) -> str:
    """What a reader sees of an HTML page: no tags, no style sheet, entities decoded."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def _assert_for_people(text: str) -> None:
    assert not re.search(r"\d\.\d{5,}", text), re.search(r".{30}\d\.\d{5,}.{10}", text)
    for literal in ("None", "True", "False", "nan", "{'", "_s "):
        assert literal not in text, literal


def test_a_subset_run_says_it_is_not_comparable(tmp_path):
    recipe = get_recipe("s7").replace(epochs=3)  # --epochs 3: the seed ran 200
    report = build_report(tmp_path, recipe, _result(2000), _metrics(3), _summary(1000, 3), "EVA6")
    assert report.banner == (
        "1,000 of 50,000 training images, 2,000 of 10,000 test images, 3 "
        "of 200 epochs: not comparable with the seed's 87.17 %"
    )
    assert report.headline == "93.41 % test accuracy"
    assert report.comparison == "The seed reported 87.17 % (EVA6, 200 epochs)."
    facts = dict(report.facts)
    assert facts["epochs"].startswith("4 min 42 s") and facts["throughput"] == "11,823 images/s"
    assert "wall time" not in facts  # not recorded by the train command: not claimed
    assert facts["best test accuracy"] == "41.33 % (epoch 3)"
    assert report.epoch_rows[0][3:6] == ["41.23 %", "1.999", "39.11 %"]
    write_report(tmp_path, report)
    for text in (
        _visible_text((tmp_path / "report.html").read_text()),
        (tmp_path / "report.md").read_text(),
    ):
        _assert_for_people(text)
        assert "not comparable with the seed's 87.17 %" in text and "4 min 42 s" in text


def test_a_full_run_with_tta_has_no_banner_and_both_accuracies(tmp_path):
    recipe = get_recipe("speedrun94")
    summary = _summary(
        50_000,
        recipe.epochs,
        whiten_time_s=0.01,
        tta_time_s=0.3,
        timed_span_s=3.456789,
        compiled=True,
        compile_time_s=41.0,
    )
    report = build_report(
        tmp_path, recipe, _result(10_000), _metrics(recipe.epochs, tta=True), summary, "airbench94"
    )
    assert report.banner is None
    assert report.headline == (
        "93.41 % test accuracy with TTA (flip_translate), 93.10 % single view"
    )
    timed = dict(report.facts)["timed span"]
    assert timed.startswith("3.46 s (whitening 0.01 s") and "compile warm-up 41.0 s apart" in timed
    assert report.epoch_rows[-1][5] == "94.01 % (TTA)"
    for text in (_visible_text(render_html(report)), render_markdown(report)):
        _assert_for_people(text)


@pytest.mark.parametrize("name", ["s7", "speedrun94", "resnet18"])
def test_the_recipe_fields_shown_are_those_the_run_used(name):
    recipe = get_recipe(name)
    used, rest = recipe_fields_used(recipe)
    assert {"model", "lr", "optimizer", "scheduler", "batch_size"} <= set(used)
    assert not set(used) & set(rest)
    muon = {f for f in used + rest if f.startswith("muon_")}
    if recipe.optimizer == "muon":
        assert muon <= set(used) and {"whiten_images", "bias_lr"} <= set(used)
    else:
        assert muon <= set(rest) and "whiten_images" in rest
    if recipe.scheduler == "onecycle":
        assert "pct_start" in used and "step_size" in rest


def test_a_model_near_chance_is_said_under_its_grad_cam(tmp_path):
    (tmp_path / "gradcam_dilated5A.png").write_bytes(b"png")
    recipe = get_recipe("s7")
    low = build_report(tmp_path, recipe, _result(10_000, acc=11.0), _metrics(2), {}, "EVA6")
    caption = dict((t, c) for t, _, c in low.figures)["Grad-CAM at dilated5A"]
    assert "near chance (10 %)" in caption
    high = build_report(tmp_path, recipe, _result(10_000), _metrics(2), {}, "EVA6")
    assert "near chance" not in dict((t, c) for t, _, c in high.figures)["Grad-CAM at dilated5A"]


def test_two_accuracies_for_one_run_are_named_where_both_appear(tmp_path):
    # the run: 46.18 % in training (bf16, compiled), 46.20 % re-evaluated in float32
    recipe = get_recipe("s7").replace(epochs=1)
    summary = _summary(50_000, 1, final_test_acc=46.18, compiled=True)
    report = build_report(tmp_path, recipe, _result(10_000, acc=46.2), _metrics(1), summary, "EVA6")
    note = dict(report.facts)["two accuracies"]
    assert note.startswith("46.20 % when the evaluation re-runs the checkpoint in float32")
    assert "46.18 % in the training's own evaluation (bfloat16, compiled)" in note
    same = build_report(tmp_path, recipe, _result(10_000, acc=46.18), _metrics(1), summary, "EVA6")
    assert "two accuracies" not in dict(same.facts)  # one number when they agree
    _assert_for_people(_visible_text(render_html(report)))


def test_the_wall_time_is_the_commands_with_its_parts(tmp_path):
    # the run: 4 min 17 s of epochs shown, 5 min 45 s real
    wall = {"startup_s": 21.0, "compile_s": 57.0, "epochs_s": 257.0, "evaluation_s": 10.0}
    summary = _summary(1000, 3, wall=wall, compiled=True)
    report = build_report(
        tmp_path, get_recipe("s7").replace(epochs=3), _result(2000), _metrics(3), summary, "EVA6"
    )
    assert dict(report.facts)["wall time"] == (
        "5 min 45 s (start-up 21.0 s, compile warm-up 57.0 s, epochs 4 min 17 s, evaluation "
        "and report 10.0 s)"
    )


def test_a_cpu_run_without_a_named_gpu_says_how_to_model_one(tmp_path):
    recipe = get_recipe("s7").replace(epochs=3)
    report = build_report(tmp_path, recipe, _result(2000), _metrics(3), _summary(1000, 3), "EVA6")
    text, figure, _, rows = report.roofline
    assert figure == "" and rows == []
    assert f"python -m fastcifar.evaluate {tmp_path} --roofline-gpu h100" in text
    write_report(tmp_path, report)
    html, md = (tmp_path / "report.html").read_text(), (tmp_path / "report.md").read_text()
    assert "Where the time goes" in html and "roofline of the training step" not in html
    assert "--roofline-gpu h100" in md and "![roofline]" not in md
    assert "H100" not in _visible_text(html)  # no GPU claimed for this CPU run


def test_a_fractional_recipe_length_is_written_as_it_is(tmp_path):
    recipe = get_recipe("speedrun94_progressive")  # 8.875 epochs
    report = build_report(tmp_path, recipe, _result(2000), _metrics(1), _summary(1000, 1), "E1")
    assert "1 of 8.875 epochs" in report.banner and "of 9 epochs" not in report.banner


def test_a_reference_that_is_no_seed_is_called_the_reference(tmp_path):
    fast = get_recipe("speedrun94_progressive")
    report = build_report(tmp_path, fast, _result(2000), _metrics(1), _summary(1000, 1), "E1")
    assert report.comparison == "The reference reported 94.00 % (E1, 8.875 epochs)."
    assert report.banner.endswith("not comparable with the reference's 94.00 %")
    zoo = get_recipe("efficientnet_b0")
    report = build_report(tmp_path, zoo, _result(2000), _metrics(1), _summary(1000, 1), "kuangliu")
    assert report.comparison == "The reference (kuangliu) reports no accuracy for this recipe."
