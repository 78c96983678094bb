"""Tile sizes of every kernel family, and the one place they are chosen (``tiles``).

* ``GPU_TILES[family]`` is what a CUDA launch of a dense, grouped or fused
  depthwise-separable kernel uses, and what ``scripts/aot_check.py`` compiles for
  sm_80/sm_90 (why each size: the comment at ``GPU_TILES``). 4 warps and 3 pipeline
  stages everywhere (triton's defaults, written out so the AOT compile uses them).
* ``TARGET_TILES[target][family]``: the families whose compiles on one target
  (``fastcifar.kernels.targets``) called for other tiles, each with its reason.
* ``INTERPRETER_TILES``, ``TRITON_INTERPRET=1``'s default: fewer, larger programs (each
  runs in Python) are much faster there.
  ``gpu_tiles()`` makes the interpreter run ``GPU_TILES`` instead, so the exact GPU
  configuration is executed and tested on a CPU (tiny shapes); ``compile_target(name)``
  makes it run (or the AOT check record) one target's tiles.
* float64 (gradcheck only): broadcast multiply-add, not ``tl.dot``, smaller blocks.
* ``fused_dot_tiles``: smaller tiles for kernels whose fused work keeps more registers live.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

__all__ = [
    "FAMILIES",
    "GPU_TILES",
    "INTERPRETER_TILES",
    "TARGET_TILES",
    "Tiles",
    "compile_target",
    "current_target",
    "fused_dot_tiles",
    "gpu_tiles",
    "interpreted",
    "tiles",
]


@dataclass(frozen=True)
class Tiles:
    """Block sizes and launch options of the convolution kernels.

    Attributes:
        block_p: output pixels (flattened n, oh, ow) per program; the input gradient's
            programs take input pixels. Also the pixel step of the weight-gradient loop.
        block_c: channels per program of the elementwise (grouped/depthwise) kernels.
        block_n: channels a ``tl.dot`` kernel's program produces (``tl.dot``'s N): output
            channels in the forward, input channels in the input gradient, output channels
            of the weight-gradient tile. The kernels' ``BLOCK_N``.
        block_k: channels a ``tl.dot`` kernel reduces per step (``tl.dot``'s K, at least 16):
            the other side's channels; the weight-gradient tile's input channels. The
            kernels' ``BLOCK_K``. Each field reaches its kernel upper-cased.
        pixels_per_partial: most pixels one weight-gradient program sums into its partial
            (fewer where that leaves the GPU under-filled: ``partial_pixels``).
        use_dot: ``tl.dot`` for the channel reductions (False: broadcast multiply-add).
        num_warps: warps per program (a triton launch option).
        num_stages: software-pipelining stages of the kernels' loops (a triton launch
            option).
    """

    block_p: int
    block_c: int
    block_n: int
    block_k: int
    pixels_per_partial: int
    use_dot: bool = True
    num_warps: int = 4
    num_stages: int = 3

    @property
    def launch_options(self) -> dict[str, int]:
        """``num_warps`` and ``num_stages``, as a launch takes them."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


