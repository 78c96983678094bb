"""Seed sweeps on Ray: ``python -m fastcifar.sweep --recipe speedrun94 --seeds 25``.

Runs seeds 1..N of a recipe as independent fastcifar runs, each a Ray Tune trial
(``fastcifar.engine.trials.train_trial``, one GPU each where there are GPUs, else
``--cpus-per-run`` CPUs), over every GPU of this machine (a local Ray; ``--gpus all``, a
count, or a comma-separated list of CUDA device indices) or of every node of a Ray
cluster (``--address auto`` or ``HOST:PORT``). Every run is a normal run directory
``OUT/seed-K`` (its log in ``OUT/seed-K.log``; ``ray.json`` there names the node that ran
it); when all have ended the sweep writes ``OUT/sweep.json`` and ``OUT/sweep.md``
(``fastcifar.seedstats``: per-run accuracy and seconds, mean, standard deviation, 95 %
interval, fraction at or above the target).

Flags it does not know are the train command's, for every run (``--amp --compile --data
PATH --epochs 4``...). Resuming: run the same command with ``--out OUT``: finished runs
(``summary.json``) are not repeated, a run stopped after an epoch continues from its
checkpoint, and one stopped before its first checkpoint starts again; a run whose worker
dies is retried from its checkpoint (``--max-failures``).

Bad input ends in one line, exit status 2, before Ray starts; a failed run is reported
(its log named) and the others go on; the exit status is then 1.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fastcifar.cli import CommandParser, prog_name
from fastcifar.engine import cluster, trials
from fastcifar.errors import FastCifarError, Interrupted, first_line, run_cli
from fastcifar.recipes import RECIPES
from fastcifar.seedstats import load_runs, one_line, summarise, write_report

__all__ = ["gpu_list", "main", "pending_seeds"]


def gpu_list(spec: str | None) -> list[str | None]:
    """CUDA device indices to run on (``None``: one CPU slot).

    ``all`` (default): every visible GPU, or the CPU where there is none; ``none``: the
    CPU; ``N`` (a number): the first N GPUs; ``0,2`` (a comma list): those devices.

    Args:
        spec: ``--gpus``: ``all``, a count, ``0,2``, or None.

    Returns:
        The indices as strings, or ``[None]``.

    Raises:
        FastCifarError: a spec that does not parse or asks for more GPUs than are visible.

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


def pending_seeds(out: Path, seeds: int) -> list[int]:
    """The seeds of 1..``seeds`` whose run under ``out`` has not finished (no
    ``seed-K/summary.json``).

    Args:
        out: the sweep's folder.
        seeds: the sweep's seeds, 1 to ``seeds``.

    Returns:
        The pending seeds, ascending.
    """
    return [k for k in range(1, seeds + 1) if not (out / f"seed-{k}" / "summary.json").exists()]


def build_parser() -> CommandParser:
    """The command's parser: the recipe, the seeds, where the runs go (GPUs, Ray) and the training
    flags the runs share.

    Returns:
        The parser.
    """
    p = CommandParser(
        prog=prog_name("fastcifar.sweep"),
        description="Run seeds 1..N of a recipe on Ray (every GPU here, or every node of a "
        "cluster) and report the statistics over them. Unknown flags go to every run's "
        "fastcifar.train.",
    )
    p.add_argument("--recipe", required=True, help=f"one of {', '.join(RECIPES)}")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="run seeds 1..N")
    p.add_argument(
        "--gpus", default="all", help="local Ray: all (default), none, a count, or 0,1,..."
    )
    p.add_argument(
        "--cpus-per-run", type=float, default=1.0, metavar="X", help="CPUs each run holds [1]"
    )
    p.add_argument(
        "--out",
        help="sweep directory (default runs/sweep-RECIPE-DATE-TIME); an existing one is resumed",
    )
    p.add_argument(
        "--target",
        type=float,
        help="accuracy target in percent (default: the recipe's expected accuracy, else 94)",
    )
    cluster.add_ray_flags(p, "sweep")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.sweep``: one run of a recipe per seed on Ray, then its statistics
    (``fastcifar.seedstats``).

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0 when every seed's run finished, 1 when some failed (named).

    Raises:
        FastCifarError: ``--seed`` given, ``--seeds`` below 1, ``--cpus-per-run`` not
            positive, or no run finished.
    """
    args, extra = build_parser().parse_known_args(argv)
    if args.seeds < 1:
        raise FastCifarError(f"--seeds {args.seeds} is below 1: pass 1 or more")
    if "--seed" in extra:
        raise FastCifarError("--seed is the sweep's own (seeds 1..N): drop it")
    if args.cpus_per_run <= 0:
        raise FastCifarError(f"--cpus-per-run {args.cpus_per_run:g}: pass a number above 0")
    from fastcifar.train_flags import recipe_and_options

    recipe, options = recipe_and_options(args.recipe, extra, "fastcifar.sweep")
    gpus = gpu_list(args.gpus) if args.address is None else None
    target = args.target if args.target is not None else (recipe.expected_accuracy or 94.0)
    out = Path(args.out or f"runs/sweep-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    todo = pending_seeds(out, args.seeds)
    where = (
        f"the Ray cluster at {args.address}"
        if gpus is None
        else ("the CPU" if gpus == [None] else f"GPU(s) {', '.join(gpus)}")
    )
    print(
        f"sweep: {recipe.name}, seeds 1..{args.seeds} ({len(todo)} to run) on {where}, into {out}",
        flush=True,
    )
    failed = _run(args, recipe, options, out, todo, gpus) if todo else {}
    for seed, error in sorted(failed.items()):
        print(f"sweep: seed {seed} failed ({error}); see {out}/seed-{seed}.log")
    runs = load_runs(out)
    if not runs:
        raise FastCifarError(f"no run of {out} finished: see the seed-K.log files there")
    stats = summarise(runs, target)
    write_report(out, stats, f"{recipe.name}: {len(runs)} seeds")
    print(f"sweep: {one_line(stats, out)}")
    return 1 if failed else 0


def _run(args, recipe, options, out: Path, todo: list[int], gpus) -> dict[int, str]:
    """The pending seeds as Ray Tune trials; returns {seed: error} of those that failed.

    Raises:
        Interrupted: Ctrl-C (the runs' checkpoints are kept: the same command continues).
    """
    if gpus is not None and gpus != [None]:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)  # the local Ray's GPUs
    local_gpus = None if gpus is None else (0 if gpus == [None] else len(gpus))
    ray = cluster.connect("fastcifar.sweep", args.address, num_gpus=local_gpus)
    try:
        from ray import tune

        resources = cluster.trial_resources(ray, None, args.cpus_per_run)
        spec = trials.TrialSpec(recipe, options, str(out), by_seed=True)
        trainable = tune.with_resources(
            tune.with_parameters(trials.train_trial, spec=spec), resources
        )
        path = cluster.experiment_path(out, args.storage)
        lines = trials.trial_lines(
            "sweep", lambda t: f"seed {t.config['seed']}", lambda t: recipe.epochs
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"seed": tune.grid_search(todo)},
            run_config=tune.RunConfig(
                name=path.name,
                storage_path=str(path.parent),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
                callbacks=[lines],
            ),
        )
        grid = tuner.fit()
        ended = trials.ended_trials(grid, path)
        if any(status not in ("TERMINATED", "ERROR") for _, _, status in ended):
            raise Interrupted(
                f"interrupted: the finished runs and every run's last epoch are kept in {out}; "
                f"continue with the same command and --out {out}"
            )
        return {r.config["seed"]: first_line(r.error) for _, r, _ in ended if r.error is not None}
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(run_cli(main))
