"""Print the per-recipe roofline table of benchmarks/RESULTS.md from the JSON files that
``python -m fastcifar.roofline --recipe NAME --json benchmarks/roofline/NAME.json`` wrote.

Columns: GFLOP and MB per image per training step on each path, the byte ratios
fastcifar/compile and compile/eager, and the lower-bound seconds of one epoch on an H100
SXM and a T4 (eager / compile), from each layer's FLOPs and bytes
(``fastcifar.roofline.gpus.sum_lower_bound_s``); then, for the JSON files written with
``--whole-run``, the whole-run floor against the published record.

    python scripts/roofline_table.py [benchmarks/roofline]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fastcifar.roofline.gpus import get_gpu, sum_lower_bound_s


def _epoch_s(row: dict | None, gpu) -> str:
    if row is None:
        return "—"
    step = sum_lower_bound_s(((x["flops"], x["bytes"]) for x in row["layers"]), gpu)
    return f"{step * row['steps_per_epoch']:.2f}"


def _mb(row: dict | None) -> str:
    return "—" if row is None else f"{row['bytes_per_image'] / 1e6:.1f}"


def _ratio(a: dict | None, b: dict | None) -> str:
    return "—" if a is None or b is None else f"{a['bytes_per_image'] / b['bytes_per_image']:.2f}"


def main(folder: Path) -> None:
    h100, t4 = get_gpu("h100"), get_gpu("t4")
    print(
        "| recipe | model | batch | GFLOP/img | MB/img eager | compile | fastcifar "
        "| fastcifar/compile | compile/eager | epoch s, H100 (eager / compile) "
        "| epoch s, T4 (eager / compile) |"
    )
    print("|" + "---|" * 11)
    runs = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "rows" not in data:  # a run's FLOP count (*_flops.json), not a roofline
            continue
        rows = {r["path"]: r for r in data["rows"]}
        e, c, f = rows.get("eager"), rows.get("compile"), rows.get("fastcifar")
        first = e or c or f
        print(
            f"| {path.stem} | {first['model']} | {first['batch_size']} "
            f"| {first['flops_per_image'] / 1e9:.3f} | {_mb(e)} | {_mb(c)} | {_mb(f)} "
            f"| {_ratio(f, c)} | {_ratio(c, e)} | {_epoch_s(e, h100)} / {_epoch_s(c, h100)} "
            f"| {_epoch_s(e, t4)} / {_epoch_s(c, t4)} |"
        )
        runs += data.get("whole_run", [])
    if runs:
        print()
        print(
            "| recipe | path | steps | floor s (steps + whitening + TTA) | top kinds of the "
            "steps' floor | record | record s | floor / record |"
        )
        print("|" + "---|" * 8)
        for r in runs:
            kinds = sorted(r["train_by_kind_s"].items(), key=lambda kv: -kv[1])[:3]
            top = ", ".join(f"{k} {s:.3f}" for k, s in kinds)
            print(
                f"| {r['recipe']} | {r['path']} | {r['steps']} | {r['floor_s']:.3f} "
                f"({r['train_s']:.3f} + {r['whiten_s']:.4f} + {r['tta_s']:.3f}) | {top} "
                f"| {r.get('record', '—')} | {r.get('record_s', '—')} "
                f"| {r['fraction_of_floor'] * 100:.0f} % |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/roofline"))
