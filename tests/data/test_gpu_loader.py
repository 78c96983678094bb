"""The GPU-resident loader (run here on the CPU): contract, augmentation statistics, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastcifar import FastCifarError
from fastcifar.data import AlbumentationsLoader, GpuLoader, LoaderConfig
from fastcifar.data.factory import resolve_loader
from fastcifar.data.gpu_loader import (
    apply_cutout,
    apply_translate,
    cutout_params,
    flip_params,
    flip_where,
    translate_params,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def pattern(n: int) -> np.ndarray:
    """Images whose pixel value encodes its column (x) and row (y): 8 * x, 8 * y, 128."""
    x = np.arange(32, dtype=np.uint8) * 8
    img = np.stack(np.broadcast_arrays(x[None, :], x[:, None], np.uint8(128)), -1)
    return np.repeat(img[None], n, 0).astype(np.uint8)


def loader(n=256, batch=64, aug="flip_translate", **kw):
    labels = np.arange(n) % 10
    return GpuLoader(pattern(n), labels, LoaderConfig(aug, MEAN, STD, batch, **kw))


def test_contract_shapes_dtypes_layout_and_length():
    ld = loader(n=250, batch=64, channels_last=True)
    batches = list(ld)
    assert len(ld) == len(batches) == 4 and len(batches[-1][0]) == 250 - 192
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.int64
    assert len(loader(n=250, batch=64, drop_last=True)) == 3
    x, _ = next(iter(loader(n=64, batch=64, dtype=torch.bfloat16)))
    assert x.dtype == torch.bfloat16  # the AMP dtype, handed over ready


def _decode(x: torch.Tensor):
    """Per image: (flipped?, dx, dy) read back from the coordinate pattern's centre pixel."""
    px = (x * 0.25 + 0.5) * 255 / 8  # back to coordinates
    centre_x = px[:, 0, 16, 16].round().long()
    centre_y = px[:, 1, 16, 16].round().long()
    right_minus_left = px[:, 0, 16, 17] - px[:, 0, 16, 15]
    return right_minus_left < 0, centre_x, centre_y


def test_flip_rate_and_translation_offsets_match_the_albumentations_pipeline():
    gx = torch.cat([b[0] for b in loader(n=2000, batch=500)])
    flipped, cx, cy = _decode(gx)
    alb = AlbumentationsLoader(
        pattern(2000), np.zeros(2000), LoaderConfig("flip_translate", MEAN, STD, 500, workers=0)
    )
    ax = torch.cat([b[0] for b in alb])
    a_flipped, acx, acy = _decode(ax)
    for ours, theirs in ((flipped, a_flipped),):
        assert abs(ours.float().mean() - 0.5) < 0.04 and abs(theirs.float().mean() - 0.5) < 0.04
    # translation: the centre pixel moves by -2..2 along y, uniformly, in both backends
    for offs in (cy - 16, acy - 16):
        counts = torch.bincount(offs + 2, minlength=5).float() / len(offs)
        assert offs.min() == -2 and offs.max() == 2
        assert torch.all((counts - 0.2).abs() < 0.035), counts


def test_cutout_hole_is_clipped_and_filled():
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(400, 3, 32, 32)
    # the loader's path: parameters drawn for the batch, then applied
    out = apply_cutout(x, 16, torch.zeros(3), *cutout_params(len(x), 32, 32, "cpu", gen))
    holes = (out[:, 0] == 0).flatten(1).sum(1)
    assert holes.max() == 256 and holes.min() < 256  # whole inside, or clipped at the border
    assert holes.min() >= 64  # a centre inside the image keeps at least a quarter
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)


def test_flip_and_translate_primitives():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(apply_translate(x, 0, *translate_params(2, 0, "cpu", gen)), x)
    t = apply_translate(x, 1, *translate_params(2, 1, "cpu", gen))
    assert t.shape == x.shape
    # each image is the reflect-padded original cropped at one offset in [0, 2]^2: find it
    big = torch.arange(400 * 3 * 8 * 8, dtype=torch.float32).view(400, 3, 8, 8)
    out = apply_translate(
        big, 2, *translate_params(400, 2, "cpu", torch.Generator().manual_seed(1))
    )
    padded = torch.nn.functional.pad(big, (2, 2, 2, 2), mode="reflect")
    offsets = []
    for i in range(len(big)):
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(hits) == 1, f"image {i} is no crop of its padded self"
        offsets.append(hits[0])
    dys, dxs = zip(*offsets, strict=True)
    assert set(dys) == set(range(5)) and set(dxs) == set(range(5))  # every offset occurs
    counts = torch.bincount(torch.tensor(dys), minlength=5).float()
    assert counts.min() > 0.6 * counts.mean()  # roughly uniform (400 draws, 5 values)
    f = flip_where(x.repeat(50, 1, 1, 1), flip_params(100, "cpu", gen))
    same = (f == x.repeat(50, 1, 1, 1)).flatten(1).all(1).float().mean()
    assert 0.3 < same < 0.7


def test_same_seed_same_batches_and_every_epoch_reshuffles():
    a, b = loader(seed=3), loader(seed=3)
    first = [y for _, y in a]
    assert all(torch.equal(p, q) for p, q in zip(first, [y for _, y in b], strict=True))
    xa, xb = next(iter(a))[0], next(iter(b))[0]
    assert torch.equal(xa, xb)
    a.set_epoch(1)
    assert not all(torch.equal(p, q) for p, q in zip(first, [y for _, y in a], strict=True))


def test_loader_choice(monkeypatch):
    import fastcifar.data.dali_loader as dl

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_loader("auto", "flip_translate", cuda)[0] == "gpu"
    assert resolve_loader("auto", "flip_translate", cpu)[0] == "albumentations"
    assert resolve_loader("gpu", "flip_translate", cpu)[0] == "gpu"
    monkeypatch.setattr(dl, "dali_available", lambda: True)
    assert resolve_loader("auto", "s7", cuda) == ("dali", "a GPU and DALI are present")
    monkeypatch.setattr(dl, "dali_available", lambda: False)
    backend, why = resolve_loader("auto", "s7", cuda)
    assert backend == "albumentations" and "pip install" in why
    with pytest.raises(FastCifarError, match="--loader dali needs NVIDIA DALI: pip install"):
        resolve_loader("dali", "s7", cpu)
    with pytest.raises(FastCifarError, match="does not implement augmentation 's7'"):
        resolve_loader("gpu", "s7", cpu)


def test_prebuilt_epochs_are_the_batches_built_in_the_loop_and_are_freed():
    aug = "alternating_flip_translate_jitter"  # every random draw of the speed runs
    ahead, inline = loader(aug=aug, seed=5), loader(aug=aug, seed=5)
    ahead.prebuild(range(1, 3))
    assert ahead.epoch == 1 and sorted(ahead._built) == [1, 2]
    batches = {}
    for epoch in (1, 2):
        ahead.set_epoch(epoch)
        inline.set_epoch(epoch)
        batches[epoch] = got = list(ahead)
        want = list(inline)
        assert len(got) == len(want) == len(ahead)
        for (xa, ya), (xb, yb) in zip(got, want, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert epoch not in ahead._built  # handed over once, then freed
    assert not torch.equal(batches[1][0][0], batches[2][0][0])  # epochs differ
    ahead.set_epoch(1)  # iterated again: built in the loop, the same batches
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ahead, batches[1], strict=True))
