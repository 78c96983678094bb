"""Statistics over runs of one recipe with different seeds, as speed records report them.

``python -m fastcifar.seedstats DIR [--target 94]`` reads every ``DIR/*/summary.json``
(finished runs only) and prints, and writes as ``DIR/sweep.json`` and ``DIR/sweep.md``
(as ``fastcifar.sweep`` does at its end):
per run the final test accuracy (percent, with the recipe's TTA) and its seconds under
both timing contracts (``options.TIMINGS``: fastcifar = whitening + training + final TTA,
record = whitening + training; the run's ``--timing`` picks the one ``seconds`` and the
console line describe); over the runs the mean, the sample standard
deviation, a 95 % confidence interval of the mean (Student's t with n - 1 degrees of
freedom, ``scipy.stats.t``), and the fraction of runs at or above the target accuracy.

Bad input (no finished run under DIR) ends in one line, exit status 2.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from fastcifar.cli import CommandParser, prog_name
from fastcifar.errors import FastCifarError, run_cli

__all__ = ["describe", "format_markdown", "load_runs", "one_line", "summarise", "write_report"]


def describe(values: list[float]) -> dict:
    """{n, mean, std, ci95_low, ci95_high} of ``values``: sample standard deviation, and
    the 95 % t-interval of the mean (both 0-width for a single value).

    Args:
        values: the samples (at least one).

    Returns:
        The dict.
    """
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def load_runs(sweep_dir: Path) -> list[dict]:
    """{run, seed, accuracy, seconds, device, node} of each finished run under ``sweep_dir``
    (a directory holding summary.json and config.json), sorted by directory name.

    Args:
        sweep_dir: the sweep's folder.

    Returns:
        One dict per finished run, by seed.
    """
    runs = []
    for summary_path in sorted(Path(sweep_dir).glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        config = json.loads((summary_path.parent / "config.json").read_text())
        fastcifar = summary.get("timed_span_s", summary["train_time_s"])
        record = summary.get("record_span_s", fastcifar - summary.get("tta_time_s", 0.0))
        runs.append(
            {
                "run": summary_path.parent.name,
                "seed": config["recipe"]["seed"],
                "accuracy": summary["final_test_acc"],
                "seconds": record if summary.get("timing") == "record" else fastcifar,
                "timing": summary.get("timing", "fastcifar"),
                "fastcifar_seconds": fastcifar,
                "record_seconds": record,
                "device": summary["device"],
                # the Ray node that ran it (fastcifar.engine.trials writes ray.json)
                "node": _node(summary_path.parent),
            }
        )
    return runs


def _node(run_dir: Path) -> str | None:
    """The Ray node id of a sweep's run (its ray.json), None for a run without one."""
    try:
        return json.loads((run_dir / "ray.json").read_text())["node_id"]
    except (OSError, ValueError, KeyError):
        return None


def summarise(runs: list[dict], target: float) -> dict:
    """Accuracy and seconds described over ``runs``, and the fraction at or above
    ``target`` percent.

    Args:
        runs: ``load_runs``' dicts.
        target: the accuracy to reach, percent.

    Returns:
        sweep.json's dict.
    """
    accuracy = describe([r["accuracy"] for r in runs])
    reached = sum(r["accuracy"] >= target for r in runs)
    return {
        "runs": runs,
        "target": target,
        "accuracy": accuracy,
        "seconds": describe([r["seconds"] for r in runs]),
        "fastcifar_seconds": describe([r["fastcifar_seconds"] for r in runs]),
        "record_seconds": describe([r["record_seconds"] for r in runs]),
        "timings": sorted({r["timing"] for r in runs}),
        "reached": reached,
        "fraction_reached": reached / len(runs),
        "devices": sorted({r["device"] for r in runs}),
        "nodes": sorted({r["node"] for r in runs if r.get("node")}),
    }


