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
    """matplotlib.pyplot on the Agg backend (no display needed).

    Returns:
        The ``matplotlib.pyplot`` module.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(
    images: np.ndarray,
    titles: list[str],
    path: Path,
    cols: int = 5,
    title=None,
    colorbar: str | None = None,
):
    """Save uint8 (K, H, W, 3) images as a grid with one title each (two lines at most),
    under ``title``; ``colorbar`` adds the jet colour scale from 0 to 1 with that label
    (the Grad-CAM overlays' colours). Returns the open figure.

    The geometry is fixed in inches (a 1.6-inch image per cell, its title lines above
    it), so no layout engine runs: matplotlib's constrained layout took 1-3 s a grid on
    a 2-core CPU, most of an evaluation's figure time.

    Args:
        images: uint8 (K, H, W, 3).
        titles: one per image.
        path: the PNG to write.
        cols: images a row.
        title: the figure's title, or None.
        colorbar: the colour scale's label, or None for none.

    Returns:
        The matplotlib figure, still open.
    """
    plt = plt_agg()
    rows = max(1, -(-len(images) // cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    side, pad = 1.6, 0.15  # an image's side and the margin around the grid, inches
    cell_w, cell_h = side + 0.3, side + 0.16 * lines + 0.15  # the title's 8 pt lines
    head = 0.22 * (title.count("\n") + 1) + 0.1 if title else 0.0
    bar_label = []
    if colorbar:  # the colour scale's label, 8 pt, wrapped to the bar's height
        import textwrap

        bar_label = textwrap.wrap(colorbar, max(12, int((rows * cell_h - 0.3) * 72 / 4.6)))
    bar = 0.85 + 0.15 * len(bar_label) if colorbar else 0.0  # scale, ticks, label lines
    width, height = cols * cell_w + 2 * pad + bar, rows * cell_h + head + 2 * pad
    fig = plt.figure(figsize=(width, height))
    for i, (img, t) in enumerate(zip(images, titles, strict=False)):
        r, c = divmod(i, cols)
        left = pad + c * cell_w + (cell_w - side) / 2
        bottom = height - pad - head - (r + 1) * cell_h
        ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
        ax.axis("off")
        ax.imshow(img, interpolation="nearest")
        ax.set_title(t, fontsize=8, linespacing=1.1)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - pad / height, va="top")
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        grid_h = rows * cell_h - 0.3
        cax = fig.add_axes(
            (
                (width - pad - bar + 0.15) / width,
                (pad + 0.15) / height,
                0.15 / width,
                grid_h / height,
            )
        )
        fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap="jet"), cax=cax)
        cax.tick_params(labelsize=8)
        cax.set_ylabel("\n".join(bar_label), fontsize=8)
    fig.savefig(path, dpi=120)
    return fig


def plot_confusion(cm: np.ndarray, path: Path):
    """The confusion matrix as a PNG: counts in blue shades, each cell's count written in it, rows
    the actual class, columns the predicted one.

    Args:
        cm: int (10, 10) counts (``metrics.confusion_matrix``).
        path: the PNG to write.
    """
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


def plot_curves(
    metrics: list[dict], path: Path, title: str = "", step_losses: list[float] | None = None
):
    """Loss and accuracy against epochs (x from 0 to the last epoch), train and test, the
    best test accuracy marked (a star, named in the legend, inside the frame).

    ``step_losses`` (every optimizer step's training loss, losses.json): drawn as a thin
    line at fractional epochs behind the per-epoch points, so that a short run (one epoch:
    every newcomer's first report) shows how its loss fell, not a lone dot.

    Args:
        metrics: the per-epoch rows (metrics.jsonl's).
        path: the PNG to write.
        title: the figure's title.
        step_losses: every step's training loss, or None.
    """
    plt = plt_agg()
    epochs = [m["epoch"] for m in metrics]
    best = max(metrics, key=lambda m: m["test_acc"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.0))
    fig.suptitle(f"{title}: loss and accuracy per epoch" if title else "loss and accuracy")
    if step_losses:
        steps = np.arange(1, len(step_losses) + 1) / len(step_losses) * epochs[-1]
        a.plot(
            steps,
            step_losses,
            "-",
            color="C0",
            alpha=0.35,
            linewidth=0.8,
            label="train, every step",
        )
    a.plot(epochs, [m["train_loss"] for m in metrics], "o-", color="C0", label="train (epoch)")
    a.plot(epochs, [m["test_loss"] for m in metrics], "o-", color="C1", label="test")
    a.set_ylabel("loss")
    b.plot(epochs, [m["train_acc"] for m in metrics], "o-", color="C0", label="train")
    b.plot(epochs, [m["test_acc"] for m in metrics], "o-", color="C1", label="test")
    b.plot(
        [best["epoch"]],
        [best["test_acc"]],
        "*",
        color="black",
        markersize=12,
        label=f"best test {best['test_acc']:.2f} % (epoch {best['epoch']})",
    )
    b.set_ylabel("accuracy (%)")
    from matplotlib.ticker import MaxNLocator

    for axis in (a, b):
        axis.set_xlabel("epoch")
        axis.set_xlim(0, epochs[-1] + 0.05 * max(epochs[-1], 1))
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.margins(y=0.15)
        axis.legend(loc="best", fontsize=8)
    a.set_title("loss (lower is better)", fontsize=10)
    b.set_title("accuracy", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lr(lrs: list[float], path: Path):
    """The learning rate of every optimizer step (lr.json) as a PNG.

    Args:
        lrs: one learning rate a step.
        path: the PNG to write.
    """
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(lrs) + 1), lrs, "o-" if len(lrs) < 20 else "-", markersize=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate per step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised float (K, 3, H, W) -> uint8 (K, H, W, 3) for display.

    Args:
        x: normalised float (K, 3, H, W), any device.
        mean: per-channel mean, [0, 1] units.
        std: per-channel standard deviation, [0, 1] units.

    Returns:
        uint8 (K, H, W, 3) on the CPU.
    """
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    img = (x.float().cpu() * s + m).clamp(0, 1)
    return (img.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def augmented_samples(augmentation: str, arrays, mean, std, per_class: int = 5, seed: int = 0):
    """(images uint8 (10 * per_class, 32, 32, 3), titles): the recipe's ``augmentation``
    applied to the first ``per_class`` training images of each class, by the code that
    trains with it: the albumentations pipeline (``fastcifar.data.augment``, also what the
    DALI loader is checked against) when it has one, else the gpu loader's batched tensor
    operations (``fastcifar.data.gpu_loader.GPU_AUGMENTATIONS``), run here on the CPU.

    Args:
        augmentation: the recipe's augmentation name.
        arrays: the data set (``CifarArrays``).
        mean: per-channel mean, [0, 1] units.
        std: per-channel standard deviation, [0, 1] units.
        per_class: images of each class.
        seed: the augmentation's random seed.

    Returns:
        (images, titles) as above, titles the class names.

    Raises:
        FastCifarError: ``augmentation`` is in neither table (the message lists both).
    """
    from fastcifar.data.augment import AUGMENTATIONS
    from fastcifar.data.gpu_loader import GPU_AUGMENTATIONS, GpuLoader
    from fastcifar.data.loaders import LoaderConfig

    idx = np.concatenate(
        [np.flatnonzero(arrays.train_labels == label)[:per_class] for label in range(len(CLASSES))]
    )
    titles = [CLASSES[label] for label in arrays.train_labels[idx]]
    if augmentation in AUGMENTATIONS or augmentation not in GPU_AUGMENTATIONS:
        pipe = build_augmentation(augmentation, mean, std)  # unknown names: its error
        pipe.set_random_seed(seed)
        batch = torch.stack([pipe(image=arrays.train_images[i])["image"] for i in idx])
        return denormalize(batch, mean, std), titles
    config = LoaderConfig(
        augmentation, mean, std, batch_size=len(idx), shuffle=False, seed=seed, workers=0
    )
    loader = GpuLoader(arrays.train_images[idx], arrays.train_labels[idx], config)
    batch, _ = next(iter(loader))
    return denormalize(batch, mean, std), titles
