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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fastcifar.data.loaders import EpochLoader, LoaderConfig


@dataclass(frozen=True)
class GpuAugmentation:
    """What the gpu loader does to a batch for one augmentation name, in this order: flip,
    translate, cutout, then brightness and contrast jitter.

    Attributes:
        flip: ``"random"`` (p = 0.5 per image and epoch), ``"alternating"`` (a random half
            in even epochs, the other half in odd ones: ``alternating_flip_mask``) or
            ``"none"``.
        translate: pixels of reflect padding before the random 32x32 crop (0: none).
        cutout: side of the square hole, in pixels (0: none).
        brightness: add U(-b, b) per image, in normalised units (0: none).
        contrast: then multiply by U(1 - c, 1 + c) per image (0: none).
    """

    flip: str = "random"
    translate: int = 0
    cutout: int = 0
    brightness: float = 0.0
    contrast: float = 0.0


#: augmentation name -> what the gpu backend does for it
GPU_AUGMENTATIONS: dict[str, GpuAugmentation] = {
    "flip_translate": GpuAugmentation(flip="random", translate=2),
    "alternating_flip_translate": GpuAugmentation(flip="alternating", translate=2),
    # the Hiverge cifar10-speedrun's jitter ranges
    "alternating_flip_translate_jitter": GpuAugmentation(
        flip="alternating", translate=2, brightness=0.1399, contrast=0.1308
    ),
    # the model zoo's fast recipes: flip and 4 pixels of translation, batched on the GPU
    # (reflect padding, where the reference's RandomCrop pads with black)
    "flip_translate4": GpuAugmentation(flip="random", translate=4),
    "none": GpuAugmentation(flip="none"),
}


