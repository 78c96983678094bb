"""Drop-in layers that route to the Triton kernels where they apply (layer 2).

``Conv2d`` is an ``nn.Conv2d`` that calls ``fastcifar.kernels.conv2d`` for the
configurations the kernels support (3x3; groups == 1 with dilation 1-3, or at most 4
input channels per group; stride 1-2; padding 0..dilation; zero padding mode) and
PyTorch's convolution otherwise. The choice is made once, at construction, from the
configuration alone; nothing is decided by catching errors.

``swap_convolutions(model)`` replaces a model's supported ``nn.Conv2d`` layers in place
by ``Conv2d`` sharing the same parameters (weights kept).
"""

from __future__ import annotations

import torch
from torch import nn

from fastcifar.kernels import conv2d as triton_conv2d


def config_supported(conv: nn.Conv2d) -> bool:
    """Whether the Triton kernels implement this layer's configuration (device aside)."""
    if conv.kernel_size != (3, 3) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    (s, s2), (p, p2), (d, d2) = conv.stride, conv.padding, conv.dilation
    if s != s2 or p != p2 or d != d2:
        return False
    cin_pg = conv.in_channels // conv.groups
    return s in (1, 2) and d in (1, 2, 3) and 0 <= p <= d and (conv.groups == 1 or cin_pg <= 4)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs the Triton kernels for supported configurations.

    Same arguments and parameters as ``nn.Conv2d``. ``uses_triton`` says which path it
    takes. Input (N, CIN, H, W), NCHW or channels_last; under autocast the input, weight
    and bias are cast to the autocast dtype first (the kernels take one dtype).
    The Triton path needs a CUDA device, or ``TRITON_INTERPRET=1`` on a CPU.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.uses_triton = config_supported(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_triton:
            return super().forward(x)
        weight, bias = self.weight, self.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return triton_conv2d(
            x, weight, bias, self.stride[0], self.padding[0], self.dilation[0], self.groups
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> Conv2d:
        """A ``Conv2d`` sharing ``conv``'s weight and bias tensors."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in conv.__dict__.items() if k != "_modules"})
        new._modules = {}
        new.uses_triton = config_supported(conv)
        return new


def swap_convolutions(model: nn.Module) -> list[str]:
    """Replace every supported ``nn.Conv2d`` in ``model`` by ``Conv2d``, in place.

    The parameters are shared, not copied: optimizers built before or after see the same
    tensors, and state dicts keep their keys. Returns the qualified names swapped.
    """
    swapped = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and config_supported(child):
                setattr(parent, name, Conv2d.from_conv(child))
                swapped.append(f"{parent_name}.{name}" if parent_name else name)
    return swapped


__all__ = ["Conv2d", "config_supported", "swap_convolutions"]
