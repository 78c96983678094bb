"""The DALI backend (CPU-only here, ``device_id=None``): same recipe semantics as the
albumentations fallback, measured on test images within sampling error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install .[dali])")

from fastcifar.data import LoaderConfig  # noqa: E402
from fastcifar.data.dali_loader import DALI_AUGMENTATIONS, DaliLoader  # noqa: E402
from fastcifar.data.factory import make_train_loader  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
N = 600


def draw(backend: str, aug: str, img: np.ndarray, n: int = N, seed: int = 0) -> np.ndarray:
    images = np.repeat(img[None], n, 0)
    labels = np.arange(n) % 10
    config = LoaderConfig(aug, MEAN, STD, min(200, n), shuffle=False, seed=seed, workers=0)
    ld = make_train_loader(backend, images, labels, config)  # the path training takes
    return torch.cat([x for x, _ in ld]).numpy()


def gray_image() -> np.ndarray:
    return np.full((32, 32, 3), 100, np.uint8)


def coords_image() -> np.ndarray:
    x = np.arange(32, dtype=np.uint8) * 8
    return np.stack(np.broadcast_arrays(x[None, :], x[:, None], np.uint8(128)), -1).astype(np.uint8)


def norm(value) -> np.ndarray:
    return (np.asarray(value, dtype=np.float64) / 255 - np.array(MEAN)) / np.array(STD)


def hole_pixels(out: np.ndarray, fill) -> np.ndarray:
    hit = np.all(np.abs(out - np.asarray(fill).reshape(1, 3, 1, 1)) < 2e-3, axis=1)
    return hit.reshape(len(out), -1).sum(1)


def close(p: float, q: float, n: int = N) -> bool:
    """Two rates equal within four standard errors of their difference."""
    sd = np.sqrt(max(p * (1 - p), q * (1 - q), 0.01) * 2 / n)
    return abs(p - q) < 4 * sd


def test_contract_and_every_augmentation_runs():
    for aug in DALI_AUGMENTATIONS:
        config = LoaderConfig(aug, MEAN, STD, 32, channels_last=True)
        ld = DaliLoader(np.repeat(gray_image()[None], 70, 0), np.arange(70) % 10, config)
        batches = list(ld)
        assert len(ld) == len(batches) == 3 and len(batches[-1][0]) == 6
        x, y = batches[0]
        assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_normalisation_is_the_same():
    a = draw("dali", "none", coords_image(), n=4)
    b = draw("albumentations", "none", coords_image(), n=4)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "aug,fill",
    [
        ("s7", MEAN),
        ("c1c2c3c40", norm([0, 0, 0])),
        ("resnet18_ln", norm([round(255 * m) for m in MEAN])),
    ],
)
def test_one_hole_inside_the_image_at_the_same_rate_and_fill(aug, fill):
    rates = {}
    for backend in ("dali", "albumentations"):
        holes = hole_pixels(draw(backend, aug, gray_image()), fill)
        assert set(np.unique(holes)) <= {0, 256}, backend
        rates[backend] = (holes == 256).mean()
    assert close(rates["dali"], rates["albumentations"]) and close(rates["dali"], 0.5), rates


@pytest.mark.parametrize("aug", ["attention", "resnet18"])
def test_clipped_cutout_has_the_same_size_distribution(aug):
    stats = {}
    for backend in ("dali", "albumentations"):
        holes = hole_pixels(draw(backend, aug, gray_image()), [0.0, 0.0, 0.0])
        stats[backend] = (
            (holes == 256).mean(),
            ((holes > 0) & (holes < 256)).mean(),
            (holes == 0).mean(),
        )
    for d, a in zip(stats["dali"], stats["albumentations"], strict=True):
        assert close(d, a), stats


def test_attention_pad_fill_is_the_mean_and_shows_as_often():
    rates = {}
    for backend in ("dali", "albumentations"):
        out = draw(backend, "attention", gray_image())
        pad = np.all(np.abs(out - np.array(MEAN).reshape(1, 3, 1, 1)) < 2e-3, axis=1)
        rates[backend] = pad.reshape(len(out), -1).any(1).mean()
    assert close(rates["dali"], rates["albumentations"]) and rates["dali"] > 0.9


@pytest.mark.parametrize("aug,rate", [("s7", 0.5), ("resnet18", 0.2)])
def test_to_gray_rate(aug, rate):
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # pure red: gray output has (nearly) equal channels
    rates = {}
    for backend in ("dali", "albumentations"):
        out = draw(backend, aug, img) * np.array(STD).reshape(1, 3, 1, 1)
        out = out + np.array(MEAN).reshape(1, 3, 1, 1)
        centre = out[:, :, 12:20, 12:20].mean((2, 3))
        gray = np.ptp(centre, axis=1) < 0.05
        rates[backend] = gray.mean()
    assert close(rates["dali"], rates["albumentations"]) and close(rates["dali"], rate), rates


def _decode(out: np.ndarray):
    px = (out * np.array(STD).reshape(1, 3, 1, 1) + np.array(MEAN).reshape(1, 3, 1, 1)) * 255 / 8
    flipped = px[:, 0, 16, 17] - px[:, 0, 16, 15] < 0
    return flipped, np.round(px[:, 1, 16, 16]).astype(int) - 16


@pytest.mark.parametrize("aug,pad", [("flip_translate", 2), ("resnet18_ln", 4)])
def test_flip_rate_and_crop_offsets(aug, pad):
    results = {}
    backends = (
        ("dali", "albumentations", "gpu") if aug == "flip_translate" else ("dali", "albumentations")
    )
    for backend in backends:
        flipped, dy = _decode(draw(backend, aug, coords_image()))
        counts = np.bincount(dy + pad, minlength=2 * pad + 1)[: 2 * pad + 1] / N
        results[backend] = (flipped.mean(), counts)
    for backend, (flip_rate, counts) in results.items():
        expected_flip = 0.5 if aug == "flip_translate" else 0.0
        assert abs(flip_rate - expected_flip) < 0.08, (backend, flip_rate)
        if aug == "flip_translate":  # resnet18_ln's rotation moves the centre pixel too
            assert np.all(np.abs(counts - 1 / (2 * pad + 1)) < 0.06), (backend, counts)


def test_same_seed_same_batches_and_epochs_reshuffle():
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(64) % 10
    config = LoaderConfig("s7", MEAN, STD, 32, seed=5)
    a, b = DaliLoader(images, labels, config), DaliLoader(images, labels, config)
    (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(1)
    xa1, ya1 = next(iter(a))
    assert not torch.equal(ya1, ya)


def test_trainer_trains_with_dali(tmp_path, capsys):
    from fastcifar.engine.build import build_trainer
    from fastcifar.engine.trainer import RunOptions
    from fastcifar.recipes import get_recipe
    from tests.conftest import make_tree

    make_tree(tmp_path / "tree", per_class=3)
    recipe = get_recipe("attention").replace(epochs=1, batch_size=10)
    opts = RunOptions(data=str(tmp_path / "tree"), workers=1, device="cpu", loader="dali")
    t = build_trainer(recipe, opts, tmp_path)
    assert "loader: dali on the CPU (asked for with --loader)" in capsys.readouterr().out
    summary = t.fit()
    assert summary["loader"] == "dali" and summary["train_images"] == 30


def _line_angles(out: np.ndarray) -> np.ndarray:
    """Angle in degrees of the bright line through the centre of each image, fitted over the
    central 20x20 pixels (away from any border handling)."""
    bright = out * np.array(STD).reshape(1, 3, 1, 1) + np.array(MEAN).reshape(1, 3, 1, 1)
    bright = bright.mean(1)[:, 6:26, 6:26]
    angles = []
    for img in bright:
        ys, xs = np.nonzero(img > 0.5)
        if len(xs) < 10 or np.ptp(xs) < 5:
            angles.append(np.nan)  # the hole erased the line: no estimate
            continue
        slope = np.polyfit(xs, ys, 1)[0]
        angles.append(np.degrees(np.arctan(slope)))
    return np.abs(np.array(angles))


def test_rotation_and_scale_range_of_shift_scale_rotate():
    img = np.zeros((32, 32, 3), np.uint8)
    img[15:17] = 255  # a horizontal line through the centre
    stats = {}
    for backend in ("dali", "albumentations"):
        angles = _line_angles(draw(backend, "c1c2c3c40", img))
        angles = angles[~np.isnan(angles)]
        rotated = angles > 1.5
        stats[backend] = (rotated.mean(), angles[rotated].mean(), angles.max(), len(angles))
    (rd, md, xd, nd), (ra, ma, xa, na) = stats["dali"], stats["albumentations"]
    assert close(rd, ra, min(nd, na)) and close(rd, 0.5 * (1 - 1.5 / 45), nd), stats
    assert abs(md - ma) < 4 and 18 < md < 28, stats  # uniform over 1.5..45 degrees: mean 23
    assert 40 < xd <= 46 and 40 < xa <= 46, stats
