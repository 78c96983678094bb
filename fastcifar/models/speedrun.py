"""``speedrun94``: a small residual-free network in the style of the public CIFAR-10 speed
records (Keller Jordan's cifar10-airbench, after David Page's and tysam-code's work).

Layout, input float (N, 3, 32, 32), output logits (N, 10)::

    whiten   2x2 conv 3 -> 24, no padding, frozen: patch-whitening weights computed from
             the training images (eigenvectors of the 2x2x3 patch covariance, scaled by
             1 / sqrt(eigenvalue + eps), with their negatives), then GELU      32 -> 31
    block 1  conv3x3 24 -> 64, maxpool 2, BN, GELU, conv3x3 64 -> 64, BN, GELU   -> 15
    block 2  conv3x3 64 -> 256, maxpool 2, BN, GELU, conv3x3, BN, GELU           -> 7
    block 3  conv3x3 256 -> 256, maxpool 2, BN, GELU, conv3x3, BN, GELU          -> 3
    head     maxpool 3, flatten, Linear(256, 10, no bias), logits x 1/9

Call ``init_whitening(train_images)`` once before training (the trainer does it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(cout, momentum=0.4),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout, momentum=0.4),
        nn.GELU(),
    )


class SpeedrunNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), whiten_width: int = 24):
        super().__init__()
        self.whiten = nn.Conv2d(3, whiten_width, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.whiten.bias.requires_grad_(False)
        self.act = nn.GELU()
        self.block1 = _block(whiten_width, widths[0])
        self.block2 = _block(widths[0], widths[1])
        self.block3 = _block(widths[1], widths[2])
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths[2], 10, bias=False)
        self.scale = 1 / 9

    @torch.no_grad()
    def init_whitening(self, images: np.ndarray, mean, std, eps: float = 5e-4) -> None:
        """Set the frozen 2x2 whitening filters from uint8 training images (N, 32, 32, 3)
        normalised with ``mean``/``std`` (the loader's normalisation)."""
        device = self.whiten.weight.device
        x = torch.from_numpy(np.ascontiguousarray(images[:5000])).permute(0, 3, 1, 2).float()
        x = (x / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, 3, 31, 31, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        cov = torch.cov(patches.T)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        filters = (eigvecs.T / torch.sqrt(eigvals + eps)[:, None]).view(12, 3, 2, 2)
        half = self.whiten.out_channels // 2
        weight = torch.cat([filters[-half:], -filters[-half:]]).float()
        self.whiten.weight.copy_(weight.to(device))
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.head(self.pool(x).flatten(1)) * self.scale
