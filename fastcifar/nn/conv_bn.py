"""The conv -> [ReLU] -> BatchNorm blocks on ``fastcifar.kernels.conv_bn``'s op
(``conv2d_relu_stats``): the convolution, its optional ReLU and the batch statistics of
its output in one kernel, then ``y * scale + shift`` per channel. ``FusedConvReLUBN``
for the seeds' ``Sequential(conv, ReLU, BatchNorm2d)``, ``FusedConvBN`` for the model
zoo's ``Sequential(conv, BatchNorm2d)``; each built by converting a block in place
(``fuse_conv_relu_bn``, ``fuse_conv_bn``), its children, parameters and state-dict keys
unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from fastcifar.kernels.conv_bn import conv2d_relu_stats
from fastcifar.nn.modules import (
    autocast_args,
    bn_prologue,
    config_supported,
    convert_blocks,
    plain_conv,
)

__all__ = [
    "FusedConvBN",
    "FusedConvReLUBN",
    "fuse_conv_bn",
    "fuse_conv_relu_bn",
    "is_conv_bn",
    "is_conv_relu_bn",
]


class FusedConvReLUBN(nn.Sequential):
    """``Sequential(conv, ReLU, BatchNorm2d)`` computed as Triton conv + ReLU + batch
    statistics in one kernel, then ``y * scale + shift`` per channel.

    Same children, parameters, buffers and state-dict keys as the block it replaces; same
    training-mode semantics as PyTorch's BatchNorm2d (biased variance to normalise,
    unbiased variance into ``running_var``, ``momentum`` or the cumulative average when
    it is None). Input (N, CIN, H, W), NCHW or channels_last. Built by converting a block
    in place (``fuse_conv_relu_bn``), not constructed directly.

    Args:
        *args: the block's children, as ``nn.Sequential`` takes them: a convolution the
            kernels support, ``nn.ReLU`` (``FusedConvReLUBN`` only), ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, BatchNorm in training or eval mode as ``self.training`` says.

        Args:
            x: (N, CIN, H, W), NCHW or channels_last; float32, float16, bfloat16 or float64.

        Returns:
            (N, COUT, HO, WO) in ``x``'s memory format and dtype (the autocast dtype under
            autocast). In training the BatchNorm's running statistics are updated.
        """
        conv, bn = self[0], self[-1]
        x, weight, bias = autocast_args(x, conv.weight, conv.bias)
        args = (conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups)
        y, mean, var = conv2d_relu_stats(x, weight, bias, *args, relu=len(self) == 3)
        center, scale, shift = bn_prologue(bn, mean, var, y.numel() // y.shape[1]).unbind(1)
        shift = -center * scale + shift
        shape = (1, -1, 1, 1)
        return y * scale.view(shape).to(y.dtype) + shift.view(shape).to(y.dtype)


class FusedConvBN(FusedConvReLUBN):
    """``Sequential(conv, BatchNorm2d)`` (the model zoo's convolution -> BatchNorm, its
    activation outside): the Triton conv with the batch statistics of its output in the
    same kernel, then ``y * scale + shift``. PyTorch's block writes the conv output and
    reads it back once to take the statistics; here that read is gone: one read of the
    output tensor per block and step (docs/DESIGN.md, "Fusions for the model zoo"). Same
    children, parameters, state-dict keys and BatchNorm semantics as the block. Built by
    converting a block in place (``fuse_conv_bn``).

    Args:
        *args: the block's children: a convolution the kernels support, then
            ``nn.BatchNorm2d``.
    """


def _conv_then(m: nn.Module, *after: type) -> bool:
    """Whether ``m`` is ``Sequential(Conv2d the kernels support, *after)``, each module after
    the convolution of exactly the type given."""
    return (
        type(m) is nn.Sequential
        and len(m) == 1 + len(after)
        and plain_conv(m[0])
        and config_supported(m[0])
        and all(type(child) is cls for child, cls in zip(m[1:], after, strict=True))
    )


def is_conv_bn(m: nn.Module) -> bool:
    """Whether ``m`` is a ``Sequential(Conv2d, BatchNorm2d)`` the fused kernel covers.

    Args:
        m: any module.

    Returns:
        True for such a Sequential.
    """
    return _conv_then(m, nn.BatchNorm2d)


def fuse_conv_bn(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Turn every supported ``Sequential(Conv2d, BatchNorm2d)`` of ``model`` into a
    ``FusedConvBN`` in place (children, parameters and state-dict keys unchanged).

    Args:
        model: any module; its ``nn.Sequential`` blocks at any depth are candidates.
        only: qualified names of the blocks to convert; None: every supported one.

    Returns:
        The qualified names converted.
    """
    return convert_blocks(model, is_conv_bn, FusedConvBN, only)


def is_conv_relu_bn(m: nn.Module) -> bool:
    """Whether ``m`` is a ``Sequential(Conv2d, ReLU, BatchNorm2d)`` the fused kernel covers.

    Args:
        m: any module.

    Returns:
        True for such a Sequential.
    """
    return _conv_then(m, nn.ReLU, nn.BatchNorm2d)


def fuse_conv_relu_bn(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Turn every supported ``Sequential(Conv2d, ReLU, BatchNorm2d)`` of ``model`` (the
    seeds' block) into a ``FusedConvReLUBN`` in place (children, parameters and state-dict
    keys unchanged).

    Args:
        model: any module; its ``nn.Sequential`` blocks at any depth are candidates.
        only: qualified names of the blocks to convert; None: every supported one.

    Returns:
        The qualified names converted.
    """
    return convert_blocks(model, is_conv_relu_bn, FusedConvReLUBN, only)
