"""One source for every roofline figure: the docs' generated blocks equal what
scripts/roofline_figures.py makes of the committed JSON, and the committed JSON equals
what the roofline counts today (at the JSON's small check batch: a full count of every
recipe is the background's job, not CI's)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT


def _figures():
    name = "scripts_roofline_figures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts/roofline_figures.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


FIGURES = _figures()
COMMITTED = FIGURES.load()


def test_every_recipe_is_counted_and_every_doc_holds_the_generated_figures():
    from fastcifar.recipes import RECIPES

    assert set(COMMITTED) == set(RECIPES)
    for doc in FIGURES.DOCS:  # each doc carries at least one generated block
        assert "<!-- roofline-figures:" in (ROOT / doc).read_text(), doc
    assert FIGURES.stale() == [], "run: python scripts/roofline_figures.py write"


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    data = {name: dict(d) for name, d in COMMITTED.items()}
    name = "speedrun94_fast"
    rows = [dict(r) for r in data[name]["rows"]]
    rows[0]["bytes_per_image"] *= 1.01  # one figure recounted, the docs not rewritten
    data[name]["rows"] = rows
    monkeypatch.setattr(FIGURES, "load", lambda: data)
    assert "benchmarks/RESULTS.md" in FIGURES.stale()


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_the_committed_counts_are_what_the_roofline_counts_today(name):
    from fastcifar.recipes import get_recipe
    from fastcifar.roofline.count import count_step
    from fastcifar.roofline.gpus import get_gpu
    from fastcifar.roofline.run import recipe_setup

    check = COMMITTED[name]["check"]
    paths = [p for p in FIGURES.PATHS if p in check]
    assert paths == (list(FIGURES.PATHS) if name in FIGURES.CHECK_COMPILED else ["eager"])
    key = COMMITTED[name]["rows"][1]["lowered_for"].removeprefix("cuda:")
    if name in FIGURES.CHECK_COMPILED:  # in a fresh process, as it was counted
        today = {p: c for p, c in FIGURES.check_count(name, key).items() if p != "batch"}
    else:
        counts = count_step(recipe_setup(get_recipe(name), check["batch"]), paths, get_gpu(key))
        today = {p: {"bytes": c.bytes, "flops": c.flops} for p, c in counts.items()}
    assert today == {p: check[p] for p in paths}, (
        f"{name}: the roofline counts differently now: recount with python "
        f"scripts/roofline_figures.py count {name}, then write"
    )
