"""What a run is built from, in one place for the engine and the LR range test:
``build_components(recipe, options)`` resolves the device, AMP dtype and memory format,
loads the data, builds the training loader the options choose and the test loader,
creates the model (Triton kernels validated and swapped in when chosen) and the loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fastcifar.data import (
    CifarArrays,
    EvalLoader,
    channel_stats,
    eval_split,
    load_cifar10,
    stratified_subset,
)
from fastcifar.data.factory import make_train_loader, resolve_loader
from fastcifar.data.loaders import EpochLoader, LoaderConfig
from fastcifar.engine.distributed import SINGLE, World, per_rank_batch, sync_batchnorm
from fastcifar.engine.optim import criterion
from fastcifar.engine.rundir import RunOptions
from fastcifar.engine.runtime import (
    amp_dtype,
    device_name,
    resolve_device,
    resolve_kernels,
    versions,
)
from fastcifar.models import CifarNet, create_model
from fastcifar.recipes import Recipe

__all__ = ["Components", "build_components"]


@dataclass
class Components:
    """What a run is built from (``build_components``): where it computes, its data and
    loaders, its model (Triton kernels swapped in when chosen) and its loss.

    Attributes:
        device: where the run computes.
        amp_dtype: the autocast dtype, or None (float32).
        channels_last: the model and batches are channels_last.
        arrays: the data set (uint8 images, int64 labels).
        train_images: the training images after ``--train-subset``, uint8 (N, 32, 32, 3).
        mean: per-channel mean of the training images, [0, 1] units.
        std: their per-channel standard deviation, [0, 1] units.
        loader_name: the training loader's backend.
        train_loader: the training loader.
        test_loader: the test loader, or None.
        model: the model on ``device``.
        kernels: what ``--kernels`` resolved to: ``torch``, ``triton`` or ``auto``.
        criterion: ``(logits or log-probabilities (N, 10), labels (N,)) -> loss`` (scalar).
        kernel_dispatch: ``--kernels auto``'s decisions as records (empty otherwise).
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    arrays: CifarArrays
    train_images: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    loader_name: str
    train_loader: EpochLoader
    test_loader: EvalLoader | None
    model: CifarNet
    kernels: str
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    kernel_dispatch: list[dict]

    def facts(self, compiled: bool, world_size: int) -> dict:
        """What the run ran on, for summary.json: loader, device, AMP dtype, compiled or
        not, kernels, layout, the images trained and tested on, ranks, the data's source
        and the versions.

        Args:
            compiled: the model is compiled.
            world_size: processes.

        Returns:
            The facts, as summary.json keys.
        """
        return dict(
            loader=self.loader_name,
            device=device_name(self.device),
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            compiled=compiled,
            kernels=self.kernels,
            channels_last=self.channels_last,
            train_images=len(self.train_loader.dataset),
            world_size=world_size,
            test_images=len(self.test_loader.labels),
            data=self.arrays.source,
            versions=versions(),
        )


def build_components(
    recipe: Recipe,
    options: RunOptions,
    with_test: bool = True,
    world: World = SINGLE,
) -> Components:
    """Device and AMP policy, the data (subsets applied), the training loader chosen by
    ``options.loader``, the test loader (unless ``with_test`` is False), the model on the
    device (channels_last, SyncBatchNorm with ``options.sync_bn``, Triton kernels
    validated and swapped in when ``options.kernels`` resolves to triton) and the recipe's
    criterion; one printed line per choice. The ``Trainer`` and the LR range test start
    here, before any initialisation from data (``CifarNet.init_from_data``: timed by the
    trainer). On CUDA ``torch.backends.cudnn.benchmark`` is on (the shapes are fixed). Under
    torchrun (``world``, ``fastcifar.engine.distributed``) each rank computes on GPU
    ``local_rank`` (or the CPU), its training loader is sharded and holds its share of the
    recipe's global batch; every rank validates its own GPU's kernels.

    Args:
        recipe: what to train.
        options: how to train it.
        with_test: build the test loader too.
        world: this process's place under torchrun.

    Returns:
        The ``Components``.

    Raises:
        FastCifarError: bad data, a loader or kernel choice that cannot run here, a kernel
            validation failure, a global batch that does not divide among the ranks, or
            --sync-bn off CUDA.
    """
    device, dtype, channels_last = _device_policy(options, world)
    batch_size = per_rank_batch(recipe.batch_size, world)
    arrays, train_x, train_y, (mean, std) = _training_data(options, recipe.seed)
    config = LoaderConfig(
        recipe.augmentation,
        mean,
        std,
        batch_size,
        device,
        dtype=dtype or torch.float32,  # loaders deliver the AMP dtype
        channels_last=channels_last,
        drop_last=recipe.drop_last,
        seed=recipe.seed,
        workers=options.workers if options.workers is not None else min(os.cpu_count() or 1, 8),
        rank=world.rank,
        world_size=world.size,
    )
    loader_name = _loader(options.loader, recipe.augmentation, device)
    train_loader = make_train_loader(loader_name, train_x, train_y, config)
    test_loader = _test_loader(arrays, options, config, recipe.batch_size) if with_test else None
    model, kernels, dispatch = _model(recipe, options, device, dtype, channels_last, batch_size)
    return Components(
        device,
        dtype,
        channels_last,
        arrays,
        train_x,
        mean,
        std,
        loader_name,
        train_loader,
        test_loader,
        model,
        kernels,
        criterion(recipe.loss, recipe.label_smoothing),
        dispatch,
    )


