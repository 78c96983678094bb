"""``python -m fastcifar.roofline --recipe NAME``: where one training step's time must go
on a GPU, counted on any machine.

Counts FLOPs and bytes moved per layer of one training step (forward, backward,
optimizer step) along the eager, torch.compile and fastcifar paths
(``fastcifar.roofline.count``), prints the ten costliest layers of the first path and
every path's totals with their lower-bound time on ``--gpu``, says which path moves
fewest bytes, and writes ``roofline.json`` and ``roofline.png`` under ``--out``. The
eager count takes seconds at any batch (fake tensors); each compile path is Inductor
lowering the forward and backward graphs for a fake CUDA device with ``--gpu``'s profile
at the batch asked for, on the CPU (nothing runs; 10-100 s). ``--whole-run`` adds the
floor of a whole run, against the published times of the speed-run recipes' methods on
both A100s, flagged SUSPECT above 80 % of one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fastcifar.cli import CommandParser, prog_name
from fastcifar.errors import FastCifarError, first_line, run_cli

AMP = {"bf16": "bfloat16", "fp16": "float16", "off": None}
PATH_NAMES = ("eager", "compile", "fastcifar")


def build_parser() -> CommandParser:
    """``python -m fastcifar.roofline``'s flags: what to count (``--model`` or ``--recipe``), the
    batch, dtype and layout, the paths, the GPU, the outputs.

    Returns:
        The parser.
    """
    from fastcifar.roofline.gpus import GPUS

    p = CommandParser(
        prog=prog_name("fastcifar.roofline"),
        description="FLOPs and bytes moved per layer of one training step, on the eager, "
        "torch.compile and fastcifar paths, and the lower-bound time on a GPU (a model of the "
        "GPU, not a timing). Runs on the CPU.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--recipe", metavar="NAME", help="a recipe (its model, batch, loss, optimizer and EMA)"
    )
    which.add_argument(
        "--model",
        metavar="NAME",
        help="a model: the first recipe training it gives the loss, optimizer and batch",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="images per step (default: the recipe's)"
    )
    p.add_argument(
        "--amp",
        choices=tuple(AMP),
        default="bf16",
        help="autocast dtype (default bf16; off: float32)",
    )
    p.add_argument("--nchw", action="store_true", help="count in NCHW (default channels_last)")
    p.add_argument(
        "--paths",
        default=",".join(PATH_NAMES),
        metavar="LIST",
        help="comma-separated: eager, compile, fastcifar (default: all)",
    )
    p.add_argument(
        "--gpu",
        default="h100",
        choices=tuple(GPUS),
        help="the GPU of the lower bound (default h100)",
    )
    p.add_argument(
        "--whole-run",
        action=argparse.BooleanOptionalAction,
        help="also the floor of a whole run (every step, whitening, TTA) against the "
        "published times of the method the recipe follows (default: on for the speed-run "
        "recipes, which have published times; off for the others)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the JSON here too")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where roofline.json and roofline.png go (default runs/roofline-NAME)",
    )
    return p


def _recipe(args):
    from fastcifar.recipes import RECIPES, get_recipe

    if args.recipe:
        return get_recipe(args.recipe)
    for recipe in RECIPES.values():
        if recipe.model == args.model:
            return recipe
    from fastcifar.models import MODELS

    known = ", ".join(sorted(MODELS))
    raise FastCifarError(f"no recipe trains model {args.model!r}: one of {known}")


def _paths(text: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in paths if p not in PATH_NAMES]
    if bad or not paths:
        raise FastCifarError(f"--paths {text!r}: a comma-separated list of {', '.join(PATH_NAMES)}")
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.roofline``: count one training step on each asked path, print the
    costliest layers and the totals, and write the JSON, CSV and figure asked for.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0, or 1 when a path failed to count (its error printed, the others still counted).

    Raises:
        FastCifarError: a batch below 2, an unknown model, recipe or GPU, or a torch whose
            Inductor internals the compile paths do not support.
    """
    args = build_parser().parse_args(argv)
    recipe = _recipe(args)
    paths = _paths(args.paths)
    if args.batch_size is not None and args.batch_size < 2:
        raise FastCifarError(f"--batch-size {args.batch_size}: at least 2 (BatchNorm needs two)")
    import torch

    from fastcifar.roofline.count import count_step
    from fastcifar.roofline.figure import plot_roofline
    from fastcifar.roofline.gpus import get_gpu
    from fastcifar.roofline.result import format_table, row, steps_per_epoch, verdict
    from fastcifar.roofline.run import recipe_setup

    gpu = get_gpu(args.gpu)
    batch = args.batch_size or recipe.batch_size
    amp = AMP[args.amp]
    setup = recipe_setup(recipe, batch, getattr(torch, amp) if amp else None, not args.nchw)
    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"roofline: [{time.perf_counter() - start:5.1f} s] {line}", flush=True)

    failed = []

    def on_error(path: str, exc: Exception) -> None:
        if isinstance(exc, FastCifarError):  # the user's to fix: one line, exit 2
            raise exc
        failed.append(path)
        progress(f"the {path} path failed and is left out: {first_line(exc)}")

    counts = count_step(setup, paths, gpu, progress=progress, on_error=on_error)
    paths = tuple(p for p in paths if p in counts)
    steps = steps_per_epoch(batch, recipe.drop_last)
    rows = [row(counts[p], gpu, steps) for p in paths]
    runs = []
    from fastcifar.roofline.wholerun import RECIPE_RECORDS

    if args.whole_run or (args.whole_run is None and recipe.name in RECIPE_RECORDS):
        runs = _whole_runs(recipe, setup, counts, gpu, progress)
    out = args.out or Path("runs") / f"roofline-{args.recipe or args.model}"
    from fastcifar.roofline.saved import saved_summary

    saved, saved_line = saved_summary(setup, paths)
    _write(out, args.json, rows, runs, saved)
    plot_roofline(rows, gpu, out / "roofline.png")
    print(format_table(rows))
    print(verdict(rows))
    if saved:
        print(saved_line)
    for run in runs:
        print(_whole_run_line(run, gpu.name))
    print(_closing_line(gpu, out, time.perf_counter() - start))
    return 1 if failed else 0


