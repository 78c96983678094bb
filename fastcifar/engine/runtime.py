"""Where and how a run computes: device, AMP dtype policy, kernel choice, torch.compile
with an eager fallback, a device timer, and the versions a summary records.

The choices of ``--amp-dtype`` and ``--kernels`` are the tuples here; the parser in
``fastcifar.train`` offers exactly them.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fastcifar.errors import FastCifarError, first_line
from fastcifar.options import AMP_DTYPE_CHOICES, KERNEL_CHOICES

# The choices of --amp-dtype and --kernels are fastcifar.options' (the parser offers exactly
# them); the dtypes they name:
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
assert ("auto", *AMP_DTYPES) == AMP_DTYPE_CHOICES, "fastcifar.options lists the AMP dtypes"


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The device.

    Raises:
        FastCifarError: CUDA asked for but not available, or an unknown device string.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FastCifarError(f"unknown device {name!r}: pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastCifarError(
            f"--device {name} asked for CUDA, but torch sees no GPU: pass --device cpu or auto"
        )
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16).

    Without them PyTorch emulates bfloat16 on the CPU, which was measured 5-9x slower
    than float32 for the s7 model on an AVX2-only machine.

    Returns:
        True with such instructions (read from ``/proc/cpuinfo``; False where it cannot be
        read).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``--amp``, or None to train in float32.

    ``auto``: bfloat16 where the device runs it natively (NVIDIA sm_80 and newer, AMD
    Instinct gfx90a/gfx942 under ROCm: ``fastcifar.kernels.targets``; CPUs with
    AVX512-BF16 or AMX), float16 with a gradient scaler on older GPUs (T4 sm_75, V100
    sm_70), and float32 on a CPU without native bfloat16. ``bfloat16``/``float16`` force
    that dtype (bfloat16 on sm_75 runs, emulated in float32 arithmetic, and slowly).

    Args:
        device: the training device.
        requested: ``auto``, ``bfloat16`` or ``float16``.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None.
    """
    if requested != "auto":
        return AMP_DTYPES[requested]
    if device.type == "cuda":
        from fastcifar.kernels.targets import TARGETS, target_of

        target = TARGETS.get(target_of(device))
        if target is not None:
            return torch.bfloat16 if "bf16" in target.dtypes else torch.float16
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and not cpu_has_native_bf16():
        return None
    return torch.bfloat16


def resolve_kernels(name: str, device: torch.device) -> str:
    """``auto`` stays ``auto`` on CUDA when triton imports (each convolution configuration
    then measured, Triton against cuDNN: ``fastcifar.nn.autotune``) and is PyTorch elsewhere,
    without timing (the interpreter is for tests); ``triton`` forces our kernels (on a CPU
    it turns on the Triton interpreter: slow, for tests); ``torch`` forces PyTorch's.

    Args:
        name: ``auto``, ``triton`` or ``torch``.
        device: the training device.

    Returns:
        ``auto``, ``triton`` or ``torch``.

    Raises:
        FastCifarError: an unknown name, or Triton asked for where it cannot run.
    """
    from fastcifar.kernels import triton_available

    if name not in KERNEL_CHOICES:
        raise FastCifarError(
            f"--kernels {name!r} is not valid: choose one of {', '.join(KERNEL_CHOICES)}"
        )
    if name == "auto":
        return "auto" if device.type == "cuda" and triton_available() else "torch"
    if name == "triton":
        if not triton_available():
            raise FastCifarError("--kernels triton needs the triton package: pip install triton")
        if device.type not in ("cuda", "cpu"):
            raise FastCifarError(
                f"--kernels triton runs on CUDA or (interpreted) on the CPU, not {device.type}: "
                f"pass --kernels torch"
            )
        if device.type == "cpu":
            os.environ["TRITON_INTERPRET"] = "1"
    return name


def versions() -> dict[str, str]:
    """The versions a run records in summary.json: Python, torch, torchvision, numpy,
    albumentations, triton and CUDA (those present).

    Returns:
        {package: version}.
    """
    import torchvision

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }
    try:
        import albumentations

        out["albumentations"] = albumentations.__version__
    except ImportError:  # pragma: no cover - a required dependency
        pass
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def device_name(device: torch.device) -> str:
    """The device's name as a run records it: the GPU's name on CUDA, ``cpu (<processor>,
    <N> cores)`` otherwise.

    Args:
        device: the training device.

    Returns:
        The name.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _is_compile_error(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor", "torch._functorch"))


class CompiledForward:
    """Calls ``fn`` (a model, or any function of tensors) compiled with torch.compile; on
    a compilation failure says why once and goes on eagerly.

    Args:
        fn: the module or function.
        compile: compile it (False: call ``fn`` as it is).
        backend: torch.compile backend (``inductor``; the tests use ``aot_eager``).
        mode: torch.compile mode (``default``, ``max-autotune``, ...); only inductor has modes,
            so it is ignored for other backends.
    """

    def __init__(self, fn, compile: bool, backend: str, mode: str = "default"):
        self.model = fn
        self.compiled = None
        if compile:
            kwargs = {"mode": mode} if backend == "inductor" and mode != "default" else {}
            self.compiled = torch.compile(fn, backend=backend, **kwargs)

    def __call__(self, *args):
        if self.compiled is None:
            return self.model(*args)
        try:
            return self.compiled(*args)
        except Exception as exc:
            if not _is_compile_error(exc):
                raise
            print(f"compile: torch.compile failed ({first_line(exc)}); continuing eagerly")
            self.compiled = None
            return self.model(*args)


class Timer:
    """Seconds between construction and ``stop()``: CUDA events on a GPU (what the GPU
    spent, queued work included), the wall clock elsewhere.

    Args:
        device: where the timed work runs.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        """The seconds since construction (on CUDA: records the end event and waits for it).

        Returns:
            Seconds.
        """
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000.0
        return time.perf_counter() - self.t0


def copy_bandwidth_gb_s(device="cuda", nbytes: int = 2**30, reps: int = 20) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written per
    second) of ``nbytes`` uint8 buffers, after 3 warm-up copies, timed with CUDA events:
    the reference the kernel benchmarks express their bandwidth against.

    Args:
        device: the CUDA device.
        nbytes: bytes a buffer.
        reps: timed copies.

    Returns:
        The bandwidth, GB/s (10^9 bytes a second).
    """
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    return 2 * nbytes / seconds / 1e9
