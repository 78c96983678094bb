"""Test-set metrics of a model: predictions (optionally with flip TTA), the confusion
matrix, and which misclassified images to show."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["confusion_matrix", "misclassified", "predict"]


@torch.no_grad()
def predict(model: nn.Module, loader, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class (N,), true labels (N,)) over a loader; with ``tta`` the logits of
    each image and its mirror image are averaged, as the training run evaluated."""
    preds, labels = [], []
    for x, y in loader:
        out = model(x.float())
        if tta:
            out = (out + model(x.float().flip(-1))) / 2
        preds.append(out.argmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """(k, k) counts: row = actual class, column = predicted class."""
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def misclassified(preds: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of the first ``n`` misclassified images in a fixed shuffled order."""
    order = np.random.default_rng(seed).permutation(len(labels))
    wrong = order[preds[order] != labels[order]]
    return wrong[:n]
