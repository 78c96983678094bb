"""fastcifar.engine.optim: the recipes' losses, the L1 penalty, the schedules and when they step,
and Optimization (one step, its checkpoint state)."""

from __future__ import annotations

import pytest
import torch

from fastcifar.engine.optim import criterion, l1_penalty, make_schedule
from fastcifar.engine.optimization import Optimization
from fastcifar.recipes import get_recipe


def test_recipe_loss_drives_the_criterion():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 10, generator=gen)  # not log-probabilities: NLL and CE differ
    y = torch.randint(0, 10, (6,), generator=gen)
    nll, ce = criterion("nll")(scores, y), criterion("cross_entropy")(scores, y)
    assert torch.allclose(nll, torch.nn.functional.nll_loss(scores, y))
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(scores, y))
    assert not torch.allclose(nll, ce)
    # on log-probabilities, smoothed NLL is smoothed cross-entropy
    logp = scores.log_softmax(1)
    smoothed = criterion("nll", 0.1)(logp, y)
    by_hand = 0.9 * torch.nn.functional.nll_loss(logp, y) + 0.1 * (-logp.mean(1)).mean()
    assert torch.allclose(smoothed, by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        criterion("hinge")


def test_l1_penalty_value_and_gradient():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    value = l1_penalty(model)
    expected = sum(p.detach().abs().mean() for p in model.parameters())
    torch.testing.assert_close(value, expected)
    value.backward()
    for p in model.parameters():  # d/dp mean(|p|) = sign(p) / numel
        torch.testing.assert_close(p.grad, p.detach().sign() / p.numel())


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2))


def _steps(opt: Optimization, model: torch.nn.Module, n: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(n):
        x = torch.randn(5, 3, 4, 4, generator=gen)
        opt.step(model(x).square().mean(), model, step)


@pytest.mark.parametrize("name", ["s7", "speedrun94", "c1c2c3c40"])
def test_optimization_state_round_trips_through_a_checkpoint(name):
    # one run steps 6 times; another steps 3, saves, loads into fresh objects, steps 3
    recipe = get_recipe(name).replace(ema=0.9)
    straight_model = _model()
    straight = Optimization(straight_model, recipe, 3, None, torch.device("cpu"))
    _steps(straight, straight_model, 6)

    model = _model()
    opt = Optimization(model, recipe, 3, None, torch.device("cpu"))
    _steps(opt, model, 3)
    saved, weights = opt.state_dict(), model.state_dict()
    model2 = _model()
    model2.load_state_dict(weights)
    opt2 = Optimization(model2, recipe, 3, None, torch.device("cpu"))
    opt2.load_state_dict(saved)
    gen_state = torch.Generator().manual_seed(1)
    for _ in range(3):  # the inputs of steps 4..6
        torch.randn(5, 3, 4, 4, generator=gen_state)
    for step in range(3, 6):
        x = torch.randn(5, 3, 4, 4, generator=gen_state)
        opt2.step(model2(x).square().mean(), model2, step)
    for a, b in zip(straight_model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert opt2.lr == straight.lr
    for a, b in zip(
        straight.evaluated(straight_model).parameters(),
        opt2.evaluated(model2).parameters(),
        strict=True,
    ):
        torch.testing.assert_close(a, b)  # the EMA too


def test_gradient_scaler_only_for_float16():
    recipe = get_recipe("s7")
    for dtype, scaled in ((torch.float16, True), (torch.bfloat16, False), (None, False)):
        opt = Optimization(_model(), recipe, 3, dtype, torch.device("cpu"))
        assert opt.scaler.is_enabled() is scaled, dtype


@pytest.mark.parametrize(
    ("scheduler", "when"),
    [
        ("onecycle", "step"),
        ("linear", "step"),
        ("cosine", "epoch"),
        ("step", "epoch"),
        ("plateau", "metric"),
        ("constant", "never"),
    ],
)
def test_each_schedule_steps_when_it_says(scheduler, when):
    model = _model()
    recipe = get_recipe("s7").replace(
        scheduler=scheduler, step_size=1, gamma=0.5, plateau_patience=0
    )
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    schedule = make_schedule(opt, recipe, steps_per_epoch=4)
    assert schedule.when == when
    start = opt.param_groups[0]["lr"]
    opt.step()  # (no gradients: changes nothing) the order PyTorch expects
    schedule.after_step()
    after_step = opt.param_groups[0]["lr"]
    assert (after_step != start) == (when == "step")
    schedule.after_epoch(50.0)
    schedule.after_epoch(40.0)  # worse: the plateau schedule lowers the lr
    assert (opt.param_groups[0]["lr"] != after_step) == (when in ("epoch", "metric"))


@pytest.mark.parametrize("steps", [3, 4, 5, 8])
def test_onecycle_survives_runs_of_a_few_steps(steps):
    # 4 steps at pct_start 0.25: PyTorch's warm-up phase would end at step 0 (a division
    # by zero); the warm-up moves to the middle and the lr still rises, then falls
    model = _model()
    recipe = get_recipe("mobilenetv2_fast").replace(epochs=1)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    schedule = make_schedule(opt, recipe, steps_per_epoch=steps)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps - 1):
        opt.step()
        schedule.after_step()
        lrs.append(opt.param_groups[0]["lr"])
    peak = lrs.index(max(lrs))
    assert 0 < peak < steps - 1 or steps == 3
    assert max(lrs) == pytest.approx(recipe.lr, rel=0.35) and lrs[-1] < max(lrs)