# Per kernel family, chosen from AOT compiles for every target (scripts/aot_check.py; the
# tables and the variants tried are in benchmarks/RESULTS.md), not yet from GPU timings.
# A channels_last 16-bit stencil is fast only with wide global loads: triton gives each
# thread BLOCK_P * BLOCK_C / (32 * num_warps) elements, contiguous along the channels, so
# 8 channels per thread are one 128-bit load and 2 (the old 16 x 16 tiles) one 32-bit load.
# * dense: tl.dot tiles of 64 pixels x 32 output channels, K = 16 (no spills; 128-bit
#   activation and channels_last weight loads where the channels are multiples of 16);
# * depthwise (forward and input gradient, one channel per group): 64 pixels x 8
#   channels, 4 warps: 4 channels per lane, 64-bit loads of the input, 64-72 registers,
#   44-100 % occupancy, no spills with triton 3.6 and 3.8 (sm_75/sm_80/sm_90). 128 x 8
#   (8 channels per lane, 128-bit) compiled without spills on triton 3.8 (96 registers)
#   but spilled 208 bytes on sm_90 with triton 3.6, the GPU machines' stack (128
#   registers); 16 x 16: 32-bit loads. The input gradient with the prologue's backward
#   takes depthwise_strided's tile (conv.launch_grad_input: 12 bytes spilled at 64 x 8);
# * grouped (2-4 input channels per group, forward and input gradient): 16 pixels x 16
#   channels, 4 warps: 48-78 registers, no spills. An output channel reads its group's
#   channels, not its own, so these loads gather 16 bits at a time at any tile (128 x 8
#   took 255 registers); 32 x 16 spilled 374 bytes on sm_90 with the ReLU + statistics
#   epilogue (s7's groups=32 layer, float16);
# * depthwise_strided (stride 2): 32 pixels x 8 channels, 4 warps. With triton 3.6 (the
#   GPU machines' stack) ptxas spilled 8-24 bytes at 64 x 8 in every stride-2 depthwise
#   forward of the model zoo (ShuffleNetV2's 24, 116 and 232 channels, float16, sm_90,
#   64-80 registers; also at 8 warps and at 128 x 8 x 8 warps); 32 x 8 compiles clean
#   (32-bit loads, on one layer per stage);
# * grouped_dot (groups of 8 or 16 channels, the tl.dot kernels): 64 pixels x 16 channels,
#   K = 16: a block covers whole groups (two of 8 or one of 16), so the block-diagonal
#   weight tile is at least half filled;
# * reduce (grouped weight gradient, bias gradient: sums over pixels): 128 pixels x 8
#   channels per step, 4 warps: 128-bit loads, 32 registers, 100 % (32 x 16: 64-bit);
# * dwsep (fused depthwise-separable forward and input gradient): 64 pixels x 16
#   depthwise channels, 32 output channels per tl.dot, 8 warps, 1 stage: 64-bit input
#   loads (4 channels per thread), 140-172 registers, no spills (32 x 16: 32-bit loads,
#   111-164 registers; 128 x 8: 128-bit but the input gradient spills 488 bytes);
# * dwsep_weights (its weight gradients): 16 pixels x 16 x 16, 4 warps: 140-158
#   registers, no spills (32 x 16 x 32 spilled 12-56 bytes in every variant tried).
# * pointwise (the 1x1 GEMM with the BatchNorm-and-activation prologue and the statistics
#   epilogue, its input and weight gradients): 64 pixels x 32 channels, K = 32: a
#   channels_last row of 32 16-bit channels is 64 contiguous bytes per pixel.
# (kept aligned, the formatter told to skip it: a table of numbers, one family a row)
GPU_TILES = {  # block_p, block_c, block_n, block_k, pixels_per_partial[, launch options]
    "dense":             Tiles(64,  32, 32, 16, 4096),
    "depthwise":         Tiles(64,   8, 16, 16, 4096),
    "depthwise_strided": Tiles(32,   8, 16, 16, 4096),
    "grouped":           Tiles(16,  16, 16, 16, 4096),
    "grouped_dot":       Tiles(64,  16, 16, 16, 4096),
    "reduce":            Tiles(128,  8, 16, 16, 4096),
    "dwsep":             Tiles(64,  16, 32, 16, 4096, num_warps=8, num_stages=1),
    "dwsep_weights":     Tiles(16,  16, 16, 16, 4096),
    "pointwise":         Tiles(64,  32, 32, 32, 4096),
}  # fmt: skip
FAMILIES = tuple(GPU_TILES)
# Per target (``fastcifar.kernels.targets``), the families whose compiles there called for
# other tiles than GPU_TILES, each with its reason. Empty entries use GPU_TILES.
# AMD CDNA wavefronts have 64 lanes, not 32: the same tile spreads over twice the lanes
# and each gets half the channels, so its loads halve in width. Half the warps restore 8
# channels (128 bits) per lane (gfx942 compiles, bfloat16): depthwise 128 x 8, 2 warps, 70-97
# VGPRs, 50-88 % (4 warps: 64-bit); reduce 2 warps; dwsep 4 warps, 114-175 VGPRs, 64-bit
# (8 warps: 32-bit); dwsep_weights 1 warp, 171 VGPRs, 128-bit (4 warps: 32-bit).
_CDNA_TILES = {
    "depthwise": replace(GPU_TILES["depthwise"], block_p=128, num_warps=2),
    "reduce": replace(GPU_TILES["reduce"], num_warps=2),
    "dwsep": replace(GPU_TILES["dwsep"], num_warps=4),
    "dwsep_weights": replace(GPU_TILES["dwsep_weights"], num_warps=1),
}
# sm_86, sm_89, sm_100, sm_120: ptxas holds these kernels to fewer registers than on
# sm_80/sm_90 and spills at the common tiles (16-bit compiles): the depthwise forward
# 148 bytes (sm_86, sm_89), 248 (sm_120), 16 (sm_100) at 128 x 8 x 4 warps; 64 x 8 and
# 128 x 8 x 8 warps spill too. One warp of 32 pixels x 8 channels keeps 8 channels per
# lane (128-bit loads) in 96-128 registers without spilling. The dense forward spills 16
# bytes (sm_86, sm_89, s7's 3 -> 16 layer) and the input gradient 24 (sm_120) at 64 x 32;
# 64 x 16 fits in 70-78 registers, still 128-bit.
_DEPTHWISE_ONE_WARP = replace(GPU_TILES["depthwise"], block_p=32, num_warps=1)
_DENSE_16 = replace(GPU_TILES["dense"], block_n=16)
TARGET_TILES: dict[str, dict[str, Tiles]] = {
    # sm_75 (T4): the fused depthwise-separable input gradient spills 512 bytes at 64 x 16
    # in float16 (255 registers); 32 x 16 fits in 252 without spilling (32-bit loads). Its
    # grouped tl.dot kernels (sm_75 gets no mma from triton 3.8: the dot is FMA there)
    # spilled in float16 at every tile but 16 pixels: 64 x 16 x 16, 20 bytes (input
    # gradient, groups of 8); 32 pixels, 68 (forward, 32 groups of 8); 8 warps, 24; 2
    # stages, 20. 16 x 16 x 16 compiles without spills (32-bit loads). Its pointwise weight
    # gradient (FMA dot too) spilled 588 bytes at 64 x 32 x 32 (float16, 48 -> 1152
    # channels); 64 x 16 x 16 fits in 189 registers (128-bit loads)
    "sm_75": {
        "dwsep": replace(GPU_TILES["dwsep"], block_p=32),
        "grouped_dot": replace(GPU_TILES["grouped_dot"], block_p=16),
        "pointwise": replace(GPU_TILES["pointwise"], block_n=16, block_k=16),
    },
    "sm_86": {"depthwise": _DEPTHWISE_ONE_WARP, "dense": _DENSE_16},
    "sm_89": {"depthwise": _DEPTHWISE_ONE_WARP, "dense": _DENSE_16},
    "sm_100": {"depthwise": _DEPTHWISE_ONE_WARP},
    "sm_120": {"depthwise": _DEPTHWISE_ONE_WARP, "dense": _DENSE_16},
    "gfx90a": _CDNA_TILES,
    "gfx942": _CDNA_TILES,
}
# A target with its own depthwise tile uses it at stride 2 as well (chosen for its lanes
# and registers, it is already at most as wide as depthwise_strided).
for _own in TARGET_TILES.values():
    if "depthwise" in _own:
        _own.setdefault("depthwise_strided", _own["depthwise"])
