"""``roofline.png``: a GPU's roofline with every layer of a training step on it.

x: arithmetic intensity (FLOP per byte moved, log scale); y: FLOP/s (log scale). The
roof is min(peak, intensity x bandwidth) from ``gpus``. Each layer sits on the roof at
its intensity (no timing exists: this is the bound, not a measurement), its marker's
area its share of the step's lower-bound time, one colour per path. Layers without
counted FLOPs (BatchNorm, activations, the optimizer: elementwise work, which
torch.utils.flop_counter does not count) sit in a strip at the left, placed by bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastcifar.evaluation.figures import plt_agg
from fastcifar.roofline.gpus import Gpu

__all__ = ["PATH_COLOURS", "plot_roofline"]

PATH_COLOURS = {"eager": "#d62728", "compile": "#1f77b4", "fastcifar": "#2ca02c"}
_STRIP = 0.02  # the x of layers without counted FLOPs


def plot_roofline(rows: list[dict], gpu: Gpu, path: Path) -> Path:
    """Draw ``rows`` (``result.row`` dicts, one per path, one model) into ``path`` (PNG,
    120 dpi): left, ``gpu``'s roofline with each layer on it (layers without counted
    FLOPs gathered per kind in the grey strip); right, each path's lower-bound
    milliseconds per step stacked by kind. Returns ``path``."""
    plt = plt_agg()
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 5.4), width_ratios=(3, 2))
    _roofline_axes(ax, rows, gpu)
    _bars_by_kind(bars, rows, gpu, plt)
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


def _roofline_axes(ax, rows: list[dict], gpu: Gpu) -> None:
    """The left panel: ``gpu``'s roofline (log-log, FLOP/s against FLOP per byte) with
    each row's layers on it, marker area their share of the step's bound."""
    x = np.logspace(np.log10(_STRIP / 2), 4, 200)
    ax.plot(x, np.minimum(gpu.peak_flops, x * gpu.bandwidth), color="black", lw=1.5)
    ax.axvline(gpu.ridge, color="grey", ls=":", lw=1)
    ax.text(
        gpu.ridge * 1.1,
        gpu.peak_flops * 0.55,
        f"ridge {gpu.ridge:.0f} FLOP/B",
        fontsize=8,
        color="grey",
    )
    ax.axvspan(_STRIP / 2, _STRIP * 2, color="#eeeeee", zorder=0)
    for r in rows:
        total = sum(layer["lower_bound_us"] for layer in r["layers"]) or 1.0
        xs, ys, sizes = [], [], []
        flat: dict[str, float] = {}  # kind -> lower-bound us of its layers without FLOPs
        for layer in r["layers"]:
            if layer["intensity"]:
                xs.append(layer["intensity"])
                ys.append(min(gpu.peak_flops, layer["intensity"] * gpu.bandwidth))
                sizes.append(2 + 800 * layer["lower_bound_us"] / total)
            else:
                flat[layer["kind"]] = flat.get(layer["kind"], 0.0) + layer["lower_bound_us"]
        for i, us in enumerate(sorted(flat.values(), reverse=True)):
            xs.append(_STRIP * (0.6 + 0.2 * i))
            ys.append(xs[-1] * gpu.bandwidth)
            sizes.append(2 + 800 * us / total)
        label = (
            f"{r['path']}: {r['bytes_per_image'] / 1e6:.1f} MB/image, "
            f"{r['lower_bound_ms_per_step']:.2f} ms/step"
        )
        ax.scatter(
            xs,
            ys,
            s=sizes,
            alpha=0.4,
            color=PATH_COLOURS.get(r["path"], "grey"),
            edgecolors="none",
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(_STRIP / 2, 1e4)
    ax.set_ylim(gpu.bandwidth * _STRIP / 4, gpu.peak_flops * 2)
    ax.set_xlabel(
        "arithmetic intensity (FLOP per byte moved)\n"
        "grey strip: layers without counted FLOPs, one point per kind"
    )
    ax.set_ylabel("FLOP/s at the bound")
    ax.legend(
        fontsize=8,
        loc="lower right",
        title="marker area: share of the step's bound",
        title_fontsize=8,
    )
    ax.grid(True, which="major", alpha=0.3)


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
