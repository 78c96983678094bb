"""fastcifar.engine.loggers: the console line per epoch, TensorBoard, and progress within an epoch
(a tqdm bar on a terminal, timed lines in a log)."""

from __future__ import annotations

import re

from fastcifar.engine.loggers import ConsoleLogger, ProgressLines, TensorBoardLogger, progress_bar
from tests.conftest import run_train

ROW = {
    "epoch": 2,
    "lr": 0.0125,
    "train_loss": 1.23456,
    "train_acc": 55.5,
    "test_loss": 1.5,
    "test_acc": 50.25,
    "epoch_time_s": 12.34,
    "images_per_s": 4051.2,
}


def test_console_line(capsys):
    ConsoleLogger(24).on_epoch_end(ROW, is_best=True)
    ConsoleLogger(24).on_epoch_end({**ROW, "tta_test_acc": 51.0}, is_best=False)
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("epoch 2/24  lr 0.0125  train loss 1.2346 acc 55.50%")
    assert "test loss 1.5000 acc 50.25%" in first and first.endswith("4051 img/s  12.3 s")
    assert "TTA acc 51.00%" in second


def test_tensorboard_says_where_and_writes_every_number(tmp_path, capsys):
    logger = TensorBoardLogger(tmp_path / "tb")
    assert f"tensorboard: logging to {tmp_path / 'tb'}" in capsys.readouterr().out
    logger.on_epoch_end(ROW, is_best=True)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(ROW) - {"epoch"}
    assert events.Scalars("test_acc")[0].value == 50.25 and events.Scalars("test_acc")[0].step == 2


def test_progress_lines_in_a_log(capsys, monkeypatch):
    clock = iter(range(0, 1000, 10))  # 10 s per batch
    monkeypatch.setattr("fastcifar.engine.loggers.time.perf_counter", lambda: next(clock))
    bar = ProgressLines(8, "epoch 1/3", every_s=25)
    for step in range(8):
        bar.set_postfix(loss=f"{2.0 - step / 10:.3f}", img_s="128")
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "epoch 1/3: 3/8 batches (37 %), loss=1.800 img_s=128, 50.0 s left",
        "epoch 1/3: 6/8 batches (75 %), loss=1.500 img_s=128, 20.0 s left",
    ]
    assert isinstance(progress_bar(5, "x"), ProgressLines)  # pytest's stderr is no terminal


def test_progress_lines_before_any_values_have_no_empty_field(capsys, monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr("fastcifar.engine.loggers.time.perf_counter", lambda: next(clock))
    bar = ProgressLines(40, "epoch 1/1", every_s=5)
    bar.update(1)  # no set_postfix yet: the training loop posts values every 20 steps
    bar.set_postfix(loss="", img_s="99")
    bar.update(1)
    assert capsys.readouterr().out.splitlines() == [
        "epoch 1/1: 1/40 batches (2 %), 6 min 30 s left",
        "epoch 1/1: 2/40 batches (5 %), img_s=99, 6 min 20 s left",
    ]


def test_progress_lines_survive_a_library_that_quiets_stdout(capsys, monkeypatch):
    # lr_find quiets torch-lr-finder's prints with redirect_stdout: its own progress stays
    import contextlib
    import io

    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr("fastcifar.engine.loggers.time.perf_counter", lambda: next(clock))
    bar = ProgressLines(4, "lr_find", every_s=5)
    swallowed = io.StringIO()
    with contextlib.redirect_stdout(swallowed):
        bar.update(1)
        print("See the graph with LRFinder.plot()")
    assert capsys.readouterr().out == "lr_find: 1/4 batches (25 %), 30.0 s left\n"
    assert swallowed.getvalue() == "See the graph with LRFinder.plot()\n"


def test_a_logged_run_prints_progress_lines(tiny_tree, tmp_path):
    r = run_train(
        "--data",
        str(tiny_tree),
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-evaluate",
        "--out",
        str(tmp_path / "run"),
        "--progress-every",
        "0.000001",
    )
    assert r.returncode == 0, r.stderr
    assert "batch 10, 1 epoch, device cpu" in r.stdout  # one epoch, not "1 epochs"
    assert "warning: this run takes only 4 optimizer steps: the onecycle schedule" in r.stdout
    assert "(the seed reported 87.17% on all of CIFAR-10: not comparable" in r.stdout
    progress = [line for line in r.stdout.splitlines() if "batches (" in line]
    # from the first logged step: the running loss, accuracy and speed
    line = (
        r"epoch 1/1: ([123])/4 batches \(\d+ %\), "
        r"loss=(\d\.\d{3}) acc=(\d+\.\d) img_s=\d+, .* left$"
    )
    matches = [re.match(line, text) for text in progress]
    assert progress and all(matches), progress
    assert matches[0].group(1) == "1" and 1.0 < float(matches[0].group(2)) < 4.0


def test_the_running_values_are_the_epochs_means_so_far():
    import torch

    from fastcifar.engine.loggers import running_values

    losses = torch.tensor([2.0, 1.0, 0.0])
    values = running_values(losses[:2], torch.tensor(3), seen=20, start=0.0)
    assert values["loss"] == "1.500" and values["acc"] == "15.0" and int(values["img_s"]) >= 0


def test_progress_lines_say_when_values_are_due(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr("fastcifar.engine.loggers.time.perf_counter", lambda: now[0])
    bar = ProgressLines(8, "epoch 1/1", every_s=25)  # started at 0 s
    now[0] = 10.0
    assert not bar.due()
    bar.update(1)
    now[0] = 30.0
    assert bar.due()  # the next update prints: post the values first
    bar.set_postfix(loss="1.000")
    bar.update(1)
    assert capsys.readouterr().out.startswith("epoch 1/1: 2/8 batches (25 %), loss=1.000")
    now[0] = 31.0
    assert not bar.due()