def alternating_flip_mask(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images to flip in ``epoch``: the run's random half ``base`` (bool (N,)) in
    even epochs, its complement in odd ones.

    Args:
        base: bool (N,), the run's random half.
        epoch: the epoch, from 0.

    Returns:
        bool (N,).
    """
    return base ^ bool(epoch % 2)


# Each augmentation draws its random parameters for a whole global batch (``*_params``) and
# applies them to any part of it (``apply_*``): data-parallel ranks draw the same numbers
# and apply their own part, so N ranks see exactly the augmentation one process would.


def flip_params(n: int, device, gen: torch.Generator) -> torch.Tensor:
    """bool (n,): flip with probability 0.5.

    Args:
        n: images in the batch.
        device: where to draw.
        gen: the loader's generator on ``device``.

    Returns:
        bool (n,).
    """
    return torch.rand(n, device=device, generator=gen) < 0.5


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the images of (B, C, H, W) where ``mask`` (bool (B,)) is set.

    Args:
        x: images (B, C, H, W).
        mask: bool (B,).

    Returns:
        (B, C, H, W), ``x``'s dtype.
    """
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def translate_params(n: int, pad: int, device, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) int64 (n,): crop offsets in [0, 2 pad] of the padded image.

    Args:
        n: images in the batch.
        pad: reflect padding, in pixels.
        device: where to draw.
        gen: the loader's generator on ``device``.

    Returns:
        (dy, dx).
    """
    dy = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=gen)
    return dy, dx


def apply_translate(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor):
    """Reflect-pad (B, C, H, W) by ``pad`` and crop image i back at offset (dy[i], dx[i]).

    Args:
        x: images (B, C, H, W).
        pad: reflect padding, in pixels (0: ``x`` unchanged).
        dy: int64 (B,) row offsets in [0, 2 pad].
        dx: int64 (B,) column offsets in [0, 2 pad].

    Returns:
        (B, C, H, W), ``x``'s dtype.
    """
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows, cols]


def cutout_params(n: int, h: int, w: int, device, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """(cy, cx) int64 (n,): hole centres, uniform over the image.

    Args:
        n: images in the batch.
        h: image height, in pixels.
        w: image width, in pixels.
        device: where to draw.
        gen: the loader's generator on ``device``.

    Returns:
        (cy, cx).
    """
    cy = torch.randint(0, h, (n,), device=device, generator=gen)
    cx = torch.randint(0, w, (n,), device=device, generator=gen)
    return cy, cx


def apply_cutout(x, size: int, fill: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor):
    """One ``size`` x ``size`` hole per image centred at (cy, cx), clipped at the border,
    filled with ``fill`` (C,).

    Args:
        x: images (B, C, H, W).
        size: the hole's side, in pixels.
        fill: (C,) the fill value per channel (normalised units).
        cy: int64 (B,) centre rows.
        cx: int64 (B,) centre columns.

    Returns:
        (B, C, H, W), ``x``'s dtype.
    """
    _, _, h, w = x.shape
    cy, cx = cy.view(-1, 1, 1), cx.view(-1, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    half = size // 2
    hole = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return torch.where(hole.unsqueeze(1), fill.view(1, -1, 1, 1).to(x.dtype), x)


def jitter_params(n: int, brightness: float, contrast: float, device, gen):
    """(shift, scale) float (n, 1, 1, 1): U(-brightness, brightness), U(1 - c, 1 + c).

    Args:
        n: images in the batch.
        brightness: the shift's half-range, normalised units.
        contrast: the scale's half-range around 1.
        device: where to draw.
        gen: the loader's generator on ``device``.

    Returns:
        (shift, scale).
    """
    shift = (torch.rand(n, 1, 1, 1, device=device, generator=gen) * 2 - 1) * brightness
    scale = (torch.rand(n, 1, 1, 1, device=device, generator=gen) * 2 - 1) * contrast + 1
    return shift, scale


class GpuLoader(EpochLoader):
    """Device-resident CIFAR-10 with batched augmentation; see the module docstring.

    Args:
        images: uint8 (N, 32, 32, 3).
        labels: int64 (N,).
        config: ``LoaderConfig``; its ``augmentation`` is a name in ``GPU_AUGMENTATIONS``
            (``workers`` is unused: every step is a few batched tensor operations).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: LoaderConfig):
        super().__init__(config)
        self.aug = GPU_AUGMENTATIONS[config.augmentation]
        # (N, 3, 32, 32) uint8 on the device: 150 MiB for the training set
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.images = self.images.permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        stat = {"dtype": torch.float32, "device": self.device}
        self.mean = torch.tensor(config.mean, **stat).view(1, 3, 1, 1)
        self.std = torch.tensor(config.std, **stat).view(1, 3, 1, 1)
        self.dataset = self.images  # len(loader.dataset) is the number of images
        self._built: dict[int, list] = {}  # epoch -> its prebuilt batches (``prebuild``)

    def base_flips(self) -> torch.Tensor:
        """The alternating flip's random half (bool (N,), per image index), drawn from the
        seed alone, so it is the same in every epoch and after a resume.

        Returns:
            bool (N,).
        """
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 7_919 + 17)
        return torch.rand(len(self.images), device=self.device, generator=gen) < 0.5

    def prebuild(self, epochs: range) -> None:
        """Build the augmented, shuffled batches of ``epochs`` now (the 2026 record builds
        every epoch's before its timed loop); iterating one of those epochs then yields
        them (the same batches as building them in the loop) and frees them. Memory: the
        epochs' images in ``dtype`` on the device (9 epochs of CIFAR-10 in bfloat16:
        2.8 GB).

        Args:
            epochs: the epochs to build, e.g. ``range(0, 9)``.
        """
        for epoch in epochs:
            self.set_epoch(epoch)
            self._built[epoch] = list(self._augmented())
        self.set_epoch(epochs.start if len(epochs) else self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        built = self._built.pop(self.epoch, None)
        return iter(built) if built is not None else self._augmented()

    def _augmented(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.epoch_seed(29))
        n = len(self.images)
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=gen)
        else:
            order = torch.arange(n, device=self.device)
        fill = torch.zeros(3, device=self.device)  # the mean colour, once normalised
        aug, dev = self.aug, self.device
        base = self.base_flips() if aug.flip == "alternating" else None
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for g, part in self.global_batches(order):
            # parameters for the global batch, in a fixed order; this rank applies its part
            n = len(g)
            flips = None
            if base is not None:
                flips = alternating_flip_mask(base[g], self.epoch)
            elif aug.flip == "random":
                flips = flip_params(n, dev, gen)
            shifts = translate_params(n, aug.translate, dev, gen) if aug.translate else None
            holes = cutout_params(n, *self.images.shape[-2:], dev, gen) if aug.cutout else None
            jitter = None
            if aug.brightness or aug.contrast:
                jitter = jitter_params(n, aug.brightness, aug.contrast, dev, gen)
            idx = g[part]
            x = (self.images[idx].float() / 255.0 - self.mean) / self.std
            if flips is not None:
                x = flip_where(x, flips[part])
            if shifts is not None:
                x = apply_translate(x, aug.translate, shifts[0][part], shifts[1][part])
            if holes is not None:
                x = apply_cutout(x, aug.cutout, fill, holes[0][part], holes[1][part])
            if jitter is not None:
                x = (x + jitter[0][part]) * jitter[1][part]
            yield x.to(self.dtype).contiguous(memory_format=fmt), self.labels[idx]
