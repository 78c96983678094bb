"""What every op family's launcher shares: the activations' codes, grid and partial-sum
sizing, the accumulator dtype, tensor layout helpers, and the one place a kernel is
launched. Tile sizes are ``fastcifar.kernels.tiles``'.

``launch(kernel, grid, *args, **meta)`` starts every kernel; inside ``record_launches()``
it records the call instead: the AOT check compiles exactly what the launchers launch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastcifar.kernels.interpreter import round_bfloat16_to_nearest_even
from fastcifar.kernels.tiles import Tiles, interpreted

__all__ = [
    "ACTIVATIONS",
    "Launch",
    "acc_dtype",
    "cdiv",
    "empty_output",
    "launch",
    "memory_format",
    "out_size",
    "partial_pixels",
    "record_launches",
    "strides",
    "tl_acc",
]

# The activations a BatchNorm-and-activation prologue applies (pointwise_conv2d,
# conv2d_prologue_stats), by name, and their code in the kernels (_stencil.activation).
ACTIVATIONS = {"identity": 0, "relu": 1, "relu6": 2, "silu": 3, "gelu": 4}
# Streaming multiprocessors assumed when no CUDA device says otherwise (H100 SXM: 132);
# weight-gradient splits aim at >= 2 programs per SM.
DEFAULT_SM_COUNT = 132
PROGRAMS_PER_SM = 2
MAX_INT32_ELEMENTS = 2**31  # every int32 offset a kernel computes stays below it


def cdiv(a: int, b: int) -> int:
    """Ceiling division (programs needed to cover ``a`` items ``b`` at a time).

    Args:
        a: items to cover (at least 0).
        b: items per program (at least 1).

    Returns:
        ``ceil(a / b)``, in integers.
    """
    return -(-a // b)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SM_COUNT


def partial_pixels(total: int, other_programs: int, t: Tiles, device: torch.device) -> int:
    """Pixels per weight-gradient program: ``t.pixels_per_partial``, halved (down to
    ``t.block_p``) while the grid, ``cdiv(total, pixels) * other_programs`` programs,
    would give fewer than ``PROGRAMS_PER_SM`` per SM. Depends only on the shape and the
    device, so the fixed-order sum of partials stays deterministic.

    Args:
        total: pixels the weight gradient sums over (N * HO * WO).
        other_programs: programs of the grid's other axes (channel blocks times taps).
        t: the family's tiles.
        device: where the launch runs (its SM count; ``DEFAULT_SM_COUNT`` off CUDA).

    Returns:
        Pixels per partial, a power-of-two fraction of ``t.pixels_per_partial``, at least
        ``t.block_p``.
    """
    pixels = t.pixels_per_partial
    want = PROGRAMS_PER_SM * _sm_count(torch.device(device))
    while pixels > t.block_p and cdiv(total, pixels) * other_programs < want:
        pixels //= 2
    return max(pixels, t.block_p)


def tl_acc(dtype: torch.dtype):
    """The triton accumulator dtype for inputs of ``dtype`` (float64 or float32).

    Args:
        dtype: the inputs' torch dtype.

    Returns:
        ``tl.float64`` for float64 inputs, else ``tl.float32``.
    """
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of partial sums for inputs of ``dtype`` (float64 or float32).

    Args:
        dtype: the inputs' torch dtype.

    Returns:
        ``torch.float64`` for float64 inputs, else ``torch.float32``.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def strides(t: Tensor) -> tuple[int, int, int, int]:
    """The four element strides (n, c, h, w) of a 4-D tensor.

    Args:
        t: a 4-D tensor (N, C, H, W), any memory format.

    Returns:
        Its strides in elements, in (n, c, h, w) order.
    """
    return tuple(t.stride())  # type: ignore[return-value]


def memory_format(t: Tensor) -> torch.memory_format:
    """channels_last when ``t`` is laid out so (and not also plain contiguous).

    Args:
        t: any tensor.

    Returns:
        ``torch.channels_last`` or ``torch.contiguous_format`` (also for other layouts: the
        kernels take any strides; this is the layout their outputs are given).
    """
    cl = (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )
    return torch.channels_last if cl else torch.contiguous_format


def out_size(size: int, stride: int, padding: int, dilation: int, kernel: int = 3) -> int:
    """Output height or width of a ``kernel`` x ``kernel`` convolution
    (``torch.nn.Conv2d``'s formula).

    Args:
        size: input height or width, in pixels.
        stride: the convolution's stride.
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        kernel: the kernel's height or width.

    Returns:
        The output's height or width, in pixels.
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def empty_output(
    x: Tensor, cout: int, stride: int, padding: int, dilation: int, kernel: int = 3
) -> Tensor:
    """The uninitialised (N, COUT, HO, WO) output of a ``kernel`` x ``kernel`` convolution
    of ``x``, in ``x``'s dtype, device and memory format (what the ops and their fake
    implementations return).

    Args:
        x: the input (N, CIN, H, W).
        cout: output channels.
        stride: the convolution's stride.
        padding: zero padding on each side, in pixels.
        dilation: spacing between kernel taps.
        kernel: the kernel's height and width.

    Returns:
        An uninitialised (N, COUT, HO, WO) tensor.
    """
    n, _, h, w = x.shape
    ho = out_size(h, stride, padding, dilation, kernel)
    wo = out_size(w, stride, padding, dilation, kernel)
    fmt = memory_format(x)
    return torch.empty((n, cout, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt)


# ------------------------------------------------------------------------ launching


@dataclass
class Launch:
    """One recorded kernel launch: the ``@triton.jit`` function, grid, arguments.

    Attributes:
        kernel: the ``@triton.jit`` function.
        grid: programs along each grid axis.
        args: the positional arguments (tensors, sizes, strides).
        meta: the constexprs and launch options (``num_warps``, ``num_stages``).
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    meta: dict


_recorder: list[Launch] | None = None


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Record launches instead of running them (the launchers may get ``meta`` tensors).

    Yields:
        The list each launch inside the block is appended to, as a ``Launch``.
    """
    global _recorder
    old, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = old


def launch(kernel, grid: tuple[int, ...], *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``, or recorded inside ``record_launches()``.

    Args:
        kernel: a ``@triton.jit`` function.
        grid: programs along each grid axis.
        *args: its positional arguments (tensors, sizes, strides).
        **meta: its constexprs and launch options.
    """
    if _recorder is not None:
        _recorder.append(Launch(kernel, tuple(grid), args, meta))
        return
    if interpreted():  # bfloat16 rounding as on a GPU (fastcifar.kernels.interpreter)
        round_bfloat16_to_nearest_even()
    kernel[grid](*args, **meta)
