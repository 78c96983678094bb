"""``roofline.png``: where a training step's lower-bound time goes, and which kinds of
layer bytes bound.

Left (first): each path's lower-bound milliseconds per step on the GPU, stacked by kind
(``kinds.KINDS``, one vocabulary on every path). Right: each kind's arithmetic
intensity (its FLOPs over its bytes, summed over the step's layers of that kind; log
scale) per path, against the GPU's ridge point (peak FLOP/s over bandwidth, ``gpus``):
a kind left of the ridge is bound by the bytes it moves, right of it by arithmetic.
Kinds without counted FLOPs (BatchNorm, activations, the optimizer: elementwise work,
which torch.utils.flop_counter does not count) sit at the left edge, marked. This is a
model of the GPU, not a timing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastcifar.evaluation.figures import plt_agg
from fastcifar.roofline.gpus import Gpu

__all__ = ["PATH_COLOURS", "plot_roofline"]

PATH_COLOURS = {"eager": "#d62728", "compile": "#1f77b4", "fastcifar": "#2ca02c"}
_NO_FLOPS = 0.02  # the intensity axis's place for kinds without counted FLOPs


def plot_roofline(rows: list[dict], gpu: Gpu, path: Path) -> Path:
    """Draw ``rows`` (``result.row`` dicts, one per path, one model) into ``path`` (PNG,
    120 dpi): left, each path's lower-bound milliseconds per step on ``gpu`` stacked by
    kind; right, each kind's arithmetic intensity per path against ``gpu``'s ridge point.
    Returns ``path``.

    Args:
        rows: ``result.row`` dicts.
        gpu: the GPU modelled.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    plt = plt_agg()
    fig, (bars, ax) = plt.subplots(1, 2, figsize=(12, 5.6), width_ratios=(3, 2))
    _bars_by_kind(bars, rows, gpu, plt)
    _intensity_by_kind(ax, rows, gpu)
    first = rows[0]
    fig.suptitle(
        f"{first['model']}: one training step at batch {first['batch_size']} "
        f"({first['dtype']}) on {gpu.name}, a model of the GPU, not a timing",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _kind_totals(row: dict) -> dict[str, tuple[float, float, float]]:
    """{kind: (FLOPs, bytes, lower-bound us)} of one row's layers."""
    out: dict[str, tuple[float, float, float]] = {}
    for layer in row["layers"]:
        f, b, us = out.get(layer["kind"], (0.0, 0.0, 0.0))
        out[layer["kind"]] = (f + layer["flops"], b + layer["bytes"], us + layer["lower_bound_us"])
    return out


def _intensity_by_kind(ax, rows: list[dict], gpu: Gpu) -> None:
    """The right panel: one row per kind that takes at least 1 % of some path's bound,
    its arithmetic intensity on each path (a marker per path), the ridge labelled."""
    from fastcifar.roofline.kinds import KINDS

    totals = [_kind_totals(r) for r in rows]

    def visible(kind: str) -> bool:
        shares = (
            t.get(kind, (0, 0, 0))[2] / (r["lower_bound_ms_per_step"] * 1e3 or 1)
            for t, r in zip(totals, rows, strict=True)
        )
        return max(shares) >= 0.01

    shown = [k for k in KINDS if visible(k)]
    for j, (r, t) in enumerate(zip(rows, totals, strict=True)):
        counted, uncounted = [], []
        for i, kind in enumerate(shown):
            flops, nbytes, _ = t.get(kind, (0.0, 0.0, 0.0))
            y = i + (j - (len(rows) - 1) / 2) * 0.22  # the paths side by side
            if flops and nbytes:
                counted.append((flops / nbytes, y))
            elif nbytes:
                uncounted.append((_NO_FLOPS, y))
        colour = PATH_COLOURS.get(r["path"], "grey")
        for points, marker, label in ((counted, "o", r["path"]), (uncounted, "x", None)):
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, color=colour, marker=marker, s=36, label=label, zorder=3)
    ax.axvline(gpu.ridge, color="black", ls="--", lw=1)
    ax.text(gpu.ridge * 1.15, -0.6, f"ridge {gpu.ridge:.0f} FLOP/B", fontsize=8, va="center")
    ax.axvspan(_NO_FLOPS / 2, _NO_FLOPS * 2, color="#eeeeee", zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(_NO_FLOPS / 2, max(1e4, gpu.ridge * 10))
    ax.set_yticks(range(len(shown)), shown, fontsize=8)
    ax.set_ylim(len(shown) - 0.5, -1)
    ax.set_xlabel(
        "arithmetic intensity, FLOP per byte (log)\n"
        "left of the ridge bytes bound it; x: no FLOPs counted"
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", which="major", alpha=0.3)


def _bars_by_kind(bars, rows: list[dict], gpu: Gpu, plt) -> None:
    """The right panel: each path's lower-bound milliseconds per step, stacked by kind."""
    from fastcifar.roofline.kinds import KINDS

    names = [r["path"] for r in rows]
    left = np.zeros(len(rows))
    cmap = plt.get_cmap("tab20")
    for i, kind in enumerate(KINDS):
        ms = np.array(
            [
                sum(layer["lower_bound_us"] for layer in r["layers"] if layer["kind"] == kind) / 1e3
                for r in rows
            ]
        )
        if not ms.any():
            continue
        bars.barh(names, ms, left=left, color=cmap(i), label=kind)
        left += ms
    for y, total in enumerate(left):
        bars.text(total, y, f" {total:.2f} ms", va="center", fontsize=8)
    bars.set_xlim(0, left.max() * 1.25 if left.any() else 1)
    bars.invert_yaxis()
    bars.set_xlabel(f"lower-bound ms per step on {gpu.name}, by kind")
    bars.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.13))
