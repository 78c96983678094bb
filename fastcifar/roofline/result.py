"""A count turned into what people read: the JSON rows (one per model and path), the
lower-bound times on a GPU, the table of the costliest layers and the one-line verdict.

JSON (``roofline.json``): ``{"rows": [row, ...]}``, a row per (model, path)::

    {"model", "path", "batch_size", "dtype", "channels_last", "gpu", "steps_per_epoch",
     "lowered_for", "torch",                          # compile paths: "cuda:h100" or "cpu"
     "flops_per_image", "bytes_per_image",            # one training step, per image
     "lower_bound_ms_per_step", "lower_bound_s_per_epoch",
     "layers": [{"name", "kind", "shape", "kernels",
                 "flops", "bytes",                     # the whole batch, one step
                 "intensity",                          # FLOP/byte
                 "lower_bound_us"}]}                   # max(flops/peak, bytes/bandwidth)

A layer's lower bound is the roofline's (``gpus.lower_bound_s``); a step's is the sum of
its layers' (each layer's kernels are of one sort, so the sum is a tighter floor than
the whole step's FLOPs or bytes alone). It is a model of a GPU, not a timing.
"""

from __future__ import annotations

import math

import torch

from fastcifar.roofline.gpus import Gpu, lower_bound_s
from fastcifar.roofline.ledger import StepCount
from fastcifar.units import number

__all__ = ["CIFAR10_TRAIN", "format_table", "row", "steps_per_epoch", "verdict"]

CIFAR10_TRAIN = 50_000


def steps_per_epoch(batch_size: int, drop_last: bool = False, images: int = CIFAR10_TRAIN) -> int:
    """Optimizer steps in one epoch of ``images`` training images.

    Args:
        batch_size: images a step.
        drop_last: the last partial batch is dropped.
        images: training images.

    Returns:
        Steps.
    """
    return images // batch_size if drop_last else math.ceil(images / batch_size)


def row(count: StepCount, gpu: Gpu, steps: int) -> dict:
    """The JSON row of one path's count on ``gpu`` with ``steps`` steps an epoch.

    Args:
        count: the path's count.
        gpu: the GPU modelled.
        steps: optimizer steps an epoch.

    Returns:
        The row: totals per step, per image and per epoch, the lower bound, and each layer's.
    """
    layers = []
    for layer in count.layers:
        seconds = lower_bound_s(layer.flops, layer.bytes, gpu)
        layers.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "shape": layer.shape,
                "kernels": layer.kernels,
                "flops": layer.flops,
                "bytes": layer.bytes,
                "intensity": layer.flops / layer.bytes if layer.bytes else None,
                "lower_bound_us": seconds * 1e6,
            }
        )
    step_ms = sum(layer["lower_bound_us"] for layer in layers) / 1e3
    n = count.batch_size
    return {
        "model": count.model,
        "path": count.path,
        "batch_size": n,
        "dtype": count.dtype,
        "channels_last": count.channels_last,
        "gpu": gpu.key,
        "steps_per_epoch": steps,
        "flops_per_image": count.flops / n,
        "bytes_per_image": count.bytes / n,
        "lower_bound_ms_per_step": step_ms,
        "lower_bound_s_per_epoch": step_ms * steps / 1e3,
        "lowered_for": _lowered_for(count.lowered_for),
        "torch": torch.__version__,
        "layers": layers,
    }


def _lowered_for(key: str) -> str | None:
    """The JSON's ``lowered_for``: ``cuda:<gpu>`` for a fake CUDA device with that GPU's
    profile, ``cpu`` for the control, None for the eager path (nothing lowered)."""
    if not key:
        return None
    return key if key == "cpu" else f"cuda:{key}"


def _mb(nbytes: float) -> str:
    return number(nbytes / 1e6, 1)


def _costliest(r: dict, top: int) -> list[str]:
    """One path's ``top`` costliest layers (by lower-bound time) as table lines."""
    lowered = f", lowered for {r['lowered_for']}" if r.get("lowered_for") else ""
    lines = [
        f"{r['model']}, {r['path']} path{lowered}, batch {r['batch_size']}, {r['dtype']}: "
        f"the {top} costliest layers on {r['gpu']}",
        f"  {'layer':<34} {'kind':<13} {'GFLOP':>8} {'MB':>9} {'FLOP/B':>7} {'us':>9}",
    ]
    for layer in sorted(r["layers"], key=lambda x: -x["lower_bound_us"])[:top]:
        intensity = layer["intensity"]
        lines.append(
            f"  {layer['name'][:34]:<34} {layer['kind']:<13} {layer['flops'] / 1e9:>8.2f} "
            f"{layer['bytes'] / 1e6:>9.1f} {'-' if intensity is None else f'{intensity:.1f}':>7} "
            f"{layer['lower_bound_us']:>9.1f}"
        )
    return lines + [""]


def format_table(rows: list[dict], top: int = 10) -> str:
    """The ``top`` costliest layers of each row's path (by lower-bound time), then every
    path's totals: GFLOP, MB and lower-bound ms per step, per image, per epoch.

    Args:
        rows: ``row`` dicts.
        top: layers shown per path.

    Returns:
        The table.
    """
    lines = []
    for r in rows:
        lines += _costliest(r, top)
    lines.append(
        f"  {'path':<10} {'GFLOP/step':>11} {'MB/step':>10} {'ms/step':>8} "
        f"{'MB/image':>9} {'s/epoch':>8}"
    )
    for r in rows:
        n = r["batch_size"]
        lines.append(
            f"  {r['path']:<10} {r['flops_per_image'] * n / 1e9:>11.1f} "
            f"{_mb(r['bytes_per_image'] * n):>10} {r['lower_bound_ms_per_step']:>8.3f} "
            f"{r['bytes_per_image'] / 1e6:>9.2f} {r['lower_bound_s_per_epoch']:>8.2f}"
        )
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """One line: which path moves fewest bytes, and by how much against each other.

    Args:
        rows: ``row`` dicts of one model.

    Returns:
        The line.
    """
    if len(rows) < 2:
        r = rows[0]
        return f"{r['path']} moves {r['bytes_per_image'] / 1e6:.2f} MB per image per step"
    ranked = sorted(rows, key=lambda r: r["bytes_per_image"])
    best = ranked[0]
    others = ", ".join(
        f"{(1 - best['bytes_per_image'] / r['bytes_per_image']) * 100:.1f} % fewer than "
        f"{r['path']} ({r['bytes_per_image'] / 1e6:.2f})"
        for r in ranked[1:]
    )
    return (
        f"{best['path']} moves fewest bytes: {best['bytes_per_image'] / 1e6:.2f} MB per "
        f"image per step, {others}"
    )
