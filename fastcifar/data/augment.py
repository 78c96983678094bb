"""Each seed recipe's training augmentation as an albumentations 2.0 pipeline.

Every pipeline takes a uint8 HWC RGB image (32, 32, 3) and returns a float32 CHW
tensor (3, 32, 32), normalised with the training set's own per-channel mean and
std (``fastcifar.data.sources.channel_stats``), as ``ToTensorV2`` gives it.

albumentations 2.x renamed many 1.x arguments and ignores an old name with only a
warning (``CoarseDropout(max_holes=...)``, ``value=``), running with defaults; the
tests turn those warnings into errors. The 1.x transforms the seeds used map to 2.0:

* ``ShiftScaleRotate(shift_limit, scale_limit, rotate_limit)`` -> ``Affine(translate_percent=
  (-shift, shift), scale=(1 - s, 1 + s), rotate=(-r, r))``;
* ``CoarseDropout(max_holes=1, max_height=16, max_width=16, min_* = max_*)`` ->
  ``CoarseDropout(num_holes_range=(1, 1), hole_height_range=(16, 16), hole_width_range=(16, 16))``,
  the hole lying wholly inside the image;
* ``Cutout`` (gone in 2.0: a random centre, the hole clipped at the border) -> pad by
  8 pixels, a 16x16 ``CoarseDropout`` inside the padded image, centre crop back to 32:
  the hole's centre is then uniform over the image and the hole is clipped, as before.
* ``value=`` / ``fill_value=`` -> ``fill=``.

Sources: docs/SEEDS.md (the seeds' real pipelines) and the albumentations 2.0.8 signatures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from fastcifar.errors import FastCifarError

Stats = Sequence[float]
Builder = Callable[[Stats, Stats], A.Compose]


def _normalize(mean: Stats, std: Stats) -> A.Normalize:
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)


def _one_hole(fill, p: float) -> A.CoarseDropout:
    """Exactly one 16x16 hole lying inside the image."""
    return A.CoarseDropout(
        num_holes_range=(1, 1),
        hole_height_range=(16, 16),
        hole_width_range=(16, 16),
        fill=fill,
        p=p,
    )


def _cutout(fill, p: float) -> A.Sequential:
    """1.x ``Cutout(1, 16, 16)``: hole centre uniform over the image, clipped at the border."""
    return A.Sequential(
        [
            A.PadIfNeeded(48, 48, border_mode=cv2.BORDER_CONSTANT, fill=0),
            _one_hole(fill, p=1.0),
            A.CenterCrop(32, 32),
        ],
        p=p,
    )


def _shift_scale_rotate(shift: float, scale: float, rotate: float, p: float) -> A.Affine:
    """1.x ``ShiftScaleRotate`` with linear interpolation and BORDER_REFLECT_101."""
    return A.Affine(
        translate_percent=(-shift, shift),
        scale=(1.0 - scale, 1.0 + scale),
        rotate=(-rotate, rotate),
        interpolation=cv2.INTER_LINEAR,
        border_mode=cv2.BORDER_REFLECT_101,
        p=p,
    )


def s7_train(mean: Stats, std: Stats) -> A.Compose:
    """EVA6 S7 (and S7 mixed): flip, shift-scale-rotate, to-gray, normalise, one 16x16 hole.

    The hole comes after Normalize and is filled with the channel *means* as numbers, so in
    normalised units it holds (0.491, 0.482, 0.447), as the seed's did (docs/SEEDS.md section 1).

    Args:
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The pipeline: uint8 HWC image in, normalised float32 HWC out.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            _shift_scale_rotate(0.0625, 0.1, 45, p=0.5),
            A.ToGray(p=0.5),
            _normalize(mean, std),
            _one_hole(tuple(float(m) for m in mean), p=0.5),
            ToTensorV2(),
        ]
    )


