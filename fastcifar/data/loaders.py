"""Loader backends. Every loader follows one contract (docs/DESIGN.md):

iterating yields ``(images, labels)`` on the training device, images float32
(N, 3, 32, 32), normalised, in channels_last memory format when asked; labels
int64 (N,). ``len(loader)`` is the number of batches per epoch.

``AlbumentationsLoader`` is the CPU fallback: each recipe's albumentations
pipeline runs in torch DataLoader worker processes. ``EvalLoader`` serves the
test set (normalise only), batched straight from a uint8 tensor.

Reproducibility: ``set_epoch(e)`` makes epoch ``e``'s order and augmentations a
function of (seed, e) alone, so a resumed run sees the same batches as an
uninterrupted one (for the same number of workers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

_MASK = 2**32 - 1


class AugmentedDataset(Dataset):
    """uint8 HWC images plus labels, passed through an albumentations ``Compose``.

    ``__getitem__`` returns (float32 CHW tensor, int label).

    Args:
        images: uint8 (N, 32, 32, 3), HWC, RGB.
        labels: integer (N,), class indices 0..9.
        transform: an albumentations ``Compose`` ending in ``ToTensorV2`` (its
            ``set_random_seed`` reseeds it each epoch).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(image=self.images[i])["image"], int(self.labels[i])

    def reseed(self, seed: int) -> None:
        """Seed the albumentations pipeline (``set_random_seed``) for a new epoch.

        Args:
            seed: the epoch's seed.
        """
        self.transform.set_random_seed(seed & _MASK)


@dataclass(frozen=True)
class LoaderConfig:
    """How a training loader delivers its batches: the one argument, besides the images and
    labels, that every ``EpochLoader`` takes (``fastcifar.data.factory`` fills it from the
    recipe and the run options).

    Attributes:
        augmentation: a recipe's augmentation name (``fastcifar.data.augment``,
            ``gpu_loader.GPU_AUGMENTATIONS``, ``dali_loader.DALI_AUGMENTATIONS``).
        mean, std: per-channel statistics in [0, 1] units: images are delivered as
            ``(x / 255 - mean) / std``.
        batch_size: images per step on this rank (>= 1): the global batch divided by
            ``world_size``.
        device: where batches are delivered.
        dtype: the images' dtype on delivery (the AMP dtype, or float32).
        channels_last: deliver images in channels_last memory format.
        shuffle: reshuffle every epoch (else the stored order).
        drop_last: drop the last partial (global) batch.
        seed: base seed of the order and the augmentation (``EpochLoader.epoch_seed``).
        workers: CPU processes (albumentations: DataLoader workers, 0 runs in this
            process) or threads (DALI, at least 1); the GPU loader uses none.
        rank, world_size: this rank's shard of every step under data-parallel training.
    """

    augmentation: str
    mean: Sequence[float]
    std: Sequence[float]
    batch_size: int
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    shuffle: bool = True
    drop_last: bool = False
    seed: int = 0
    workers: int = 2
    rank: int = 0
    world_size: int = 1


