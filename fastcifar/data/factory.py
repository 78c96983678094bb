"""The loader factory: which training loader backend runs (``resolve_loader``) and its
construction (``make_train_loader``, ``make_test_loader``).

The choices of ``--loader`` are ``fastcifar.options.LOADER_CHOICES``; the parser in
``fastcifar.train`` offers exactly them.
"""

from __future__ import annotations

import numpy as np
import torch

from fastcifar.data.augment import AUGMENTATIONS
from fastcifar.data.gpu_loader import GpuLoader
from fastcifar.data.loaders import AlbumentationsLoader, EpochLoader, LoaderConfig
from fastcifar.errors import FastCifarError
from fastcifar.options import LOADER_CHOICES


def resolve_loader(name: str, augmentation: str, device: torch.device) -> tuple[str, str]:
    """(backend, why). ``auto``: on CUDA the GPU-resident loader where the recipe's
    augmentation is made only of what it implements (the fastest path), else DALI when
    it is installed (NVIDIA only: DALI has no ROCm build); the albumentations CPU loader
    otherwise. An augmentation that only
    the gpu loader implements (the alternating flip) always gets it, on a CPU too.
    ``gpu`` and ``dali`` also run on the CPU (``dali`` CPU-only, ``device_id=None``).

    Args:
        name: the ``--loader`` value: ``auto``, ``gpu``, ``dali`` or ``albumentations``.
        augmentation: the recipe's augmentation name.
        device: the training device.

    Returns:
        (backend, why): the backend's name and the reason it was chosen, one phrase.

    Raises:
        FastCifarError: an unknown name, a backend that lacks the augmentation, or
            ``dali`` without DALI installed.
    """
    from fastcifar.data.dali_loader import DALI_AUGMENTATIONS, dali_available
    from fastcifar.data.gpu_loader import GPU_AUGMENTATIONS

    if name not in LOADER_CHOICES:
        raise FastCifarError(
            f"--loader {name!r} is not valid: choose one of {', '.join(LOADER_CHOICES)}"
        )
    if name == "gpu" and augmentation not in GPU_AUGMENTATIONS:
        raise FastCifarError(
            f"--loader gpu does not implement augmentation {augmentation!r} (only "
            f"{', '.join(GPU_AUGMENTATIONS)}): use --loader dali or albumentations"
        )
    if name in ("albumentations", "dali") and augmentation not in AUGMENTATIONS:
        raise FastCifarError(
            f"--loader {name} does not implement augmentation {augmentation!r} (the gpu "
            f"loader's alone): use --loader gpu, which also runs on a CPU"
        )
    if name == "dali" and device.type == "cuda" and torch.version.hip:
        raise FastCifarError(
            "--loader dali runs on NVIDIA GPUs only (DALI has no ROCm build): use --loader "
            "gpu or albumentations"
        )
    if name == "dali" and not dali_available():
        raise FastCifarError(
            "--loader dali needs NVIDIA DALI: pip install 'fastcifar[dali]' (or "
            "nvidia-dali-cuda130), or use --loader albumentations"
        )
    if name != "auto":
        return name, "asked for with --loader"
    if augmentation not in AUGMENTATIONS:
        return "gpu", f"augmentation {augmentation!r} exists only as batched tensor ops"
    if device.type != "cuda":
        return "albumentations", "no GPU: albumentations in CPU workers"
    if augmentation in GPU_AUGMENTATIONS:
        return "gpu", f"augmentation {augmentation!r} runs as batched tensor ops on the GPU"
    if torch.version.hip:
        return "albumentations", "ROCm GPU: DALI has no ROCm build, albumentations in CPU workers"
    if dali_available() and augmentation in DALI_AUGMENTATIONS:
        return "dali", "a GPU and DALI are present"
    return "albumentations", "DALI is not installed (pip install 'fastcifar[dali]')"


def make_train_loader(
    backend: str, images: np.ndarray, labels: np.ndarray, config: LoaderConfig
) -> EpochLoader:
    """The training loader of ``backend`` (``resolve_loader``'s answer) over uint8 images
    (N, 32, 32, 3) and int64 labels (N,), configured by ``config``: batches of normalised
    images on the device in its dtype (channels_last when asked) and labels, reshuffled
    every epoch; this rank's shard of every step under data-parallel training.

    Args:
        backend: ``gpu``, ``dali`` or ``albumentations``.
        images: uint8 (N, 32, 32, 3), host memory.
        labels: int64 (N,).
        config: the loader's batch size, device, dtype, layout, workers, augmentation, seed
            and data-parallel rank.

    Returns:
        The ``EpochLoader``.

    Raises:
        FastCifarError: the (global) batch is larger than the training set (with
            drop_last it would leave no batch; without, one step an epoch).
    """
    global_batch = config.batch_size * config.world_size
    if global_batch > len(images):
        raise FastCifarError(
            f"--batch-size {global_batch} is larger than the {len(images):,} training images "
            f"(one step an epoch, the schedule's shape lost): pass a smaller --batch-size or "
            f"train on more images"
        )
    if backend == "dali":
        from fastcifar.data.dali_loader import DaliLoader

        loader: EpochLoader = DaliLoader(images, labels, config)
    elif backend == "gpu":
        loader = GpuLoader(images, labels, config)
    else:
        loader = AlbumentationsLoader(images, labels, config)
    return loader
