"""Evaluate a run: ``python -m fastcifar.evaluate RUN_DIR`` (also run at the end of training).

Writes into the run directory (PNG figures at 120 dpi):

* ``eval.json``: test accuracy, per-class accuracy, the confusion matrix and the indices
  of the misclassified images shown;
* ``confusion_matrix.png``: rows actual class, columns predicted, counts;
* ``misclassified.png``: the first N misclassified test images (default 20, as the seeds
  showed), each titled "predicted / actual". "First" is in a fixed shuffled order of the
  test set (seed 0), like the seeds' shuffled test loaders, so the classes mix;
* ``gradcam_<layer>.png``: Grad-CAM (Selvaraju et al., ICCV 2017, with the ``grad-cam``
  package) overlays for the predicted class on those same images, for the model's last
  convolutional block or each ``--cam-layers`` layer;
* ``curves.png`` (loss and accuracy per epoch, train and test), ``lr.png`` (learning rate
  per step), ``augmented.png`` (five augmented training samples per class);
* ``report.html`` and ``report.md``: all of the above with the run's configuration and
  summary.

The model is rebuilt from ``last.pt`` as a plain eager float32 module, so runs trained
with AMP, channels_last, torch.compile or the Triton kernels evaluate the same way and
the training model is never touched; Grad-CAM runs with gradients on, on that copy.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastcifar.data import CLASSES, EvalLoader, build_augmentation, load_cifar10, stratified_subset
from fastcifar.errors import FastCifarError, run_cli
from fastcifar.models import MODELS, create_model
from fastcifar.rundir import load_checkpoint


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------ model and data


def load_model(run_dir: Path, checkpoint: str = "last.pt", device="cpu") -> tuple[nn.Module, dict]:
    """The run's model as an eager float32 module in eval mode, and the checkpoint dict.

    Raises:
        FastCifarError: no such checkpoint, or it does not load.
    """
    path = run_dir / checkpoint
    if not path.exists():
        raise FastCifarError(
            f"{run_dir} has no {checkpoint}: evaluate a run directory after its first epoch"
        )
    ckpt = load_checkpoint(path, device, "train the run again or pass another run directory")
    try:
        model = create_model(ckpt["recipe"]["model"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise FastCifarError(
            f"checkpoint {path} does not fit its model ({type(exc).__name__}): train the run "
            f"again or pass another run directory"
        ) from None
    return model.float().to(device).eval(), ckpt


def eager_float32_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that Grad-CAM can hook: the eager module behind
    torch.compile, float32, contiguous memory, PyTorch's convolutions (not Triton's)."""
    import copy

    from fastcifar.nn import Conv2d, FusedConvReLUBN

    base = getattr(model, "_orig_mod", model)
    clone = copy.deepcopy(base).float().to(memory_format=torch.contiguous_format)
    for m in clone.modules():
        if isinstance(m, Conv2d):
            m.uses_triton = False
        if isinstance(m, FusedConvReLUBN):
            m.__class__ = nn.Sequential
    return clone


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


