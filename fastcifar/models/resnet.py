"""CIFAR ResNet18 (BasicBlock, [2, 2, 2, 2]) as the seeds built it.

Input float (N, 3, 32, 32), NCHW or channels_last; output raw logits (N, 10) for
CrossEntropyLoss (no softmax). Convolutions are bias-free; the head is
Linear(512, 10) with bias. 11,173,962 parameters either way.

* ``resnet18``: BatchNorm, stage strides 1-2-2-2, avg_pool2d(4) (ERA-V1 S11,
  docs/SEEDS.md section 4).
* ``resnet18_ln``: GroupNorm(1, C) in every norm position ("LayerNorm" in the seed), stage
  strides 1-1-2-2, avg_pool2d(8) (EVA6 S8, docs/SEEDS.md section 5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.models.base import CifarNet

Norm = Callable[[int], nn.Module]


def batch_norm(c: int) -> nn.Module:
    """BatchNorm2d(C), the default ``Norm`` of ``ResNet18``.

    Args:
        c: channels.

    Returns:
        The module.
    """
    return nn.BatchNorm2d(c)


def layer_norm(c: int) -> nn.Module:
    """GroupNorm(1, C): per-sample normalisation over (C, H, W) with a per-channel affine.

    Args:
        c: channels.

    Returns:
        The module.
    """
    return nn.GroupNorm(1, c)


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, then ReLU.

    Args:
        cin: input channels.
        cout: output channels.
        stride: the first convolution's stride (the shortcut a 1x1 projection when it or the
            width changes).
        norm: channels -> normalisation module.
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: Norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block.

        Args:
            x: (N, CIN, H, W).

        Returns:
            (N, COUT, H / stride, W / stride).
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(CifarNet):
    """kuangliu-style CIFAR ResNet18; ``strides`` are the four stages' first-block strides.

    Args:
        norm: channels -> normalisation module (``batch_norm`` or ``layer_norm``).
        strides: the four stages' first-block strides.
        pool: the final average pool's side, in pixels.
    """

    def __init__(
        self,
        norm: Norm = batch_norm,
        strides: tuple[int, int, int, int] = (1, 2, 2, 2),
        pool: int = 4,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm(64)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, (w, s) in enumerate(zip(widths, strides, strict=True), start=1):
            setattr(
                self,
                f"layer{i}",
                nn.Sequential(BasicBlock(cin, w, s, norm), BasicBlock(w, w, 1, norm)),
            )
            cin = w
        self.pool = pool
        self.linear = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Logits (N, 10).
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, self.pool).flatten(1)
        return self.linear(out)
