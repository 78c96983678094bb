"""The depthwise-separable kind (layer 2): ``Sequential(depthwise 3x3, [ReLU], pointwise
1x1)`` run by one kernel, ``fastcifar.kernels.depthwise_separable_conv2d``, so that the
depthwise output is never written to memory; the op's stem is the same in
``kernels/dwsep.py``, ``tests/kernels/test_dwsep.py`` and ``benchmarks/bench_dwsep.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from fastcifar.kernels.dwsep import depthwise_separable_conv2d
from fastcifar.nn.modules import autocast_args, config_supported, convert_blocks, plain_conv

__all__ = ["FusedDepthwiseSeparable", "fuse_depthwise_separable", "is_depthwise_separable"]


class FusedDepthwiseSeparable(nn.Sequential):
    """``Sequential(depthwise 3x3 conv, [ReLU], pointwise 1x1 conv)``, both bias-free,
    computed by ``fastcifar.kernels.depthwise_separable_conv2d``: the depthwise output is
    never written to memory. Same children, parameters and state-dict keys as the block it
    replaces. Input (N, C, H, W), NCHW or channels_last; output (N, COUT, HO, WO). Built
    by converting a block in place (``fuse_depthwise_separable``).

    Args:
        *args: the block's children, as ``nn.Sequential`` takes them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pointwise convolution of the (ReLU of the) depthwise convolution of ``x``.

        Args:
            x: (N, C, H, W), NCHW or channels_last; float32, float16, bfloat16 or float64.

        Returns:
            (N, COUT, HO, WO) in ``x``'s memory format and dtype (the autocast dtype under
            autocast).
        """
        dw, pw = self[0], self[-1]
        x, w_dw, _ = autocast_args(x, dw.weight, None)
        _, w_pw, _ = autocast_args(x, pw.weight, None)
        relu = len(self) == 3
        return depthwise_separable_conv2d(
            x, w_dw, w_pw, dw.stride[0], dw.padding[0], dw.dilation[0], relu
        )


def is_depthwise_separable(m: nn.Module) -> bool:
    """Whether ``m`` is a bias-free ``Sequential(depthwise 3x3, [ReLU], pointwise 1x1)`` the
    fused depthwise-separable kernel covers.

    Args:
        m: any module.

    Returns:
        True for such a Sequential (its ``FusedDepthwiseSeparable`` conversion too).
    """
    if type(m) is not nn.Sequential or len(m) not in (2, 3):
        return False
    dw, pw = m[0], m[-1]
    return (
        plain_conv(dw)
        and config_supported(dw)
        and dw.kernel_size == (3, 3)
        and dw.groups == dw.in_channels == dw.out_channels
        and dw.bias is None
        and plain_conv(pw)
        and pw.kernel_size == (1, 1)
        and pw.stride == (1, 1)
        and pw.groups == 1
        and pw.bias is None
        and pw.in_channels == dw.out_channels
        and (len(m) == 2 or type(m[1]) is nn.ReLU)
    )


def fuse_depthwise_separable(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Turn every bias-free ``Sequential(depthwise 3x3, [ReLU], pointwise 1x1)`` of
    ``model`` into a ``FusedDepthwiseSeparable`` in place (``is_depthwise_separable``).

    Args:
        model: any module; its ``nn.Sequential`` blocks at any depth are candidates.
        only: qualified names of the blocks to convert; None: every supported one.

    Returns:
        The qualified names converted.
    """
    return convert_blocks(model, is_depthwise_separable, FusedDepthwiseSeparable, only)