def attention_train(mean: Stats, std: Stats) -> A.Compose:
    """EVA8 S9: rotate +-5 deg, normalise, pad to 40 and random crop 32, Cutout 16x16 (p 0.5).

    The seed README lists the rotation; the function its run called had none (docs/SEEDS.md
    section 2): the README's pipeline is followed. The pad and the cutout come after
    Normalize and fill with the channel means' raw values (pad) and 0 (cutout), as the seed.

    Args:
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The pipeline: uint8 HWC image in, normalised float32 HWC out.
    """
    return A.Compose(
        [
            A.Rotate(
                limit=(-5, 5),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
            _normalize(mean, std),
            A.PadIfNeeded(
                40, 40, border_mode=cv2.BORDER_CONSTANT, fill=tuple(float(m) for m in mean)
            ),
            A.RandomCrop(32, 32),
            _cutout(0.0, p=0.5),
            ToTensorV2(),
        ]
    )


def c1c2c3c40_train(mean: Stats, std: Stats) -> A.Compose:
    """ERA-V1 S9: flip, shift-scale-rotate (defaults), one black 16x16 hole (p 0.5), normalise.

    The seed filled the hole with the fractional means on the uint8 image, which cast to 0:
    the hole was black, so it is filled with 0 before Normalize here (docs/SEEDS.md section 3).

    Args:
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The pipeline: uint8 HWC image in, normalised float32 HWC out.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            _shift_scale_rotate(0.0625, 0.1, 45, p=0.5),
            _one_hole(0, p=0.5),
            _normalize(mean, std),
            ToTensorV2(),
        ]
    )


def resnet18_train(mean: Stats, std: Stats) -> A.Compose:
    """ERA-V1 S11: colour jitter, to-gray, reflect-pad 4 + random crop, flip, Cutout (p 1).

    The seed ran Normalize first, so its jitter and to-gray worked on normalised floats,
    which albumentations assumes lie in [0, 1]; here they run on the uint8 image as
    intended, then Normalize. The cutout is the seed's pad-to-64, one 16x16 hole of 0,
    centre-crop-32: it may fall partly or wholly outside the image (docs/SEEDS.md section 4).

    Args:
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The pipeline: uint8 HWC image in, normalised float32 HWC out.
    """
    return A.Compose(
        [
            A.ColorJitter(brightness=0, contrast=0.1, saturation=0.2, hue=0.1, p=0.5),
            A.ToGray(p=0.2),
            A.PadIfNeeded(40, 40, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(32, 32),
            A.HorizontalFlip(p=0.5),
            _normalize(mean, std),
            A.PadIfNeeded(64, 64, border_mode=cv2.BORDER_CONSTANT, fill=0),
            _one_hole(0.0, p=1.0),
            A.CenterCrop(32, 32),
            ToTensorV2(),
        ]
    )


def resnet18_ln_train(mean: Stats, std: Stats) -> A.Compose:
    """EVA6 S8: reflect-pad 4 + random crop, rotate +-5 deg, one 16x16 hole of the mean colour.

    The hole is filled with mean x 255 on the uint8 image before Normalize, i.e. with the
    data set's mean colour (docs/SEEDS.md section 5, the run-time recipe).

    Args:
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The pipeline: uint8 HWC image in, normalised float32 HWC out.
    """
    return A.Compose(
        [
            A.PadIfNeeded(40, 40, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(32, 32),
            A.Rotate(
                limit=(-5, 5),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
            _one_hole(tuple(round(255 * m) for m in mean), p=0.5),
            _normalize(mean, std),
            ToTensorV2(),
        ]
    )


def flip_translate_train(mean: Stats, std: Stats) -> A.Compose:
    """Flip and reflect-pad-2 random-crop translate, the speed-run recipes' augmentation.

    Args:
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The pipeline: uint8 HWC image in, normalised float32 HWC out.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.PadIfNeeded(36, 36, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(32, 32),
            _normalize(mean, std),
            ToTensorV2(),
        ]
    )


def crop4_flip_train(mean: Stats, std: Stats) -> A.Compose:
    """kuangliu/pytorch-cifar's: torchvision ``RandomCrop(32, padding=4)`` (zero padding:
    black borders before normalisation) and ``RandomHorizontalFlip``, for the model zoo's
    reference recipes.

    Args:
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The pipeline: uint8 HWC image in, normalised float32 HWC out.
    """
    return A.Compose(
        [
            A.PadIfNeeded(40, 40, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(32, 32),
            A.HorizontalFlip(p=0.5),
            _normalize(mean, std),
            ToTensorV2(),
        ]
    )


def eval_transform(mean: Stats, std: Stats) -> A.Compose:
    """Normalise only: the test pipeline of every seed.

    Args:
        mean: per-channel means, 3 values in [0, 1] units.
        std: per-channel standard deviations, 3 values in [0, 1] units.

    Returns:
        A ``Compose`` taking a uint8 HWC image (``image=``) and giving a float32 CHW
        tensor, ``(x / 255 - mean) / std``.
    """
    return A.Compose([_normalize(mean, std), ToTensorV2()])


AUGMENTATIONS: dict[str, Builder] = {
    "s7": s7_train,
    "attention": attention_train,
    "c1c2c3c40": c1c2c3c40_train,
    "resnet18": resnet18_train,
    "resnet18_ln": resnet18_ln_train,
    "flip_translate": flip_translate_train,
    "crop4_flip": crop4_flip_train,
    "none": eval_transform,
}


def build_augmentation(name: str, mean: Stats, std: Stats) -> A.Compose:
    """The named training pipeline for a data set with per-channel ``mean`` and ``std``
    (in [0, 1] units).

    Args:
        name: a key of ``AUGMENTATIONS``.
        mean: the data set's per-channel mean, [0, 1] units.
        std: its per-channel standard deviation, [0, 1] units.

    Returns:
        The albumentations pipeline: uint8 HWC image in, normalised float32 HWC out.

    Raises:
        FastCifarError: unknown name (the message lists the valid ones).
    """
    if name not in AUGMENTATIONS:
        raise FastCifarError(
            f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}"
        )
    return AUGMENTATIONS[name](mean, std)
