"""The evaluation's figures (PNG, 120 dpi, matplotlib's Agg backend): image grids,
the confusion matrix, loss/accuracy curves, the learning rate per step, and augmented
training samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastcifar.data import CLASSES, build_augmentation

__all__ = [
    "augmented_samples",
    "denormalize",
    "image_grid",
    "plot_confusion",
    "plot_curves",
    "plot_lr",
    "plt_agg",
]


def plt_agg():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: np.ndarray, titles: list[str], path: Path, cols: int = 5, title=None,
               colorbar: str | None = None):  # fmt: skip
    """Save uint8 (K, H, W, 3) images as a grid with one title each (two lines at most),
    under ``title``; ``colorbar`` adds the jet colour scale from 0 to 1 with that label
    (the Grad-CAM overlays' colours). Returns the open figure."""
    plt = plt_agg()
    rows = max(1, -(-len(images) // cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    head = 0.5 * (title.count("\n") + 1) if title else 0.0
    cell_h = 1.75 + 0.2 * lines  # the image and its title lines, apart from the next row
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * cell_h + head + 0.2),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(t, fontsize=8, linespacing=1.1)
    if title:
        fig.suptitle(title, fontsize=10)
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(norm=Normalize(0, 1), cmap="jet")
        fig.colorbar(mappable, ax=axes, label=colorbar, fraction=0.03, pad=0.02)
    fig.savefig(path, dpi=120)
    return fig


def plot_confusion(cm: np.ndarray, path: Path):
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(10), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(10):
        for j in range(10):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_title("confusion matrix (test set)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(metrics: list[dict], path: Path, title: str = ""):
    """Loss and accuracy per epoch, train and test, the best test accuracy marked."""
    plt = plt_agg()
    epochs = [m["epoch"] for m in metrics]
    best = max(metrics, key=lambda m: m["test_acc"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.0))
    fig.suptitle(f"{title}: loss and accuracy per epoch" if title else "loss and accuracy")
    a.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    a.plot(epochs, [m["test_loss"] for m in metrics], "o-", label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [m["train_acc"] for m in metrics], "o-", label="train")
    b.plot(epochs, [m["test_acc"] for m in metrics], "o-", label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (%)")
    for axis in (a, b):
        axis.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1)
    right = best["epoch"] > epochs[len(epochs) // 2]  # the label on the emptier side
    b.annotate(f"best {best['test_acc']:.2f} % (epoch {best['epoch']})",
               (best["epoch"], best["test_acc"]), textcoords="offset points",
               xytext=(-6 if right else 6, 6), ha="right" if right else "left",
               fontsize=9)  # fmt: skip
    a.set_title("loss (lower is better)", fontsize=10)
    b.set_title("accuracy", fontsize=10)
    b.legend(loc="best")
    from matplotlib.ticker import MaxNLocator

    for axis in (a, b):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lr(lrs: list[float], path: Path):
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(lrs) + 1), lrs)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate per step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised float (K, 3, H, W) -> uint8 (K, H, W, 3) for display."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    img = (x.float().cpu() * s + m).clamp(0, 1)
    return (img.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def augmented_samples(augmentation: str, arrays, mean, std, per_class: int = 5, seed: int = 0):
    """(images uint8 (10 * per_class, 32, 32, 3), titles): the recipe's ``augmentation``
    applied to the first training images of each class."""
    pipe = build_augmentation(augmentation, mean, std)
    pipe.set_random_seed(seed)
    images, titles = [], []
    for label, name in enumerate(CLASSES):
        idx = np.flatnonzero(arrays.train_labels == label)[:per_class]
        batch = torch.stack([pipe(image=arrays.train_images[i])["image"] for i in idx])
        images.extend(denormalize(batch, mean, std))
        titles.extend([name] * len(idx))
    return np.stack(images), titles
