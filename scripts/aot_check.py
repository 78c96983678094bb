"""Ahead-of-time compile of every Triton kernel for every GPU target, without a GPU, and
what the compiled code says about speed.

    python scripts/aot_check.py [--quick] [--arch 75,80,86,89,90,100,120,gfx90a,gfx942]
                                [--dtypes bf16,fp16] [--kernels REGEX] [--markdown F] [--json F]

The launchers of ``fastcifar.kernels`` are called with ``meta`` tensors inside
``fastcifar.kernels.launch.record_launches()`` and
``fastcifar.kernels.tiles.compile_target(name)``: they compute their grids, tile sizes and
launch options exactly as on that target, and each launch is recorded instead of run.
Each distinct launch is then specialised as triton's own launcher does
(``create_function_from_signature`` + ``JITFunction._pack_args``: int and pointer
arguments divisible by 16, ints equal to 1 made constant) and compiled with
``triton.compile(ASTSource(...), target=GPUTarget(...))``: NVIDIA targets down to a cubin
by the ptxas inside the triton wheel, AMD targets down to an hsaco by its LLVM.

Per compile it reads:

* registers, spills, shared memory: NVIDIA from the ptxas ``-v`` log
  (``TRITON_DUMP_PTXAS_LOG=1``, a fresh cache so ptxas really runs) and the metadata;
  AMD from the ISA's ``.vgpr_count``, ``; ScratchSize:`` (spill bytes per lane) and LDS;
* occupancy: NVIDIA estimated from registers, shared memory and warps against the
  target's per-SM limits (``fastcifar.kernels.targets``); AMD the compiler's own waves
  per SIMD out of 8;
* global memory access widths: NVIDIA's SASS (``cuobjdump -sass``, also in the wheel):
  ``LDG``/``LDGSTS``/``STG`` and their width suffix (``.128``, ``.64``, ``.U16``, none =
  32 bits); AMD's ISA: ``global_``/``buffer_`` ``load``/``store`` and their width
  (``dwordx4`` = 128 bits, ``ushort`` = 16, ...). Counts are of instructions in the
  compiled code (a loop body counts once), not of executed loads;
* tensor-core instructions: ``HMMA`` (sm_75-sm_89, sm_120), ``HGMMA`` (sm_90 wgmma),
  ``UTC*MMA`` (sm_100 tcgen05), ``v_mfma`` (CDNA), for kernels that call ``tl.dot``.

Cases: every distinct convolution configuration the kernels take (3x3 dense, 3x3/5x5/7x7
grouped and depthwise) of every model (the seeds, the speed-run nets, the model zoo) at
batch 512, in each dtype the target trains in (``Target.dtypes``: no
bfloat16 on sm_75 unless ``--dtypes`` asks), channels_last (weights channels_last too, as
``model.to(memory_format=torch.channels_last)`` makes them) and NCHW, plus stride 2,
dilation 3 and grouped extras; for each, the forward (with and without bias, and with the
ReLU + BatchNorm-statistics epilogue), input, weight and bias gradients, and for
depthwise ones the fused depthwise-separable forward and backward; for every one the
forward, input and weight gradients with the BatchNorm-and-activation prologue (GELU);
and every 1x1 convolution of every model through ``pointwise_conv2d`` (with and without the
BatchNorm-and-activation prologue, with the statistics epilogue). ``--quick``:
channels_last and 16-bit dtypes only (sm_75: float16), on sm_75, sm_90 and gfx942 unless
``--arch`` says otherwise, and each code path once (``worst_per_code_path``: every kernel,
tile, window size and epilogue in each dtype, at its worst geometry); ``--layout`` picks
the layouts either way.

Prints one row per (kernel, dtype, target) with the worst case over its compiles, then
the findings:

* ``NARROW``: a 16-bit channels_last kernel, at channel counts that are multiples of
  16, none of whose global loads is 64 bits or wider (its activation stream moves 2 or 4
  bytes per load instruction). A narrow filter load beside wide activation loads is not
  a finding: a depthwise filter's 9 taps lie together per channel, so neighbouring
  channels' weights are 9 elements apart;
* ``NO-TC``: a 16-bit kernel that calls ``tl.dot`` compiled without tensor-core
  instructions;
* ``SPILLS``: a 16-bit kernel that spills registers.

Last line ``N compiled, F failed, S spilling``. Exits 1 on a failed compile or a 16-bit
``SPILLS`` (the other findings are explained in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

BATCH = 512
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LOW_PRECISION = ("bf16", "fp16")
ALL_TARGETS = "75,80,86,89,90,100,120,gfx90a,gfx942"
QUICK_TARGETS = "75,90,gfx942"
RESERVED_SMEM_PER_BLOCK = 1024  # bytes the CUDA runtime reserves per block (sm_80 and later)
NARROW_BITS = 64  # a commonest global load below this in a 16-bit kernel is a finding

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
    target: str
    compiles: int = 0
    failed: int = 0
    registers: int = 0
    spill: int = 0
    shared: int = 0
    num_warps: int = 0
    num_stages: int = 0
    occupancy: float = 1.0
    worst: str = ""  # the configuration with the most spill bytes, else registers
    # global memory accesses of the compile with the most narrow loads (see Access)
    loads: int = 0
    load_widest: int = 0
    load_common: int = 0
    stores: int = 0
    store_widest: int = 0
    narrow_loads: int = -1
    # the compile the load columns describe: where wide loads are possible, a NARROW one
    # first, then the one with most narrow loads
    narrow_worst: str = ""
    load_key: tuple = (False, False, -1)
    eligible: int = 0  # channels_last compiles with channels in multiples of 8
    narrow: int = 0  # of those, how many load nothing as wide as NARROW_BITS
    calls_dot: bool = False
    tensor_cores: bool = True  # every compile of a tl.dot kernel used them
    errors: list[str] = field(default_factory=list)


LAYOUTS = {"cl": (True,), "nchw": (False,), "both": (True, False)}


def conv_configs(quick: bool, layout: str | None = None) -> list[tuple]:
    """(input shape, weight shape, stride, padding, dilation, groups, channels_last,
    fusable) for every distinct configuration the kernels support, at batch ``BATCH``:
    ``fusable`` where a model's depthwise-separable block lets the fused op launch."""
    from fastcifar.kernels.validate import collect_conv_configs
    from fastcifar.models import MODELS
    from fastcifar.nn.dwsep import is_depthwise_separable

    found, fusable = set(), set()
    for name in MODELS:
        model = MODELS[name].build().eval()
        blocks = {f"{n}.0" for n, m in model.named_modules() if is_depthwise_separable(m)}
        for cfg, layers in collect_conv_configs(model, torch.zeros(1, 3, 32, 32)).items():
            key = (
                cfg.input_shape[1:],
                cfg.weight_shape,
                cfg.stride,
                cfg.padding,
                cfg.dilation,
                cfg.groups,
            )
            found.add(key)
            if blocks & set(layers):  # the fused depthwise-separable op can launch here
                fusable.add(key)
    for _, cin, cout, h, s, p, d, g in EXTRA:
        key = ((cin, h, h), (cout, cin // g, 3, 3), s, p, d, g)
        found.add(key)
        if g == cin == cout:
            fusable.add(key)
    layouts = LAYOUTS[layout or ("cl" if quick else "both")]
    return [
        ((BATCH, *key[0]), *key[1:], cl, key in fusable) for key in sorted(found) for cl in layouts
    ]


def pointwise_configs(quick: bool, layout: str | None = None) -> list[tuple]:
    """(input shape, COUT, channels_last) of every distinct 1x1 stride-1 dense convolution
    of every model at batch ``BATCH``: what ``pointwise_conv2d`` takes."""
    from fastcifar.models import MODELS

    found = set()

    def hook(conv, args, _out):
        if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1:
            found.add((tuple(args[0].shape[1:]), conv.out_channels))

    for name in MODELS:
        model = MODELS[name].build().eval()
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(hook)
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    layouts = LAYOUTS[layout or ("cl" if quick else "both")]
    return [((BATCH, *shape), cout, cl) for shape, cout in sorted(found) for cl in layouts]


def record_pointwise(launches, configs, dtypes) -> None:
    """The pointwise op's launches (forward with and without the GELU prologue, with the
    statistics epilogue; input and weight gradients with the prologue)."""
    from fastcifar.kernels import pointwise_launch
    from fastcifar.kernels.launch import ACTIVATIONS

    for dtype in dtypes:
        for xs, cout, cl in configs:
            first = len(launches)
            x = torch.empty(xs, dtype=dtype, device="meta")
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            w = torch.empty((cout, xs[1], 1, 1), dtype=dtype, device="meta")
            pro = torch.empty((xs[1], 3), device="meta")
            y, _, _ = pointwise_launch.launch_forward(x, w, None, None, 0, True)
            dy = torch.empty_like(y)
            # GELU: the prologue with the most instructions (erf, and exp in its gradient;
            # SiLU's exp and ReLU's max are less)
            for act in (ACTIVATIONS["gelu"],):
                pointwise_launch.launch_forward(x, w, None, pro, act, True)
                pointwise_launch.launch_grad_input(dy, w, x, pro, act)
                pointwise_launch.launch_grad_weight(dy, x, pro, act, w.shape)
            label = f"1x1 {xs[1]}->{cout} {xs[2]}x{xs[3]} {'cl' if cl else 'nchw'}"
            wide = cl and xs[1] % 16 == 0 and cout % 16 == 0
            for la in launches[first:]:
                la.meta_label, la.wide_possible = label, wide


def record(configs, dtypes, target: str | None = None, pointwise_cfgs=()) -> list:
    """Every launch the launchers make for these configurations on ``target`` (its tile
    entries), on ``meta`` tensors; channels_last configurations get channels_last weights."""
    from fastcifar.kernels import conv_launch, conv_launch_bwd, dwsep, launch, tiles
    from fastcifar.kernels.launch import ACTIVATIONS

    def meta(shape, dtype, cl=False):
        t = torch.empty(shape, dtype=dtype, device="meta")
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    with launch.record_launches() as launches, tiles.compile_target(target):
        for dtype in dtypes:
            for xs, ws, s, p, d, g, cl, fusable in configs:
                first = len(launches)
                x, w = meta(xs, dtype, cl), meta(ws, dtype, cl)
                b = meta((ws[0],), dtype)
                fmt = torch.channels_last if cl else torch.contiguous_format
                y, _, _ = conv_launch.launch_forward(x, w, b, s, p, d, g)
                conv_launch.launch_forward(x, w, None, s, p, d, g)
                conv_launch.launch_forward(x, w, b, s, p, d, g, relu=True, stats=True)
                dy = torch.empty_like(y)
                conv_launch_bwd.launch_grad_input(dy, w, xs, fmt, s, p, d, g)
                conv_launch_bwd.launch_grad_weight(dy, x, ws, s, p, d, g)
                conv_launch_bwd.launch_grad_bias(dy)
                # with the BatchNorm-and-activation prologue (a chain's consumer)
                pro = (meta((xs[1], 3), torch.float32), ACTIVATIONS["gelu"])  # the longest
                conv_launch.launch_forward(x, w, None, s, p, d, g, stats=True, prologue=pro)
                conv_launch_bwd.launch_grad_input(dy, w, xs, fmt, s, p, d, g, prologue=pro, x=x)
                conv_launch_bwd.launch_grad_weight(dy, x, ws, s, p, d, g, prologue=pro)
                dot = conv_launch.family(xs[1], ws[0], g, s) in ("dense", "grouped_dot")
                if dot and s == 1 and min(y.shape[2:]) >= 2:
                    # the 2x2 max pool in the epilogue, un-pooled on the gradients' load
                    # (conv_pool; with the prologue, as the speed run's blocks 2 and 3)
                    yp, _, _, idx = conv_launch.launch_pool_forward(x, w, b, s, p, d, g, pro)
                    unpool = (idx, y.shape[2], y.shape[3])
                    dyp = torch.empty_like(yp)
                    conv_launch_bwd.launch_grad_input(
                        dyp, w, xs, fmt, s, p, d, g, prologue=pro, x=x, unpool=unpool
                    )
                    conv_launch_bwd.launch_grad_weight(dyp, x, ws, s, p, d, g, pro, unpool)
                if fusable:  # the fused depthwise-separable op, C -> C
                    wp = meta((ws[0], ws[0], 1, 1), dtype, cl)
                    for relu in (False, True):
                        y2 = dwsep.launch_forward(x, w, wp, s, p, d, relu)
                        dwsep.launch_backward(torch.empty_like(y2), x, w, wp, s, p, d, relu)
                label = (
                    f"{xs[1]}->{ws[0]} {xs[2]}x{xs[3]} g{g} s{s} p{p} d{d} {'cl' if cl else 'nchw'}"
                )
                # wide (64/128-bit) loads are possible where every tensor's channels are
                # contiguous and come in multiples of 16 (triton proves alignment from
                # strides divisible by 16)
                wide = cl and xs[1] % 16 == 0 and ws[0] % 16 == 0
                for la in launches[first:]:
                    la.meta_label, la.wide_possible = label, wide
        record_pointwise(launches, pointwise_cfgs, dtypes)
    return launches


def _gpu_target(target):
    from triton.backends.compiler import GPUTarget

    return GPUTarget(target.backend, target.arch, target.warp_size)


def specialise(la, target) -> tuple[str, tuple]:
    """(key, compile arguments) of one recorded launch for ``target`` (a ``Target``),
    specialised as triton's launcher does; launches with equal keys compile to the same
    binary."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = la.kernel
    gpu_target = _gpu_target(target)
    backend = make_backend(gpu_target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(la.meta)
    bound, specialization, options = binder(*la.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    key = f"{fn.__name__}|{target.name}|{signature}|{constexprs}|{attrs}|{options.__dict__}"
    return key, (fn, gpu_target, options, signature, constexprs, attrs)


# ------------------------------------------------------------------ reading the binaries

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_SASS_OP = re.compile(r"^\s*/\*[0-9a-f]+\*/\s*(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", re.M)
_AMD_MEM = re.compile(r"^\s*(?:global|buffer)_(load|store)_(?:lds_)?(\w+)", re.M)
_AMD_WIDTH = {
    "byte": 8,
    "ubyte": 8,
    "sbyte": 8,
    "short": 16,
    "ushort": 16,
    "sshort": 16,
    "b16": 16,
    "u16": 16,
    "i16": 16,
    "d16": 16,
    "dword": 32,
    "b32": 32,
    "dwordx2": 64,
    "b64": 64,
    "dwordx3": 96,
    "b96": 96,
    "dwordx4": 128,
    "b128": 128,
}


def sass_width(opcode: str) -> int:
    """Bits moved per lane by a SASS global load/store opcode (``LDG.E.128`` -> 128,
    ``LDG.E.U16`` -> 16, ``LDG.E`` -> 32)."""
    parts = opcode.split(".")[1:]
    for p in parts:
        if p in ("128", "64"):
            return int(p)
        if p in ("U16", "S16"):
            return 16
        if p in ("U8", "S8"):
            return 8
    return 32


def amd_width(suffix: str) -> int:
    """Bits per lane of an AMD ``global_``/``buffer_`` load/store suffix (``dwordx4`` ->
    128, ``ushort`` -> 16, ``short_d16_hi`` -> 16)."""
    head = suffix.split("_")[0]
    return _AMD_WIDTH.get(head, 16 if "d16" in suffix else 32)


def access_stats(loads: list[int], stores: list[int], tensor_ops: int) -> dict:
    """Counts and widths of a binary's global loads and stores (bits per lane each)."""
    common = collections.Counter(loads).most_common(1)
    return dict(
        loads=len(loads),
        load_widest=max(loads, default=0),
        load_common=common[0][0] if common else 0,
        narrow_loads=sum(b < NARROW_BITS for b in loads),
        stores=len(stores),
        store_widest=max(stores, default=0),
        tensor_ops=tensor_ops,
    )


def read_sass(sass: str) -> dict:
    """Global memory access widths and tensor-core instructions of a SASS listing."""
    ops = _SASS_OP.findall(sass)
    loads = [sass_width(o) for o in ops if o.startswith(("LDG.", "LDGSTS")) or o == "LDG"]
    stores = [sass_width(o) for o in ops if o.startswith("STG")]
    return access_stats(loads, stores, sum("MMA" in o.split(".")[0] for o in ops))


def read_amdgcn(asm: str) -> dict:
    """Global/buffer memory access widths and MFMA/WMMA instructions of AMD GCN assembly."""
    mem = _AMD_MEM.findall(asm)
    loads = [amd_width(s) for kind, s in mem if kind == "load"]
    stores = [amd_width(s) for kind, s in mem if kind == "store"]
    tensor = len(re.findall(r"^\s*v_(?:mfma|smfmac|wmma)\w*", asm, re.M))
    return access_stats(loads, stores, tensor)


def _disassemble(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    tool = tool if os.path.exists(tool) else shutil.which("cuobjdump")
    if not tool:
        raise RuntimeError("cuobjdump not found (it ships inside the triton wheel)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [tool, "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout


def compile_one(fn, target, options, signature, constexprs, attrs) -> dict:
    """Compile to a cubin (NVIDIA) or hsaco (AMD); registers, spills, shared memory,
    launch options, the compiler's occupancy (AMD) and the global access widths."""
    import triton
    from triton.compiler import ASTSource

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
        )
    md = compiled.metadata
    out = dict(
        shared=int(md.shared),
        num_warps=int(md.num_warps),
        num_stages=int(md.num_stages),
        waves=None,
    )
    if target.backend == "hip":
        asm = compiled.asm["amdgcn"]
        vgprs = re.search(r"; TotalNumVgprs: (\d+)", asm) or re.search(r"; NumVgprs: (\d+)", asm)
        scratch = re.search(r"; ScratchSize: (\d+)", asm)
        waves = re.search(r"; Occupancy: (\d+)", asm)
        if not vgprs:
            raise RuntimeError(f"no register count in the ISA of {fn.__name__}")
        out.update(
            registers=int(vgprs.group(1)),
            spill=int(scratch.group(1)) if scratch else 0,
            waves=int(waves.group(1)) if waves else None,
            **read_amdgcn(asm),
        )
        return out
    text = log.getvalue()
    regs = [int(m) for m in _PTXAS_REGS.findall(text)]
    spills = [int(a) + int(b) for a, b in _PTXAS_SPILL.findall(text)]
    if not regs:
        raise RuntimeError(f"no ptxas -v log captured for {fn.__name__}")
    out.update(
        registers=max(regs),
        spill=max(spills, default=0),
        **read_sass(_disassemble(compiled.asm["cubin"])),
    )
    return out


def occupancy(target, registers: int, shared: int, num_warps: int, waves=None) -> float:
    """Resident warps per SM / the SM's maximum, limited by registers, shared memory,
    warps and blocks (NVIDIA's occupancy rules, the target's limits); for AMD the
    compiler's waves per SIMD / 8 (``waves``), else the same estimate from VGPRs and LDS.
    ``target`` is a ``Target`` or its name."""
    from fastcifar.kernels.targets import TARGETS

    t = TARGETS[target] if isinstance(target, str) else target
    if t.family == "amd":
        if waves is not None:
            return min(waves, t.warps) / t.warps
        per_simd = t.regs // max(-(-registers // 8) * 8, 1)  # VGPRs in granules of 8
        simds = 4
        groups = t.smem // max(shared, 1) if shared else t.blocks
        resident = min(per_simd * simds, groups * num_warps, t.warps * simds)
        return resident / (t.warps * simds)
    regs_per_warp = -(-registers * 32 // 256) * 256  # allocated in units of 256 per warp
    blocks = min(
        t.blocks,
        t.warps // num_warps,
        t.regs // max(regs_per_warp * num_warps, 1),
        t.smem // (shared + RESERVED_SMEM_PER_BLOCK),
    )
    return blocks * num_warps / t.warps


def dtype_of(la) -> str:
    first = next(a for a in la.args if hasattr(a, "dtype"))
    return {v: k for k, v in DTYPES.items()}[first.dtype]


def calls_dot(la) -> bool:
    """Whether this launch takes a ``tl.dot`` path: its kernel has a ``USE_DOT`` flag
    (every kernel with a ``tl.dot`` reduction has) and it is on."""
    return la.meta.get("USE_DOT") is True


# (kernel, dtype, target, compile args, config label, calls tl.dot, wide loads possible),
# for the compiler workers
_JOBS: list[tuple] = []


def _compile_job(i: int) -> dict:
    """Compile ``_JOBS[i]`` (in a forked worker); its result, or the error's first line."""
    try:
        return compile_one(*_JOBS[i][3])
    except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}


def parse_targets(spec: str) -> list:
    """``Target``s from a comma-separated list (``75``, ``sm_90``, ``gfx942``).

    Raises:
        ValueError: an unknown target, naming the known ones.
    """
    from fastcifar.kernels.targets import TARGETS

    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        name = f"sm_{tok}" if tok.isdigit() else tok
        if name not in TARGETS:
            raise ValueError(f"unknown target {tok!r}: choose from {', '.join(TARGETS)}")
        out.append(TARGETS[name])
    return out


# constexprs that only set address arithmetic constants (the window's geometry, and int
# strides that triton made constant because they equal 1): compiles that differ in these
# alone are the same code path
GEOMETRY = ("STRIDE", "PADDING", "DILATION")


def code_path(job_info: tuple) -> tuple:
    """(kernel, dtype, target, the constexprs other than ``GEOMETRY`` and int strides,
    compile options): what decides the code ptxas or LLVM sees, but for constants."""
    name, dt, target, (fn, _, options, _, constexprs, _), *_ = job_info
    named = {fn.arg_names[k[0]]: v for k, v in constexprs.items()}
    shape = tuple(
        sorted(
            (k, str(v))
            for k, v in named.items()
            if k not in GEOMETRY and not k.startswith("stride_")
        )
    )
    return name, dt, target, shape, str(sorted(options.__dict__.items()))


def worst_per_code_path(jobs) -> list[tuple]:
    """``--quick``: one compile per ``code_path``, its worst configuration: one where wide
    (64/128-bit) loads are possible, so that a NARROW finding can show, then the largest
    stride, dilation and padding (the most address arithmetic). Every kernel, tile, window
    size, epilogue and dtype is still compiled for every quick target; the full run
    compiles every configuration."""
    best: dict[tuple, tuple] = {}
    for job in jobs:
        fn, constexprs = job[3][0], job[3][4]
        named = {fn.arg_names[k[0]]: v for k, v in constexprs.items()}
        rank = (job[6], *(int(named.get(g) or 0) for g in GEOMETRY))
        path = code_path(job)
        if path not in best or rank > best[path][0]:
            best[path] = (rank, job)
    return [job for _, job in best.values()]


def run(
    quick: bool,
    targets: list,
    workers: int,
    dtypes: list[str] | None = None,
    kernels: str | None = None,
    layout: str | None = None,
) -> tuple[list[Row], int, int, int]:
    configs, pointwise_cfgs = conv_configs(quick, layout), pointwise_configs(quick, layout)
    unique: dict[str, tuple] = {}
    for target in targets:
        names = dtypes or [d for d in target.dtypes if not quick or d in LOW_PRECISION]
        launches = record(configs, [DTYPES[d] for d in names], target.name, pointwise_cfgs)
        if kernels:
            launches = [la for la in launches if re.search(kernels, la.kernel.__name__)]
        for la in launches:
            key, job = specialise(la, target)
            job_info = (
                la.kernel.__name__,
                dtype_of(la),
                target.name,
                job,
                la.meta_label,
                calls_dot(la),
                la.wide_possible,
            )
            unique.setdefault(key, job_info)
    _JOBS[:] = worst_per_code_path(unique.values()) if quick else unique.values()
    if workers > 1:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_compile_job, range(len(_JOBS))))
    else:
        results = [_compile_job(i) for i in range(len(_JOBS))]
    return summarise(_JOBS, results)


def summarise(jobs, results) -> tuple[list[Row], int, int, int]:
    """Rows per (kernel, dtype, target), worst case over their compiles; the counts of
    compiled, failed and spilling binaries."""
    rows: dict[tuple, Row] = {}
    compiled = failed = spilling = 0
    for (name, dt, target, _, label, dot, wide), r in zip(jobs, results, strict=True):
        row = rows.setdefault((name, dt, target), Row(name, dt, target))
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
        occ = occupancy(target, r["registers"], r["shared"], r["num_warps"], r["waves"])
        row.occupancy = min(row.occupancy, occ)
        if wide:  # only where wide loads are possible is a narrow one a finding
            row.eligible += 1
            row.narrow += r["load_widest"] < NARROW_BITS
        key = (wide, wide and r["load_widest"] < NARROW_BITS, r["narrow_loads"])
        if key > row.load_key:  # a finding first, then the most narrow loads
            row.load_key, row.narrow_loads, row.narrow_worst = key, r["narrow_loads"], label
            for k in ("loads", "load_widest", "load_common", "stores", "store_widest"):
                setattr(row, k, r[k])
        if dot:
            row.calls_dot = True
            row.tensor_cores = row.tensor_cores and r["tensor_ops"] > 0
    ordered = sorted(rows.values(), key=lambda r: (r.kernel, r.dtype, r.target))
    return ordered, compiled, failed, spilling


def findings(rows: list[Row]) -> list[str]:
    """One line per 16-bit finding: spills, narrow channels_last loads, tl.dot without
    tensor cores."""
    out = []
    for r in rows:
        if r.dtype not in LOW_PRECISION or not r.compiles:
            continue
        where = f"{r.kernel} {r.dtype} {r.target}"
        if r.spill:
            out.append(f"SPILLS {where}: {r.spill} bytes (worst: {r.worst})")
        if r.narrow:
            out.append(
                f"NARROW {where}: {r.narrow} of {r.eligible} channels_last compiles "
                f"load nothing {NARROW_BITS} bits or wider; worst {r.narrow_worst}: "
                f"{r.narrow_loads} of {r.loads} loads narrow"
            )
        if r.calls_dot and not r.tensor_cores:
            out.append(f"NO-TC {where}: tl.dot compiled without tensor-core instructions")
    return out


def markdown(rows: list[Row]) -> str:
    out = [
        "| kernel | dtype | target | compiles | registers | spill B | shared B | warps | "
        "stages | occupancy | loads (widest/commonest bits) | stores (widest) | "
        "tensor cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        occ = f"{r.occupancy:.0%}" if r.compiles else "-"
        tc = ("yes" if r.tensor_cores else "**no**") if r.calls_dot else "-"
        out.append(
            f"| {r.kernel} | {r.dtype} | {r.target} | {r.compiles}"
            f"{f' ({r.failed} failed)' if r.failed else ''} | {r.registers} | {r.spill} | "
            f"{r.shared} | {r.num_warps} | {r.num_stages} | {occ} | "
            f"{r.loads} ({r.load_widest}/{r.load_common}) | {r.stores} ({r.store_widest}) | "
            f"{tc} |"
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
    ap.add_argument(
        "--quick", action="store_true", help=f"channels_last, 16-bit; {QUICK_TARGETS} unless --arch"
    )
    ap.add_argument("--arch", default=None, help=f"comma-separated targets (default {ALL_TARGETS})")
    ap.add_argument("--markdown", help="also write the table to this Markdown file")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument(
        "--dtypes",
        help="comma-separated subset of bf16,fp16,fp32 for every "
        "target (default: the dtypes each target trains in)",
    )
    ap.add_argument("--kernels", help="only kernels whose name matches this regular expression")
    ap.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="activation layouts: cl, nchw or both (default: cl with --quick, else both)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="compiler processes (default: one per core)",
    )
    args = ap.parse_args(argv)
    prepare_environment()
    try:
        import triton
    except ImportError:
        print("aot_check: triton is not installed (pip install triton)", file=sys.stderr)
        return 2
    try:
        targets = parse_targets(args.arch or (QUICK_TARGETS if args.quick else ALL_TARGETS))
    except ValueError as e:
        print(f"aot_check: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    dtypes = args.dtypes.split(",") if args.dtypes else None
    if dtypes and not set(dtypes) <= set(DTYPES):
        print(f"aot_check: unknown dtype in {dtypes}: choose from {list(DTYPES)}", file=sys.stderr)
        return 2
    rows, compiled, failed, spilling = run(
        args.quick, targets, max(1, args.workers), dtypes, args.kernels, args.layout
    )
    table = markdown(rows)
    print(
        f"triton {triton.__version__}, torch {torch.__version__}, batch {BATCH}, "
        f"{'quick' if args.quick else 'full'}, targets {','.join(t.name for t in targets)}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(table)
    for r in rows:
        for e in r.errors[:3]:
            print(f"FAILED {r.kernel} {r.dtype} {r.target}: {e}")
    found = findings(rows)
    for line in found:
        print(line)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    print(f"{compiled} compiled, {failed} failed, {spilling} spilling")
    bad_spills = [line for line in found if line.startswith("SPILLS")]
    return 1 if failed or bad_spills else 0


if __name__ == "__main__":
    sys.exit(main())
