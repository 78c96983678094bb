"""Ahead-of-time compile of every Triton kernel for real NVIDIA targets, without a GPU.

    python scripts/aot_check.py [--quick] [--arch 80,90] [--markdown FILE] [--json FILE]

The launchers of ``fastcifar.kernels`` are called with ``meta`` tensors inside
``fastcifar.kernels.launch.record_launches()``: they compute their grids, tile sizes
and launch options exactly as on CUDA (``GPU_TILES``), and each launch is recorded
instead of run. Each distinct launch is then specialised as triton's own launcher does
(``create_function_from_signature`` + ``JITFunction._pack_args``: int and pointer
arguments divisible by 16, ints equal to 1 made constant) and compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` down to a cubin
by the ptxas inside the triton wheel. Registers and spills come from the ptxas ``-v``
log (``TRITON_DUMP_PTXAS_LOG=1``, a fresh cache so ptxas really runs), shared memory
and launch options from the compiled kernel's metadata.

Cases: every distinct 3x3 convolution configuration of the six seed models and the
speed-run net at batch 512, in bfloat16, float16 and float32, NCHW and channels_last,
plus stride 2, dilation 3 and grouped extras; for each, the forward (with and without
bias, and with the ReLU + BatchNorm-statistics epilogue), input, weight and bias
gradients, and for depthwise ones the fused depthwise-separable forward and backward.
``--quick``: channels_last only, sm_90 only (every dtype).

Prints one row per (kernel, dtype, arch) with the worst case over its compiles:
registers per thread, spill bytes, shared memory bytes, num_warps, num_stages and an
occupancy estimate (resident warps per SM / 64, from registers, shared memory and
warps, per NVIDIA's occupancy rules for sm_80/sm_90); then ``N compiled, F failed,
S spilling``. Exits 1 on a failed compile or on spills in a bfloat16/float16 kernel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

BATCH = 512
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LOW_PRECISION = ("bf16", "fp16")
# Per-SM limits (CUDA C Programming Guide, "Compute capabilities" table) for the estimate.
SM_LIMITS = {
    80: dict(regs=65536, warps=64, blocks=32, smem=167936),
    90: dict(regs=65536, warps=64, blocks=32, smem=233472),
}
RESERVED_SMEM_PER_BLOCK = 1024  # bytes the runtime reserves per block (sm_80 and later)

# configurations beyond the models': (name, CIN, COUT, H, stride, padding, dilation, groups)
EXTRA = [
    ("dense stride 2", 64, 128, 32, 2, 1, 1, 1),
    ("dense dilation 3", 64, 64, 16, 1, 3, 3, 1),
    ("depthwise stride 2", 64, 64, 32, 2, 1, 1, 64),
    ("depthwise dilation 3", 64, 64, 16, 1, 3, 3, 64),
    ("groups=32 (s7)", 64, 64, 16, 1, 1, 1, 32),
]


@dataclass
class Row:
    kernel: str
    dtype: str
    arch: int
    compiles: int = 0
    failed: int = 0
    registers: int = 0
    spill: int = 0
    shared: int = 0
    num_warps: int = 0
    num_stages: int = 0
    occupancy: float = 1.0
    worst: str = ""  # the configuration with the most spill bytes, else registers
    errors: list[str] = field(default_factory=list)


def conv_configs(quick: bool) -> list[tuple]:
    """(input shape, weight shape, stride, padding, dilation, groups, channels_last)
    for every distinct 3x3 configuration the kernels support, at batch ``BATCH``."""
    from fastcifar.kernels.validate import collect_conv_configs

    from fastcifar.models import MODELS

    found = set()
    for name in MODELS:
        model = MODELS[name].build().eval()
        for cfg in collect_conv_configs(model, torch.zeros(1, 3, 32, 32)):
            found.add((cfg.input_shape[1:], cfg.weight_shape, cfg.stride, cfg.padding,
                       cfg.dilation, cfg.groups))  # fmt: skip
    for _, cin, cout, h, s, p, d, g in EXTRA:
        found.add(((cin, h, h), (cout, cin // g, 3, 3), s, p, d, g))
    layouts = (True,) if quick else (True, False)
    return [((BATCH, *shape), w, s, p, d, g, cl)
            for shape, w, s, p, d, g in sorted(found) for cl in layouts]  # fmt: skip


def record(configs, dtypes) -> list:
    """Every launch the launchers make for these configurations, on ``meta`` tensors."""
    from fastcifar.kernels import conv, dwsep, launch

    def meta(shape, dtype, cl=False):
        t = torch.empty(shape, dtype=dtype, device="meta")
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    with launch.record_launches() as launches:
        for dtype in dtypes:
            for xs, ws, s, p, d, g, cl in configs:
                first = len(launches)
                x, w = meta(xs, dtype, cl), meta(ws, dtype)
                b = meta((ws[0],), dtype)
                fmt = torch.channels_last if cl else torch.contiguous_format
                y, _, _ = conv.launch_forward(x, w, b, s, p, d, g)
                conv.launch_forward(x, w, None, s, p, d, g)
                conv.launch_forward(x, w, b, s, p, d, g, relu=True, stats=True)
                dy = torch.empty_like(y)
                conv.launch_grad_input(dy, w, xs, fmt, s, p, d, g)
                conv.launch_grad_weight(dy, x, ws, s, p, d, g)
                conv.launch_grad_bias(dy)
                if g == xs[1] == ws[0]:  # depthwise: the fused separable op, C -> C
                    wp = meta((ws[0], ws[0], 1, 1), dtype)
                    for relu in (False, True):
                        y2 = dwsep.launch_forward(x, w, wp, s, p, d, relu)
                        dwsep.launch_backward(torch.empty_like(y2), x, w, wp, s, p, d, relu)
                label = (f"{xs[1]}->{ws[0]} {xs[2]}x{xs[3]} g{g} s{s} p{p} d{d} "
                         f"{'cl' if cl else 'nchw'}")  # fmt: skip
                for la in launches[first:]:
                    la.meta_label = label
    return launches


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def specialise(la, arch: int) -> tuple[str, tuple]:
    """(key, compile arguments) of one recorded launch for ``sm_<arch>``, specialised as
    triton's launcher does; launches with equal keys compile to the same cubin."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = la.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(la.meta)
    bound, specialization, options = binder(*la.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    key = f"{fn.__name__}|{arch}|{signature}|{constexprs}|{attrs}|{options.__dict__}"
    return key, (fn, target, options, signature, constexprs, attrs)


def compile_one(fn, target, options, signature, constexprs, attrs) -> dict:
    """Compile to a cubin; registers, spills (ptxas -v log), shared memory, options."""
    import triton
    from triton.compiler import ASTSource

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
        )
    text = log.getvalue()
    regs = [int(m) for m in _PTXAS_REGS.findall(text)]
    spills = [int(a) + int(b) for a, b in _PTXAS_SPILL.findall(text)]
    if not regs:
        raise RuntimeError(f"no ptxas -v log captured for {fn.__name__}")
    md = compiled.metadata
    return dict(registers=max(regs), spill=max(spills, default=0), shared=int(md.shared),
                num_warps=int(md.num_warps), num_stages=int(md.num_stages))  # fmt: skip


