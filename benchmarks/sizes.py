"""How big the benchmarks run: one switch, ``FASTCIFAR_BENCH_SIZE`` (``scripts/bench.sh``
sets it).

* ``smoke``: one round at the tiniest sizes, one recipe per code path (``smoke_sample``).
  CI runs it to prove that every benchmark still runs; its numbers mean nothing and go
  nowhere.
* ``cpu`` (the default): the CPU-size measurement whose numbers go into
  benchmarks/RESULTS.md (``scripts/bench.sh``).
* ``full``: the GPU sizes, the whole training set (``scripts/bench.sh --full``;
  ``FASTCIFAR_BENCH_FULL=1`` says the same, as scripts/gpu_check.py sets it).
"""

from __future__ import annotations

import os

SIZES = ("smoke", "cpu", "full")

SIZE = os.environ.get("FASTCIFAR_BENCH_SIZE") or (
    "full" if os.environ.get("FASTCIFAR_BENCH_FULL") == "1" else "cpu"
)
if SIZE not in SIZES:
    raise SystemExit(
        f"FASTCIFAR_BENCH_SIZE={SIZE!r} is not a size: set it to one of {', '.join(SIZES)}"
    )
FULL = SIZE == "full"
SMOKE = SIZE == "smoke"


def smoke_sample(names, key) -> list[str]:
    """``names`` (recipe names) as a size runs them: at ``smoke`` only the first of each
    distinct ``key(recipe)`` (each optimizer, each augmentation: every code path once,
    since "it runs" is all smoke proves), else all of them."""
    from fastcifar.recipes import RECIPES

    if not SMOKE:
        return list(names)
    first: dict = {}
    for name in names:
        first.setdefault(key(RECIPES[name]), name)
    return list(first.values())
