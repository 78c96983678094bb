"""The small seed models, layer by layer as docs/SEEDS.md records them.

All take float input (N, 3, 32, 32) (NCHW or channels_last) and return
log-probabilities (N, 10) (``log_softmax``), matched to an NLL loss as the seeds
had. Convolutions are bias-free unless stated. "CRB" is Conv -> ReLU -> BatchNorm,
in that order (activation before the norm, as the EVA repositories do).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.models.base import CifarNet


def crb(cin: int, cout: int, k: int = 3, s: int = 1, p: int = 0, d: int = 1, g: int = 1):
    """Conv2d(bias=False) -> ReLU -> BatchNorm2d, the seeds' basic block.

    Args:
        cin: input channels.
        cout: output channels.
        k: kernel side.
        s: stride.
        p: padding, in pixels.
        d: dilation.
        g: groups.

    Returns:
        ``Sequential(Conv2d, ReLU, BatchNorm2d)``.
    """
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False),
        nn.ReLU(),
        nn.BatchNorm2d(cout),
    )


def conv(cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, d: int = 1, g: int = 1):
    """A bare bias-free Conv2d (pointwise and transition layers with no norm or activation).

    Args:
        cin: input channels.
        cout: output channels.
        k: kernel side.
        s: stride.
        p: padding, in pixels.
        d: dilation.
        g: groups.

    Returns:
        The ``nn.Conv2d``.
    """
    return nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False)


class _GapHead(nn.Module):
    """AvgPool(k) -> 1x1 conv to 10 -> flatten -> log_softmax."""

    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.gap = nn.AvgPool2d(pool)
        self.fc1 = conv(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc1(self.gap(x)).flatten(1), dim=-1)


class S7(CifarNet):
    """EVA6 S7 ``S7_CNNModel``: 99,744 parameters, receptive field 61 (seed README).

    Depthwise-separable blocks (3x3 grouped or depthwise conv, CRB, then a bare 1x1
    pointwise conv), two dilated (d=2) transition convs and a stride-2 one, GAP head.
    Layers 2/4/6/20/22 are grouped convs with groups=32 on 64 channels (2 input channels
    per group), layers 10/12/14/18 are true depthwise.
    """

    def __init__(self):
        super().__init__()
        self.convblock1A = crb(3, 64, p=1)
        self.depthwise1A, self.pointwise1A = crb(64, 64, p=1, g=32), conv(64, 64)
        self.depthwise1B, self.pointwise1B = crb(64, 64, p=1, g=32), conv(64, 64)
        self.depthwise1C, self.pointwise1C = crb(64, 64, p=1, g=32), conv(64, 32)
        self.pool1 = crb(32, 32, d=2)  # 32 -> 28
        self.convblock2A = crb(32, 32)  # 28 -> 26
        self.depthwise2A, self.pointwise2A = crb(32, 32, p=1, g=32), conv(32, 64)
        self.depthwise2B, self.pointwise2B = crb(64, 64, p=1, g=64), conv(64, 64)
        self.depthwise2C, self.pointwise2C = crb(64, 64, p=1, g=64), conv(64, 32)
        self.pool2 = crb(32, 32, d=2)  # 26 -> 22
        self.convblock3A = crb(32, 32)  # 22 -> 20
        self.depthwise3A, self.pointwise3A = crb(32, 32, p=1, g=32), conv(32, 64)
        self.depthwise3B, self.pointwise3B = crb(64, 64, p=1, g=32), conv(64, 64)
        self.depthwise3C, self.pointwise3C = crb(64, 64, p=1, g=32), conv(64, 32)
        self.pool3 = conv(32, 32, k=3, s=2, p=1)  # 20 -> 10, no norm or activation
        self.convblock4A = crb(32, 32)  # 10 -> 8
        self.convblock4B = crb(32, 16)  # 8 -> 6
        self.dilated5A = crb(16, 16, p=2, d=2)  # 6 -> 6
        self.head = _GapHead(16, 6)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Every block before the head.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            The features the head pools.
        """
        for name, layer in self.named_children():
            if name != "head":
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Log-probabilities (N, 10).
        """
        return self.head(self.features(x))


class S7Mixed(S7):
    """EVA6 S7 ``S7_CNNModel_mixed``: 99,200 parameters.

    S7 with an extra 3->32 stem conv, several pointwise convs dropped and a 32->16
    pointwise after convblock4A.
    """

    def __init__(self):
        nn.Module.__init__(self)
        self.convblock0A = crb(3, 32, p=1)
        self.convblock1A = crb(32, 64, p=1)
        self.depthwise1A = crb(64, 64, p=1, g=32)
        self.depthwise1B = crb(64, 64, p=1, g=32)
        self.depthwise1C, self.pointwise1C = crb(64, 64, p=1, g=32), conv(64, 32)
        self.pool1 = crb(32, 32, d=2)
        self.convblock2A = crb(32, 32)
        self.depthwise2A, self.pointwise2A = crb(32, 32, p=1, g=32), conv(32, 64)
        self.depthwise2B = crb(64, 64, p=1, g=64)
        self.depthwise2C, self.pointwise2C = crb(64, 64, p=1, g=64), conv(64, 32)
        self.pool2 = crb(32, 32, d=2)
        self.convblock3A = crb(32, 32)
        self.depthwise3A, self.pointwise3A = crb(32, 32, p=1, g=32), conv(32, 64)
        self.depthwise3B = crb(64, 64, p=1, g=32)
        self.depthwise3C, self.pointwise3C = crb(64, 64, p=1, g=32), conv(64, 32)
        self.pool3 = conv(32, 32, k=3, s=2, p=1)
        self.convblock4A, self.pointwise4A = crb(32, 32), conv(32, 16)
        self.convblock4B = crb(16, 16)
        self.dilated5A = crb(16, 16, p=2, d=2)
        self.head = _GapHead(16, 6)


class Ultimus(nn.Module):
    """One attention block of the EVA8 S9 model on a (N, 48, 1, 1) vector.

    Separate bias-free 1x1 projections K, Q, V (48 -> 8) and Out (8 -> 48);
    AM = softmax(Q K^T / sqrt(8)) over the last axis ((N, 8, 8)); Z = AM V; Out(Z).
    No residual and no norm, as in the seed.

    Args:
        dim: the vector's width.
        inner: the projections' width.
    """

    def __init__(self, dim: int = 48, inner: int = 8):
        super().__init__()
        self.k, self.q, self.v = conv(dim, inner), conv(dim, inner), conv(dim, inner)
        self.out = conv(inner, dim)
        self.scale = 1.0 / math.sqrt(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The attention block.

        Args:
            x: (N, dim) vectors.

        Returns:
            (N, dim).
        """
        k = self.k(x).flatten(2)  # (N, 8, 1)
        q = self.q(x).flatten(2)
        v = self.v(x).flatten(2)
        am = torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)  # (N, 8, 8)
        z = (am @ v).unsqueeze(-1)  # (N, 8, 1, 1)
        return self.out(z)