def _write(out: Path, also: Path | None, rows: list, runs: list, saved: dict) -> None:
    """``roofline.json`` into ``out`` (and ``also``, ``--json``): the rows, the whole
    runs, the activations saved and the re-read notes."""
    from fastcifar.roofline.traffic import REREAD_NOTES

    extra = {"whole_run": runs} if runs else {}
    payload = json.dumps(
        {"rows": rows, **extra, "saved_bytes": saved, "rereads": list(REREAD_NOTES)}, indent=1
    )
    out.mkdir(parents=True, exist_ok=True)
    for target in (out / "roofline.json", also):
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(payload)


def _whole_runs(recipe, setup, counts: dict, gpu, progress) -> list[dict]:
    """Each path's whole-run floor (``wholerun.whole_run``, its layers' excess measured
    against the eager path's). A compile path of a model with max-pooling is counted a
    second time without Inductor's decomposition of the max-pool backward, its floor
    under ``without_maxpool_decomposition``: what torch's lowering costs."""
    from torch import nn

    from fastcifar.roofline.count import count_step
    from fastcifar.roofline.wholerun import whole_run

    eager = counts.get("eager") or count_step(setup, ["eager"], gpu)["eager"]  # seconds
    runs = [
        whole_run(recipe, setup, counts[p], gpu, baseline=eager if p != "eager" else None)
        for p in counts
    ]
    pools = any(isinstance(m, nn.MaxPool2d) for m in setup.model.modules())
    compiled = [p for p in counts if p != "eager"]
    if pools and compiled:
        progress("again without Inductor's decomposition of the max-pool backward")
        again = count_step(setup, compiled, gpu, progress=progress, maxpool_decomposition=False)
        for run in runs:
            if run["path"] in again:
                other = whole_run(recipe, setup, again[run["path"]], gpu, eager, False)
                other["bytes_per_image"] = again[run["path"]].bytes / setup.batch_size
                run["without_maxpool_decomposition"] = other
    return runs


def _closing_line(gpu, out: Path, seconds: float) -> str:
    """The GPU the bound is for, with its data-sheet source, and what was written."""
    return (
        f"roofline: {gpu.name}: {gpu.bandwidth / 1e12:.2f} TB/s, "
        f"{gpu.peak_flops / 1e12:.0f} TFLOP/s dense 16-bit ({gpu.source.split(':')[0]}); "
        f"a lower bound, not a timing; wrote {out / 'roofline.json'} and "
        f"{out / 'roofline.png'} in {seconds:.0f} s"
    )


def _whole_run_line(run: dict, gpu: str) -> str:
    """A whole run's floor (``wholerun.whole_run``'s dict): its parts, the three kinds of
    layer that most of the steps' floor is, how it was lowered; then a line per published
    time of its method, the floor on each GPU the record may have used, flagged SUSPECT
    when above ``wholerun.SUSPECT`` of the time."""
    from fastcifar.roofline.wholerun import SUSPECT

    kinds = sorted(run["train_by_kind_s"].items(), key=lambda kv: -kv[1])[:3]
    lowered = f"lowered for {run['lowered_for']}, " if run["lowered_for"] else ""
    lines = [
        f"whole run, {run['path']}: at least {run['floor_s']:.3f} s on {gpu} "
        f"({run['steps']} steps {run['train_s']:.3f} s, whitening {run['whiten_s']:.4f} s, "
        f"TTA {run['tta_s']:.3f} s); the steps' floor is mostly "
        + ", ".join(f"{k} {s:.3f} s" for k, s in kinds)
        + f" ({lowered}torch {run['torch']}, max-pool backward: {run['maxpool_backward']})"
    ]
    other = run.get("without_maxpool_decomposition")
    if other is not None:
        lines.append(
            f"  without the max-pool backward's decomposition: {other['floor_s']:.3f} s on "
            f"{gpu}, {other['bytes_per_image'] / 1e6:.2f} MB per image a step: torch's "
            f"lowering costs {run['floor_s'] - other['floor_s']:.3f} s"
        )
    for rec in run["records"]:
        floors = ", ".join(
            f"{rec['floor_s'][k]:.3f} s on {k} ({f * 100:.0f} %)"
            for k, f in rec["floor_over_record"].items()
        )
        flag = ""
        if rec["suspect"]:
            excess = rec["excess_layers"]
            layers = ", ".join(f"{n} ({k}, {us:.0f} us a step)" for n, k, us in excess)
            flag = f"; SUSPECT: a floor above {SUSPECT * 100:.0f} % of a measured time" + (
                f", the excess in {layers}" if layers else ""
            )
        lines.append(f"  {rec['record']} published {rec['record_s']} s; floor {floors}{flag}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