def occupancy(arch: int, registers: int, shared: int, num_warps: int) -> float:
    """Resident warps per SM / max warps, limited by registers, shared memory, warps."""
    lim = SM_LIMITS[arch]
    regs_per_warp = -(-registers * 32 // 256) * 256  # allocated in units of 256 per warp
    blocks = min(
        lim["blocks"],
        lim["warps"] // num_warps,
        lim["regs"] // max(regs_per_warp * num_warps, 1),
        lim["smem"] // (shared + RESERVED_SMEM_PER_BLOCK),
    )
    return blocks * num_warps / lim["warps"]


def dtype_of(la) -> str:
    first = next(a for a in la.args if hasattr(a, "dtype"))
    return {v: k for k, v in DTYPES.items()}[first.dtype]


_JOBS: list[tuple] = []  # (kernel, dtype, arch, compile arguments, config label), for workers


def _compile_job(i: int) -> dict:
    """Compile ``_JOBS[i]`` (in a forked worker); its result, or the error's first line."""
    try:
        return compile_one(*_JOBS[i][3])
    except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}


def run(
    quick: bool, archs: list[int], workers: int, dtypes: list[str] | None = None,
    kernels: str | None = None,
) -> tuple[list[Row], int, int, int]:  # fmt: skip
    launches = record(conv_configs(quick), [DTYPES[d] for d in dtypes or DTYPES])
    if kernels:
        launches = [la for la in launches if re.search(kernels, la.kernel.__name__)]
    unique: dict[str, tuple] = {}
    for arch in archs:
        for la in launches:
            key, job = specialise(la, arch)
            unique.setdefault(
                key, (la.kernel.__name__, dtype_of(la), arch, job, getattr(la, "meta_label", ""))
            )
    _JOBS[:] = unique.values()
    if workers > 1:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_compile_job, range(len(_JOBS))))
    else:
        results = [_compile_job(i) for i in range(len(_JOBS))]
    rows: dict[tuple, Row] = {}
    compiled = failed = spilling = 0
    for (name, dt, arch, _, label), r in zip(_JOBS, results, strict=True):
        row = rows.setdefault((name, dt, arch), Row(name, dt, arch))
        if "error" in r:
            row.failed += 1
            failed += 1
            row.errors.append(r["error"])
            continue
        compiled += 1
        row.compiles += 1
        spilling += r["spill"] > 0
        if (r["spill"], r["registers"]) > (row.spill, row.registers):
            row.worst = label
        row.registers = max(row.registers, r["registers"])
        row.spill = max(row.spill, r["spill"])
        row.shared = max(row.shared, r["shared"])
        row.num_warps, row.num_stages = r["num_warps"], r["num_stages"]
        occ = occupancy(arch, r["registers"], r["shared"], r["num_warps"])
        row.occupancy = min(row.occupancy, occ)
    ordered = sorted(rows.values(), key=lambda r: (r.kernel, r.dtype, r.arch))
    return ordered, compiled, failed, spilling


