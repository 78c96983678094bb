"""The LR range test: the library function (model and optimizer restored), a recipe that
asks for it before training (``with_found_lr``), and the lr_find command."""

from __future__ import annotations

import torch

from fastcifar.engine.build import build_trainer
from fastcifar.engine.components import build_components
from fastcifar.engine.lr_range import range_test
from fastcifar.engine.optim import make_optimizer
from fastcifar.engine.trainer import RunOptions
from fastcifar.recipes import get_recipe
from tests.conftest import make_tree


def test_lr_range_test_restores_model_and_optimizer(tmp_path):
    make_tree(tmp_path / "tree", per_class=2)
    recipe = get_recipe("c1c2c3c40").replace(batch_size=10)
    c = build_components(
        recipe, RunOptions(data=str(tmp_path / "tree"), workers=0, device="cpu"), with_test=False
    )
    assert c.test_loader is None
    optimizer = make_optimizer(c.model, recipe)
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    opt_before = optimizer.state_dict()["param_groups"][0]["lr"]
    result = range_test(
        c.model,
        optimizer,
        c.criterion,
        c.train_loader,
        c.device,
        num_iter=12,
        plot=tmp_path / "lr.png",
    )
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
    t = build_trainer(
        recipe, RunOptions(data=str(tmp_path / "tree"), workers=0, device="cpu"), tmp_path
    )
    assert "lr_find: suggested lr" in capsys.readouterr().out
    assert t.recipe.lr != recipe.lr and 1e-6 <= t.recipe.lr <= 0.9
    assert t.opt.optimizer.param_groups[0]["lr"] == t.recipe.lr  # StepLR starts at the found lr


def test_lr_find_command_plots_and_suggests(tmp_path, capsys):
    from fastcifar.lr_find import main as lr_find_main

    make_tree(tmp_path / "tree", per_class=2)
    plot = tmp_path / "lr.png"
    assert (
        lr_find_main(
            [
                "--recipe",
                "c1c2c3c40",
                "--data",
                str(tmp_path / "tree"),
                "--num-iter",
                "6",
                "--device",
                "cpu",
                "--workers",
                "0",
                "--batch-size",
                "10",
                "--out",
                str(plot),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "c1c2c3c40: suggested lr" in out and plot.stat().st_size > 0
    assert "warning: an LR range test of 6 steps gives a rough suggestion" in out
    assert "See the graph" not in out and "Suggested LR" not in out  # the library's prints
    assert "lr_find: 6/6" not in out  # progress lines only every 30 s


def _recorded_curve():
    """A smoothed loss of the shape issue 44 recorded for resnet18 (2,000 images): flat,
    a fall to its minimum near 5e-3, a climb to 2.67 by 0.25, then a steeper fall in a
    recovery after it, which the whole curve's steepest descent would pick."""
    import numpy as np

    lrs = np.logspace(-6, 0, 120)
    x = np.log10(lrs)
    fall = 2.3 - 0.24 / (1 + np.exp(-(x + 3.0) * 4))  # steepest near 1e-3, to 2.06
    climb = np.where(x > -2.3, 0.61 * np.clip((x + 2.3) / 1.7, 0, 1), 0.0)  # to 2.67 at 0.25
    recovery = np.where(x > -0.55, -0.67 * (x + 0.55), 0.0)  # a steeper fall past 0.28
    return lrs.tolist(), (fall + climb + recovery).tolist()


def _finder_with(lrs, losses):
    from torch_lr_finder import LRFinder

    model = torch.nn.Linear(2, 2)
    finder = LRFinder(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss())
    finder.history = {"lr": list(lrs), "loss": list(losses)}
    return finder


def test_the_suggestion_is_taken_before_the_loss_blows_up(tmp_path):
    import numpy as np

    from fastcifar.engine.lr_range import before_minimum, suggest

    lrs, losses = _recorded_curve()
    lowest = int(np.argmin(losses[10:])) + 10
    assert 2e-3 < lrs[lowest] < 1e-2  # the curve's own minimum, before the blow-up
    # torch-lr-finder's rule over the whole curve (the old call) picks the recovery
    _, whole = _finder_with(lrs, losses).plot(skip_start=10, skip_end=1, suggest_lr=True)
    assert whole > 0.25
    assert before_minimum(losses, 10) == len(losses) - lowest - 1
    suggested = suggest(_finder_with(lrs, losses), 10, tmp_path / "lr.png")
    assert 3e-4 < suggested < 3e-3  # the steepest fall before the minimum (1e-3)
    assert (tmp_path / "lr.png").stat().st_size > 10_000


def test_range_test_warnings_name_a_far_suggestion_and_no_divergence():
    from fastcifar.engine.lr_range import RangeTest, warnings

    lrs, losses = _recorded_curve()
    far = warnings(RangeTest(lrs, losses, 0.4218, diverged=True), 10, reference_lr=0.0657)
    assert len(far) == 1 and "0.4218 is 6.4x the recipe's 0.0657" in far[0]
    low = warnings(RangeTest(lrs, losses, 0.01, diverged=True), 10, reference_lr=0.0657)
    assert len(low) == 1 and "1/6.6 of the recipe's" in low[0]
    near = RangeTest(lrs, losses, 0.05, diverged=False)
    (line,) = warnings(near, 10, reference_lr=0.0657)
    assert line.startswith("the loss had not diverged by the last lr (1)") and "--end-lr" in line
    assert warnings(RangeTest(lrs, losses, 0.05, diverged=True), 10, 0.0657) == []
