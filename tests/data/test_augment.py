"""Each recipe's albumentations pipeline: built without warnings, its arguments really applied.

albumentations 2.x ignores 1.x argument names with only a warning; pyproject.toml turns
albumentations' warnings into errors, and the behaviour is measured on test images.
"""

import warnings

import albumentations as A
import cv2
import numpy as np
import pytest

from fastcifar import FastCifarError
from fastcifar.data.augment import AUGMENTATIONS, build_augmentation

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)
GRAY = 100  # a constant gray image: flips, affine warps with reflection, to-gray leave it as is
N = 400


def samples(name: str, img: np.ndarray, n: int = N, seed: int = 0) -> np.ndarray:
    pipe = build_augmentation(name, MEAN, STD)
    pipe.set_random_seed(seed)
    return np.stack([pipe(image=img)["image"].numpy() for _ in range(n)])


def normalised(value) -> np.ndarray:
    return (np.asarray(value, dtype=np.float64) / 255 - np.array(MEAN)) / np.array(STD)


def hole_pixels(out: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Per sample, the pixels whose three channels all equal ``fill``."""
    hit = np.all(np.abs(out - fill.reshape(1, 3, 1, 1)) < 1e-4, axis=1)
    return hit.reshape(len(out), -1).sum(1)


def find(pipe, kind):
    found = []
    for t in pipe.transforms:
        if isinstance(t, kind):
            found.append(t)
        if hasattr(t, "transforms"):
            found += find(t, kind)
    return found


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_builds_without_warnings_and_outputs_chw_float(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = build_augmentation(name, MEAN, STD)
        out = pipe(image=np.full((32, 32, 3), GRAY, np.uint8))["image"]
    assert tuple(out.shape) == (3, 32, 32)
    assert str(out.dtype) == "torch.float32"


def test_unknown_augmentation():
    with pytest.raises(FastCifarError, match="choose one of s7"):
        build_augmentation("autoaugment", MEAN, STD)


def test_normalisation_uses_the_given_stats():
    out = samples("none", np.full((32, 32, 3), GRAY, np.uint8), n=1)[0]
    np.testing.assert_allclose(out[:, 0, 0], normalised([GRAY] * 3), rtol=1e-5)


def test_s7_one_16x16_hole_of_the_channel_means_half_the_time():
    out = samples("s7", np.full((32, 32, 3), GRAY, np.uint8))
    holes = hole_pixels(out, np.array(MEAN))  # filled after Normalize with the means as numbers
    assert set(np.unique(holes)) == {0, 256}  # one whole 16x16 hole, always inside the image
    assert 0.42 < (holes == 256).mean() < 0.58
    pipe = build_augmentation("s7", MEAN, STD)
    (affine,) = find(pipe, A.Affine)
    assert affine.rotate == (-45.0, 45.0) and affine.p == 0.5
    assert affine.scale == {"x": (0.9, 1.1), "y": (0.9, 1.1)}
    assert affine.translate_percent["x"] == (-0.0625, 0.0625)
    assert find(pipe, A.HorizontalFlip)[0].p == 0.5 and find(pipe, A.ToGray)[0].p == 0.5


def test_s7_to_gray_half_the_time():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # pure red: gray output has equal channels
    pipe = build_augmentation("s7", MEAN, STD)
    pipe.set_random_seed(1)
    grays = 0
    for _ in range(N):
        out = pipe(image=img)["image"].numpy() * np.array(STD).reshape(3, 1, 1)
        out += np.array(MEAN).reshape(3, 1, 1)
        grays += (
            abs(out[0, 0, 0] - out[1, 0, 0]) < 0.02 and abs(out[0, 31, 31] - out[2, 31, 31]) < 0.02
        )
    assert 0.42 < grays / N < 0.58


def test_c1c2c3c40_black_hole_before_normalize():
    out = samples("c1c2c3c40", np.full((32, 32, 3), GRAY, np.uint8))
    holes = hole_pixels(out, normalised([0, 0, 0]))
    assert set(np.unique(holes)) == {0, 256}
    assert 0.42 < (holes == 256).mean() < 0.58


def test_resnet18_ln_hole_of_the_mean_colour():
    out = samples("resnet18_ln", np.full((32, 32, 3), GRAY, np.uint8))
    fill = normalised([round(255 * m) for m in MEAN])
    assert np.all(np.abs(fill) < 0.01)
    holes = hole_pixels(out, fill)
    assert set(np.unique(holes)) == {0, 256}
    assert 0.42 < (holes == 256).mean() < 0.58


def test_resnet18_cutout_may_fall_partly_or_wholly_outside():
    out = samples("resnet18", np.full((32, 32, 3), GRAY, np.uint8))
    holes = hole_pixels(out, np.zeros(3))
    whole, partial, outside = (
        (holes == 256).mean(),
        ((holes > 0) & (holes < 256)).mean(),
        (holes == 0).mean(),
    )
    # hole top-left uniform over 49x49 positions of the 64x64 canvas, the image its centre:
    # wholly inside for 17x17 positions (12 %), wholly outside where either axis sits at
    # 0 or 48 (1 - (47/49)^2 = 8 %)
    assert 0.07 < whole < 0.2 and 0.03 < outside < 0.14 and partial > 0.6
    jitter = find(build_augmentation("resnet18", MEAN, STD), A.ColorJitter)[0]
    assert jitter.contrast == (0.9, 1.1) and jitter.saturation == (0.8, 1.2)
    assert jitter.hue == (-0.1, 0.1) and jitter.brightness == (1.0, 1.0)


def test_attention_pad_crop_translates_and_cutout_is_clipped():
    out = samples("attention", np.full((32, 32, 3), GRAY, np.uint8))
    pad = np.all(np.abs(out - np.array(MEAN).reshape(1, 3, 1, 1)) < 1e-4, axis=1)
    shows_pad = pad.reshape(N, -1).any(1).mean()
    assert shows_pad > 0.9  # the crop offset is 4,4 (no pad visible) for 1/81 of samples
    holes = hole_pixels(out, np.zeros(3))
    assert 0.35 < (holes > 0).mean() < 0.55  # p 0.5, less the holes wholly in the cropped pad
    assert ((holes > 0) & (holes < 256)).any()  # clipped at the border like the 1.x Cutout
    (rotate,) = find(build_augmentation("attention", MEAN, STD), A.Rotate)
    assert rotate.limit == (-5.0, 5.0) and rotate.p == 0.5
    assert rotate.border_mode == cv2.BORDER_REFLECT_101


def test_same_seed_same_samples():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = samples("resnet18", img, n=5, seed=7)
    b = samples("resnet18", img, n=5, seed=7)
    c = samples("resnet18", img, n=5, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