def markdown(rows: list[Row]) -> str:
    out = [
        "| kernel | dtype | arch | compiles | registers | spill B | shared B | warps | "
        "stages | occupancy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        occ = f"{r.occupancy:.0%}" if r.compiles else "-"
        out.append(
            f"| {r.kernel} | {r.dtype} | sm_{r.arch} | {r.compiles}"
            f"{f' ({r.failed} failed)' if r.failed else ''} | {r.registers} | {r.spill} | "
            f"{r.shared} | {r.num_warps} | {r.num_stages} | {occ} |"
        )
    return "\n".join(out)


def prepare_environment() -> None:
    """Before the kernels are imported: compile for real (no interpreter), run ptxas for
    every compile (no cache hits, a fresh cache) and have it print its -v log."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastcifar-aot-")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="channels_last and sm_90 only")
    ap.add_argument("--arch", default=None, help="comma-separated SM versions (default 80,90)")
    ap.add_argument("--markdown", help="also write the table to this Markdown file")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--dtypes", help="comma-separated subset of bf16,fp16,fp32 (default all)")
    ap.add_argument("--kernels", help="only kernels whose name matches this regular expression")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="compiler processes (default: one per core)")  # fmt: skip
    args = ap.parse_args(argv)
    prepare_environment()
    try:
        import triton
    except ImportError:
        print("aot_check: triton is not installed (pip install triton)", file=sys.stderr)
        return 2
    archs = [int(a) for a in (args.arch or ("90" if args.quick else "80,90")).split(",")]
    bad = [a for a in archs if a not in SM_LIMITS]
    if bad:
        print(f"aot_check: unknown arch {bad}: choose from {sorted(SM_LIMITS)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    dtypes = args.dtypes.split(",") if args.dtypes else None
    if dtypes and not set(dtypes) <= set(DTYPES):
        print(f"aot_check: unknown dtype in {dtypes}: choose from {list(DTYPES)}", file=sys.stderr)
        return 2
    rows, compiled, failed, spilling = run(args.quick, archs, max(1, args.workers), dtypes,
                                           args.kernels)  # fmt: skip
    table = markdown(rows)
    print(f"triton {triton.__version__}, torch {torch.__version__}, batch {BATCH}, "
          f"{'quick' if args.quick else 'full'}, {time.perf_counter() - start:.0f} s")  # fmt: skip
    print(table)
    for r in rows:
        for e in r.errors[:3]:
            print(f"FAILED {r.kernel} {r.dtype} sm_{r.arch}: {e}")
    bad_spills = [r for r in rows if r.spill and r.dtype in LOW_PRECISION]
    for r in bad_spills:
        print(f"SPILLS {r.kernel} {r.dtype} sm_{r.arch}: {r.spill} bytes (worst: {r.worst})")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    print(f"{compiled} compiled, {failed} failed, {spilling} spilling")
    return 1 if failed or bad_spills else 0


if __name__ == "__main__":
    sys.exit(main())
