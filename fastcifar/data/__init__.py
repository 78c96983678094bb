"""CIFAR-10 sources, augmentation recipes and loader backends (layer 3)."""

from fastcifar.data.augment import AUGMENTATIONS, build_augmentation, eval_transform
from fastcifar.data.gpu_loader import GPU_AUGMENTATIONS, GpuLoader
from fastcifar.data.loaders import (
    AlbumentationsLoader,
    AugmentedDataset,
    EpochLoader,
    EvalLoader,
    LoaderConfig,
)
from fastcifar.data.readers import CLASSES, CifarArrays
from fastcifar.data.sources import (
    cache_dir,
    channel_stats,
    eval_split,
    load_cifar10,
    resolve_source,
    stratified_subset,
)

__all__ = [
    "AUGMENTATIONS",
    "CLASSES",
    "AlbumentationsLoader",
    "AugmentedDataset",
    "CifarArrays",
    "EpochLoader",
    "EvalLoader",
    "LoaderConfig",
    "GPU_AUGMENTATIONS",
    "GpuLoader",
    "build_augmentation",
    "cache_dir",
    "channel_stats",
    "eval_transform",
    "load_cifar10",
    "resolve_source",
    "stratified_subset",
    "eval_split",
]
