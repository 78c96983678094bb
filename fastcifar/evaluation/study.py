"""A hyper-parameter study's outcome (``fastcifar.tune``): ``tune.json``, ``tune.md`` and
``tune.png`` in the study's folder, and the best trial as a ``fastcifar.train`` command.

Each trial is read from Ray Tune's ``ResultGrid`` (every epoch's reported row, the
trial's status): its searched values, the epochs it ran of those it planned, its test
accuracy per epoch (percent), best and final, its seconds (Ray's ``time_total_s``: the
trial's wall time, data loading and any compile included) and why it stopped:
``completed``, ``stopped by ASHA after epoch N``, ``error: ...`` (after Ray's retries),
or ``interrupted`` (the study was stopped before it ended). The best trial is the
completed one with the highest final accuracy (a trial that ASHA stopped early is not
comparable with a whole run); its command reproduces it alone.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from fastcifar.engine.rundir import atomic_write
from fastcifar.errors import first_line

__all__ = ["collect", "format_markdown", "plot_study", "train_command", "write_study"]


def _why(status: str, error, epochs_run: int, planned: int, scheduler_stops: bool) -> str:
    if status == "ERROR" or error is not None:
        return f"error: {first_line(error) if error is not None else 'see the trial log'}"
    if status != "TERMINATED":
        return "interrupted"
    if epochs_run >= planned:
        return "completed"
    return f"stopped by ASHA after epoch {epochs_run}" if scheduler_stops else "interrupted"


def collect(ended: list, recipe, space, scheduler: str = "asha") -> list[dict]:
    """One dict per trial of a study of ``recipe`` over ``space`` (a tuple of
    ``fastcifar.recipes.space.Dimension``); ``ended``: (Ray's Trial, its Result, its saved
    status) for each trial (``fastcifar.engine.trials.ended_trials``).

    Args:
        ended: ``ended_trials``' triples.
        recipe: the study's recipe.
        space: the searched dimensions.
        scheduler: ``"asha"`` or ``"fifo"`` (how an early stop is named).

    Returns:
        The trials' dicts: id, searched config, planned and run epochs, per-epoch test
        accuracy (percent), best and final accuracy, seconds, node, how it stopped.
    """
    out = []
    for trial, result, status in ended:
        metrics = result.metrics or {}
        accuracy = list(metrics.get("test_acc_history", []))  # the whole curve, retries too
        given = result.config or trial.config  # a trial that never started has no result's
        config = {d.field: given[d.field] for d in space if d.field in given}
        planned = int(config.get("epochs", recipe.epochs))
        out.append(
            {
                "trial": trial.trial_id,
                "config": config,
                "epochs": planned,
                "epochs_run": len(accuracy),
                "test_acc": accuracy,
                "best_acc": max(accuracy) if accuracy else None,
                "final_acc": accuracy[-1] if accuracy else None,
                "seconds": metrics.get("time_total_s"),
                "node": metrics.get("node_id"),
                "stopped": _why(status, result.error, len(accuracy), planned, scheduler == "asha"),
            }
        )
    return out


def train_command(recipe_name: str, flags: list[str], config: dict) -> str:
    """``python -m fastcifar.train`` with the study's flags and ``config``'s values
    (floats in full: the command trains the trial's very configuration).

    Args:
        recipe_name: the study's recipe.
        flags: the study's own flags.
        config: the trial's searched values.

    Returns:
        The command, shell-quoted.
    """
    searched = []
    for name, value in config.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            searched.append(flag if value else f"--no-{flag[2:]}")
        else:
            searched += [flag, repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(
        ["python", "-m", "fastcifar.train", "--recipe", recipe_name, *flags, *searched]
    )


def _best(trials: list[dict]) -> dict | None:
    done = [t for t in trials if t["stopped"] == "completed" and t["final_acc"] is not None]
    pool = done or [t for t in trials if t["final_acc"] is not None]
    return max(pool, key=lambda t: t["final_acc"]) if pool else None


def num(x, fmt: str) -> str:
    """``x`` formatted with ``fmt``, or ``"-"`` for None (a table cell).

    Args:
        x: a number or None.
        fmt: a format spec, e.g. ``".2f"``.

    Returns:
        The cell's text.
    """
    return "-" if x is None else format(x, fmt)


def _value(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def format_markdown(study: dict) -> str:
    """tune.md: the study in a line, every trial's row, and the best command.

    Args:
        study: tune.json's dict.

    Returns:
        The Markdown text.
    """
    fields = [s.split("=")[0] for s in study["space"]]
    lines = [
        f"# {study['recipe']}: {len(study['trials'])} trials",
        "",
        f"Searched {', '.join(f'`{s}`' for s in study['space'])}; scheduler "
        f"{study['scheduler']}, metric {study['metric']} (percent, each epoch), mode max.",
        "",
        "| trial | " + " | ".join(fields) + " | epochs run | best acc (%) | final acc (%) | "
        "seconds | why it stopped |",
        "|---|" + "---|" * (len(fields) + 5),
    ]
    for t in study["trials"]:
        values = " | ".join(_value(t["config"].get(f, "-")) for f in fields)
        lines.append(
            f"| {t['trial']} | {values} | {t['epochs_run']}/{t['epochs']} | "
            f"{num(t['best_acc'], '.2f')} | {num(t['final_acc'], '.2f')} | "
            f"{num(t['seconds'], '.1f')} | {t['stopped']} |"
        )
    best = study["best"]
    if best:
        lines += [
            "",
            f"Best: trial {best['trial']}, final accuracy {best['final_acc']:.2f} %. Train it:",
            "",
            f"    {best['command']}",
        ]
    return "\n".join(lines) + "\n"


def plot_study(study: dict, path: Path) -> None:
    """tune.png: each trial's test accuracy per epoch (an x where ASHA stopped it), then
    the final accuracy against each searched field (log axis for a log-uniform one).

    Args:
        study: tune.json's dict.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = study["space"]
    fig, axes = plt.subplots(1, 1 + len(dims), figsize=(5 + 3.6 * len(dims), 3.8), squeeze=False)
    curves = axes[0][0]
    for t in study["trials"]:
        if not t["test_acc"]:
            continue
        epochs = range(1, len(t["test_acc"]) + 1)
        (line,) = curves.plot(epochs, t["test_acc"], marker=".", linewidth=1.2, label=t["trial"])
        if t["stopped"].startswith("stopped"):
            curves.plot(len(t["test_acc"]), t["test_acc"][-1], "x", color=line.get_color(), ms=9)
    curves.set(xlabel="epoch", ylabel="test accuracy (%)", title="trials (x: stopped by ASHA)")
    curves.xaxis.get_major_locator().set_params(integer=True)
    curves.grid(alpha=0.3)
    if study["trials"]:
        curves.legend(fontsize=7, title="trial", title_fontsize=7)
    for ax, dim in zip(axes[0][1:], dims, strict=True):
        name = dim.split("=")[0]
        for t in study["trials"]:
            if t["final_acc"] is None or name not in t["config"]:
                continue
            done = t["stopped"] == "completed"
            ax.plot(
                t["config"][name],
                t["final_acc"],
                "o" if done else "x",
                color="C0" if done else "C3",
            )
        if "loguniform" in dim:
            ax.set_xscale("log")
        ax.set(
            xlabel=name, ylabel="last test accuracy (%)", title=f"{name} (o: completed, x: stopped)"
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(
    out: Path, trials: list[dict], recipe_name: str, space, flags: list[str], scheduler: str
) -> dict | None:
    """tune.json, tune.md and tune.png in ``out``; returns the best trial (with its
    ``command``), None when no trial reported an epoch.

    Args:
        out: the study's folder.
        trials: ``collect``'s dicts.
        recipe_name: the study's recipe.
        space: the searched dimensions.
        flags: the study's own flags.
        scheduler: ``"asha"`` or ``"fifo"``.

    Returns:
        The best trial's dict, or None.
    """
    best = _best(trials)
    if best is not None:
        best = {**best, "command": train_command(recipe_name, flags, best["config"])}
    study = {
        "recipe": recipe_name,
        "space": [str(d) for d in space],
        "scheduler": scheduler,
        "metric": "test_acc",
        "flags": flags,
        "trials": trials,
        "best": best,
    }
    atomic_write(Path(out) / "tune.json", json.dumps(study, indent=2) + "\n")
    atomic_write(Path(out) / "tune.md", format_markdown(study))
    plot_study(study, Path(out) / "tune.png")
    return best