class AttentionNet(CifarNet):
    """EVA8 S9 ``basic_attn_model`` with four independent ULTIMUS blocks: 25,680 parameters.

    The seed repository called one shared block four times (20,304 real parameters); its
    README's 25,680 is torchsummary counting the shared weights again at every call. Four
    independent blocks with separate K/Q/V/Out projections reach 25,680 honestly
    (docs/SEEDS.md, section 2).
    """

    def __init__(self):
        super().__init__()
        self.convblock1 = crb(3, 16, p=1)
        self.convblock2 = crb(16, 32, p=1)
        self.convblock3 = crb(32, 48, p=1)
        self.gap = nn.AvgPool2d(32)
        self.ultimus = nn.Sequential(*(Ultimus() for _ in range(4)))
        self.fc1 = conv(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Log-probabilities (N, 10).
        """
        x = self.convblock3(self.convblock2(self.convblock1(x)))
        x = self.ultimus(self.gap(x))
        return F.log_softmax(self.fc1(x).flatten(1), dim=-1)


def _ds_block(cin: int, mid: int, cout: int, dropout: float | None) -> nn.Sequential:
    """Inverted bottleneck: 1x1 expand CRB -> 3x3 depthwise CRB -> 1x1 project CRB (-> Dropout)."""
    layers = [crb(cin, mid, k=1), crb(mid, mid, p=1, g=mid), crb(mid, cout, k=1)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> nn.Sequential:
    return nn.Sequential(conv(cin, cout, k=k, s=s, p=p, d=d), nn.BatchNorm2d(cout))


class C1C2C3C40(CifarNet):
    """ERA-V1 S9 ``CNNModel`` (C1C2C3C40): 178,178 parameters, receptive field 59 (seed README).

    Depthwise-separable inverted-bottleneck blocks with identity or 1x1-projection skips,
    stride-2 and dilated (d=2, p=0) transitions without activation, Dropout 0.1 after
    blocks 2, 4 and 7, GAP(4) then Linear(132, 10) with bias.

    Args:
        dropout: the dropout probability after blocks 2, 4 and 7.
    """

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.convblock1 = crb(3, 32, p=1)
        self.convblock2 = _ds_block(32, 160, 32, dropout)
        self.convblock3 = _conv_bn(32, 32, 3, s=2, p=1)  # 32 -> 16
        self.convblock4 = _ds_block(32, 160, 32, dropout)
        self.convblock6 = _conv_bn(32, 32, 3, s=2, p=1)  # 16 -> 8
        self.convblock7 = _ds_block(32, 160, 64, dropout)
        self.shortcut1 = _conv_bn(32, 64, 1)
        self.convblock8 = _conv_bn(64, 64, 3, d=2)  # 8 -> 4
        self.convblock9 = _ds_block(64, 320, 132, None)
        self.shortcut2 = _conv_bn(64, 132, 1)
        self.gap = nn.AvgPool2d(4)
        self.linear = nn.Linear(132, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network.

        Args:
            x: normalised images (N, 3, 32, 32).

        Returns:
            Log-probabilities (N, 10).
        """
        x1 = self.convblock1(x)
        x3 = self.convblock2(x1) + x1
        x4 = self.convblock3(x3)
        x6 = self.convblock4(x4) + x4
        x7 = self.convblock6(x6)
        x9 = self.convblock7(x7) + self.shortcut1(x7)
        x10 = self.convblock8(x9)
        x12 = self.convblock9(x10) + self.shortcut2(x10)
        return F.log_softmax(self.linear(self.gap(x12).flatten(1)), dim=1)
