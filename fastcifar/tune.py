"""Hyper-parameter search on Ray Tune: ``python -m fastcifar.tune --recipe s7 --space
"lr=loguniform(0.01,0.5) weight_decay=loguniform(1e-5,1e-3)" --samples 8``.

Searches any recipe field (``fastcifar.recipes.space``: loguniform, uniform, choice and
grid, inline or from a YAML/JSON file), every trial a normal fastcifar run
(``fastcifar.engine.trials.train_trial``) whose test accuracy after each epoch goes to
Ray Tune with a checkpoint. ASHA (``ray.tune.schedulers.ASHAScheduler``) stops the
trials that trail after ``--grace-period`` epochs; ``--scheduler fifo`` runs every trial
to the end. Trials are drawn at random (Ray's ``BasicVariantGenerator``; grid terms are
crossed with ``--samples``) or by Optuna's TPE (``--searcher optuna``;
``ray.tune.search.optuna.OptunaSearch``, no grid terms).

Flags it does not know are the train command's, for every trial (``--epochs 3
--train-subset 1000 --amp --compile --data PATH``). The study's folder ``--out`` holds
``study.json`` (how it was started), ``trials/trial-ID/`` (run directories, each with
its log beside it), Ray's experiment (``ray/``, or ``ray-NAME`` under ``--storage``), and at the end
``tune.json``, ``tune.md`` and ``tune.png`` (``fastcifar.evaluation.study``); the best
configuration is printed as a ready ``python -m fastcifar.train`` command.

Ray starts in this process on this machine by default; ``--address auto`` or ``HOST:PORT``
joins a running Ray cluster. Ctrl-C stops the study with its state saved: ``--resume
--out DIR`` continues it (finished trials are not repeated, running ones continue from
their last epoch). Bad input ends in one line, exit status 2, before Ray starts.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from fastcifar.cli import CommandParser, prog_name
from fastcifar.engine import cluster, trials
from fastcifar.errors import FastCifarError, Interrupted, run_cli
from fastcifar.recipes import RECIPES
from fastcifar.recipes.space import USAGE, space_from_argument

__all__ = ["main", "build_parser"]

SEARCHERS = ("random", "optuna")
SCHEDULERS = ("asha", "fifo")
METRIC = "test_acc"  # each epoch's test accuracy, percent; ASHA keeps the highest
# the flags study.json keeps, so that --resume goes on as the study was started
SETTINGS = (
    "recipe",
    "samples",
    "searcher",
    "scheduler",
    "grace_period",
    "reduction_factor",
    "gpus_per_trial",
    "cpus_per_trial",
    "max_failures",
    "storage",
)


def build_parser() -> CommandParser:
    """The command's parser: the recipe, the search space, the searcher and scheduler, where the
    trials run (Ray) and the training flags they share.

    Returns:
        The parser.
    """
    p = CommandParser(
        prog=prog_name("fastcifar.tune"),
        description="Search a recipe's hyper-parameters with Ray Tune (ASHA by default). "
        "Unknown flags go to every trial's fastcifar.train.",
    )
    p.add_argument("--recipe", metavar="NAME", help=f"one of {', '.join(RECIPES)}")
    p.add_argument(
        "--space",
        help=f"the search space: 'field=distribution(args) ...' ({USAGE}) or a YAML/JSON file",
    )
    p.add_argument("--samples", type=int, default=8, metavar="N", help="trials to draw [8]")
    p.add_argument(
        "--searcher",
        choices=SEARCHERS,
        default="random",
        help="random draws (seeded by the recipe's seed) or Optuna's TPE [random]",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="asha",
        help="asha stops trailing trials after each epoch; fifo runs all to the end [asha]",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=1,
        metavar="EPOCHS",
        help="ASHA: epochs before a stop [1]",
    )
    p.add_argument(
        "--reduction-factor", type=float, default=3.0, metavar="X", help="ASHA: keep 1/X a rung [3]"
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        metavar="X",
        help="GPUs of one trial; fractions share a GPU (default 1 where there are GPUs, else 0)",
    )
    p.add_argument(
        "--cpus-per-trial", type=float, default=1.0, metavar="X", help="CPUs of one trial [1]"
    )
    p.add_argument("--out", metavar="DIR", help="study folder (default runs/tune-RECIPE-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    cluster.add_ray_flags(p, "study")
    return p


def _check(args, extra: list[str]) -> None:
    """The command's own numbers and combinations, before anything starts."""
    if args.samples < 1:
        raise FastCifarError(f"--samples {args.samples} is below 1: pass 1 or more")
    if args.grace_period < 1 or args.reduction_factor <= 1:
        raise FastCifarError("--grace-period must be 1 or more and --reduction-factor above 1")
    if args.cpus_per_trial <= 0 or (args.gpus_per_trial or 0) < 0:
        raise FastCifarError("--cpus-per-trial must be above 0 and --gpus-per-trial 0 or more")
    if args.resume and not args.out:
        raise FastCifarError("--resume continues a study: pass its folder with --out")
    if not args.resume and not args.recipe:
        raise FastCifarError(f"--recipe is required: pass one of {', '.join(RECIPES)}")
    if not args.resume and not args.space:
        raise FastCifarError(f"--space is required: pass e.g. 'lr=loguniform(0.01,0.5)' ({USAGE})")


