"""README's figures are measurements: every number with a unit in its "Measured" section
and in "Two commands" appears in benchmarks/RESULTS.md, where its date, machine and
command are."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

# a figure: 46.69 %, 107 images/s, 63-74 img/s, 75-168 s, 7 min 48 s, 57.2 s
FIGURE = re.compile(r"\d[\d,.]*(?:-\d[\d,.]*)?(?: min \d+)? ?(?:%|img/s|images/s|s\b)")


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("title", ["Measured", "Two commands"])
def test_readme_figures_are_in_results(title):
    readme = (ROOT / "README.md").read_text()
    results = " ".join((ROOT / "benchmarks" / "RESULTS.md").read_text().split())
    figures = FIGURE.findall(" ".join(_section(readme, title).split()))
    assert figures or title == "Two commands"
    missing = [f for f in figures if f not in results]
    assert not missing, f"README's {title!r} states {missing}, which RESULTS.md does not hold"
