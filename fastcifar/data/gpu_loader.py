"""The ``gpu`` loader backend: the whole training set resident on the device as uint8,
augmented with batched tensor operations (after cifar10-airbench's approach).

Supported augmentations (``GPU_AUGMENTATIONS``): horizontal flip, random or alternating
(below), random translation by reflect-padding and random cropping back to 32x32, cutout
(one square hole of the data set's mean colour, centre uniform over the image, clipped at
the border), and brightness/contrast jitter on the normalised image.

Alternating flip (cifar10-airbench, "airbench94"): a random half of the images is chosen
once per run (from the seed alone); in even epochs exactly those images are flipped, in
odd epochs exactly the others, so every image is seen both ways every two epochs.

Everything runs on the training device in the loader's own generator, so a
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
    flip: str = "random"  # random (p = 0.5 per image and epoch) | alternating | none
    translate: int = 0  # pixels of reflect padding before the random 32x32 crop
    cutout: int = 0  # side of the square hole (0: none)
    brightness: float = 0.0  # add U(-b, b) per image (normalised units)
    contrast: float = 0.0  # then multiply by U(1 - c, 1 + c) per image


#: augmentation name -> what the gpu backend does for it
GPU_AUGMENTATIONS: dict[str, GpuAugmentation] = {
    "flip_translate": GpuAugmentation(flip="random", translate=2),
    "alternating_flip_translate": GpuAugmentation(flip="alternating", translate=2),
    # the Hiverge cifar10-speedrun's jitter ranges
    "alternating_flip_translate_jitter": GpuAugmentation(
        flip="alternating", translate=2, brightness=0.1399, contrast=0.1308
    ),
    "none": GpuAugmentation(flip="none"),
}


def alternating_flip_mask(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images to flip in ``epoch``: the run's random half ``base`` (bool (N,)) in
    even epochs, its complement in odd ones."""
    return base ^ bool(epoch % 2)


def batch_jitter(x: torch.Tensor, brightness: float, contrast: float, gen) -> torch.Tensor:
    """``(x + U(-brightness, brightness)) * U(1 - contrast, 1 + contrast)``, one draw per
    image of (B, C, H, W) (the Hiverge cifar10-speedrun's colour jitter)."""
    b = x.shape[0]
    shift = (torch.rand(b, 1, 1, 1, device=x.device, generator=gen) * 2 - 1) * brightness
    scale = (torch.rand(b, 1, 1, 1, device=x.device, generator=gen) * 2 - 1) * contrast + 1
    return (x + shift) * scale


def batch_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability 0.5."""
    mask = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return flip_where(x, mask)


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the images of (B, C, H, W) where ``mask`` (bool (B,)) is set."""
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

    def base_flips(self) -> torch.Tensor:
        """The alternating flip's random half (bool (N,), per image index), drawn from the
        seed alone, so it is the same in every epoch and after a resume."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 7_919 + 17)
        return torch.rand(len(self.images), device=self.device, generator=gen) < 0.5

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.epoch_seed(29))
        n = len(self.images)
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=gen)
        else:
            order = torch.arange(n, device=self.device)
        fill = torch.zeros(3, device=self.device)  # the mean colour, once normalised
        flips = None
        if self.aug.flip == "alternating":
            flips = alternating_flip_mask(self.base_flips(), self.epoch)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = (self.images[idx].float() / 255.0 - self.mean) / self.std
            if flips is not None:
                x = flip_where(x, flips[idx])
            elif self.aug.flip == "random":
                x = batch_flip(x, gen)
            x = batch_translate(x, self.aug.translate, gen)
            if self.aug.cutout:
                x = batch_cutout(x, self.aug.cutout, fill, gen)
            if self.aug.brightness or self.aug.contrast:
                x = batch_jitter(x, self.aug.brightness, self.aug.contrast, gen)
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            yield x.to(self.dtype).contiguous(memory_format=fmt), self.labels[idx]
