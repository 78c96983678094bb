"""fastcifar.engine.components.build_components: what a run is built from, as the options ask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastcifar.data.gpu_loader import GpuLoader
from fastcifar.data.loaders import AlbumentationsLoader
from fastcifar.engine.components import build_components
from fastcifar.engine.rundir import RunOptions
from fastcifar.errors import FastCifarError
from fastcifar.models import CifarNet
from fastcifar.recipes import get_recipe


def _options(tiny_tree: Path, **kw) -> RunOptions:
    return RunOptions(data=str(tiny_tree), workers=0, device="cpu", **kw)


def test_defaults_on_a_cpu(tiny_tree, capsys):
    recipe = get_recipe("s7").replace(batch_size=10)
    c = build_components(recipe, _options(tiny_tree))
    assert c.device == torch.device("cpu") and c.kernels == "torch"
    assert c.loader_name == "albumentations" and isinstance(c.train_loader, AlbumentationsLoader)
    assert "loader: albumentations (no GPU" in capsys.readouterr().out
    assert isinstance(c.model, CifarNet) and next(c.model.parameters()).device.type == "cpu"
    assert len(c.train_loader.dataset) == len(c.train_images) == 40
    assert len(c.test_loader.labels) == 40 and c.test_loader.batch_size == 256
    # the statistics are the training set's, per channel, in [0, 1] units
    expected = c.arrays.train_images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(c.mean, expected, rtol=1e-5)
    x, y = next(iter(c.train_loader))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    out = c.model(x)
    torch.testing.assert_close(c.criterion(out, y), torch.nn.functional.nll_loss(out, y))


def test_subsets_loader_amp_and_memory_format_follow_the_options(tiny_tree):
    recipe = get_recipe("c1c2c3c40").replace(batch_size=8, augmentation="flip_translate")
    opts = _options(
        tiny_tree, train_subset=20, test_subset=10, loader="gpu", amp=True, amp_dtype="bfloat16"
    )
    c = build_components(recipe, opts, with_test=True)
    assert isinstance(c.train_loader, GpuLoader) and c.loader_name == "gpu"
    assert len(c.train_images) == 20 and len(c.test_loader.labels) == 10
    # a stratified subset: two images of each class
    labels = np.concatenate([y.numpy() for _, y in c.train_loader])
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10
    assert c.amp_dtype is torch.bfloat16 and c.channels_last  # channels_last follows --amp
    x, _ = next(iter(c.train_loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in c.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert build_components(recipe, opts, with_test=False).test_loader is None


def test_bad_options_end_in_one_line(tiny_tree):
    recipe = get_recipe("s7").replace(batch_size=10)
    with pytest.raises(FastCifarError, match="--sync-bn needs CUDA GPUs"):
        build_components(recipe, _options(tiny_tree, sync_bn=True))
    for drop_last in (True, False):
        with pytest.raises(FastCifarError, match="--batch-size 64 is larger than the 40 train"):
            build_components(
                recipe.replace(batch_size=64, drop_last=drop_last), _options(tiny_tree)
            )
    with pytest.raises(FastCifarError, match="--loader gpu does not implement"):
        build_components(recipe, _options(tiny_tree, loader="gpu"))
