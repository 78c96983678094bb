"""Test-set metrics of a model: predictions (with the recipe's TTA), the confusion
matrix, and which misclassified images to show."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastcifar.engine.tta import tta_logits

__all__ = ["confusion_matrix", "misclassified", "predict"]


@torch.no_grad()
def predict(
    model: nn.Module, loader, tta: str = "none", tta_fraction: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class (N,), true labels (N,)) over a loader, with the recipe's test-time
    augmentation (``fastcifar.engine.tta``: ``none``, ``flip``, ``flip_translate``) as the training
    run's final evaluation.

    Args:
        model: the model, on the loader's device.
        loader: an ``EvalLoader`` of (images, labels) batches.
        tta: the test-time augmentation.
        tta_fraction: the share of the least confident images that get it, in (0, 1].

    Returns:
        int64 arrays (predicted, labels).
    """
    xs, labels = [], []
    for x, y in loader:
        xs.append(x.float())
        labels.append(y.cpu())
    logits = tta_logits(model, torch.cat(xs), tta, tta_fraction, batch_size=loader.batch_size)
    return logits.argmax(1).cpu().numpy(), torch.cat(labels).numpy()


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """(k, k) counts: row = actual class, column = predicted class.

    Args:
        preds: int (N,) predicted classes.
        labels: int (N,) true classes.
        k: classes.

    Returns:
        int64 (k, k).
    """
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def misclassified(preds: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of the first ``n`` misclassified images in a fixed shuffled order.

    Args:
        preds: int (N,) predicted classes.
        labels: int (N,) true classes.
        n: at most this many.
        seed: the shuffle's seed.

    Returns:
        int64 indices into ``preds``.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    wrong = order[preds[order] != labels[order]]
    return wrong[:n]
