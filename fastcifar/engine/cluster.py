"""Many runs on Ray: the study's trials and the seed sweep's runs as Ray Tune trials,
local by default, on any Ray cluster by address.

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

Ray is an extra (``pip install 'fastcifar[tune]'``): ``import_ray`` says so in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastcifar.errors import FastCifarError
from fastcifar.options import RunOptions
from fastcifar.recipes import Recipe

__all__ = [
    "CHECKPOINT_FILES",
    "add_ray_flags",
    "TrialSpec",
    "connect",
    "ended_trials",
    "experiment_path",
    "import_ray",
    "train_trial",
    "trial_lines",
    "trial_resources",
]

# What a trial's checkpoint holds: enough to resume the run on any node.
CHECKPOINT_FILES = ("last.pt", "config.json", "metrics.jsonl")
# The local Ray's address: on the loopback range, never the machine's network address
# (Ray replaces 127.0.0.1 itself by the address it would route to: services.
# resolve_ip_for_localhost; any other 127.x.y.z it keeps).
LOCAL_IP = "127.0.0.2"
# The seconds an --address gets to answer before the command gives up on it.
CONNECT_TIMEOUT_S = 5.0


def add_ray_flags(parser, what: str) -> None:
    """The flags that place a command's runs on Ray, one definition for the sweep and the
    search: ``--max-failures``, ``--address``, ``--storage`` (``what``: "study" or
    "sweep", as the help names it)."""
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        metavar="N",
        help="retries of a run whose worker died, each from its last checkpoint [2]",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="a Ray cluster to join: auto or HOST:PORT (default: a local Ray)",
    )
    parser.add_argument(
        "--storage",
        metavar="PATH",
        help=f"where Ray keeps the {what}'s state: a path every node sees (default the {what})",
    )


def experiment_path(out: Path, storage: str | None) -> Path:
    """Where Ray keeps a study's or sweep's experiment state: ``OUT/ray``, or with
    ``--storage PATH`` ``PATH/ray-OUTNAME`` (a path every node sees)."""
    if storage is None:
        return Path(out) / "ray"
    return Path(storage).resolve() / f"ray-{Path(out).name}"


def import_ray(command: str):
    """``ray`` with ``ray.tune`` imported.

    Raises:
        FastCifarError: Ray is not installed (the message gives the pip command).
    """
    try:
        import ray
        import ray.tune  # noqa: F401
    except ImportError:
        raise FastCifarError(
            f"{command} runs on Ray, which is not installed: pip install 'fastcifar[tune]'"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """A TCP connection to ``HOST:PORT`` within ``CONNECT_TIMEOUT_S``, or one line."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FastCifarError(
            f"--address {address!r} is not HOST:PORT: pass the head node's address as "
            f"`ray start --head` printed it (such as 127.0.0.1:6379), or auto"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise FastCifarError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}): start "
            f"one with `ray start --head --port {port}`, or drop --address for a local Ray"
        ) from None


def _auto_address() -> str:
    """``--address auto``: ``RAY_ADDRESS``, else the cluster ``ray start`` last started on
    this machine (Ray's ``ray_current_cluster`` file in its temporary directory).

    Raises:
        FastCifarError: neither (Ray itself would search for minutes).
    """
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip():
        return current.read_text().strip()
    raise FastCifarError(
        "--address auto: no Ray cluster was started on this machine (no RAY_ADDRESS, no "
        "`ray start`): start one with `ray start --head`, or drop --address for a local Ray"
    )


def connect(command: str, address: str | None, num_gpus: int | None = None):
    """Ray, started or joined: with no ``address`` a Ray of this process on this machine
    (on a loopback address, ``LOCAL_IP``; no dashboard; ``num_gpus`` GPUs, default every
    visible one);
    ``auto`` the cluster this machine belongs to (``RAY_ADDRESS`` or ``ray start``'s);
    ``HOST:PORT`` that cluster's head node. Worker output goes to the run directories'
    logs, not to this console. Returns the ``ray`` module.

    Raises:
        FastCifarError: Ray missing, or no cluster at ``address`` (refused within
            ``CONNECT_TIMEOUT_S`` seconds, not Ray's minutes of retries).
    """
    ray = import_ray(command)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose 0 is silent then
    # a snapshot per checkpoint is what a study of short epochs asks for: no warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet = {"log_to_driver": False, "configure_logging": True, "logging_level": "error"}
    if address is None:
        ray.init(
            address="local",
            include_dashboard=False,
            num_gpus=num_gpus,
            _node_ip_address=LOCAL_IP,
            **quiet,
        )
        return ray
    if address == "auto":
        address = _auto_address()
    _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError) as exc:
        raise FastCifarError(
            f"--address {address}: could not join a Ray cluster ({str(exc).splitlines()[0]}): "
            f"start one with `ray start --head`, or drop --address for a local Ray"
        ) from None
    return ray


def trial_resources(ray, gpus_per_trial: float | None, cpus_per_trial: float) -> dict:
    """Ray's resources of one trial: ``gpus_per_trial`` GPUs (fractions share a GPU;
    default one where the cluster has GPUs, else none) and ``cpus_per_trial`` CPUs.

    Raises:
        FastCifarError: more GPUs or CPUs than the largest node has (Ray would wait for
            such a node for ever).
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = (1.0 if most_gpus else 0.0) if gpus_per_trial is None else gpus_per_trial
    if gpus > most_gpus:
        raise FastCifarError(
            f"--gpus-per-trial {gpus:g}: the largest node of the Ray cluster has "
            f"{most_gpus:g} GPU(s): pass at most that (0 for CPU trials)"
        )
    if cpus_per_trial > most_cpus:
        raise FastCifarError(
            f"{cpus_per_trial:g} CPUs a trial: the largest node of the Ray cluster has "
            f"{most_cpus:g}: pass at most that"
        )
    return {"cpu": cpus_per_trial, "gpu": gpus}


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a study shares: the recipe (before the trial's own fields), the
    run options, the study's folder (absolute) and how a run directory is named there:
    ``trials/trial-ID`` for a search, ``seed-K`` (the trial's seed) for a sweep."""

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
    ``epochs_of(trial)`` its planned epochs). Ray's own tables stay off (verbose 0)."""
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
    continue on a restore), while the ``Trial`` objects in memory all read TERMINATED."""
    from ray import tune

    saved = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(experiment)).trials}
    trials = grid._experiment_analysis.trials  # the ResultGrid's own order
    return [(t, r, saved.get(t.trial_id, t.status)) for t, r in zip(trials, grid, strict=True)]