def format_markdown(stats: dict, title: str) -> str:
    """sweep.md: the sweep in a sentence, accuracy and seconds with their 95 % intervals, and every
    run's row.

    Args:
        stats: ``summarise``'s dict.
        title: the page's title.

    Returns:
        The Markdown text.
    """
    a = stats["accuracy"]
    lines = [
        f"# {title}",
        "",
        f"{a['n']} runs on {', '.join(stats['devices'])}"
        + (f", on {len(stats['nodes'])} Ray node(s)." if stats.get("nodes") else "."),
        "",
        "| | mean | std | 95 % interval of the mean |",
        "|---|---|---|---|",
        f"| accuracy (%) | {a['mean']:.3f} | {a['std']:.3f} | "
        f"{a['ci95_low']:.3f} - {a['ci95_high']:.3f} |",
        *(
            f"| seconds, --timing {name} ({what}) | {d['mean']:.3f} | {d['std']:.3f} | "
            f"{d['ci95_low']:.3f} - {d['ci95_high']:.3f} |"
            for name, what, d in _contracts(stats)
        ),
        "",
        f"The seconds described below and in one line: --timing {', '.join(stats['timings'])}.",
        "",
        f"At or above {stats['target']} %: {stats['reached']}/{a['n']} "
        f"({100 * stats['fraction_reached']:.0f} %).",
        "",
        "| run | seed | accuracy (%) | seconds (fastcifar) | seconds (record) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['run']} | {r['seed']} | {r['accuracy']:.2f} | {r['fastcifar_seconds']:.3f} | "
        f"{r['record_seconds']:.3f} |"
        for r in stats["runs"]
    ]
    return "\n".join(lines) + "\n"


def _contracts(stats: dict) -> list[tuple[str, str, dict]]:
    """(contract name, what it charges, its described seconds) for each timing contract."""
    from fastcifar.options import TIMINGS

    return [(name, what, stats[f"{name}_seconds"]) for name, (_, what) in TIMINGS.items()]


def one_line(stats: dict, sweep_dir: Path) -> str:
    """The report in one console line.

    Args:
        stats: ``summarise``'s dict.
        sweep_dir: the sweep's folder (named in the line).

    Returns:
        The line.
    """
    a, s, n = stats["accuracy"], stats["seconds"], stats["accuracy"]["n"]
    return (
        f"{n} runs: accuracy {a['mean']:.2f} +- {a['std']:.2f} % (95 % interval "
        f"{a['ci95_low']:.2f}-{a['ci95_high']:.2f}), time {s['mean']:.3f} +- {s['std']:.3f} s "
        f"(95 % interval {s['ci95_low']:.3f}-{s['ci95_high']:.3f}); >= {stats['target']} %: "
        f"{stats['reached']}/{n}; written to {Path(sweep_dir) / 'sweep.md'}"
    )


def write_report(sweep_dir: Path, stats: dict, title: str) -> None:
    """``sweep.json`` (``stats``) and ``sweep.md`` (``format_markdown``) in ``sweep_dir``.

    Args:
        sweep_dir: the sweep's folder.
        stats: ``summarise``'s dict.
        title: sweep.md's title.
    """
    from fastcifar.engine.rundir import atomic_write

    atomic_write(sweep_dir / "sweep.json", json.dumps(stats, indent=2) + "\n")
    atomic_write(sweep_dir / "sweep.md", format_markdown(stats, title))


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.seedstats SWEEP_DIR``: the statistics of a seed sweep's finished runs,
    written as sweep.json and sweep.md.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0.

    Raises:
        FastCifarError: the folder holds no finished run.
    """
    p = CommandParser(
        prog=prog_name("fastcifar.seedstats"),
        description="Mean, deviation and 95 %% interval over the finished runs under DIR.",
    )
    p.add_argument("dir", help="directory whose subdirectories are run directories")
    p.add_argument("--target", type=float, default=94.0, help="accuracy target, percent")
    args = p.parse_args(argv)
    sweep_dir = Path(args.dir)
    runs = load_runs(sweep_dir)
    if not runs:
        raise FastCifarError(
            f"{sweep_dir} holds no finished run (no */summary.json): pass the directory the "
            f"runs were written under"
        )
    stats = summarise(runs, args.target)
    write_report(sweep_dir, stats, f"{sweep_dir.name}: {len(runs)} seeds")
    print(one_line(stats, sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