def _study(args, extra: list[str]):
    """The study's spec, space and folder: a new one from the flags, or the one in
    ``--out`` (``--resume``) from its study.json."""
    from fastcifar.train_flags import recipe_and_options

    out = Path(args.out or f"runs/tune-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = out / "study.json"
    if args.resume:
        if not saved.exists():
            raise FastCifarError(f"--resume: {out} holds no study (no study.json): pass its folder")
        study = json.loads(saved.read_text())
        vars(args).update(study["settings"])  # the study goes on as it was started
    elif saved.exists():
        raise FastCifarError(
            f"{out} already holds a study: pass --resume to continue it, or another --out"
        )
    else:
        settings = {name: getattr(args, name) for name in SETTINGS}
        study = {"space": args.space, "flags": extra, "settings": settings, "argv": sys.argv[1:]}
    space = space_from_argument(study["space"])
    recipe, options = recipe_and_options(args.recipe, study["flags"], "fastcifar.tune")
    given = {d.field for d in space} & {a.lstrip("-").replace("-", "_") for a in study["flags"]}
    if given:
        name = sorted(given)[0]
        raise FastCifarError(f"{name} is both searched (--space) and set by a flag: drop one")
    return out.resolve(), study, space, recipe, options


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.tune``: a hyper-parameter search of a recipe on Ray Tune, then its
    table, figure and best command.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0.

    Raises:
        FastCifarError: a space optuna cannot draw, a bad space or flag, no trial reported
            an epoch; ``Interrupted`` after Ctrl-C with the study's state saved.
    """
    args, extra = build_parser().parse_known_args(argv)
    _check(args, extra)
    out, study, space, recipe, options = _study(args, extra)
    if args.searcher == "optuna" and any(d.distribution == "grid" for d in space):
        raise FastCifarError("--searcher optuna draws every value: write grid(...) as choice(...)")
    ray = cluster.connect("fastcifar.tune", args.address)
    try:
        return _run(ray, args, out, study, space, recipe, options)
    finally:
        ray.shutdown()


def _run(ray, args, out: Path, study: dict, space, recipe, options) -> int:
    from ray import tune

    from fastcifar.evaluation.study import collect, write_study

    resources = cluster.trial_resources(ray, args.gpus_per_trial, args.cpus_per_trial)
    spec = trials.TrialSpec(recipe, options, str(out))
    trainable = tune.with_resources(tune.with_parameters(trials.train_trial, spec=spec), resources)
    path = cluster.experiment_path(out, args.storage)
    out.mkdir(parents=True, exist_ok=True)
    study["ray"] = str(path)
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    print(
        f"tune: {recipe.name}, {len(space)} field(s) ({' '.join(map(str, space))}), "
        f"{args.samples} sample(s), {args.searcher} search, {args.scheduler}, "
        f"{resources['cpu']:g} CPU {resources['gpu']:g} GPU a trial, into {out}",
        flush=True,
    )
    if args.resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        tuner = _new_tuner(args, trainable, path, space, recipe)
    grid = tuner.fit()
    ended = collect(trials.ended_trials(grid, path), recipe, space, args.scheduler)
    unfinished = [t for t in ended if t["stopped"] == "interrupted"]
    best = write_study(out, ended, recipe.name, space, study["flags"], args.scheduler)
    if unfinished:
        raise Interrupted(
            f"interrupted: {len(unfinished)} trial(s) unfinished, the study's state is "
            f"saved in {path}; continue it with:\n  python -m fastcifar.tune --resume --out "
            f"{shlex.quote(str(out))}"
        )
    if best is None:
        raise FastCifarError(f"no trial reported an epoch: see the logs under {out / 'trials'}")
    print(f"tune: {len(ended)} trials; table {out / 'tune.md'}, figure {out / 'tune.png'}")
    print(
        f"best: trial {best['trial']}, final test accuracy {best['final_acc']:.2f} %; train "
        f"it alone with:\n  {best['command']}"
    )
    return 0


def _new_tuner(args, trainable, path: Path, space, recipe):
    """A new study's ``ray.tune.Tuner``: its space, searcher, scheduler (ASHA's ``max_t``
    the most epochs a trial can plan), retries and Ray's experiment at ``path``."""
    from ray import tune

    epochs = max([recipe.epochs, *(v for d in space if d.field == "epochs" for v in d.args)])
    return tune.Tuner(
        trainable,
        param_space=_param_space(tune, space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=args.samples,
            scheduler=_scheduler(args, epochs),
            search_alg=_searcher(args, recipe.seed),
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
            callbacks=[trials.trial_lines("tune", _label, _planned(recipe))],
        ),
    )


def _param_space(tune, space) -> dict:
    """Ray's distributions for the space (an int field's ranges draw whole numbers)."""
    out = {}
    for d in space:
        low_high = d.args
        if d.distribution == "grid":
            out[d.field] = tune.grid_search(list(d.args))
        elif d.distribution == "choice":
            out[d.field] = tune.choice(list(d.args))
        elif d.integer:
            draw = tune.lograndint if d.distribution == "loguniform" else tune.randint
            out[d.field] = draw(low_high[0], low_high[1] + 1)
        else:
            out[d.field] = getattr(tune, d.distribution)(*low_high)
    return out


def _scheduler(args, epochs: int):
    if args.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=epochs,
        grace_period=min(args.grace_period, epochs),
        reduction_factor=args.reduction_factor,
    )


def _searcher(args, seed: int):
    """The searcher, seeded with the recipe's seed: the same command draws the same trials."""
    if args.searcher == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise FastCifarError(
            "--searcher optuna needs Optuna: pip install 'fastcifar[tune]'"
        ) from None
    return OptunaSearch(seed=seed)


def _label(trial) -> str:
    return f"trial {trial.trial_id}"


def _planned(recipe):
    return lambda trial: int(trial.config.get("epochs", recipe.epochs))


if __name__ == "__main__":
    sys.exit(run_cli(main))
