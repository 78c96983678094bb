"""fastcifar.engine.rundir: an epoch's files and the summary (the checkpoint safety itself is
tests/engine/test_checkpoints.py's)."""

from __future__ import annotations

import json

import torch

from fastcifar.engine.rundir import RunState, save_epoch, summarise
from fastcifar.recipes import get_recipe


def _rows():
    return [
        {"epoch": 1, "test_acc": 50.0, "epoch_time_s": 2.0, "images_per_s": 100.0},
        {
            "epoch": 2,
            "test_acc": 60.0,
            "epoch_time_s": 3.0,
            "images_per_s": 300.0,
            "tta_test_acc": 61.5,
        },
    ]


def test_an_epochs_files_are_written_and_best_only_when_best(tmp_path):
    state = RunState(epoch=2, metrics=_rows(), lrs=[0.1, 0.2], step_losses=[2.3, 2.1])
    save_epoch(tmp_path, {"w": torch.ones(2)}, state, is_best=False)
    assert (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "lr.json").read_text()) == [0.1, 0.2]
    assert json.loads((tmp_path / "losses.json").read_text()) == [2.3, 2.1]
    save_epoch(tmp_path, {"w": torch.zeros(2)}, state, is_best=True)
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["w"], torch.zeros(2))
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left over


def test_summary_takes_the_tta_accuracy_and_the_records_timed_span():
    state = RunState(
        epoch=2,
        metrics=_rows(),
        train_time_s=4.0,
        whiten_time_s=0.5,
        tta_time_s=0.25,
        compile_time_s=9.0,
    )
    s = summarise(get_recipe("speedrun94"), state, device="cpu", loader="gpu")
    assert s["final_test_acc"] == 61.5 and s["final_test_acc_single_view"] == 60.0
    assert (s["best_test_acc"], s["best_epoch"]) == (60.0, 2)
    assert s["timed_span_s"] == 4.75 and s["compile_time_s"] == 9.0  # warm-up apart
    assert s["total_time_s"] == 5.0 and s["mean_images_per_s"] == 200.0
    assert s["device"] == "cpu" and s["loader"] == "gpu" and s["expected_accuracy"] == 94.01
