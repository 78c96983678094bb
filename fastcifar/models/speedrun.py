"""``speedrun94``: the network of the CIFAR-10 speed record cifar10-airbench
``airbench94_muon.py`` (Keller Jordan, after David Page's and tysam-code's work), written
here from its published description.

Layout, input float (N, 3, 32, 32), output logits (N, 10)::

    whiten   2x2 conv 3 -> 24, no padding; weights frozen: the eigenvectors of the
             uncentred 2x2x3 patch second-moment matrix X^T X / n, scaled by
             1 / sqrt(eigenvalue + 5e-4), and their negatives; bias trainable (the
             recipe trains it for its first epochs only), starting at PyTorch's
             default convolution bias (uniform in +-1/sqrt(12)); then GELU   32 -> 31
    block 1  conv3x3 24 -> 64, maxpool 2, BN, act, conv3x3 64 -> 64, BN, act    -> 15
    block 2  conv3x3 64 -> 256, maxpool 2, BN, act, conv3x3, BN, act            -> 7
    block 3  conv3x3 256 -> 256, maxpool 2, BN, act, conv3x3, BN, act           -> 3
    head     maxpool 3, flatten, Linear(256, 10, no bias), logits / 256

Initialisation: each 3x3 convolution's first C_in filters are the identity (dirac), the
rest PyTorch's default; the head's weights are rescaled to standard deviation 1.
BatchNorm: weights frozen at 1, eps 1e-12, running-statistics momentum 0.4 (PyTorch's
convention: the new batch's share), computed in float32 under autocast. ``act`` is GELU
(``speedrun94``) or SiLU with BatchNorm momentum 0.4434 (``speedrun94_silu``, the Hiverge
cifar10-speedrun's variant); ``speedrun94_progressive`` is that network with a global max
pool as its head's pool (fulcrumresearch/cifar-10-speedrun's record, 2026), so that 24 px
and 28 px inputs work.

The engine calls ``init_from_data`` (the whitening filters from a seeded sample of the
training images) inside the timed span, as the record, and ``set_whiten_bias_trainable``
each step (the ``CifarNet`` hooks).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastcifar.models.base import CifarNet


def whitening_indices(num_images: int, n: int, seed: int) -> torch.Tensor:
    """Which ``n`` of ``num_images`` training images the whitening is computed from: a
    sample drawn with ``seed`` (int64 (min(n, num_images),), on the CPU). The record takes
    the first 5,000 of the official training set, whose order mixes the classes; sources
    stored class by class (image trees, the JPEG copy) would whiten from one class.

    Args:
        num_images: training images.
        n: images to take.
        seed: the draw's seed.

    Returns:
        The indices.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_images, generator=gen)[:n]


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose weight stays 1 (not trained); the bias trains.

    Args:
        channels: channels.
        momentum: running statistics' update weight (PyTorch's convention: the new batch's
            share).
        eps: added to the variance.
    """

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 convolution, padding 1, no bias; the first C_in filters start as the identity.

    Args:
        cin: input channels.
        cout: output channels.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        """PyTorch's initialisation, then the first ``min(C_in, C_out)`` filters set to the identity
        (``nn.init.dirac_``).

        """
        super().reset_parameters()
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(self.in_channels, self.out_channels)])


def _block(cin: int, cout: int, act: type[nn.Module], bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        DiracConv(cin, cout),
        nn.MaxPool2d(2),
        FrozenScaleBatchNorm(cout, momentum=bn_momentum),
        act(),
        DiracConv(cout, cout),
        FrozenScaleBatchNorm(cout, momentum=bn_momentum),
        act(),
    )


class GlobalMaxPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1): each channel's maximum over the whole map, any size.
    ``amax`` (not ``AdaptiveMaxPool2d``): the 2026 record found inductor lowers it to one
    fused reduction whose backward avoids the adaptive pool's atomic gradient kernel.
    ``GLOBAL_MAX``: what ``fastcifar.nn.pool_chain`` reads to take the last block's
    BatchNorm and activation through its prologue."""

    GLOBAL_MAX = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial maximum per channel.

        Args:
            x: (N, C, H, W).

        Returns:
            (N, C, 1, 1).
        """
        return x.amax(dim=(2, 3), keepdim=True)


class SpeedrunNet(CifarNet):
    """The record's network; see the module docstring.

    ``CHAIN``: the blocks and the head's pool in the order ``forward`` calls them, each
    taking the previous one's output alone (``fastcifar.nn.pool_chain`` links them).

    Args:
        widths: channels of the three blocks.
        whiten_width: channels of the whitening layer (twice the 12 patch dimensions).
        act: the blocks' activation (GELU in the record, SiLU in the Hiverge variant).
        bn_momentum: BatchNorm running-statistics momentum (PyTorch convention).
        global_max_pool: the head pools the whole last map (``GlobalMaxPool``) instead of
            ``MaxPool2d(3)``: the same on the 3x3 map of a 32 px input, and defined on
            the 2x2 map of a 24 px one (the 2026 record's progressive resolution).
    """

    CHAIN = ("block1", "block2", "block3", "pool")

    def __init__(
        self,
        widths: tuple[int, int, int] = (64, 256, 256),
        whiten_width: int = 24,
        act: type[nn.Module] = nn.GELU,
        bn_momentum: float = 0.4,
        global_max_pool: bool = False,
    ):
        super().__init__()
        # the bias keeps PyTorch's default initialisation, uniform in +-1/sqrt(fan_in) =
        # +-1/sqrt(12), drawn from the seeded generator, as the record's layer starts
        self.whiten = nn.Conv2d(3, whiten_width, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        self.block1 = _block(whiten_width, widths[0], act, bn_momentum)
        self.block2 = _block(widths[0], widths[1], act, bn_momentum)
        self.block3 = _block(widths[1], widths[2], act, bn_momentum)
        self.pool = GlobalMaxPool() if global_max_pool else nn.MaxPool2d(3)
        self.head = nn.Linear(widths[2], 10, bias=False)
        with torch.no_grad():
            self.head.weight.div_(self.head.weight.std())
        self.scale = 1.0 / widths[2]

    def init_from_data(self, images, n: int, seed: int, mean, std) -> bool:
        """The whitening filters (``init_whitening``) from a seeded sample of ``n`` of the
        training ``images`` (``whitening_indices``): uint8 (N, 32, 32, 3) in host memory,
        or uint8 (N, 3, 32, 32) on the device (a loader's resident copy, sampled there).
        Returns True.

        Args:
            images: the training images.
            n: images to sample.
            seed: the sample's seed.
            mean: per-channel mean, [0, 1] units.
            std: per-channel standard deviation, [0, 1] units.

        Returns:
            True.
        """
        idx = whitening_indices(len(images), n, seed)
        if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3:
            sample = images[idx.to(images.device)].permute(0, 2, 3, 1)
        else:
            sample = images[idx.numpy()]
        self.init_whitening(sample, mean, std)
        return True

    def set_whiten_bias_trainable(self, trains: bool) -> None:
        """The bias trains for the recipe's first ``whiten_bias_epochs``, then is frozen
        (no gradient at all, as the record detaches it).

        Args:
            trains: True to train the bias, False to freeze it.
        """
        if self.whiten.bias.requires_grad != trains:
            self.whiten.bias.requires_grad_(trains)

    @torch.no_grad()
    def init_whitening(self, images, mean, std, eps: float = 5e-4) -> None:
        """Set the frozen 2x2 whitening filters from training images.

        Args:
            images: uint8 (N, 32, 32, 3), NumPy or a tensor on any device (all are used:
                pass ``whiten_images`` of the training set, ``whitening_indices``).
            mean, std: per-channel statistics in [0, 1] units (the loader's normalisation).
            eps: added to each eigenvalue before the inverse square root (the record's).
        """
        device = self.whiten.weight.device
        x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
        x = x.to(device).permute(0, 3, 1, 2).float() / 255
        m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=device).view(1, 3, 1, 1)
        x = (x - m) / s
        k = self.whiten.kernel_size[0]
        patches = x.unfold(2, k, 1).unfold(3, k, 1)  # (N, 3, 31, 31, k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        moment = patches.T @ patches / len(patches)  # uncentred, as the record
        eigvals, eigvecs = torch.linalg.eigh(moment)
        filters = (eigvecs.T / torch.sqrt(eigvals + eps)[:, None]).view(-1, 3, k, k)
        half = self.whiten.out_channels // 2
        weight = torch.cat([filters[-half:], -filters[-half:]])
        self.whiten.weight.copy_(weight.to(self.whiten.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network: whitening, the blocks, the global pool and the scaled linear head.

        Args:
            x: normalised images (N, 3, H, W), H = W = 32 or a progressive resolution.

        Returns:
            Logits (N, 10).
        """
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.head(self.pool(x).flatten(1)) * self.scale
