"""fastcifar.recipes: every recipe validates, every Recipe and RunOptions field carries its
one description (help, choices) in its metadata, and the command's flags come from them."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fastcifar import train
from fastcifar.engine.rundir import RunOptions
from fastcifar.errors import FastCifarError
from fastcifar.options import check_fields, field_type
from fastcifar.recipes import RECIPES, Recipe, get_recipe, overridable_fields


def test_every_recipe_validates():
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.validate() is recipe


@pytest.mark.parametrize("cls", [Recipe, RunOptions], ids=lambda c: c.__name__)
def test_every_field_has_its_help_in_its_metadata(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"
    assert not hasattr(train, "_FIELD_HELP")  # no second table of help texts


def test_every_recipe_choice_is_checked_in_one_line():
    base = get_recipe("s7")
    for f in dataclasses.fields(Recipe):
        choices = f.metadata.get("choices")
        if not choices:
            continue
        assert getattr(base, f.name) in choices or f.name in ("model", "augmentation")
        with pytest.raises(FastCifarError, match=f"choose one of {tuple(choices)[0]}") as e:
            base.replace(**{f.name: "nonsense"}).validate()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("cls", [Recipe, RunOptions])
def test_every_bound_in_the_metadata_is_checked_in_one_line(cls):
    # each bounded field: a value just outside each bound is refused, naming flag and range
    base = get_recipe("s7") if cls is Recipe else RunOptions()
    bounded = [f for f in dataclasses.fields(cls) if f.metadata.get("bounds")]
    assert len(bounded) >= 4
    for f in bounded:
        for kind, edge in f.metadata["bounds"].items():
            step = 1 if field_type(f) is int else 1e-9
            bad = {"min": edge - step, "above": edge, "max": edge + step, "below": edge}[kind]
            with pytest.raises(
                FastCifarError, match=f"--{f.name.replace('_', '-')} .* is out of range: pass "
            ) as e:
                check_fields(dataclasses.replace(base, **{f.name: bad}))
            assert "\n" not in str(e.value)
        check_fields(base)  # the defaults are inside


def _flag(parser, name):
    (action,) = [a for a in parser._actions if f"--{name.replace('_', '-')}" in a.option_strings]
    return action


def test_the_parser_is_generated_from_the_fields():
    parser = train.build_parser("speedrun94")
    for f in overridable_fields():
        action = _flag(parser, f.name)
        assert action.help.startswith(f.metadata["help"])
        assert action.help.endswith(f"[{getattr(RECIPES['speedrun94'], f.name)}]") or isinstance(
            getattr(RECIPES["speedrun94"], f.name), bool
        )
    assert _flag(parser, "batch_size").help.endswith("[2000]")  # speedrun94's, not s7's
    assert _flag(parser, "muon_batched").help.endswith("[off]")
    for f in dataclasses.fields(RunOptions):
        if f.metadata["flag"]:
            assert _flag(parser, f.name).help.startswith(f.metadata["help"])
    with pytest.raises(ValueError):
        _flag(parser, "world_size")  # set by torchrun, not a flag


def test_run_options_take_the_flags_given_and_the_defaults_otherwise():
    args = train.build_parser().parse_args(["--amp", "--workers", "3", "--loader", "gpu"])
    opts = train.run_options(args, world_size=2)
    assert (opts.amp, opts.workers, opts.loader, opts.world_size) == (True, 3, "gpu", 2)
    assert (opts.compile, opts.kernels, opts.device) == (False, "auto", "auto")
    assert opts == dataclasses.replace(
        RunOptions(), amp=True, workers=3, loader="gpu", world_size=2
    )


@pytest.mark.parametrize(
    "model", ["mobilenetv2", "resnext29_32x4d", "regnetx_200mf", "efficientnet_b0", "shufflenetv2"]
)
def test_zoo_recipes_are_the_reference_training_and_a_fast_variant(model):
    from fastcifar.models import MODELS

    ref, fast = get_recipe(model), get_recipe(f"{model}_fast")
    # kuangliu/pytorch-cifar main.py: SGD 0.1, momentum 0.9, wd 5e-4, cosine T_max 200
    assert (ref.optimizer, ref.lr, ref.momentum, ref.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert (ref.scheduler, ref.epochs, ref.batch_size) == ("cosine", 200, 128)
    assert ref.augmentation == "crop4_flip" and ref.loss == "cross_entropy"
    assert ref.expected_accuracy == {
        "mobilenetv2": 94.43,
        "resnext29_32x4d": 94.73,
        "regnetx_200mf": 94.24,
    }.get(model)
    assert MODELS[model].source.startswith("kuangliu/pytorch-cifar 49b7aa9")
    assert fast.model == model and fast.expected_accuracy is None  # not measured yet
    assert fast.augmentation == "flip_translate4" and fast.label_smoothing > 0
    assert fast.scheduler == "onecycle" and fast.epochs < ref.epochs


def test_a_fast_zoo_recipe_trains_on_the_gpu_loader(tiny_tree, tmp_path):
    from fastcifar.engine.build import build_trainer
    from fastcifar.engine.trainer import RunOptions

    recipe = get_recipe("shufflenetv2_fast").replace(epochs=1, batch_size=10)
    opts = RunOptions(data=str(tiny_tree), workers=0, device="cpu", loader="auto")
    trainer = build_trainer(recipe, opts, tmp_path)
    assert trainer.components.loader_name == "gpu"  # flip_translate4 is the gpu loader's
    summary = trainer.fit()
    assert summary["epochs"] == 1 and summary["train_images"] == 40


def test_cosine_schedule_anneals_to_zero_over_the_epochs():
    import torch

    from fastcifar.engine.optim import make_schedule

    recipe = get_recipe("mobilenetv2").replace(epochs=4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    schedule = make_schedule(opt, recipe, steps_per_epoch=10)
    lrs = []
    for _ in range(4):
        opt.step()
        schedule.after_epoch(0.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)])