class EpochLoader:
    """What every training loader shares: its ``LoaderConfig``, ``set_epoch``, ``len()``
    (steps per epoch, from ``dataset``, the batch size, ``drop_last`` and the number of
    ranks), per-epoch seeds that depend on (seed, epoch) alone, and sharding across
    data-parallel ranks.

    Sharding (``config.rank``, ``config.world_size``): ``batch_size`` is this rank's share
    of a step; the epoch's order is the same on every rank (it depends on (seed, epoch)
    alone), cut into global batches of ``batch_size * world_size`` images, and rank r takes
    the r-th part of each: no image is seen twice in an epoch across ranks, and only
    ``drop_last`` drops any. A last partial global batch is split as evenly as it goes
    (``torch.tensor_split``); one smaller than the number of ranks is dropped, since a rank
    cannot take an empty step.

    Args:
        config: how the batches are delivered (batch size, device, dtype, layout, seed,
            rank and world size).
    """

    dataset: object
    config: LoaderConfig
    epoch: int = 0

    def __init__(self, config: LoaderConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.epoch = 0

    # the config's fields that the loops read, by their usual names
    batch_size = property(lambda self: self.config.batch_size)
    drop_last = property(lambda self: self.config.drop_last)
    shuffle = property(lambda self: self.config.shuffle)
    seed = property(lambda self: self.config.seed)
    dtype = property(lambda self: self.config.dtype)
    channels_last = property(lambda self: self.config.channels_last)
    rank = property(lambda self: self.config.rank)
    world_size = property(lambda self: self.config.world_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration yields: its order and augmentation draw from (seed, epoch)
        alone, so a resumed run sees the same batches.

        Args:
            epoch: the epoch, from 0.
        """
        self.epoch = epoch

    def __len__(self) -> int:
        n, batch = len(self.dataset), self.batch_size * self.world_size
        if self.drop_last:
            return n // batch
        full, rest = divmod(n, batch)
        return full + (rest >= self.world_size)

    def last_step_size(self) -> int:
        """Images this rank takes in the epoch's last step: ``batch_size``, or fewer where a
        last partial global batch is kept (split as ``global_batches`` splits it). A
        compiled run warms up on that shape too, or its first epoch recompiles there.

        Returns:
            Images, at most ``batch_size``.
        """
        rest = len(self.dataset) % (self.batch_size * self.world_size)
        if self.drop_last or rest < self.world_size:
            return self.batch_size
        return rest // self.world_size + (self.rank < rest % self.world_size)

    def global_batches(self, order):
        """(global batch indices, this rank's slice of them) for every step of the epoch;
        ``order`` is the epoch's permutation (a tensor or an array).

        Args:
            order: the epoch's permutation of the training images, (N,).

        Yields:
            (the global batch's indices, this rank's slice of them), one pair a step.
        """
        batch = self.batch_size * self.world_size
        for i in range(len(self)):
            g = order[i * batch : (i + 1) * batch]
            if len(g) == batch:
                start = self.rank * self.batch_size
                yield g, slice(start, start + self.batch_size)
            else:  # the last partial batch, split as evenly as it goes
                sizes = [len(c) for c in torch.tensor_split(torch.arange(len(g)), self.world_size)]
                start = sum(sizes[: self.rank])
                yield g, slice(start, start + sizes[self.rank])

    def epoch_seed(self, salt: int = 0) -> int:
        """A seed for this epoch (``salt`` separates a loader's streams), below 2**31.

        Args:
            salt: separates a loader's streams.

        Returns:
            The seed, in [0, 2**31 - 1).
        """
        return (self.seed * 1_000_003 + self.epoch * 7919 + salt) % (2**31 - 1)


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    # torch gives each worker base_seed + worker_id, the base drawn from the loader's
    # generator: a function of the epoch seed, so the augmentation stream is too.
    info.dataset.reseed(torch.initial_seed())


class AlbumentationsLoader(EpochLoader):
    """The CPU fallback: albumentations in DataLoader workers, batches moved to the device.

    Args:
        images: uint8 (N, 32, 32, 3) training images.
        labels: int64 (N,) labels.
        config: batch, device, dtype, seed, workers, shard (``LoaderConfig``).
        transform: an albumentations Compose ending in ToTensorV2; default the recipe's
            pipeline (``fastcifar.data.augment.build_augmentation`` of
            ``config.augmentation``, ``config.mean``, ``config.std``).
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, config: LoaderConfig, transform=None
    ):
        super().__init__(config)
        if transform is None:
            from fastcifar.data.augment import build_augmentation

            transform = build_augmentation(config.augmentation, config.mean, config.std)
        self.dataset = AugmentedDataset(images, labels, transform)
        self.workers = config.workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.epoch_seed(17))
        if self.workers == 0:
            self.dataset.reseed(self.epoch_seed(0x5EED) + self.rank)
        n = len(self.dataset)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        batches = [g[part].tolist() for g, part in self.global_batches(order)]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,  # this rank's share of every step
            num_workers=self.workers,
            worker_init_fn=_worker_init if self.workers else None,
            generator=torch.Generator().manual_seed(self.epoch_seed(19) + 7 * self.rank),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for x, y in loader:
            x, y = _to_device(x, y, self.device, self.channels_last)
            yield x.to(self.dtype), y


class EvalLoader:
    """Test-set batches: uint8 images normalised on ``device``, in a fixed order.

    Normalisation is ``(x / 255 - mean) / std`` per channel, the same arithmetic as
    albumentations' ``Normalize(max_pixel_value=255)``. Iterating yields (images, labels):
    float32 (B, 3, 32, 32) on ``device`` (channels_last when asked) and int64 (B,).

    Args:
        images: uint8 (N, 32, 32, 3), HWC, RGB; copied to ``device`` once.
        labels: integer (N,), class indices 0..9.
        mean: per-channel means, 3 values in [0, 1] units.
        std: per-channel standard deviations, 3 values in [0, 1] units.
        batch_size: images per batch (the last batch may be smaller).
        device: where the batches are delivered.
        channels_last: deliver the images in channels_last memory format.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        device: torch.device,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images))  # (N, 32, 32, 3) uint8
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        # resident on the device once (30 MB for the test set): no copy per evaluation
        self._device_images = self.images.to(self.device)
        self._device_labels = self.labels.to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.batch_size = batch_size
        self.channels_last = channels_last

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mean, std = self.mean.to(self.device), self.std.to(self.device)
        for start in range(0, len(self.images), self.batch_size):
            x = self._device_images[start : start + self.batch_size]
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            y = self._device_labels[start : start + self.batch_size]
            yield _to_device(x, y, self.device, self.channels_last)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    x = x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    return x, y.to(device, non_blocking=True)
