"""Many runs on Ray, the trial half: the study's trials and the seed sweep's runs as Ray
Tune trials (``train_trial``), the console's line per trial event (``trial_lines``) and
how each trial ended (``ended_trials``). Starting or joining Ray:
``fastcifar.engine.cluster``.

Ray is the engine (docs.ray.io, "Ray Tune"); this module only says what one trial is:
a normal fastcifar run through ``build_trainer`` and ``Trainer.fit`` in a Ray worker
process, its run directory under the study's folder, each epoch's ``metrics.jsonl`` row
reported with ``ray.tune.report`` together with a checkpoint (the run directory's
last.pt, config.json and metrics.jsonl), so a scheduler (ASHA) can stop it after any
epoch, and a retried or restored trial continues from its last epoch
(``ray.tune.get_checkpoint``) rather than from the start.

- Workers are Ray's own processes, started fresh (never forked from a process that has
  initialised CUDA), so DALI and the GPU loader run in them as in ``fastcifar.train``;
  Ray gives each trial its GPUs through ``CUDA_VISIBLE_DEVICES``.
- torch.compile's caches are shared by the trials of a node: Inductor and Triton write
  every cache entry to a temporary file and rename it into place (``write_atomic`` in
  ``torch/_inductor/codecache.py``; Triton's ``FileCacheManager.put``), so two trials
  compiling the same graph at once each write a whole entry and read a whole one.
- A run directory is locked by the trial that trains in it (``RunLock``, released when
  its process ends), as by ``fastcifar.train``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastcifar.options import RunOptions
from fastcifar.recipes import Recipe

__all__ = ["CHECKPOINT_FILES", "TrialSpec", "ended_trials", "train_trial", "trial_lines"]

# What a trial's checkpoint holds: enough to resume the run on any node.
CHECKPOINT_FILES = ("last.pt", "config.json", "metrics.jsonl")


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a study shares: the recipe (before the trial's own fields), the
    run options, the study's folder (absolute) and how a run directory is named there:
    ``trials/trial-ID`` for a search, ``seed-K`` (the trial's seed) for a sweep.

    Attributes:
        recipe: the recipe before the trial's own fields.
        options: the run options every trial shares.
        study: the study's folder, absolute.
        by_seed: run directories named ``seed-K`` (a sweep) rather than ``trials/trial-ID``.
    """

    recipe: Recipe
    options: RunOptions
    study: str
    by_seed: bool = False

    def __post_init__(self):
        # a trial runs in a working directory of Ray's: a relative --data as the user meant it
        data = self.options.data
        if data and os.path.exists(data):
            object.__setattr__(
                self, "options", dataclasses.replace(self.options, data=os.path.abspath(data))
            )

    def run_dir(self, config: dict, trial_id: str) -> Path:
        """A trial's run directory.

        Args:
            config: the trial's recipe fields.
            trial_id: Ray's trial id.

        Returns:
            ``<study>/seed-<seed>`` for a sweep, else ``<study>/trials/trial-<id>``.
        """
        if self.by_seed:
            return Path(self.study) / f"seed-{config['seed']}"
        return Path(self.study) / "trials" / f"trial-{trial_id}"


class _TuneReport:
    """The logger that hands each epoch to Ray Tune: the row with ``test_acc_history``
    (every epoch's test accuracy so far: a retried or restored trial's last result holds
    its whole curve), and the run directory's files as the checkpoint
    (``ray.tune.report`` persists them before it returns)."""

    def __init__(self, run_dir: Path, extra: dict, history):
        self.run_dir, self.extra, self.history = run_dir, extra, history
        self.reported = False

    def on_epoch_end(self, row: dict, is_best: bool) -> None:
        from ray import tune

        metrics = {**row, **self.extra, "test_acc_history": self.history()}
        with tempfile.TemporaryDirectory() as tmp:
            for name in CHECKPOINT_FILES:
                if (self.run_dir / name).exists():
                    shutil.copy2(self.run_dir / name, tmp)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        self.reported = True