def grad_cam(model: nn.Module, images: torch.Tensor, targets, layer: str) -> np.ndarray:
    """Grad-CAM maps (K, H, W) in [0, 1] for ``targets`` (class per image) at ``layer``.

    Runs on an eager float32 copy with gradients on; ``model`` is left as it was.

    Raises:
        FastCifarError: ``layer`` is not a module of the model (the message lists some).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    clone = eager_float32_copy(model)
    try:
        target_layer = clone.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in clone.named_children()]
        raise FastCifarError(
            f"--cam-layers {layer!r} is not a layer of the model: try one of {', '.join(names)}"
        ) from None
    device = next(clone.parameters()).device
    with torch.enable_grad(), GradCAM(model=clone, target_layers=[target_layer]) as cam:
        maps = cam(
            input_tensor=images.float().to(device),
            targets=[ClassifierOutputTarget(int(t)) for t in targets],
        )
    return np.asarray(maps, dtype=np.float32)


# ------------------------------------------------------------------------ figures


def image_grid(images: np.ndarray, titles: list[str], path: Path, cols: int = 5, title=None):
    """Save uint8 (K, H, W, 3) images as a grid with one title each."""
    plt = _plt()
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(t, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if title else None)
    fig.savefig(path, dpi=120)
    return fig


def plot_confusion(cm: np.ndarray, path: Path):
    plt = _plt()
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


def plot_curves(metrics: list[dict], path: Path):
    plt = _plt()
    epochs = [m["epoch"] for m in metrics]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    a.plot(epochs, [m["test_loss"] for m in metrics], "o-", label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [m["train_acc"] for m in metrics], "o-", label="train")
    b.plot(epochs, [m["test_acc"] for m in metrics], "o-", label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (%)")
    b.legend()
    from matplotlib.ticker import MaxNLocator

    for axis in (a, b):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lr(lrs: list[float], path: Path):
    plt = _plt()
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


def augmented_samples(recipe: dict, arrays, mean, std, per_class: int = 5, seed: int = 0):
    """(images uint8 (10 * per_class, 32, 32, 3), titles): the recipe's augmentation applied
    to the first training images of each class."""
    pipe = build_augmentation(recipe["augmentation"], mean, std)
    pipe.set_random_seed(seed)
    images, titles = [], []
    for label, name in enumerate(CLASSES):
        idx = np.flatnonzero(arrays.train_labels == label)[:per_class]
        batch = torch.stack([pipe(image=arrays.train_images[i])["image"] for i in idx])
        images.extend(denormalize(batch, mean, std))
        titles.extend([name] * len(idx))
    return np.stack(images), titles


# ------------------------------------------------------------------------ the run


def evaluate_run(
    run_dir: Path,
    n_misclassified: int = 20,
    cam_layers: list[str] | None = None,
    device: str = "cpu",
    tensorboard: bool | None = None,
    data: str | None = None,
) -> dict:
    """Write the evaluation files listed in the module docstring; return eval.json's dict.

    Raises:
        FastCifarError: not a run directory, no checkpoint, an unknown CAM layer.
    """
    from fastcifar.rundir import read_config

    run_dir = Path(run_dir)
    recipe, options = read_config(run_dir)
    if n_misclassified < 1:
        raise FastCifarError(f"--misclassified {n_misclassified} is below 1: pass 1 or more")
    model, ckpt = load_model(run_dir, device=device)
    mean, std = ckpt["mean"], ckpt["std"]
    arrays = load_cifar10(data or options.data)
    test_x, test_y = arrays.test_images, arrays.test_labels
    if options.test_subset:
        idx = stratified_subset(test_y, options.test_subset, seed=0, flag="--test-subset")
        test_x, test_y = test_x[idx], test_y[idx]
    loader = EvalLoader(test_x, test_y, mean, std, batch_size=500, device=torch.device(device))
    preds, labels = predict(model, loader, tta=recipe.tta)
    cm = confusion_matrix(preds, labels)
    per_class = {
        c: (100.0 * cm[i, i] / cm[i].sum()) if cm[i].sum() else None for i, c in enumerate(CLASSES)
    }
    wrong = misclassified(preds, labels, n_misclassified)

    plot_confusion(cm, run_dir / "confusion_matrix.png")
    titles = [f"{CLASSES[preds[i]]} / {CLASSES[labels[i]]}" for i in wrong]
    plt = _plt()
    figures = {}
    if len(wrong):
        fig = image_grid(
            test_x[wrong],
            titles,
            run_dir / "misclassified.png",
            title="misclassified: predicted / actual",
        )
        figures["misclassified"] = fig
        xs = next(iter(EvalLoader(test_x[wrong], test_y[wrong], mean, std, len(wrong), device)))[0]
        for layer in cam_layers or [MODELS[recipe.model].cam_layer]:
            maps = grad_cam(model, xs, preds[wrong], layer)
            overlays = _overlay(test_x[wrong], maps)
            fig = image_grid(
                overlays,
                titles,
                run_dir / f"gradcam_{layer}.png",
                title=f"Grad-CAM at {layer} (predicted class)",
            )
            figures[f"gradcam/{layer}"] = fig
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    plot_curves(metrics, run_dir / "curves.png")
    lr_path = run_dir / "lr.json"
    if lr_path.exists():
        plot_lr(json.loads(lr_path.read_text()), run_dir / "lr.png")
    aug, aug_titles = augmented_samples(asdict_recipe(recipe), arrays, mean, std)
    plt.close(
        image_grid(
            aug,
            aug_titles,
            run_dir / "augmented.png",
            title=f"augmentation '{recipe.augmentation}': five per class",
        )
    )

    result = {
        "test_acc": 100.0 * float((preds == labels).mean()),
        "test_images": int(len(labels)),
        "per_class_acc": per_class,
        "confusion_matrix": cm.tolist(),
        "misclassified_indices": [int(i) for i in wrong],
        "cam_layers": cam_layers or [MODELS[recipe.model].cam_layer],
        "checkpoint_epoch": ckpt["state"]["epoch"],
    }
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    if tensorboard if tensorboard is not None else options.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir / "tensorboard")) as writer:
            for tag, fig in figures.items():
                writer.add_figure(tag, fig, global_step=result["checkpoint_epoch"])
    for fig in figures.values():
        plt.close(fig)
    write_report(run_dir, recipe, result, metrics)
    return result


def asdict_recipe(recipe) -> dict:
    from dataclasses import asdict

    return asdict(recipe)


def _overlay(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return np.stack(
        [
            show_cam_on_image(img.astype(np.float32) / 255, m, use_rgb=True)
            for img, m in zip(images, maps, strict=True)
        ]
    )


def write_report(run_dir: Path, recipe, result: dict, metrics: list[dict]) -> None:
    """report.html and report.md beside the figures (relative links)."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    figures = [
        ("Loss and accuracy", "curves.png"),
        ("Learning rate per step", "lr.png"),
        ("Confusion matrix", "confusion_matrix.png"),
        ("Misclassified test images", "misclassified.png"),
        *[(f"Grad-CAM at {layer}", f"gradcam_{layer}.png") for layer in result["cam_layers"]],
        ("Augmented training samples", "augmented.png"),
    ]
    figures = [(t, f) for t, f in figures if (run_dir / f).exists()]
    rows = [("test accuracy", f"{result['test_acc']:.2f} % on {result['test_images']} images")]
    rows += [(k, v) for k, v in summary.items() if k != "versions"]
    per_class = [
        (c, f"{a:.1f} %" if a is not None else "-") for c, a in result["per_class_acc"].items()
    ]
    cfg = [(k, v) for k, v in asdict_recipe(recipe).items()]

    def table(pairs):
        body = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in pairs
        )
        return f"<table>{body}</table>"

    parts = [
        f"<html><head><meta charset='utf-8'><title>fastcifar run {html.escape(run_dir.name)}"
        "</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td{padding:2px 10px;border-bottom:1px solid #ddd}img{max-width:100%}</style></head><body>",
        f"<h1>Run {html.escape(run_dir.name)}: {html.escape(recipe.name)}</h1>",
        "<h2>Summary</h2>",
        table(rows),
        "<h2>Per-class accuracy</h2>",
        table(per_class),
    ]
    for title, name in figures:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{name}' alt='{html.escape(title)}'>")
    parts += ["<h2>Recipe</h2>", table(cfg), "</body></html>"]
    (run_dir / "report.html").write_text("\n".join(parts))

    md = [f"# Run {run_dir.name}: {recipe.name}", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows]
    md += ["", "## Per-class accuracy", "", "| class | accuracy |", "|---|---|"]
    md += [f"| {c} | {a} |" for c, a in per_class]
    for title, name in figures:
        md += ["", f"## {title}", "", f"![{title}]({name})"]
    md += ["", "## Recipe", "", "| field | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in cfg]
    (run_dir / "report.md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastcifar.evaluate",
        description="Evaluate a run directory: accuracy, confusion matrix, misclassified "
        "images, Grad-CAM, curves, augmented samples and a report.",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--misclassified",
        type=int,
        default=20,
        metavar="N",
        help="misclassified images to show (default 20)",
    )
    p.add_argument(
        "--cam-layers",
        help="comma-separated layers for Grad-CAM, e.g. "
        "layer1,layer2,layer3,layer4 (default: the last convolutional block)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--data", help="CIFAR-10 source (default: the one the run trained on)")
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also log the figures to RUN_DIR/tensorboard (default: as trained)",
    )
    args = p.parse_args(argv)
    layers = (
        [x.strip() for x in args.cam_layers.split(",") if x.strip()] if args.cam_layers else None
    )
    result = evaluate_run(
        Path(args.run_dir), args.misclassified, layers, args.device, args.tensorboard, args.data
    )
    print(
        f"test accuracy {result['test_acc']:.2f} % on {result['test_images']} images; "
        f"report {Path(args.run_dir) / 'report.html'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