INTERPRETER_TILES = Tiles(block_p=512, block_c=64, block_n=64, block_k=32, pixels_per_partial=8192)

_force_gpu_tiles = False
_compile_target: str | None = None


def interpreted() -> bool:
    """True when triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``).

    Returns:
        True under ``TRITON_INTERPRET=1``.
    """
    return os.environ.get("TRITON_INTERPRET") == "1"


@contextlib.contextmanager
def gpu_tiles() -> Iterator[None]:
    """Run ``GPU_TILES`` under the interpreter too (tests of the GPU configuration).

    Yields:
        None; on leaving, the previous choice is restored.
    """
    global _force_gpu_tiles
    old, _force_gpu_tiles = _force_gpu_tiles, True
    try:
        yield
    finally:
        _force_gpu_tiles = old


@contextlib.contextmanager
def compile_target(name: str | None) -> Iterator[None]:
    """Launch (or record) with target ``name``'s tiles (``TARGET_TILES``) whatever GPU is
    present: the AOT check records each target's launches this way.

    Args:
        name: a target of ``fastcifar.kernels.targets.TARGETS`` (``"sm_90"``, ``"gfx942"``,
            ...), or None for the present device's.

    Yields:
        None; on leaving, the previous target is restored.
    """
    global _compile_target
    old, _compile_target = _compile_target, name
    try:
        yield
    finally:
        _compile_target = old


