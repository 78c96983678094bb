"""The grouped-bottleneck networks of the model zoo, as kuangliu/pytorch-cifar (commit
49b7aa9) lays them out for CIFAR-10: ``ResNeXt29`` (32x4d) and ``RegNetX`` (200MF).

Input float (N, 3, 32, 32), NCHW or channels_last; output raw logits (N, 10). Both are
made of one block: 1x1 -> BatchNorm -> ReLU -> grouped 3x3 (stride 1 or 2) -> BatchNorm
-> ReLU -> 1x1 -> BatchNorm, plus the input (through a strided 1x1 + BatchNorm where
the shape changes), then ReLU; every convolution bias-free. Their grouped 3x3
convolutions, 4 to 16 channels a group, are what ``fastcifar.kernels`` is for.

* ``ResNeXt29`` 32x4d (Xie et al., CVPR 2017): a 1x1 stem to 64 channels, three stages
  of three blocks (strides 1, 2, 2), 32 groups whose width doubles each stage (4, 8, 16
  channels), each block's output twice its group width, 8x8 average pooling.
  4,774,218 parameters, the reference's.
* ``RegNetX`` 200MF (Radosavovic et al., CVPR 2020): a 3x3 stem to 64 channels, four
  stages of 1, 1, 4 and 7 blocks (strides 1, 1, 2, 2) of widths 24, 56, 152 and 368,
  groups of 8 channels, bottleneck ratio 1, global average pooling. 2,321,946 parameters,
  the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.models.base import CifarNet
from fastcifar.models.mobile import conv_bn

__all__ = ["RegNetX", "ResNeXt29"]


class GroupedBottleneck(nn.Module):
    """1x1 (cin -> mid) -> grouped 3x3 (``groups``, ``stride``) -> 1x1 (mid -> cout), with
    BatchNorm after each and ReLU after the first two; the shortcut added, then ReLU.
    ``CHAIN``: the children the forward calls one on the other's output alone
    (``fastcifar.nn.chain`` fuses grouped -> BatchNorm -> ReLU into restore's prologue).

    Args:
        cin: input channels.
        mid: the grouped convolution's width.
        cout: output channels.
        groups: the grouped convolution's groups.
        stride: its stride.
    """

    CHAIN = ("reduce", "grouped", "restore")

    def __init__(self, cin: int, mid: int, cout: int, groups: int, stride: int):
        super().__init__()
        self.reduce = conv_bn(cin, mid, act=nn.ReLU())
        self.grouped = conv_bn(mid, mid, 3, stride, groups=groups, act=nn.ReLU())
        self.restore = conv_bn(mid, cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block.

        Args:
            x: (N, CIN, H, W).

        Returns:
            (N, COUT, H / stride, W / stride).
        """
        out = self.grouped(self.reduce(x))
        return F.relu(self.restore(out) + self.shortcut(x))


def _stage(blocks: list[GroupedBottleneck]) -> nn.Sequential:
    return nn.Sequential(*blocks)


class ResNeXt29(CifarNet):
    """ResNeXt-29 (``cardinality`` x ``width`` d); see the module docstring. Grad-CAM:
    ``layer3``.

    Args:
        cardinality: groups of the grouped convolutions.
        width: channels a group in the first stage.
        num_classes: the classifier's outputs.
    """

    def __init__(self, cardinality: int = 32, width: int = 4, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 1), nn.ReLU())
        cin, stages = 64, []
        for stride in (1, 2, 2):
            mid = cardinality * width
            blocks = []
            for i in range(3):
                blocks.append(
                    GroupedBottleneck(cin, mid, 2 * mid, cardinality, stride if i == 0 else 1)
                )
                cin = 2 * mid
            stages.append(_stage(blocks))
            width *= 2
        self.layer1, self.layer2, self.layer3 = stages
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Logits (N, num_classes).
        """
        out = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.classifier(F.avg_pool2d(out, 8).flatten(1))


class RegNetX(CifarNet):
    """RegNetX of the given stage ``depths``, ``widths`` and ``strides`` with groups of
    ``group_width`` channels (defaults: 200MF); see the module docstring. Grad-CAM:
    ``layer4``.

    Args:
        depths: blocks per stage.
        widths: channels per stage.
        strides: each stage's first-block stride.
        group_width: channels a group.
        num_classes: the classifier's outputs.
    """

    def __init__(
        self,
        depths=(1, 1, 4, 7),
        widths=(24, 56, 152, 368),
        strides=(1, 1, 2, 2),
        group_width: int = 8,
        num_classes: int = 10,
    ):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 3), nn.ReLU())
        cin, stages = 64, []
        for depth, width, stride in zip(depths, widths, strides, strict=True):
            blocks = []
            for i in range(depth):
                blocks.append(
                    GroupedBottleneck(
                        cin, width, width, width // group_width, stride if i == 0 else 1
                    )
                )
                cin = width
            stages.append(_stage(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Logits (N, num_classes).
        """
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))