def _loader(name: str, augmentation: str, device: torch.device) -> str:
    """The training loader's backend (``resolve_loader``), said in one line: on a CPU the
    gpu and dali backends' code runs there, and the line says so."""
    backend, why = resolve_loader(name, augmentation, device)
    where = " on the CPU" if device.type == "cpu" and backend in ("gpu", "dali") else ""
    print(f"loader: {backend}{where} ({why})")
    return backend


def _training_data(options: RunOptions, seed: int):
    """(the data set's arrays, training images, their labels, the per-channel (mean, std)
    of all training images): ``--data`` loaded (or ``--download``ed), ``--train-subset``
    a stratified subset drawn with ``seed``."""
    arrays = load_cifar10(options.data, download=options.download, verbose=True)
    train_x, train_y = arrays.train_images, arrays.train_labels
    if options.train_subset:
        idx = stratified_subset(train_y, options.train_subset, seed=seed)
        train_x, train_y = train_x[idx], train_y[idx]
    return arrays, train_x, train_y, channel_stats(arrays.train_images)


def _test_loader(arrays, options: RunOptions, config: LoaderConfig, batch: int) -> EvalLoader:
    """The test set (``--test-subset`` applied) in batches of at least 256, on the
    training loader's device and layout, normalised by the training set's statistics."""
    test_x, test_y = eval_split(arrays, options.test_subset)
    return EvalLoader(
        test_x,
        test_y,
        config.mean,
        config.std,
        batch_size=max(batch, 256),
        device=config.device,
        channels_last=config.channels_last,
    )


def _device_policy(options: RunOptions, world: World) -> tuple[torch.device, object, bool]:
    """(device, autocast dtype or None, channels_last) of a run: under torchrun a rank's
    own GPU; cuDNN's benchmark mode on CUDA; AMP's dtype for the device, with one line
    when a CPU without native bfloat16 trains in float32 instead."""
    device = resolve_device(options.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = amp_dtype(device, options.amp_dtype) if options.amp else None
    if options.amp and dtype is None:
        print(
            "amp: this CPU has no native bfloat16 (AVX512-BF16/AMX), where autocast runs "
            "5-9x slower than float32: training in float32 (--amp-dtype bfloat16 forces it)"
        )
    channels_last = options.channels_last if options.channels_last is not None else options.amp
    return device, dtype, channels_last


def _model(recipe: Recipe, options: RunOptions, device, dtype, channels_last: bool, batch: int):
    """(model, kernel choice, autotuning records): the recipe's model on the device, seeded
    by the recipe, channels_last if asked, its kernels chosen (``--kernels``: validated
    Triton, or autotuned against cuDNN) and SyncBatchNorm with ``--sync-bn``."""
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    kernels = resolve_kernels(options.kernels, device)
    dispatch = []
    if kernels != "torch":
        from fastcifar.nn.autotune import choose_kernels

        dispatch = choose_kernels(kernels, model, batch, device, channels_last, dtype)
    if options.sync_bn:
        model = sync_batchnorm(model, device)
    return model, kernels, dispatch