@functools.cache
def _device_target(index: int) -> str | None:
    from fastcifar.kernels.targets import target_of

    return target_of(torch.device("cuda", index))


def current_target() -> str | None:
    """The target whose tiles a launch uses: ``compile_target``'s, else the current CUDA
    device's (``sm_90``, ``gfx942``, ...), else None (CPU, interpreter).

    Returns:
        The target's name, or None.
    """
    if _compile_target is not None:
        return _compile_target
    if interpreted() or not torch.cuda.is_available():
        return None
    return _device_target(torch.cuda.current_device())


def tiles(dtype: torch.dtype, family: str = "dense") -> Tiles:
    """The tile configuration of kernel ``family`` (``FAMILIES``) for a launch in
    ``dtype`` here: on a GPU ``TARGET_TILES[target][family]`` where the current target
    has an entry, else ``GPU_TILES[family]``; ``INTERPRETER_TILES`` under the interpreter
    unless ``gpu_tiles()`` (or ``compile_target``) is in force.

    float64 takes broadcast multiply-add with 16 x 8 channel blocks. bfloat16 under the
    interpreter does too: triton's interpreter mis-reads bfloat16 in ``tl.dot`` (seen
    with triton 3.9: relative error 6e9); float16 and float32 keep ``tl.dot`` there.

    Args:
        dtype: the launch's input dtype (float32, float16, bfloat16 or float64).
        family: a kernel family of ``FAMILIES``.

    Returns:
        The ``Tiles`` the launch takes.

    Raises:
        ValueError: ``family`` is not one of ``FAMILIES``.
    """
    if family not in GPU_TILES:
        raise ValueError(f"unknown kernel family {family!r}: one of {', '.join(FAMILIES)}")
    gpu = _force_gpu_tiles or _compile_target is not None or not interpreted()
    target = current_target() if gpu else None
    base = TARGET_TILES.get(target, {}).get(family, GPU_TILES[family]) if gpu else None
    base = base or INTERPRETER_TILES
    if dtype == torch.float64:
        return replace(base, block_n=16, block_k=8, use_dot=False)
    if interpreted() and dtype == torch.bfloat16:
        return replace(base, use_dot=False)
    return base


def fused_dot_tiles(t: Tiles, prologue=False, pool=False, unpool=False, gelu=False) -> Tiles:
    """``t`` for a convolution kernel whose fused work keeps more registers live (AOT
    compiles, 16-bit, triton 3.8; benchmarks/RESULTS.md): ``prologue`` (a ``tl.dot``
    forward's BatchNorm-and-activation prologue) one pipeline stage: 16-60 bytes spilled at
    3 (sm_86, sm_89, sm_100), 8-16 at 2, none at 1; ``pool`` (a forward's 2x2 max pool
    epilogue) at most 16 output channels: 8 bytes (sm_80), 116 (sm_75) at 64 x 32;
    ``unpool`` (an input gradient un-pooling as it loads) one stage and at most 32 pixels:
    16 bytes (sm_100) at 64 x 32 x 3, 8 (sm_86) at 64 x 16 x 1; ``gelu`` (its prologue's
    erf, and exp in the gradient) half the pixels, or half the channels at 16 pixels: the
    grouped forward spilled 8-56 bytes (sm_80, sm_90, sm_100), the depthwise input gradient
    16 (sm_86, sm_89, sm_100), and with ``pool`` on sm_75 alone 132 (64 x 16). The latency
    one stage leaves unhidden is untimed.

    Args:
        t: the family's tiles (``tiles()``).
        prologue: the kernel applies the BatchNorm-and-activation prologue on ``tl.dot``.
        pool: the forward pools 2x2 in its epilogue.
        unpool: the input gradient un-pools as it loads.
        gelu: the prologue's activation is the exact GELU.

    Returns:
        ``t`` with fewer stages, pixels or channels as above (``t`` itself when none applies).
    """
    if prologue or unpool:
        t = replace(t, num_stages=1)
    if pool:
        t = replace(t, block_n=min(t.block_n, 16))
    if gelu and (not pool or current_target() == "sm_75"):
        t = replace(t, block_p=t.block_p // 2) if t.block_p > 16 else replace(t, block_c=8)
    return replace(t, block_p=min(t.block_p, 32)) if unpool else t
