"""The one source of every roofline figure in the docs: the committed JSON under
``benchmarks/roofline/``, and the blocks of README.md, docs/DESIGN.md and
benchmarks/RESULTS.md generated from it.

    python scripts/roofline_figures.py count [NAME ...]   # recount (all recipes: no NAME)
    python scripts/roofline_figures.py write              # regenerate the docs' blocks
    python scripts/roofline_figures.py check              # exit 1 if a block is stale

``count`` writes ``benchmarks/roofline/NAME.json`` per recipe: the roofline command's
JSON (all three paths at the recipe's batch, bfloat16, channels_last, lowered for a fake
CUDA device with the H100's profile; the speed-run recipes with ``--whole-run`` on an
A100's, with and without the max-pool backward's decomposition), plus ``cpu_lowered``
(the compile paths lowered for the CPU, as counted before issue 40: beside the CUDA
figure for one release) and ``check``: the eager path (and both compile paths of
``CHECK_COMPILED``) at ``CHECK_BATCH`` images, which ``tests/test_roofline_figures.py``
recounts (a full count is too slow for CI): a change of a counting rule fails that test
until the JSON is recounted and the docs rewritten.

A generated block sits between ``<!-- roofline-figures:NAME -->`` and
``<!-- /roofline-figures:NAME -->``; ``BLOCKS`` says what each holds.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "benchmarks" / "roofline"
DOCS = ("README.md", "docs/DESIGN.md", "benchmarks/RESULTS.md")
CHECK_BATCH = 8  # images per step of the JSON's "check" count
# the compile and fastcifar paths recounted by the consistency test (the eager path of
# every recipe is): the recipes README and DESIGN quote
CHECK_COMPILED = ("speedrun94_fast", "s7")
SPEED_RUNS = ("speedrun94", "speedrun94_fast", "speedrun94_progressive")
PATHS = ("eager", "compile", "fastcifar")


def _bytes(count) -> dict:
    return {"bytes": count.bytes, "flops": count.flops}


def count(name: str) -> dict:
    """Every count of recipe ``name`` that the docs quote (the module docstring)."""
    import torch

    from fastcifar.recipes import get_recipe
    from fastcifar.roofline.__main__ import _whole_runs
    from fastcifar.roofline.count import count_step
    from fastcifar.roofline.gpus import get_gpu
    from fastcifar.roofline.result import row, steps_per_epoch
    from fastcifar.roofline.run import recipe_setup
    from fastcifar.roofline.saved import saved_summary

    recipe = get_recipe(name)
    key = "a100" if name in SPEED_RUNS else "h100"
    gpu = get_gpu(key)
    setup = recipe_setup(recipe)
    counts = count_step(setup, PATHS, gpu)
    steps = steps_per_epoch(setup.batch_size, recipe.drop_last)
    out = {"rows": [row(counts[p], gpu, steps) for p in PATHS]}
    if name in SPEED_RUNS:
        out["whole_run"] = _whole_runs(recipe, setup, counts, gpu, lambda line: None)
    out["saved_bytes"], _ = saved_summary(setup, PATHS)
    control = count_step(setup, PATHS[1:], cpu_control=True)
    out["cpu_lowered"] = {p: c.bytes / setup.batch_size for p, c in control.items()}
    out["check"] = check_count(name, key)
    out["counted"] = {"date": datetime.date.today().isoformat(), "torch": torch.__version__}
    return out


def check_count(name: str, gpu_name: str) -> dict:
    """The small count the consistency test repeats: ``name``'s step at ``CHECK_BATCH``
    images, the eager path (and, in ``CHECK_COMPILED``, both compile paths) for GPU
    ``gpu_name``. Counted in a process of its own: a compile-path count depends on what
    the process lowered before (speedrun94_fast's fastcifar path moved 36,864 bytes fewer
    after speedrun94's; the cause is not found), so each count starts clean."""
    script = (
        "import json, sys; sys.path.insert(0, 'scripts'); import roofline_figures as f; "
        f"print(json.dumps(f._check_here({name!r}, {gpu_name!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode:
        raise RuntimeError(f"the check count of {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_here(name: str, gpu_name: str) -> dict:
    from fastcifar.recipes import get_recipe
    from fastcifar.roofline.count import count_step
    from fastcifar.roofline.gpus import get_gpu
    from fastcifar.roofline.run import recipe_setup

    checked = PATHS if name in CHECK_COMPILED else ("eager",)
    small = count_step(recipe_setup(get_recipe(name), CHECK_BATCH), checked, get_gpu(gpu_name))
    return {"batch": CHECK_BATCH, **{p: _bytes(c) for p, c in small.items()}}


def load() -> dict[str, dict]:
    """{recipe: its committed JSON} of every recipe counted."""
    out = {}
    for path in sorted(FOLDER.glob("*.json")):
        data = json.loads(path.read_text())
        if "check" in data:
            out[path.stem] = data
    return out


def _rows(data: dict) -> dict[str, dict]:
    return {r["path"]: r for r in data["rows"]}


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f}"


def _epoch_floor_s(row: dict, gpu) -> float:
    """One epoch's floor of a JSON row on ``gpu`` (the row's own is for the GPU it was
    counted for: the speed runs' is an A100)."""
    from fastcifar.roofline.gpus import sum_lower_bound_s

    step = sum_lower_bound_s(((x["flops"], x["bytes"]) for x in row["layers"]), gpu)
    return step * row["steps_per_epoch"]


def recipes_table(data: dict[str, dict]) -> str:
    """RESULTS: per recipe, GFLOP and MB per image a step on each path (the compile paths
    lowered for CUDA, the CPU-lowered figure beside), fastcifar/compile, and one epoch's
    floor on an H100 SXM."""
    from fastcifar.roofline.gpus import get_gpu

    h100 = get_gpu("h100")
    lines = [
        "| recipe | batch | GFLOP/img | MB/img eager | compile (CPU-lowered) "
        "| fastcifar (CPU-lowered) | fastcifar/compile | epoch floor s, H100: eager / compile "
        "/ fastcifar |",
        "|" + "---|" * 8,
    ]
    for name, d in data.items():
        r, cpu = _rows(d), d["cpu_lowered"]
        e, c, f = r["eager"], r["compile"], r["fastcifar"]
        floors = " / ".join(f"{_epoch_floor_s(r[p], h100):.2f}" for p in PATHS)
        lines.append(
            f"| {name} | {e['batch_size']} | {e['flops_per_image'] / 1e9:.3f} "
            f"| {_mb(e['bytes_per_image'])} | {_mb(c['bytes_per_image'])} "
            f"({_mb(cpu['compile'])}) | {_mb(f['bytes_per_image'])} ({_mb(cpu['fastcifar'])}) "
            f"| {f['bytes_per_image'] / c['bytes_per_image']:.2f} | {floors} |"
        )
    return "\n".join(lines)


def floors_table(data: dict[str, dict]) -> str:
    """RESULTS and README: each speed-run recipe's whole-run floor on the A100 80GB and
    40GB, per path, with and without the max-pool backward's decomposition, against the
    published time of its method."""
    lines = [
        "| recipe | path | floor s, A100 80GB / 40GB | without the max-pool decomposition "
        "| record | record s | floor / record, 80GB / 40GB |",
        "|" + "---|" * 7,
    ]
    for name, d in data.items():
        for run in d.get("whole_run", []):
            other = run.get("without_maxpool_decomposition")
            for rec in run["records"]:
                f = rec["floor_s"]
                frac = rec["floor_over_record"]
                without = "—"
                if other is not None:
                    o = other["records"][0]["floor_s"]
                    without = f"{o['a100']:.3f} / {o['a100-40gb']:.3f}"
                flag = " **suspect**" if rec["suspect"] else ""
                lines.append(
                    f"| {name} | {run['path']} | {f['a100']:.3f} / {f['a100-40gb']:.3f} "
                    f"| {without} | {rec['record']} | {rec['record_s']} "
                    f"| {frac['a100'] * 100:.0f} % / {frac['a100-40gb'] * 100:.0f} %{flag} |"
                )
    return "\n".join(lines)


def chains_sentence(data: dict[str, dict]) -> str:
    """DESIGN: the chains' effect, compile -> fastcifar MB per image a step and the
    activations saved for the backward, eager -> fastcifar, on the zoo's fast recipes."""
    parts, saved = [], []
    for name in (
        "mobilenetv2_fast",
        "efficientnet_b0_fast",
        "regnetx_200mf_fast",
        "resnext29_32x4d_fast",
    ):
        d = data.get(name)
        if d is None:
            continue
        r = _rows(d)
        c, f = r["compile"]["bytes_per_image"], r["fastcifar"]["bytes_per_image"]
        parts.append(f"{name} {_mb(c)} -> {_mb(f)} ({f / c:.2f}x)")
        s = d["saved_bytes"]
        saved.append(f"{name} {s['eager'] / 1e6:,.0f} -> {s['fastcifar'] / 1e6:,.0f} MB")
    when = next(iter(data.values()))["counted"] if data else {}
    return (
        f"Counted by `python scripts/roofline_figures.py count` ({when.get('date')}, torch "
        f"{when.get('torch')}, lowered for CUDA with the H100's profile, bfloat16, "
        f"channels_last, each recipe's batch): MB moved per image per training step, "
        f"compile -> fastcifar: {', '.join(parts)}; activations saved for the backward "
        f"(a step), eager -> fastcifar: {', '.join(saved)}."
    )


BLOCKS = {
    "recipes": recipes_table,
    "floors": floors_table,
    "chains": chains_sentence,
}


def _rewrite(text: str, data: dict[str, dict]) -> str:
    """``text`` with every generated block replaced by what ``BLOCKS`` makes of ``data``."""
    for name, make in BLOCKS.items():
        start, end = f"<!-- roofline-figures:{name} -->", f"<!-- /roofline-figures:{name} -->"
        pos = 0
        while (i := text.find(start, pos)) >= 0:
            j = text.index(end, i)
            text = text[: i + len(start)] + "\n" + make(data) + "\n" + text[j:]
            pos = text.index(end, i) + len(end)
    return text


def stale() -> list[str]:
    """The docs whose generated blocks differ from what the committed JSON makes."""
    data = load()
    texts = {doc: (ROOT / doc).read_text() for doc in DOCS}
    return [doc for doc, text in texts.items() if _rewrite(text, data) != text]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("count", "write", "check"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    if argv[0] == "count":
        from fastcifar.recipes import RECIPES

        names = argv[1:] or list(RECIPES)
        if len(names) > 1:  # each recipe in a process of its own (check_count says why)
            for name in names:
                subprocess.run([sys.executable, __file__, "count", name], check=True)
            return 0
        print(f"roofline_figures: counting {names[0]}", flush=True)
        (FOLDER / f"{names[0]}.json").write_text(json.dumps(count(names[0]), indent=1))
        return 0
    if argv[0] == "write":
        data = load()
        for doc in DOCS:
            path = ROOT / doc
            path.write_text(_rewrite(path.read_text(), data))
        return 0
    bad = stale()
    for doc in bad:
        print(
            f"{doc}: its roofline figures differ from benchmarks/roofline/: run "
            f"python scripts/roofline_figures.py write",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
