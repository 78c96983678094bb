"""Train a CIFAR-10 recipe: ``python -m fastcifar.train --amp --compile``.

Loads CIFAR-10 (``--data``, ``$FASTCIFAR_DATA`` or the cache directory; ``--download``
fetches the official set), trains the recipe (default ``s7``) with a progress bar and a
test evaluation every epoch, and writes the run directory described in
``fastcifar.engine.trainer``. ``--resume RUN_DIR`` continues a stopped run from its last
completed epoch. Every recipe field has a flag (``--lr``, ``--batch-size``, ...).

Under ``torchrun --nproc_per_node N -m fastcifar.train ...`` it trains data-parallel
(``fastcifar.engine.distributed``): the recipe's batch is the global batch, rank 0 writes the
run directory, and ``--resume`` needs the same number of processes.

Bad input ends the program with one line naming the problem and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Only torch-free modules at the top: --help, --version and a mistyped flag answer before
# torch, triton or DALI are imported (tests/test_cli.py holds this). The rest is imported
# where the training starts.
from fastcifar.cli import interpret_triton_on_cpu, process_age_s
from fastcifar.engine.runlock import RunLock
from fastcifar.errors import FastCifarError, Interrupted, run_cli
from fastcifar.evaluation.report import CIFAR10_TEST, CIFAR10_TRAIN, reference_name, wall_time
from fastcifar.options import RunOptions, flag_name
from fastcifar.recipes import DEFAULT_RECIPE, Recipe, get_recipe
from fastcifar.train_flags import build_parser, recipe_overrides, run_options
from fastcifar.units import number, plural, rate

if TYPE_CHECKING:
    from fastcifar.engine import distributed
    from fastcifar.engine.trainer import Trainer


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """The command. ``started``: its start on the ``time.perf_counter()`` clock (the
    console script passes the process's start); default the call's own start.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.
        started: see above; None takes the process's age (``cli.process_age_s``).

    Returns:
        0, or 130 after Ctrl-C on a rank other than 0.
    """
    started = time.perf_counter() if started is None else started
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    args = build_parser(pre.parse_known_args(argv)[0].recipe).parse_args(argv)
    overrides = recipe_overrides(args)
    run_options(args)  # every flag's bounds, before anything starts
    if args.kernels == "triton":
        interpret_triton_on_cpu(args.device or "auto")
    from fastcifar.engine import distributed

    # under torchrun: join the process group; rank 0 alone prints and writes
    world = distributed.init_from_env(args.device or "auto")
    if not world.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        return _train(args, overrides, world, started)
    except KeyboardInterrupt:
        if world.is_main:
            raise
        return 130  # Ctrl-C reaches every rank: rank 0 alone says what was kept
    finally:
        distributed.shutdown()


# Fewer optimizer steps than this and a schedule (warm-up, anneal, steps) has no room to
# take its shape: the run warns once.
MIN_SCHEDULE_STEPS = 20


@dataclasses.dataclass
class _Run:
    """The run this command trains: its directory (locked by rank 0 for the life of the
    process: ``lock``), recipe and options, and whether this command created it."""

    run_dir: Path
    recipe: Recipe
    options: RunOptions
    created: bool
    lock: RunLock | None


def _train(
    args: argparse.Namespace, overrides: dict, world: distributed.World, started: float
) -> int:
    from fastcifar.engine import distributed
    from fastcifar.engine.rundir import write_summary

    run = _resumed_run(args, overrides, world) if args.resume else _new_run(args, overrides, world)
    if run is None:
        return 0
    distributed.barrier()  # the run directory exists before any rank goes on
    with run.lock or contextlib.nullcontext():
        trainer = _start(run, bool(args.resume), world)
        try:
            summary = trainer.fit()
        except KeyboardInterrupt:
            raise Interrupted(_interrupted(run, trainer.state.epoch, world)) from None
        if not world.is_main:
            return 0
        c = trainer.components
        session = trainer.session_wall  # compile warm-up and epochs, seconds
        before = time.perf_counter() - started
        wall = {
            "startup_s": max(0.0, before - sum(session.values())),
            **session,
            "resumed": bool(args.resume),
        }
        if args.evaluate:  # the evaluation writes the wall time into summary.json
            _evaluate(run.run_dir, args.cam_layers, c.device, wall)
            summary = json.loads((run.run_dir / "summary.json").read_text())
        else:
            summary["wall"] = {**wall, "evaluation_s": 0.0}
            write_summary(run.run_dir, summary)
        _print_result(summary, trainer.recipe, run.run_dir, c.device)
    return 0


def _start(run: _Run, resume: bool, world: distributed.World) -> Trainer:
    """The run's ``Trainer`` (``build_trainer``), its config.json written (a new run) and
    its one-line description printed. A directory this command created is removed again
    when the run fails or is interrupted before it starts."""
    from fastcifar.engine.build import build_trainer

    try:
        trainer = build_trainer(run.recipe, run.options, run.run_dir, resume, world)
    except KeyboardInterrupt:
        if run.created and world.is_main:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        if resume:
            raise Interrupted(
                f"interrupted before training resumed: {run.run_dir} is as it was; resume "
                f"it with:\n  python -m fastcifar.train --resume {run.run_dir}"
            ) from None
        raise Interrupted("interrupted before training started: nothing was saved") from None
    except BaseException:
        if run.created and world.is_main:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        raise
    if not resume and world.is_main:
        from fastcifar.engine.rundir import write_config

        write_config(
            run.run_dir, trainer.recipe, trainer.options, trainer.components.kernel_dispatch
        )
    c, recipe = trainer.components, trainer.recipe
    print(
        f"train: recipe {recipe.name}, model {recipe.model}, "
        f"{number(len(c.train_loader.dataset))} train / {number(len(c.test_loader.labels))} "
        f"test images, batch {recipe.batch_size}, {plural(recipe.epochs, 'epoch')}, device "
        f"{c.device}, amp {str(c.amp_dtype).replace('torch.', '') if c.amp_dtype else 'off'}, "
        f"channels_last {c.channels_last}, compile {run.options.compile}, kernels {c.kernels}, "
        f"run dir {run.run_dir}",
        flush=True,
    )
    if run.options.compile and c.device.type == "cpu":
        print(
            "note: --compile on a CPU first compiles for one to two and a half minutes (a "
            "cached 12.4 s later), then trains faster than eagerly (measured on a 2-core CPU, "
            '1,000 images: 74 against 48 img/s; README, "Two commands"): for a short run '
            "--no-compile is quicker"
        )
    if trainer.total_steps < MIN_SCHEDULE_STEPS and recipe.scheduler != "constant":
        print(
            f"warning: this run takes only {plural(trainer.total_steps, 'optimizer step')}: the "
            f"{recipe.scheduler} schedule needs about {MIN_SCHEDULE_STEPS} or more to take its "
            f"shape (raise --epochs, lower --batch-size or train on more images)"
        )
    return trainer


def _interrupted(run: _Run, epochs_done: int, world: distributed.World) -> str:
    """What Ctrl-C during training kept, and the exact command that continues it."""
    launcher = "python -m"
    if world.size > 1:
        launcher = f"torchrun --standalone --nproc_per_node {world.size} -m"
    resume = f"  {launcher} fastcifar.train --resume {run.run_dir}"
    total = run.recipe.epochs
    if epochs_done == 0:
        return (
            f"interrupted in epoch 1 of {total}: no epoch had finished, so only the "
            f"run's config is saved; train it from the beginning with:\n{resume}"
        )
    kept = "epoch 1 is" if epochs_done == 1 else f"epochs 1-{epochs_done} are"
    return (
        f"interrupted in epoch {epochs_done + 1} of {total}: {kept} saved in "
        f"{run.run_dir / 'last.pt'}; resume with:\n{resume}"
    )


def _evaluate(run_dir: Path, cam_layers: str | None, device, wall: dict) -> None:
    """The evaluation after training (figures and report; ``wall``: the command's seconds
    so far, for the report's wall time); Ctrl-C there keeps the finished training and says
    how to write them later."""
    from fastcifar.evaluate import evaluate_run

    layers = cam_layers.split(",") if cam_layers else None
    try:
        evaluate_run(run_dir, cam_layers=layers, device=str(device), wall=wall)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted during the evaluation: the training finished "
            f"({run_dir / 'summary.json'}); write the figures and report with:\n"
            f"  python -m fastcifar.evaluate {run_dir}"
        ) from None
    print(f"evaluation: figures and report in {run_dir / 'report.html'}")


def _resumed_run(args, overrides: dict, world: distributed.World) -> _Run | None:
    """The ``--resume`` run, its own config with this command's device and workers, its
    directory locked; None when it has already finished.

    Raises:
        FastCifarError: another recipe or recipe fields asked for, another world size, or
            a live run holds the directory.
    """
    from fastcifar.engine.rundir import prepare_run_dir, read_config

    run_dir = Path(args.resume)
    recipe, options = read_config(run_dir)
    if args.recipe and args.recipe != recipe.name:
        raise FastCifarError(
            f"{run_dir} was made with recipe {recipe.name}, not {args.recipe}: drop "
            f"--recipe to resume it, or start a new run with another --out"
        )
    changed = {k: v for k, v in overrides.items() if getattr(recipe, k) != v}
    if changed:
        names = ", ".join(flag_name(k) for k in changed)
        raise FastCifarError(
            f"{names} differ from the run being resumed: a resumed run keeps its recipe; "
            f"start a new run with another --out to change them"
        )
    if (run_dir / "summary.json").exists():
        print(f"{run_dir} has already finished all {plural(recipe.epochs, 'epoch')}; nothing to do")
        return None
    if args.device:
        options.device = args.device
    if args.workers is not None:
        options.workers = args.workers
    if options.world_size != world.size:
        raise FastCifarError(
            f"{run_dir} was trained by {options.world_size} process(es), this is "
            f"{world.size}: resume it with torchrun --standalone --nproc_per_node "
            f"{options.world_size}"
            if options.world_size > 1
            else f"{run_dir} was trained by 1 process, this is {world.size}: resume it "
            f"without torchrun"
        )
    lock = prepare_run_dir(run_dir, resume=True) if world.is_main else None
    return _Run(run_dir, recipe, options, False, lock)


def _new_run(args, overrides: dict, world: distributed.World) -> _Run:
    """The new run, its directory created (unless it existed) and locked.

    Raises:
        FastCifarError: a bad recipe field or subset size, an unwritable directory, a
            directory that holds a run or that a live run holds.
    """
    recipe = get_recipe(args.recipe or DEFAULT_RECIPE).replace(**overrides).validate()
    options = run_options(args, world_size=world.size)
    from fastcifar.engine import distributed
    from fastcifar.engine.rundir import prepare_run_dir

    default = f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.out or distributed.broadcast_object(default))  # one name for all
    created = not run_dir.exists()
    lock = prepare_run_dir(run_dir, resume=False) if world.is_main else None
    options.out = str(run_dir)
    return _Run(run_dir, recipe, options, created, lock)


def _print_result(summary: dict, recipe, run_dir: Path, device) -> None:
    """The closing lines: the speed run's timed span, then the accuracies."""
    if recipe.name.startswith("speedrun"):
        from fastcifar.engine.rundir import speedrun_line

        print(speedrun_line(summary, device.type == "cuda"))
    expected = ""
    if recipe.expected_accuracy:
        full = summary["train_images"] >= CIFAR10_TRAIN and summary["test_images"] >= CIFAR10_TEST
        expected = f" ({reference_name(recipe)} reported {recipe.expected_accuracy}%" + (
            ")" if full else " on all of CIFAR-10: not comparable with this subset)"
        )
    _, wall = wall_time(summary)
    print(
        f"done: test accuracy {summary['final_test_acc']:.2f}% final, "
        f"{summary['best_test_acc']:.2f}% best{expected}; "
        f"{rate(summary['mean_images_per_s'], 'img/s')}; wall time {wall}; run dir {run_dir}"
    )


def cli() -> int:
    """The ``fastcifar-train`` console script: bad input ends in one line, exit 2; its wall
    time counts from the process's start.

    Returns:
        The exit code.
    """
    started = time.perf_counter() - process_age_s()
    return run_cli(lambda argv: main(argv, started))


if __name__ == "__main__":
    sys.exit(cli())