def _restore(run_dir: Path) -> bool:
    """Whether ``run_dir`` resumes: its checkpoint brought back from Ray's when the
    directory lacks one (another node, a lost disk); a directory that stopped before its
    first checkpoint is started again."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None and not (run_dir / "last.pt").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        with checkpoint.as_directory() as saved:
            for name in CHECKPOINT_FILES:
                if (Path(saved) / name).exists():
                    shutil.copy2(Path(saved) / name, run_dir / name)
    resume = (run_dir / "last.pt").exists() and (run_dir / "config.json").exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    return resume


def train_trial(config: dict, spec: TrialSpec) -> None:
    """Ray Tune's function trainable: one fastcifar run of ``spec.recipe`` with the
    trial's ``config`` (recipe fields) in its run directory, its console output in the
    directory's log (``RUN_DIR.log`` beside it). A run that has finished already reports
    its last epoch again and returns; one with a checkpoint resumes.

    Args:
        config: the trial's recipe fields (Ray Tune's ``config``).
        spec: what every trial shares.

    Raises:
        FastCifarError: the run's own errors (bad data, a kernel that cannot run), which
            Ray records as the trial's error.
    """
    import ray
    from ray import tune

    from fastcifar.engine.build import build_trainer
    from fastcifar.engine.rundir import prepare_run_dir, write_config

    run_dir = spec.run_dir(config, tune.get_context().get_trial_id())
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    recipe = spec.recipe.replace(**config).validate()
    options = dataclasses.replace(spec.options, out=str(run_dir))
    log = open(run_dir.parent / f"{run_dir.name}.log", "a", buffering=1)  # noqa: SIM115
    with log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if (run_dir / "summary.json").exists():  # finished: Ray hears of its last epoch
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            history = [row["test_acc"] for row in rows]
            tune.report({**rows[-1], **where, "test_acc_history": history})
            return
        resume = _restore(run_dir)
        with prepare_run_dir(run_dir, resume=resume):
            (run_dir / "ray.json").write_text(json.dumps(where) + "\n")
            trainer = build_trainer(recipe, options, run_dir, resume)
            if not resume:
                dispatch = trainer.components.kernel_dispatch
                write_config(run_dir, trainer.recipe, trainer.options, dispatch)
            rows = trainer.state.metrics  # every epoch's row so far, this one's included
            report = _TuneReport(run_dir, where, lambda: [row["test_acc"] for row in rows])
            trainer.loggers.append(report)
            trainer.fit()
            if not report.reported:  # stopped after its last epoch, before Ray heard of it
                report.on_epoch_end(trainer.state.metrics[-1], False)


def trial_lines(prefix: str, label, epochs_of):
    """A Ray Tune callback that prints one console line per trial event: each reported
    epoch's test accuracy, and how the trial ended (``label(trial)`` names it,
    ``epochs_of(trial)`` its planned epochs). Ray's own tables stay off (verbose 0).

    Args:
        prefix: starts every line (the command's name).
        label: ``trial -> str``, how a trial is named.
        epochs_of: ``trial -> int``, its planned epochs.

    Returns:
        The ``ray.tune.Callback``.
    """
    from ray.tune import Callback

    class TrialLines(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            print(
                f"{prefix}: {label(trial)} epoch {result.get('epoch')}/{epochs_of(trial)}: test "
                f"acc {result.get('test_acc', float('nan')):.2f} %",
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            done = (trial.last_result or {}).get("epoch", 0)
            how = "finished" if done >= epochs_of(trial) else f"stopped after epoch {done}"
            print(f"{prefix}: {label(trial)} {how}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"{prefix}: {label(trial)} failed (see its log)", flush=True)

    return TrialLines()


def ended_trials(grid, experiment: Path) -> list[tuple[object, object, str]]:
    """(Ray's ``Trial``, its ``Result``, its saved status) for each trial of ResultGrid
    ``grid``. The status is the one Ray saved in ``experiment``'s state when the run
    ended: after Ctrl-C the trials that had not ended are saved PENDING (and would
    continue on a restore), while the ``Trial`` objects in memory all read TERMINATED.

    Args:
        grid: Ray Tune's ``ResultGrid``.
        experiment: the experiment folder (``experiment_path``).

    Returns:
        One (trial, result, saved status) per trial, in the grid's order.
    """
    from ray import tune

    saved = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(experiment)).trials}
    trials = grid._experiment_analysis.trials  # the ResultGrid's own order
    return [(t, r, saved.get(t.trial_id, t.status)) for t, r in zip(trials, grid, strict=True)]
