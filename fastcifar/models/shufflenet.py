"""``ShuffleNetV2`` (Ma et al., ECCV 2018) at width 1x, as kuangliu/pytorch-cifar (commit
49b7aa9) lays it out for CIFAR-10: a 3x3 stem to 24 channels (no max-pool), three stages
(116, 232 and 464 channels) each of one downsampling block and 3, 7 and 3 basic blocks,
a 1x1 head to 1024 channels and 4x4 average pooling. 1,263,854 parameters, the
reference's.

Input float (N, 3, 32, 32), NCHW or channels_last; output raw logits (N, 10). Every
depthwise convolution is 3x3 (stride 1 or 2) followed by BatchNorm and no activation;
every block ends in a channel shuffle of two groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.models.base import CifarNet
from fastcifar.models.mobile import conv_bn

__all__ = ["ShuffleNetV2"]


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """(N, g * c, H, W) -> channels interleaved: channel i * g + j of the output is channel
    j * c + i of the input.

    Args:
        x: (N, g * c, H, W).
        groups: g.

    Returns:
        (N, g * c, H, W), ``x``'s dtype.
    """
    n, channels, h, w = x.shape
    return x.view(n, groups, channels // groups, h, w).transpose(1, 2).reshape(n, channels, h, w)


def _branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    """1x1 -> BN -> ReLU -> 3x3 depthwise (``stride``) -> BN -> 1x1 -> BN -> ReLU."""
    return nn.Sequential(
        conv_bn(cin, cout),
        nn.ReLU(),
        conv_bn(cout, cout, 3, stride, cout),
        conv_bn(cout, cout),
        nn.ReLU(),
    )


class BasicUnit(nn.Module):
    """Half the channels pass; the other half go through ``_branch``; concatenated and
    shuffled.

    Args:
        channels: input and output channels (even).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.branch = _branch(channels // 2, channels // 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unit.

        Args:
            x: (N, C, H, W).

        Returns:
            (N, C, H, W).
        """
        passed, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([passed, self.branch(transformed)], 1))


class DownUnit(nn.Module):
    """Both branches see the whole input at stride 2: a 3x3 depthwise -> BN -> 1x1 -> BN
    -> ReLU, and ``_branch``; concatenated and shuffled.

    Args:
        cin: input channels.
        cout: output channels (even).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, cin), conv_bn(cin, half), nn.ReLU())
        self.right = _branch(cin, half, 2)  # its first 1x1 takes all of cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unit.

        Args:
            x: (N, CIN, H, W).

        Returns:
            (N, COUT, H / 2, W / 2).
        """
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(CifarNet):
    """ShuffleNetV2 1x for 32x32 inputs; see the module docstring. Grad-CAM: ``head``.

    Args:
        widths: output channels of the three stages.
        blocks: ``BasicUnit``s per stage, after its ``DownUnit``.
        head: the last 1x1 convolution's width.
        num_classes: the classifier's outputs.
    """

    def __init__(
        self, widths=(116, 232, 464), blocks=(3, 7, 3), head: int = 1024, num_classes: int = 10
    ):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3), nn.ReLU())
        cin, stages = 24, []
        for width, n in zip(widths, blocks, strict=True):
            stages.append(
                nn.Sequential(DownUnit(cin, width), *[BasicUnit(width) for _ in range(n)])
            )
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.head = nn.Sequential(conv_bn(cin, head), nn.ReLU())
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Logits (N, num_classes).
        """
        out = self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.classifier(F.avg_pool2d(out, 4).flatten(1))
