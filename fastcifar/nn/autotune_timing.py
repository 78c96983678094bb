"""The timing half of measured kernel dispatch (``fastcifar.nn.autotune``): a ``Runner`` is
one side of one comparison (forward + backward of a convolution or a fused unit, Triton
or PyTorch), and a timer turns it into milliseconds (``cuda_timer``: CUDA events, median
of 10 after 3 warm-ups; tests pass a fake one).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.kernels.validate import ConvConfig
from fastcifar.nn.fusion import fused_copy
from fastcifar.nn.kernel_guard import run_block

__all__ = ["Runner", "Timer", "block_runner", "conv_runner", "cuda_timer"]


@dataclass
class Runner:
    """One side of one comparison: ``fn()`` runs forward + backward once.

    Attributes:
        kind: a kind of ``fastcifar.nn.fusion.FUSIONS``, or ``conv``.
        side: ``"triton"`` or ``"torch"``.
        config: ``ConvConfig.describe()`` of the (first) convolution.
        fn: runs forward + backward once; its tensors are made at the first call.
    """

    kind: str  # a kind of fastcifar.nn.fusion.FUSIONS
    side: str  # triton | torch
    config: str
    fn: Callable[[], None]


Timer = Callable[[Runner], float]


def cuda_timer(runner: Runner, warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of ``runner.fn()`` over ``reps`` calls, each timed with CUDA
    events after ``warmup`` untimed calls.

    Args:
        runner: the side to time.
        warmup: untimed calls first.
        reps: timed calls.

    Returns:
        The median, in milliseconds.
    """
    for _ in range(warmup):
        runner.fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _inputs(cfg: ConvConfig, device, requires_grad: bool = True) -> torch.Tensor:
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = torch.randn(cfg.input_shape, device=device, dtype=cfg.dtype)
    return x.contiguous(memory_format=fmt).requires_grad_(requires_grad)


def conv_runner(cfg: ConvConfig, side: str, device) -> Runner:
    """One convolution configuration's forward + backward on one side: ``fastcifar.kernels.conv2d``
    or ``F.conv2d``, on random inputs of the configuration's shapes, dtype and layout.

    Args:
        cfg: the configuration.
        side: ``"triton"`` or ``"torch"``.
        device: where it runs.

    Returns:
        The ``Runner``.
    """
    from fastcifar.kernels import conv2d as triton_conv2d

    state = {}

    def fn():
        if not state:  # built at the first call: a fake timer never allocates
            state["x"] = _inputs(cfg, device)
            state["w"] = torch.randn(
                cfg.weight_shape, device=device, dtype=cfg.dtype, requires_grad=True
            )
            state["b"] = (
                torch.zeros(cfg.weight_shape[0], device=device, dtype=cfg.dtype, requires_grad=True)
                if cfg.bias
                else None
            )
        conv = triton_conv2d if side == "triton" else F.conv2d
        y = conv(
            state["x"], state["w"], state["b"], cfg.stride, cfg.padding, cfg.dilation, cfg.groups
        )
        y.backward(torch.ones_like(y))

    return Runner("conv", side, cfg.describe(), fn)


def block_runner(kind: str, block: nn.Module, cfg: ConvConfig, side: str, device) -> Runner:
    """One fused unit's forward + backward on one side, as training runs it (float32 parameters,
    16-bit compute under autocast): the converted copy (``fused_copy``) or a plain deep copy.

    Args:
        kind: the unit's kind of ``FUSIONS``.
        block: the unit, unfused (as ``find`` gives it).
        cfg: its first convolution's configuration (input shape, dtype, layout).
        side: ``"triton"`` or ``"torch"``.
        device: where it runs.

    Returns:
        The ``Runner``.
    """
    state = {}

    def fn():
        if not state:
            copied = copy.deepcopy(block) if side == "torch" else fused_copy(kind, block)
            copied = copied.to(device).train()
            if cfg.channels_last:
                copied = copied.to(memory_format=torch.channels_last)
            state["block"], state["x"] = copied, _inputs(cfg, device)
        # as training runs it: float32 parameters, 16-bit compute under autocast
        run_block(state["block"], state["x"], cfg.dtype)

    return Runner(kind, side, cfg.describe(), fn)
