"""What the per-op benchmarks (``bench_<op>.py``) share: the device they run on, the
model zoo's layer shapes they time, and one timed call.

On a GPU (``full`` size, ``scripts/bench.sh --full`` or gpu_check): CUDA, bfloat16,
channels_last, batch 512, every distinct shape of the zoo's layers that the op takes.
On a CPU (``cpu`` and ``smoke``, CI's smoke step): the Triton interpreter
(``TRITON_INTERPRET=1``, set by benchmarks/conftest.py before any kernel is imported),
float32, batch 2 and at most 8 x 8 pixels, the first shape of each model (``smoke``: of
one model): the same code path at a size the interpreter finishes, proving that the
benchmark runs, timing nothing worth reading.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sizes import FULL, SMOKE
from torch import nn

from fastcifar.models import ZOO_MODELS, create_model

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
BATCH = 512 if FULL else 2


def layer_shapes(
    take: Callable[[nn.Conv2d], bool], models: tuple[str, ...] = ZOO_MODELS
) -> list[tuple[str, nn.Conv2d, tuple[int, int, int, int]]]:
    """``(id, conv, input shape)`` for every distinct ``nn.Conv2d`` of ``models`` that
    ``take`` accepts, seen in one float32 forward pass of a (1, 3, 32, 32) input on the
    CPU; the input shape is (BATCH, CIN, H, W), H and W at most 8 below the full size.
    Below the full size only the first shape of each model (of the first model at
    ``smoke``)."""
    out, seen = [], set()
    for name in models[:1] if SMOKE else models:
        model, found = create_model(name).eval(), []

        def record(module, args, _out, layer, seen_here=found):
            seen_here.append((layer, module, args[0].shape))

        hooks = [
            m.register_forward_hook(lambda m, a, o, n=n: record(m, a, o, n))
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and take(m)
        ]
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
        for hook in hooks:
            hook.remove()
        for layer, conv, (_, cin, h, w) in found:
            size = (h, w) if FULL else (min(h, 8), min(w, 8))
            key = (conv.weight.shape, conv.stride, conv.padding, conv.dilation, conv.groups, size)
            if key not in seen:
                seen.add(key)
                out.append((f"{name}:{layer}", conv, (BATCH, cin, *size)))
            if not FULL and out and out[-1][0].startswith(f"{name}:"):
                break
    return out


def tensor(shape, scale: float = 1.0, grad: bool = True) -> torch.Tensor:
    """A random ``DTYPE`` tensor on ``DEVICE``; 4-D ones channels_last."""
    t = torch.randn(shape, device=DEVICE, dtype=DTYPE) * scale
    if t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def time_step(benchmark, step: Callable[[], None], nbytes: int, copy_bandwidth) -> None:
    """Time ``step`` (synchronised on CUDA) and record bytes and GB/s in ``extra_info``;
    ``copy_bandwidth`` is the measured device copy GB/s on CUDA, None on a CPU."""

    def synced():
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    warm, rounds, iterations = (5, 30, 5) if FULL else (1, 1, 1)
    for _ in range(warm):
        synced()
    benchmark.pedantic(synced, rounds=rounds, iterations=iterations)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(bytes=nbytes, gb_per_s=nbytes / seconds / 1e9)
    if copy_bandwidth:
        benchmark.extra_info.update(copy_fraction=nbytes / seconds / 1e9 / copy_bandwidth)


def identity_prologue(channels: int) -> torch.Tensor:
    """A (C, 3) BatchNorm-and-activation prologue that changes nothing (center 0, scale 1,
    shift 0): the fused op's full work at a known result."""
    ones, zeros = torch.ones(channels), torch.zeros(channels)
    return torch.stack([zeros, ones, zeros], 1).to(DEVICE, torch.float32)


def time_conv(benchmark, copy_bandwidth, forward, x, w, mode: str, **info) -> None:
    """Time a convolution op: ``forward()`` alone (``mode`` "forward") or with the input's
    and weight's gradients ("forward_backward"); ``info`` into ``extra_info``. Bytes are
    the compulsory ones: input, weight and output once each forward; the backward reads
    the output's gradient twice and the input and weight once more, and writes their
    gradients."""
    y = forward()
    gy = torch.randn_like(y)
    backward = mode == "forward_backward"

    def step():
        out = forward()
        if backward:
            torch.autograd.grad(out, (x, w), gy)

    e = x.element_size()
    nbytes = (x.numel() + w.numel() + y.numel()) * e
    if backward:
        nbytes += (2 * y.numel() + 2 * x.numel() + 2 * w.numel()) * e
    time_step(benchmark, step, nbytes, copy_bandwidth)
    benchmark.extra_info.update(**info)
