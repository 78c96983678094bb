"""Drop-in layers that route to the Triton kernels where they apply (layer 2).

``Conv2d`` is an ``nn.Conv2d`` that calls ``fastcifar.kernels.conv2d`` for the
configurations the kernels support (3x3; groups == 1 with dilation 1-3, or at most 4
input channels per group; stride 1-2; padding 0..dilation; zero padding mode) and
PyTorch's convolution otherwise. The choice is made once, at construction, from the
configuration alone; nothing is decided by catching errors here (``--kernels auto``
puts a layer whose kernels fail on this GPU back on PyTorch:
``fastcifar.nn.fusion.revert_to_torch``, called by ``fastcifar.nn.kernel_guard``).

``swap_convolutions(model)`` replaces a model's supported ``nn.Conv2d`` layers in place
by ``Conv2d`` sharing the same parameters (weights kept).

``FusedConvReLUBN`` runs a seed's Conv -> ReLU -> BatchNorm block (``Sequential`` of the
three) with one Triton kernel for the convolution, the ReLU and the batch statistics,
then one elementwise pass for the normalisation; ``fuse_conv_relu_bn(model)`` converts a
model's supported blocks in place, keeping their children, parameters and state-dict keys.
Opt-in: it becomes a default only where a GPU benchmark shows it faster.
"""

from __future__ import annotations

import torch
from torch import nn

from fastcifar.kernels import conv2d as triton_conv2d
from fastcifar.kernels.conv import GROUPED_KERNEL_SIZES, MAX_CIN_PER_GROUP


def config_supported(conv: nn.Conv2d) -> bool:
    """Whether the Triton kernels implement this layer's configuration (device aside).

    Args:
        conv: any ``nn.Conv2d``: zero padding, square kernel, equal stride, padding and
            dilation in height and width are required.

    Returns:
        True for a dense 3x3, or a grouped (depthwise included) 3x3, 5x5 or 7x7 with at
        most 16 input channels a group; stride 1-2, dilation 1-3, padding 0..dilation x
        (K - 1) / 2 (``fastcifar.kernels.conv`` states the same subset for tensors).
    """
    (k, k2), (s, s2), (p, p2), (d, d2) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    if k != k2 or s != s2 or p != p2 or d != d2:
        return False
    if conv.groups == 1:
        fits = k == 3
    else:  # the grouped kernel: 3x3, 5x5, 7x7, up to MAX_CIN_PER_GROUP channels a group
        fits = k in GROUPED_KERNEL_SIZES and conv.in_channels // conv.groups <= MAX_CIN_PER_GROUP
    return fits and s in (1, 2) and d in (1, 2, 3) and 0 <= p <= d * (k - 1) // 2


