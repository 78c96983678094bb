"""Run directories are safe to load: weights-only checkpoints, one line for a corrupt one,
and the previous good checkpoint survives a crash mid-write."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastcifar.engine import rundir
from fastcifar.engine.build import build_trainer
from fastcifar.engine.trainer import RunOptions
from fastcifar.errors import run_cli
from fastcifar.evaluate import main as evaluate_main
from fastcifar.recipes import get_recipe
from fastcifar.train import main as train_main
from tests.conftest import make_tree


class _Payload:
    """Not a tensor, number, string or container: weights_only refuses to unpickle it."""

    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True
        return "code ran"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-epoch s7 run on 20 tiny images, trained through the CLI."""
    root = tmp_path_factory.mktemp("ckpt")
    make_tree(root / "tree", per_class=2)
    run = root / "run"
    argv = [
        "--data",
        str(root / "tree"),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--batch-size",
        "10",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-evaluate",
    ]
    assert run_cli(train_main, argv) == 0
    return run


def _one_line_error(code: int, capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err
    return err


def test_checkpoints_load_weights_only(finished_run):
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(finished_run / name, weights_only=True)
        assert ckpt["state"]["epoch"] >= 1 and "model" in ckpt


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    (dst / "summary.json").unlink()  # as if it had been killed before the end
    return dst


def test_truncated_checkpoint_given_to_resume_is_one_line(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    code = run_cli(train_main, ["--resume", str(run)])
    err = _one_line_error(code, capsys, str(run / "last.pt"), "does not load")
    # the whole sentence: what is wrong and the fix, nothing of torch's cut mid-way
    assert err.endswith(
        "(it is truncated or corrupt: not a whole zip archive): start a new run (drop --resume)"
    ), err


def test_checkpoint_that_would_run_code_is_refused(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["extra"] = _Payload()
    torch.save(ckpt, run / "last.pt")
    torch.save(ckpt, run / "best.pt")
    code = run_cli(train_main, ["--resume", str(run)])
    _one_line_error(code, capsys, str(run / "last.pt"))
    code = run_cli(evaluate_main, [str(run), "--device", "cpu"])
    _one_line_error(code, capsys, str(run), "does not load", "objects other than tensors")
    assert not _Payload.ran


def test_corrupt_checkpoint_given_to_evaluate_is_one_line(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        (run / name).write_bytes(b"not a checkpoint at all")
    code = run_cli(evaluate_main, [str(run), "--device", "cpu"])
    _one_line_error(code, capsys, str(run), ".pt does not load")


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    make_tree(tmp_path / "tree", per_class=2)
    recipe = get_recipe("s7").replace(epochs=2, batch_size=10)
    opts = RunOptions(data=str(tmp_path / "tree"), workers=0, device="cpu")
    run = tmp_path / "run"
    run.mkdir()
    t = build_trainer(recipe, opts, run)
    t.train_epoch(0)
    t.save_epoch(is_best=True)
    good = (run / "last.pt").read_bytes()

    def dies_half_way(obj, path):
        Path(path).write_bytes(b"partial")  # the process dies part-way through the write
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        t.save_epoch(is_best=True)
    assert (run / "last.pt").read_bytes() == good
    assert torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] >= 0


# A run directory written by main at 2f49f9c, before the package was laid out as its layers
# (issue 39): the attention recipe for 2 epochs on 200 images of the JPEG archive, killed
# (SIGKILL) in its second epoch: its checkpoint, config.json and per-epoch files (best.pt
# left out: the same bytes as last.pt)
BEFORE_LAYOUT = Path(__file__).resolve().parents[1] / "fixtures" / "run-before-layout"


def test_a_run_written_before_the_layout_loads_and_resumes(tmp_path):
    import dataclasses
    import shutil

    from fastcifar.evaluate import load_model

    run = tmp_path / "run"
    shutil.copytree(BEFORE_LAYOUT, run)
    loaded = rundir.load_last(run, torch.device("cpu"))
    assert loaded is not None
    ckpt, state = loaded
    assert state.epoch == 1 and state.metrics[0]["test_acc"] == 12.0 and len(state.lrs) == 4
    recipe, options = rundir.read_config(run)
    assert recipe.name == "attention" and recipe.epochs == 2 and options.train_subset == 200
    model, _ = load_model(run)
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
    # resumed under today's code on other images (the same count, so the same 4 steps an
    # epoch): the second epoch trains on from the first's weights, optimizer and schedule
    make_tree(tmp_path / "tree", per_class=20)
    options = dataclasses.replace(options, data=str(tmp_path / "tree"), test_subset=None, workers=0)
    trainer = build_trainer(recipe, options, run, resume=True)
    assert trainer.state.epoch == 1
    trainer.fit()
    assert trainer.state.epoch == 2 and len(trainer.state.metrics) == 2
    assert len(trainer.state.lrs) == 8  # the schedule went on from step 4 to its end
