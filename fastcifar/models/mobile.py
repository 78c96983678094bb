"""The inverted-residual networks of the model zoo, as kuangliu/pytorch-cifar (commit
49b7aa9) lays them out for CIFAR-10: ``MobileNetV2`` and ``EfficientNetB0``.

Input float (N, 3, 32, 32), NCHW or channels_last; output raw logits (N, 10) for
cross-entropy. Every block is expand (1x1) -> depthwise (KxK, stride 1 or 2) -> project
(1x1), each convolution bias-free and followed by BatchNorm: the depthwise convolutions
are what ``fastcifar.kernels`` is for.

* ``MobileNetV2`` (Sandler et al., CVPR 2018): ReLU (not ReLU6, as the reference), the
  stem and the second stage at stride 1 for 32x32 inputs, a residual over every stride-1
  block (a 1x1 projection where the widths differ), a 1x1 head to 1280 channels, 4x4
  average pooling. 2,296,922 parameters, the reference's.
* ``EfficientNetB0`` (Tan and Le, ICML 2019): SiLU ("swish"), 3x3 and 5x5 depthwise
  convolutions, squeeze-excitation on every block (its width a quarter of the block's
  input), no 1x1 head, dropout 0.2 before the classifier. The reference's drop-connect
  rate is 0.2 x b / blocks with ``b`` never incremented, so it is always 0: there is none
  here. The reference also builds an expansion convolution for the first block (expand
  ratio 1) that its forward never calls; it is left out here, so the count is the
  reference's 3,599,686 less those 1,088 parameters: 3,598,598.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.models.base import CifarNet

__all__ = ["EfficientNetB0", "MobileNetV2"]


def conv_bn(
    cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: nn.Module | None = None
) -> nn.Sequential:
    """A bias-free KxK convolution ('same' padding), its BatchNorm and, when given, its
    activation (a module without parameters: the state-dict keys are the same either
    way).

    Args:
        cin: input channels.
        cout: output channels.
        k: kernel side.
        stride: the convolution's stride.
        groups: its groups.
        act: the activation module, or None.

    Returns:
        ``Sequential(conv, BatchNorm2d[, act])``.
    """
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), *([act] if act is not None else []))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand -> ReLU -> 3x3 depthwise -> ReLU -> 1x1 project;
    at stride 1 the input is added (through a 1x1 projection when the widths differ).

    ``CHAIN``: the children the forward calls one on the other's output alone, in order
    (``fastcifar.nn.chain`` fuses depthwise -> BatchNorm -> ReLU into project's prologue).

    Args:
        cin: input channels.
        cout: output channels.
        expansion: the expanded width over ``cin``.
        stride: the depthwise convolution's stride.
    """

    CHAIN = ("expand", "depthwise", "project")

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        mid = expansion * cin
        self.stride = stride
        self.expand = conv_bn(cin, mid, act=nn.ReLU())
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid, act=nn.ReLU())
        self.project = conv_bn(mid, cout)
        self.shortcut = conv_bn(cin, cout) if stride == 1 and cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block.

        Args:
            x: (N, CIN, H, W).

        Returns:
            (N, COUT, H / stride, W / stride).
        """
        out = self.project(self.depthwise(self.expand(x)))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(CifarNet):
    """MobileNetV2 for 32x32 inputs; see the module docstring. Grad-CAM: ``head``.

    Args:
        num_classes: the classifier's outputs.
    """

    # (expansion, output channels, blocks, first block's stride)
    STAGES = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 32, 3), nn.ReLU())
        blocks, cin = [], 32
        for expansion, cout, n, stride in self.STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(conv_bn(320, 1280), nn.ReLU())
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Logits (N, num_classes).
        """
        out = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.avg_pool2d(out, 4).flatten(1))


class SqueezeExcitation(nn.Module):
    """Per-channel gates from the globally pooled features: 1x1 -> SiLU -> 1x1 -> sigmoid
    (Hu et al., CVPR 2018), both convolutions with bias. ``POOLED_GATE``: the forward is
    ``x * self.gate(adaptive_avg_pool2d(x, 1))``, so a conv-BN-activation chain can feed
    it (``fastcifar.nn.chain``).

    Args:
        channels: the gated channels.
        squeezed: the bottleneck's width.
    """

    POOLED_GATE = True

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C, 1, 1) gates in (0, 1) from the (N, C, 1, 1) pooled features.

        Args:
            pooled: (N, C, 1, 1).

        Returns:
            (N, C, 1, 1).
        """
        return self.expand(F.silu(self.reduce(pooled))).sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` times its gates.

        Args:
            x: (N, C, H, W).

        Returns:
            (N, C, H, W).
        """
        return x * self.gate(F.adaptive_avg_pool2d(x, 1))


class MBConv(nn.Module):
    """EfficientNet's block: [1x1 expand -> SiLU] -> KxK depthwise -> SiLU -> squeeze-
    excitation -> 1x1 project; the input added when stride and widths allow. ``CHAIN``:
    expand -> depthwise and depthwise -> squeeze-excitation are links; the project takes
    the gated tensor, which no prologue can compute (a per-image gate), so it is not.

    Args:
        cin: input channels.
        cout: output channels.
        k: the depthwise kernel's side.
        stride: its stride.
        expansion: the expanded width over ``cin`` (1: no expand convolution).
    """

    CHAIN = ("expand", "depthwise", "se", "project")

    def __init__(self, cin: int, cout: int, k: int, stride: int, expansion: int):
        super().__init__()
        mid = expansion * cin
        self.expand = conv_bn(cin, mid, act=nn.SiLU()) if expansion != 1 else None
        self.depthwise = conv_bn(mid, mid, k, stride, groups=mid, act=nn.SiLU())
        self.se = SqueezeExcitation(mid, int(cin * 0.25))
        self.project = conv_bn(mid, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block.

        Args:
            x: (N, CIN, H, W).

        Returns:
            (N, COUT, H / stride, W / stride).
        """
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.se(self.depthwise(out)))
        return out + x if self.residual else out


class EfficientNetB0(CifarNet):
    """EfficientNet-B0 for 32x32 inputs; see the module docstring. Grad-CAM: ``blocks``.

    Args:
        num_classes: the classifier's outputs.
        dropout: the dropout probability before the classifier.
    """

    # (expansion, output channels, blocks, kernel, first block's stride)
    STAGES = (
        (1, 16, 1, 3, 1),
        (6, 24, 2, 3, 2),
        (6, 40, 2, 5, 2),
        (6, 80, 3, 3, 2),
        (6, 112, 3, 5, 1),
        (6, 192, 4, 5, 2),
        (6, 320, 1, 3, 1),
    )

    def __init__(self, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        self.stem = conv_bn(3, 32, 3)
        blocks, cin = [], 32
        for expansion, cout, n, k, stride in self.STAGES:
            for i in range(n):
                blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expansion))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(320, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Logits (N, num_classes).
        """
        out = self.blocks(F.silu(self.stem(x)))
        return self.classifier(self.dropout(F.adaptive_avg_pool2d(out, 1).flatten(1)))
