"""fastcifar.recipes: every recipe validates, every Recipe and RunOptions field carries its
one description (help, choices) in its metadata, and the command's flags come from them."""

from __future__ import annotations

import dataclasses

import pytest

from fastcifar import train
from fastcifar.errors import FastCifarError
from fastcifar.recipes import RECIPES, Recipe, get_recipe, overridable_fields
from fastcifar.rundir import RunOptions


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
        with pytest.raises(FastCifarError, match=f"choose one of {choices[0]}") as e:
            base.replace(**{f.name: "nonsense"}).validate()
        assert "\n" not in str(e.value)


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
    assert opts == dataclasses.replace(RunOptions(), amp=True, workers=3, loader="gpu",
                                       world_size=2)  # fmt: skip
