"""speedrun94_progressive (the 2026 record, fulcrumresearch/cifar-10-speedrun's E1): the
per-epoch resolution schedule inside the training step, the linear decay to an lr floor,
lookahead averaging and the global max pool."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastcifar.engine.averaging import Lookahead
from fastcifar.errors import FastCifarError
from fastcifar.models import create_model
from fastcifar.models.speedrun import GlobalMaxPool
from fastcifar.recipes import get_recipe
from tests.conftest import make_tree


def test_a_run_follows_the_records_resolution_and_lr_schedule(tmp_path, monkeypatch):
    """2 steps an epoch over the record's 8.875 epochs: 18 steps, each at its epoch's
    resolution (24 px for 3 epochs, 28 for 3, 32 for 3), the lr decaying linearly over
    ceil(8.5 x 2) = 17 steps to 0.05 of its peak."""
    from fastcifar.engine.build import build_trainer
    from fastcifar.engine.rundir import RunOptions

    make_tree(tmp_path / "tree", per_class=1)
    recipe = get_recipe("speedrun94_progressive").replace(batch_size=4, whiten_images=8)
    opts = RunOptions(
        data=str(tmp_path / "tree"),
        workers=0,
        device="cpu",
        loader="gpu",
        train_subset=8,
        test_subset=4,
        compile=False,
    )
    (tmp_path / "run").mkdir()
    trainer = build_trainer(recipe, opts, tmp_path / "run")
    sizes, in_step = [], []
    model_forward, train_step = trainer.model.forward, trainer.train_step

    def forward(x):  # the input size of each training forward (not evaluation's)
        if in_step:
            sizes.append(x.shape[-1])
        return model_forward(x)

    def step(*args):
        in_step.append(True)
        try:
            return train_step(*args)
        finally:
            in_step.clear()

    monkeypatch.setattr(trainer.model, "forward", forward)
    monkeypatch.setattr(trainer, "train_step", step)
    trainer.fit()
    assert sizes == [24] * 6 + [28] * 6 + [32] * 6
    assert trainer.state.augment_time_s > 0  # every epoch built ahead, timed
    peak = recipe.lr
    want = [peak * max(0.05, 1 - s / 17) for s in range(18)]
    assert trainer.state.lrs == pytest.approx(want, rel=1e-12)
    assert trainer.opt.lookahead is not None and trainer.opt.lookahead.start == 17 - 8


def test_the_resolution_schedule_is_checked_in_one_line():
    recipe = get_recipe("speedrun94_progressive")
    assert [recipe.resolution(e) for e in (0, 3, 6, 8, 20)] == [24, 28, 32, 32, 32]
    assert recipe.replace(res_schedule="").resolution(0) is None
    with pytest.raises(FastCifarError, match=r"--res-schedule '24,x'.*comma-separated"):
        recipe.replace(res_schedule="24,x").validate()
    with pytest.raises(FastCifarError, match="from 8 to 32"):
        recipe.replace(res_schedule="48").validate()


def test_lookahead_pulls_the_weights_onto_their_average_every_few_steps():
    model = nn.Linear(3, 2)
    la = Lookahead(model, start=2, every=2, decay=0.7)
    history = []
    for step in range(1, 7):
        with torch.no_grad():
            model.weight.add_(1.0)  # an optimizer step
        before = model.weight.detach().clone()
        la.after_step(step)
        history.append((step, before, model.weight.detach().clone()))
    # step 2 takes the average (weights untouched); steps 4 and 6 pull onto it
    (_, w1, a1), (_, w2, a2), (_, w3, a3), (_, w4, a4), (_, w5, a5), (_, w6, a6) = history
    assert torch.equal(a1, w1) and torch.equal(a2, w2) and torch.equal(a3, w3)
    avg4 = 0.7 * w2 + 0.3 * w4
    torch.testing.assert_close(a4, avg4)
    assert torch.equal(a5, w5)
    torch.testing.assert_close(a6, 0.7 * avg4 + 0.3 * w6)


def test_global_max_pool_is_the_fixed_pool_at_32_px_and_works_at_24():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(GlobalMaxPool()(x), nn.MaxPool2d(3)(x), rtol=0, atol=0)
    model = create_model("speedrun94_progressive").eval()
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 10)
    with pytest.raises(RuntimeError):  # the fixed 3x3 pool on the 2x2 map of 24 px
        create_model("speedrun94_silu").eval()(torch.randn(2, 3, 24, 24))


def test_the_progressive_run_does_three_quarters_of_the_32_px_arithmetic():
    """torch's flop counter over the record's schedule: about 0.75x the same steps at
    32 px (the record's README: a 24 px step 0.56x, a 28 px step 0.77x)."""
    from fastcifar.roofline.progressive import run_flops

    out = run_flops(get_recipe("speedrun94_progressive"))
    steps = {res: row["steps"] for res, row in out["by_resolution"].items()}
    assert steps == {24: 96, 28: 96, 32: 92} and out["steps"] == 284
    fractions = {res: row["fraction_of_32px"] for res, row in out["by_resolution"].items()}
    assert 0.5 < fractions[24] < 0.6 and 0.7 < fractions[28] < 0.8 and fractions[32] == 1
    assert 0.72 < out["fraction_of_32px"] < 0.78