def autocast_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Cast to the autocast dtype when autocast is on (the kernels take one dtype).

    Args:
        x: the input.
        weight: the weight.
        bias: the bias, or None.

    Returns:
        (x, weight, bias) in the autocast dtype, or unchanged when autocast is off.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return x, weight, bias


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs the Triton kernels for supported configurations.

    Same arguments, parameters and state-dict keys as ``nn.Conv2d``; ``uses_triton`` says
    which path it takes (``config_supported``, decided at construction; an unsupported
    configuration runs ``nn.Conv2d.forward``). Input (N, CIN, H, W), NCHW or
    channels_last, float32, float16, bfloat16 or float64; output (N, COUT, HO, WO) in the
    input's memory format. Under autocast the input, weight and bias are cast to the
    autocast dtype first (the kernels take one dtype). The Triton path needs a CUDA
    device, or ``TRITON_INTERPRET=1`` on a CPU; elsewhere the kernels raise
    ``NotImplementedError`` naming the device.

    Args:
        *args: ``nn.Conv2d``'s (in_channels, out_channels, kernel_size, stride, padding,
            dilation, groups, bias, padding_mode, device, dtype), with its defaults.
        **kwargs: the same, by name.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.uses_triton = config_supported(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x``.

        Args:
            x: (N, CIN, H, W), NCHW or channels_last; float32, float16, bfloat16 or float64.

        Returns:
            (N, COUT, HO, WO) in ``x``'s memory format and dtype (the autocast dtype under
            autocast).

        Raises:
            NotImplementedError: the Triton path on a device with neither CUDA nor the
                interpreter (``TRITON_INTERPRET=1``), or an input or output of 2**31
                elements or more (the kernels' int32 offsets); the message says which.
        """
        if not self.uses_triton:
            return super().forward(x)
        x, weight, bias = autocast_args(x, self.weight, self.bias)
        return triton_conv2d(
            x, weight, bias, self.stride[0], self.padding[0], self.dilation[0], self.groups
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> Conv2d:
        """A ``Conv2d`` sharing ``conv``'s weight and bias tensors.

        Args:
            conv: an ``nn.Conv2d`` (``plain_conv``).

        Returns:
            The new module.
        """
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in conv.__dict__.items() if k != "_modules"})
        new._modules = {}
        new.uses_triton = config_supported(conv)
        return new


def plain_conv(module: nn.Module) -> bool:
    """Whether ``module`` computes exactly ``nn.Conv2d``'s convolution: an ``nn.Conv2d``,
    or a subclass overriding neither ``forward`` nor ``_conv_forward`` (one that only
    initialises its weight its own way, as the speed run's ``DiracConv``), and not
    already fastcifar's ``Conv2d``.

    Args:
        module: any module.

    Returns:
        True for such a convolution.
    """
    cls = type(module)
    return (
        isinstance(module, nn.Conv2d)
        and not isinstance(module, Conv2d)
        and cls.forward is nn.Conv2d.forward
        and cls._conv_forward is nn.Conv2d._conv_forward
    )


def plain_bn(module: nn.Module, channels: int) -> bool:
    """Whether ``module`` computes exactly ``nn.BatchNorm2d``'s normalisation over
    ``channels`` channels: a BatchNorm2d, or a subclass keeping its forward (the speed
    run's ``FrozenScaleBatchNorm``, which only freezes its weight).

    Args:
        module: any module.
        channels: the channels it must normalise.

    Returns:
        True for such a BatchNorm.
    """
    return (
        isinstance(module, nn.BatchNorm2d)
        and type(module).forward is nn.BatchNorm2d.forward
        and module.num_features == channels
    )


def own_forward_convs(model: nn.Module) -> list[str]:
    """The qualified names of ``model``'s ``nn.Conv2d`` subclasses with a ``forward`` (or
    ``_conv_forward``) of their own: the kernels cannot know what it computes, so they
    stay on PyTorch.

    Args:
        model: any model.

    Returns:
        Their qualified names, in module order.
    """
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not isinstance(m, Conv2d) and not plain_conv(m)
    ]


def swap_convolutions(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Replace every supported plain convolution in ``model`` (``plain_conv``: an
    ``nn.Conv2d`` or a subclass that keeps its forward) by ``Conv2d``, in place.

    The parameters are shared, not copied: optimizers built before or after see the same
    tensors, and state dicts keep their keys. Subclasses with a forward of their own are
    left alone (``own_forward_convs``).

    Args:
        model: any module; its ``nn.Conv2d`` children at any depth are candidates.
        only: qualified names (``"layer1.0.conv1"``) to swap; None: every supported one.

    Returns:
        The qualified names swapped, in ``named_modules`` order.
    """
    swapped = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{name}" if parent_name else name
            if only is not None and qualified not in only:
                continue
            if plain_conv(child) and config_supported(child):
                setattr(parent, name, Conv2d.from_conv(child))
                swapped.append(qualified)
    return swapped


def bn_prologue(
    bn: nn.BatchNorm2d, mean: torch.Tensor | None, var: torch.Tensor | None, count: int
) -> torch.Tensor:
    """The BatchNorm folded into a per-channel affine map: ``bn(y) == (y - center) * scale
    + shift``. In training the running statistics are updated as ``nn.BatchNorm2d`` does
    (unbiased variance, ``momentum`` or the cumulative average when it is None).
    Differentiable in ``mean``, ``var`` and the affine parameters.

    Args:
        bn: the BatchNorm2d of C channels.
        mean, var: (C,) batch mean and biased variance of ``y`` (float32; float64 for
            float64 input), used in training; ignored in eval mode (the running ones are).
        count: values per channel the batch statistics were taken over (N x H x W).

    Returns:
        (C, 3): center, scale and shift per channel, in the statistics' dtype.
    """
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), m)
            unbiased = var * count / max(count - 1, 1)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), m)
    if not (bn.training or not bn.track_running_stats):
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = bn.bias if bn.affine else torch.zeros_like(scale)
    return torch.stack((mean.to(scale.dtype), scale, shift.to(scale.dtype)), dim=1)


def convert_blocks(model: nn.Module, test, cls: type, only: set[str] | None) -> list[str]:
    """Give every block of ``model`` that passes ``test`` (and is named in ``only``, when
    given) the class ``cls`` in place; returns their qualified names.

    Args:
        model: the model, converted in place.
        test: ``module -> bool``, the blocks to convert.
        cls: the fused class each such block gets.
        only: qualified names to convert, or None for all.

    Returns:
        The qualified names converted.
    """
    converted = []
    for name, m in model.named_modules():
        if test(m) and (only is None or name in only):
            m.__class__ = cls
            converted.append(name)
    return converted


__all__ = [
    "Conv2d",
    "autocast_args",
    "bn_prologue",
    "config_supported",
    "convert_blocks",
    "swap_convolutions",
]
