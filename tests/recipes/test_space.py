"""The search space of fastcifar.tune (fastcifar.recipes.space): the command-line form, the
YAML and JSON files, and every refusal in one line."""

from __future__ import annotations

import json

import pytest

from fastcifar.errors import FastCifarError
from fastcifar.recipes.space import Dimension, parse_space, read_space, space_from_argument


def test_the_inline_form_types_each_value_as_its_field():
    space = parse_space(
        "lr=loguniform(0.01,0.5) weight-decay=uniform(0, 1e-3) label_smoothing=choice(0,0.1) "
        "epochs=grid(2,3) nesterov=choice(true,false)"
    )
    assert space == (
        Dimension("lr", "loguniform", (0.01, 0.5)),
        Dimension("weight_decay", "uniform", (0.0, 1e-3)),
        Dimension("label_smoothing", "choice", (0.0, 0.1)),
        Dimension("epochs", "grid", (2, 3), integer=True),
        Dimension("nesterov", "choice", (True, False)),
    )
    assert str(space[0]) == "lr=loguniform(0.01,0.5)"


def test_yaml_and_json_files_give_the_same_space(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "lr: loguniform(0.01, 0.5)\nbatch_size: {choice: [256, 512]}\n"
    )
    (tmp_path / "s.json").write_text(
        json.dumps({"lr": "loguniform(0.01,0.5)", "batch_size": {"choice": [256, 512]}})
    )
    expected = (
        Dimension("lr", "loguniform", (0.01, 0.5)),
        Dimension("batch_size", "choice", (256, 512), integer=True),
    )
    assert read_space(tmp_path / "s.yaml") == expected
    assert space_from_argument(str(tmp_path / "s.json")) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr=uniform(0.1,1)", "'lrr' is not a recipe field: did you mean lr?"),
        ("lr=logunif(0.1,1)", "'logunif' (lr) is not a distribution: use one of loguniform"),
        ("lr=loguniform(0,1)", "takes two bounds a < b, both above 0"),
        ("lr=uniform(0.5,0.1)", "takes two bounds a < b"),
        ("lr=uniform(0.5)", "takes two bounds a < b"),
        (
            "label_smoothing=uniform(0.5,1.5)",
            "--label-smoothing 1.5 is out of range: pass 0 <= x < 1",
        ),
        ("epochs=choice(0,1)", "--epochs 0 is out of range"),
        ("epochs=choice(1.5)", "epochs takes int values, not '1.5'"),
        ("optimizer=choice(sgd,lion)", "--optimizer 'lion' is not valid: choose one of sgd"),
        ("lr", "cannot read 'lr': write field=distribution(arguments)"),
        ("lr=choice(0.1) lr=choice(0.2)", "lr is given twice"),
        ("", "--space is empty"),
        ("missing.yaml", "no such file"),
    ],
)
def test_a_bad_space_is_refused_in_one_line(text, message):
    with pytest.raises(FastCifarError) as info:
        space_from_argument(text)
    assert message in str(info.value) and "\n" not in str(info.value)
