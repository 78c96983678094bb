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
