"""Turn a pytest-benchmark JSON file into a Markdown table: python scripts/bench_table.py FILE.

One row per benchmark (median time, images/s, GB/s and copy-bandwidth fraction where
recorded), then the fastcifar / seeds epoch-throughput ratio per recipe, headed by the
date, machine, device and versions.
"""

from __future__ import annotations

import json
import platform
import sys


def _fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def main(path: str) -> int:
    with open(path) as f:
        data = json.load(f)
    import torch

    versions = f"python {platform.python_version()}, torch {torch.__version__}"
    try:
        import triton

        versions += f", triton {triton.__version__}"
    except ImportError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    machine = data.get("machine_info", {})
    print(f"# Benchmarks {data.get('datetime', '')[:19]}\n")
    cpu = machine.get("cpu", {}).get("brand_raw", "")
    print(f"device: {device}; machine: {machine.get('node', '')} {cpu}; {versions}\n")
    print("| benchmark | median s | images/s | GB/s | copy fraction | notes |")
    print("|---|---|---|---|---|---|")
    ratios: dict[str, dict[str, float]] = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        ips = info.get("images_per_s")
        keys = ("backend", "config", "amp", "compiled", "kernels", "loader", "warmup_s")
        notes = ", ".join(f"{k}={_fmt(info[k])}" for k in keys if k in info)
        cells = [
            b["name"],
            f"{b['stats']['median']:.4g}",
            _fmt(ips, ".0f"),
            _fmt(info.get("gb_per_s"), ".1f"),
            _fmt(info.get("copy_fraction"), ".2f"),
            notes,
        ]
        print("| " + " | ".join(cells) + " |")
        if "recipe" in info and "config" in info and ips:
            ratios.setdefault(info["recipe"], {})[info["config"]] = ips
    if ratios:
        print("\n| recipe | seeds images/s | fastcifar images/s | speed-up |")
        print("|---|---|---|---|")
        for recipe, r in ratios.items():
            if "seeds" in r and "fastcifar" in r:
                print(
                    f"| {recipe} | {r['seeds']:.0f} | {r['fastcifar']:.0f} | "
                    f"{r['fastcifar'] / r['seeds']:.2f}x |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
