"""Test-time augmentation (TTA): the logits of several views of each test image, averaged.

``TTA_MODES`` (the recipe's ``tta`` field):

* ``none``: the image alone;
* ``flip``: the image and its mirror image, averaged with weights 1/2 each;
* ``flip_translate``: six views, the record's level-2 TTA (cifar10-airbench
  ``airbench94_muon.py``, ``infer_mirror_translate``): the image and its mirror (weight
  1/4 each), and the image shifted by one pixel up-left and by one pixel down-right
  (reflect padding, then a 32x32 crop at offset (0, 0) and (2, 2)), each with its mirror
  image (weight 1/8 each).

``uncertain_fraction`` < 1 spends the views only on the least-confident fraction of the
images (highest softmax probability lowest), keeping the single-view logits for the rest:
the Hiverge cifar10-speedrun's improvement on the record (its code uses 0.25, a quarter).

Inputs are normalised images (N, 3, H, W) in any float dtype and memory format; outputs are
float32 logits (N, classes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip_translate")

Forward = Callable[[torch.Tensor], torch.Tensor]


def tta_views(x: torch.Tensor, mode: str) -> list[tuple[torch.Tensor, float]]:
    """The views of ``x`` (N, C, H, W) that ``mode`` averages, each with its weight (the
    weights sum to 1).

    Args:
        x: images (N, C, H, W).
        mode: a mode of ``TTA_MODES``.

    Returns:
        (view, weight) pairs, each view (N, C, H, W).

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "none":
        return [(x, 1.0)]
    if mode == "flip":
        return [(x, 0.5), (x.flip(-1), 0.5)]
    if mode == "flip_translate":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left = padded[..., 0:h, 0:w]  # content moves one pixel right and down
        down_right = padded[..., 2 : h + 2, 2 : w + 2]
        return [
            (x, 0.25),
            (x.flip(-1), 0.25),
            (up_left, 0.125),
            (up_left.flip(-1), 0.125),
            (down_right, 0.125),
            (down_right.flip(-1), 0.125),
        ]
    raise ValueError(f"unknown TTA mode {mode!r}: choose one of {', '.join(TTA_MODES)}")


def _weighted_views(forward: Forward, x: torch.Tensor, mode: str, batch_size: int):
    parts = []
    for chunk in x.split(batch_size):
        parts.append(sum(w * forward(v).float() for v, w in tta_views(chunk, mode)))
    return torch.cat(parts)


def tta_logits(
    forward: Forward,
    x: torch.Tensor,
    mode: str,
    uncertain_fraction: float = 1.0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Weighted mean of ``forward`` over the views of every image of ``x`` (N, C, H, W):
    float32 logits (N, classes), ``forward`` called on at most ``batch_size`` images (default
    all) at a time.

    With ``uncertain_fraction`` < 1, only the ``ceil(fraction * N)`` images whose
    single-view softmax confidence is lowest over the whole of ``x`` get the views; the
    rest keep their single-view logits. Runs without host synchronisation (``topk`` and
    ``index_copy`` on the device).

    Args:
        forward: ``images -> logits``.
        x: images (N, C, H, W) on the model's device.
        mode: a mode of ``TTA_MODES``.
        uncertain_fraction: the share of images that get the views, in (0, 1].
        batch_size: images a forward call, or None for all.

    Returns:
        float32 logits (N, classes).

    Raises:
        ValueError: an unknown mode.
    """
    batch_size = batch_size or max(1, len(x))
    if mode == "none" or uncertain_fraction >= 1.0:
        return _weighted_views(forward, x, mode, batch_size)
    tta_views(x[:1], mode)  # an unknown mode raises here
    logits = _weighted_views(forward, x, "none", batch_size)
    k = math.ceil(uncertain_fraction * len(x) - 1e-9)
    if k == 0:
        return logits
    confidence = logits.softmax(1).amax(1)
    idx = confidence.topk(k, largest=False).indices
    views = _weighted_views(forward, x[idx], mode, batch_size)
    return logits.index_copy(0, idx, views)
