"""Check and measure a GPU in one command: ``scripts/gpu_check.sh OUT_DIR [--quick]``.

NVIDIA GPUs, and AMD GPUs under PyTorch's ROCm build (which calls them "cuda" too): the
environment then reads ``rocm-smi`` instead of ``nvidia-smi``, and the validation runs in
the dtype the GPU trains in.

Stages, each in its own process with its own time limit; a failure or a time-out is
recorded and the next stage runs:

1. ``environment``: GPU name, driver, SM clock, memory, versions, and the measured
   device-to-device copy bandwidth (GB/s, read + write bytes of a 1 GiB copy);
2. ``cuda_tests``: the ``cuda``-marked tests (``pytest -m cuda tests``);
3. ``validation``: ``python -m fastcifar.validate`` for every model, in the dtype the GPU
   trains in (bfloat16; float16 on sm_75 and older);
4. ``kernel_bench``: ``benchmarks/bench_conv.py``, ``bench_dwsep.py``,
   ``bench_pointwise.py``, ``bench_conv_bn.py`` and ``bench_conv_pool.py`` (ours vs
   cuDNN vs torch.compile, each op at the zoo's, the seeds' and the speed run's layer
   shapes: ms, GB/s, fraction of the copy bandwidth);
5. ``loader_bench``: ``benchmarks/bench_loaders.py`` (images/s per backend and recipe,
   alone and inside a training step);
6. ``epoch_bench``: ``benchmarks/bench_epoch_throughput.py`` for s7 and resnet18, the
   seeds' way against fastcifar's;
7. ``speedrun``: ``speedrun94_progressive`` with ``--kernels triton`` (its blocks chained,
   the pool in the convolutions' epilogue) and with ``--kernels torch``; then (not with
   ``--quick``) ``speedrun94``, ``speedrun94_fast`` and ``speedrun94_progressive``, seeds
   1-3 each: accuracy, seconds under both timing contracts.

Writes ``OUT_DIR/gpu_check.json`` (every stage: command, status, seconds, figures),
``OUT_DIR/gpu_check.md`` (the same as tables) and ``OUT_DIR/gpu_check.log`` (every
stage's output), plus the raw pytest-benchmark JSON of stages 4-6: six files, each far
below 16 MB. ``--quick`` (sized for a 9-minute call on one H100; not yet run on one) uses
CI-sized benchmarks and shorter limits; the full run is sized for 30 minutes (the nine
speed runs' stage stops at its limit and keeps the runs that finished).

Without a CUDA GPU it prints one line and exits 2. Offline GPU machines: see README
("Checking a GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [Path("/tmp/cifar10-jpeg.tar.gz"), ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"]
MODELS = ("s7", "s7_mixed", "attention", "c1c2c3c40", "resnet18", "resnet18_ln", "speedrun94")
# seconds per stage: (quick, full); quick sums to 8.9 minutes (two speed runs with their
# compile warm-ups), full to 29.9
LIMITS = {
    "environment": (30, 60),
    "cuda_tests": (80, 300),
    "validation": (60, 180),
    "kernel_bench": (100, 360),
    "loader_bench": (60, 270),
    "epoch_bench": (60, 300),
    "speedrun": (145, 325),
}


def environment() -> dict:
    """GPU, driver, clocks, memory, versions and measured copy bandwidth (in-process)."""
    import torch

    from fastcifar.kernels.targets import target_of

    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": props.name,
        "target": target_of("cuda:0"),
        "train_dtype": train_dtype(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "cudnn_or_miopen": torch.backends.cudnn.version(),
    }
    for name in ("triton", "torchvision", "nvidia.dali", "albumentations"):
        try:
            env[name.replace("nvidia.", "")] = __import__(name, fromlist=["x"]).__version__
        except ImportError:
            env[name.replace("nvidia.", "")] = None
    env.update(smi_figures(bool(torch.version.hip)))
    from fastcifar.engine.runtime import copy_bandwidth_gb_s

    env["copy_bandwidth_gb_s"] = round(copy_bandwidth_gb_s("cuda"))
    return env


def train_dtype() -> str:
    """What ``--amp`` trains in on GPU 0 (``fastcifar.engine.runtime.amp_dtype``'s policy):
    bfloat16 where the GPU computes it natively, float16 elsewhere (sm_75 and older)."""
    import torch

    from fastcifar.engine.runtime import amp_dtype

    return str(amp_dtype(torch.device("cuda", 0))).replace("torch.", "")


def smi_figures(rocm: bool) -> dict:
    """Driver, clocks and power limit from ``nvidia-smi`` (NVIDIA) or ``rocm-smi`` (AMD);
    where the tool is missing or fails, one entry saying so."""
    if rocm:
        cmd = ["rocm-smi", "--showdriverversion", "--showclocks", "--showmaxpower", "--json"]
    else:
        query = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
        cmd = ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
        if rocm:  # {"card0": {...}, "system": {...}}: every figure, flattened
            data = json.loads(out)
            return {k: v for card in data.values() for k, v in card.items()}
        values = [v.strip() for v in out.splitlines()[0].split(",")]
        return dict(zip(query.replace(".", "_").split(","), values, strict=True))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as e:
        return {cmd[0].replace("-", "_"): f"unavailable: {e}"}


def _bench_figures(path: Path) -> list[dict]:
    """name, median seconds and extra_info of every benchmark in a pytest-benchmark JSON."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [
        {"name": b["name"], "median_s": b["stats"]["median"], **b.get("extra_info", {})}
        for b in data.get("benchmarks", [])
    ]


