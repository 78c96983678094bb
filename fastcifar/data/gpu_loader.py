"""The ``gpu`` loader backend: the whole training set resident on the device as uint8,
augmented with batched tensor operations (after cifar10-airbench's approach).

Supported augmentations (``GPU_AUGMENTATIONS``): random horizontal flip, random
translation by reflect-padding and random cropping back to 32x32, and cutout (one square
hole of the data set's mean colour, centre uniform over the image, clipped at the
border). Everything runs on the training device in the loader's own generator, so a
seed reproduces the same batches; every epoch reshuffles.

Yields ``(images, labels)``: images (N, 3, 32, 32) normalised, in ``dtype`` (the AMP
dtype; default float32), channels_last when asked, and int64 labels, on the device (the
loader contract of docs/DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fastcifar.data.loaders import EpochLoader


@dataclass(frozen=True)
class GpuAugmentation:
    flip: bool = True  # horizontal flip with probability 0.5
    translate: int = 0  # pixels of reflect padding before the random 32x32 crop
    cutout: int = 0  # side of the square hole (0: none)


#: augmentation name -> what the gpu backend does for it
GPU_AUGMENTATIONS: dict[str, GpuAugmentation] = {
    "flip_translate": GpuAugmentation(flip=True, translate=2),
    "none": GpuAugmentation(flip=False),
}


def batch_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability 0.5."""
    mask = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) by ``pad`` and crop each image back at a random offset in
    [0, 2 pad] on both axes (independently per image)."""
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows, cols]


def batch_cutout(x: torch.Tensor, size: int, fill: torch.Tensor, gen) -> torch.Tensor:
    """One ``size`` x ``size`` hole per image, centre uniform over the image, clipped at the
    border, filled with ``fill`` (C,)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), device=x.device, generator=gen)
    cx = torch.randint(0, w, (b, 1, 1), device=x.device, generator=gen)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    half = size // 2
    hole = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return torch.where(hole.unsqueeze(1), fill.view(1, -1, 1, 1).to(x.dtype), x)


class GpuLoader(EpochLoader):
    """Device-resident CIFAR-10 with batched augmentation; see the module docstring.

    Args:
        images: uint8 (N, 32, 32, 3). labels: int64 (N,).
        augmentation: a name in ``GPU_AUGMENTATIONS``.
        mean, std: per-channel statistics in [0, 1] units, for normalisation.
        batch_size, device, shuffle, drop_last, channels_last, seed: as the other loaders.
        dtype: the images' dtype on delivery (the AMP dtype; default float32).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        augmentation: str,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        device: torch.device,
        shuffle: bool = True,
        drop_last: bool = False,
        channels_last: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.aug = GPU_AUGMENTATIONS[augmentation]
        # (N, 3, 32, 32) uint8 on the device: 150 MiB for the training set
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.images = self.images.permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.seed = seed
        self.epoch = 0
        self.dataset = self.images  # len(loader.dataset) is the number of images

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.epoch_seed(29))
        n = len(self.images)
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=gen)
        else:
            order = torch.arange(n, device=self.device)
        fill = torch.zeros(3, device=self.device)  # the mean colour, once normalised
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = (self.images[idx].float() / 255.0 - self.mean) / self.std
            if self.aug.flip:
                x = batch_flip(x, gen)
            x = batch_translate(x, self.aug.translate, gen)
            if self.aug.cutout:
                x = batch_cutout(x, self.aug.cutout, fill, gen)
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            yield x.to(self.dtype).contiguous(memory_format=fmt), self.labels[idx]
