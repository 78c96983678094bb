"""Seed sweeps over every GPU: ``python -m fastcifar.sweep --recipe speedrun94 --seeds 25``.

Runs seeds 1..N of a recipe as independent ``fastcifar.train`` processes, one at a time
per visible GPU (``--gpus all``, a count, or a comma-separated list of CUDA device
indices; one at a time on a CPU), each pinned to its GPU with ``CUDA_VISIBLE_DEVICES``,
with a progress bar over runs. Every run is a normal run directory ``OUT/seed-K`` (its
log in ``OUT/seed-K.log``); when all have ended the sweep writes ``OUT/sweep.json`` and
``OUT/sweep.md`` (``fastcifar.seedstats``: per-run accuracy and seconds, mean, standard
deviation, 95 % interval, fraction at or above the target).

Flags it does not know are passed to every ``fastcifar.train`` (``--amp --compile
--data PATH --epochs 4``...). Resuming: run the same command with ``--out OUT``: finished
runs (``summary.json``) are not repeated, a run stopped after an epoch continues from its
checkpoint (``--resume``), and one stopped before its first checkpoint starts again.

Bad input ends in one line, exit status 2; a failed run is reported (its log named) and
the others go on; the exit status is then 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

from fastcifar.cli import CommandParser, prog_name
from fastcifar.errors import FastCifarError, run_cli
from fastcifar.recipes import RECIPES, get_recipe
from fastcifar.seedstats import load_runs, one_line, summarise, write_report

__all__ = ["gpu_list", "main", "run_command"]


def gpu_list(spec: str | None) -> list[str | None]:
    """CUDA device indices to run on (``None``: one CPU slot).

    ``all`` (default): every visible GPU, or the CPU where there is none; ``none``: the
    CPU; ``N`` (a number): the first N GPUs; ``0,2`` (a comma list): those devices.

    Raises:
        FastCifarError: a count or index the machine does not have.
    """
    import torch

    available = torch.cuda.device_count()
    spec = (spec or "all").strip()
    if spec == "none" or (spec == "all" and available == 0):
        return [None]
    if spec == "all":
        return [str(i) for i in range(available)]
    if spec.isdigit():
        if not 0 < int(spec) <= available:
            raise FastCifarError(
                f"--gpus {spec}: {available} GPU(s) visible: pass a count from 1 to "
                f"{available}, or none for the CPU"
            )
        return [str(i) for i in range(int(spec))]
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    if not ids or not all(i.isdigit() and int(i) < available for i in ids):
        raise FastCifarError(
            f"--gpus {spec!r} is not valid here ({available} GPU(s) visible): pass all, none, "
            f"a count, or device indices such as 0,1"
        )
    return ids


def run_command(recipe: str, seed: int, run_dir: Path, extra: list[str]) -> list[str]:
    """The ``fastcifar.train`` command of one run: a new run, or ``--resume`` of one that
    saved a checkpoint (its config holds every flag)."""
    if (run_dir / "last.pt").exists() and (run_dir / "config.json").exists():
        return [sys.executable, "-m", "fastcifar.train", "--resume", str(run_dir), "--no-evaluate"]
    return [
        sys.executable,
        "-m",
        "fastcifar.train",
        "--recipe",
        recipe,
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
        "--no-evaluate",
        *extra,
    ]


def _pending(out: Path, seeds: int) -> list[int]:
    todo = []
    for seed in range(1, seeds + 1):
        run_dir = out / f"seed-{seed}"
        if (run_dir / "summary.json").exists():
            continue
        if run_dir.exists() and not (run_dir / "last.pt").exists():
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: start again
        todo.append(seed)
    return todo


def _worker(gpu, queue: Queue, out: Path, recipe: str, extra: list[str], results: dict, bar):
    while True:
        try:
            seed = queue.get_nowait()
        except Empty:
            return
        run_dir = out / f"seed-{seed}"
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        with open(out / f"seed-{seed}.log", "a") as log:
            code = subprocess.call(
                run_command(recipe, seed, run_dir, extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        results[seed] = code
        bar.update(1)


def main(argv: list[str] | None = None) -> int:
    p = CommandParser(
        prog=prog_name("fastcifar.sweep"),
        description="Run seeds 1..N of a recipe, one process per GPU, and report the "
        "statistics over them. Unknown flags go to every fastcifar.train.",
    )
    p.add_argument("--recipe", required=True, help=f"one of {', '.join(RECIPES)}")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="run seeds 1..N")
    p.add_argument("--gpus", default="all", help="all (default), none, a count, or 0,1,...")
    p.add_argument(
        "--out",
        help="sweep directory (default runs/sweep-RECIPE-DATE-TIME); an existing one is resumed",
    )
    p.add_argument(
        "--target",
        type=float,
        help="accuracy target in percent (default: the recipe's expected accuracy, else 94)",
    )
    args, extra = p.parse_known_args(argv)
    recipe = get_recipe(args.recipe)
    if args.seeds < 1:
        raise FastCifarError(f"--seeds {args.seeds} is below 1: pass 1 or more")
    if "--seed" in extra or "--out" in extra or "--resume" in extra:
        raise FastCifarError("--seed, --out and --resume are the sweep's own: drop them")
    gpus = gpu_list(args.gpus)
    target = args.target if args.target is not None else (recipe.expected_accuracy or 94.0)
    out = Path(args.out or f"runs/sweep-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    todo = _pending(out, args.seeds)
    where = "the CPU" if gpus == [None] else f"GPU(s) {', '.join(gpus)}"
    print(
        f"sweep: {recipe.name}, seeds 1..{args.seeds} ({len(todo)} to run) on {where}, into {out}",
        flush=True,
    )
    from tqdm.auto import tqdm

    queue: Queue = Queue()
    for seed in todo:
        queue.put(seed)
    results: dict[int, int] = {}
    bar = tqdm(total=args.seeds, initial=args.seeds - len(todo), unit="run", desc="sweep")
    threads = [
        threading.Thread(target=_worker, args=(g, queue, out, recipe.name, extra, results, bar))
        for g in gpus
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    failed = sorted(s for s, code in results.items() if code != 0)
    for seed in failed:
        print(f"sweep: seed {seed} failed (exit {results[seed]}); see {out}/seed-{seed}.log")
    runs = load_runs(out)
    if not runs:
        raise FastCifarError(f"no run of {out} finished: see the seed-K.log files there")
    stats = summarise(runs, target)
    write_report(out, stats, f"{recipe.name}: {len(runs)} seeds")
    print(f"sweep: {one_line(stats, out)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