def stages(
    out: Path, quick: bool, data: str, dtype: str = "bfloat16"
) -> list[tuple[str, list[list[str]], dict]]:
    """(name, commands, extra environment) for every subprocess stage; the validation runs
    in ``dtype``, what the GPU trains in (``train_dtype``)."""
    py = sys.executable
    bench = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-columns=median"]
    full = {"FASTCIFAR_BENCH_FULL": "0" if quick else "1", "FASTCIFAR_DATA": data}
    runs = speedrun_dir(out)
    speed = [
        [
            py,
            "-m",
            "fastcifar.train",
            "--recipe",
            recipe,
            "--amp",
            "--compile",
            "--no-evaluate",
            "--kernels",
            kernels,
            "--seed",
            str(i),
            "--data",
            data,
            "--out",
            str(runs / f"{recipe}-seed{i}-{kernels}"),
        ]
        for recipe, i, kernels in speedrun_plan(quick)
    ]
    return [
        (
            "cuda_tests",
            [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests"]],
            {},
        ),
        (
            "validation",
            [[py, "-m", "fastcifar.validate", "--model", m, "--dtype", dtype] for m in MODELS],
            {},
        ),
        (
            "kernel_bench",
            [
                [
                    *bench,
                    "benchmarks/bench_conv.py",
                    "benchmarks/bench_dwsep.py",
                    "benchmarks/bench_pointwise.py",
                    "benchmarks/bench_conv_bn.py",
                    "benchmarks/bench_conv_pool.py",
                    f"--benchmark-json={out / 'kernel_bench.json'}",
                ]
            ],
            full,
        ),
        (
            "loader_bench",
            [
                [
                    *bench,
                    "benchmarks/bench_loaders.py",
                    f"--benchmark-json={out / 'loader_bench.json'}",
                ]
            ],
            full,
        ),
        (
            "epoch_bench",
            [
                [
                    *bench,
                    "benchmarks/bench_epoch_throughput.py",
                    "-k",
                    "s7- or resnet18-",
                    f"--benchmark-json={out / 'epoch_bench.json'}",
                ]
            ],
            full,
        ),
        ("speedrun", speed, {}),
    ]


def run_stage(name, commands, extra_env, limit, log) -> dict:
    """Run a stage's commands one after another inside ``limit`` seconds in all."""
    start = time.perf_counter()
    result = {"stage": name, "commands": [" ".join(c) for c in commands], "status": "ok"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
    for cmd in commands:
        left = limit - (time.perf_counter() - start)
        log.write(f"\n===== {name}: {' '.join(cmd)} (limit {left:.0f} s)\n")
        log.flush()
        if left <= 0:
            result["status"] = "timeout"
            break
        try:
            p = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=left
            )
        except subprocess.TimeoutExpired:
            result["status"] = "timeout"
            break
        if p.returncode != 0:
            result["status"] = f"failed (exit {p.returncode})"
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def speedrun_dir(out: Path) -> Path:
    """Run directories of the speed runs: outside OUT_DIR, which keeps to a few files."""
    return Path(tempfile.gettempdir()) / f"gpu_check-speedrun-{abs(hash(str(out.resolve())))}"


# the three speed-run recipes: the 2024 record's method, Hiverge's and the 2026 record's
SPEEDRUN_RECIPES = ("speedrun94", "speedrun94_fast", "speedrun94_progressive")


def speedrun_plan(quick: bool) -> list[tuple[str, int, str]]:
    """(recipe, seed, ``--kernels``) of each speed run: with ``--quick`` the newest recipe
    once with its speed-run blocks chained (``--kernels triton``: the pool in the
    convolution's epilogue, ``fastcifar.nn.pool_chain``) and once on PyTorch's modules
    (``--kernels torch``), the two steps timed against each other; the full run adds every
    recipe with seeds 1-3 as the train command runs it (``--kernels auto``)."""
    paired = [(SPEEDRUN_RECIPES[-1], 1, "triton"), (SPEEDRUN_RECIPES[-1], 1, "torch")]
    if quick:
        return paired
    return paired + [(recipe, i, "auto") for recipe in SPEEDRUN_RECIPES for i in (1, 2, 3)]


def speedrun_figures(out: Path, quick: bool) -> dict:
    """Per recipe and ``--kernels``: each finished run's accuracy and timed seconds, and
    their means."""
    figures = {}
    for recipe, i, kernels in speedrun_plan(quick):
        f = speedrun_dir(out) / f"{recipe}-seed{i}-{kernels}" / "summary.json"
        if f.exists():
            s = json.loads(f.read_text())
            run = {
                "seed": i,
                "accuracy": s["final_test_acc"],
                "seconds": s["timed_span_s"],
                "record_seconds": s.get("record_span_s"),
            }
            key = f"{recipe} --kernels {kernels}"
            figures.setdefault(key, {"runs": []})["runs"].append(run)
    for fig in figures.values():
        fig["mean_accuracy"] = statistics.mean(r["accuracy"] for r in fig["runs"])
        fig["mean_seconds"] = statistics.mean(r["seconds"] for r in fig["runs"])
    return figures


def markdown(report: dict) -> str:
    lines = [f"# gpu_check ({'quick' if report['quick'] else 'full'}), {report['date']}", ""]
    env = report.get("environment", {})
    if env:
        lines += ["| environment | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in env.items()]
        lines.append("")
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in report["stages"]]
    for s in report["stages"]:
        figures = s.get("figures")
        if not figures:
            continue
        lines += ["", f"## {s['stage']}", ""]
        if isinstance(figures, list):
            keys = sorted({k for f in figures for k in f} - {"name"})
            lines += ["| benchmark | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for f in figures:
                cells = [
                    f"{f[k]:.4g}" if isinstance(f.get(k), float) else str(f.get(k, ""))
                    for k in keys
                ]
                lines.append(f"| {f['name']} | " + " | ".join(cells) + " |")
        else:
            lines.append("```\n" + json.dumps(figures, indent=1) + "\n```")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="where gpu_check.json, gpu_check.md and the log go")
    ap.add_argument(
        "--quick", action="store_true", help="CI-sized benchmarks, sized for a 9-minute call"
    )
    ap.add_argument(
        "--data",
        help="CIFAR-10 source (default /tmp/cifar10-jpeg.tar.gz as "
        "install.sh leaves it, else ../shared/data/cifar10-jpeg.tar.gz)",
    )
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed: pip install -e .", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False): "
            "run it on a machine with an NVIDIA GPU (or an AMD one with PyTorch's ROCm "
            "build)",
            file=sys.stderr,
        )
        return 2
    data = args.data or next((str(p) for p in DEFAULT_DATA if p.exists()), None)
    if data is None:
        print("gpu_check: no CIFAR-10 copy found: pass --data PATH", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(speedrun_dir(out), ignore_errors=True)
    col = 0 if args.quick else 1
    report = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data": data,
        "stages": [],
    }
    start = time.perf_counter()
    with open(out / "gpu_check.log", "w") as log:
        t0 = time.perf_counter()
        try:
            report["environment"] = environment()
            status = "ok"
        except Exception as e:  # noqa: BLE001 - recorded, and the next stage runs
            status = f"failed ({type(e).__name__}: {e})"
        report["stages"].append(
            {
                "stage": "environment",
                "status": status,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        for name, commands, env in stages(out, args.quick, data, train_dtype()):
            result = run_stage(name, commands, env, LIMITS[name][col], log)
            bench = out / f"{name}.json"
            if bench.exists():
                result["figures"] = _bench_figures(bench)
            if name == "speedrun":
                result["figures"] = speedrun_figures(out, args.quick)
            report["stages"].append(result)
            print(f"gpu_check: {name}: {result['status']} ({result['seconds']} s)", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    failed = [s["stage"] for s in report["stages"] if s["status"] != "ok"]
    print(
        f"gpu_check: {len(report['stages']) - len(failed)} stages ok, {len(failed)} not"
        f"{': ' + ', '.join(failed) if failed else ''}; {report['seconds']} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
