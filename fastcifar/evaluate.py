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
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fastcifar.cli import CommandParser, prog_name
from fastcifar.data import CLASSES, EvalLoader, eval_split, load_cifar10
from fastcifar.engine.rundir import load_checkpoint, read_config, write_summary
from fastcifar.engine.runlock import RunLock
from fastcifar.errors import FastCifarError, run_cli
from fastcifar.evaluation.cam import grad_cam, overlay
from fastcifar.evaluation.figures import (
    augmented_samples,
    image_grid,
    plot_confusion,
    plot_curves,
    plot_lr,
    plt_agg,
)
from fastcifar.evaluation.metrics import confusion_matrix, misclassified, predict
from fastcifar.evaluation.render import write_report
from fastcifar.evaluation.report import NEAR_CHANCE, build_report, reevaluation_note
from fastcifar.models import MODELS, create_model
from fastcifar.roofline.gpus import GPUS
from fastcifar.roofline.run import count_run

# ------------------------------------------------------------------------ model and data


def load_model(run_dir: Path, checkpoint: str = "last.pt", device="cpu") -> tuple[nn.Module, dict]:
    """The run's model as an eager float32 module in eval mode, and the checkpoint dict.

    Args:
        run_dir: the run directory.
        checkpoint: the checkpoint's file name in it (``last.pt`` or ``best.pt``).
        device: where to load the model.

    Returns:
        (model, checkpoint dict).

    Raises:
        FastCifarError: the checkpoint is missing, does not load, or does not fit its model.

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


# ------------------------------------------------------------------------ figures


# ------------------------------------------------------------------------ the run


def evaluate_run(
    run_dir: Path,
    n_misclassified: int = 20,
    cam_layers: list[str] | None = None,
    device: str = "cpu",
    tensorboard: bool | None = None,
    data: str | None = None,
    wall: dict | None = None,
    roofline_gpu: str | None = None,
) -> dict:
    """Write the evaluation files listed in the module docstring; return eval.json's dict.
    ``wall``: the train command's wall-clock parts in seconds (start-up, compile warm-up,
    epochs); this evaluation's own seconds up to the report (the roofline count included)
    are added, and the whole goes into summary.json as ``"wall"``, which the report's
    "wall time" and the train command's closing line both read: one measurement. ``roofline_gpu``:
    the GPU the report's roofline models, over the run's ``--roofline-gpu`` (None: the
    run's; "": none).

    Args:
        run_dir: the run directory.
        n_misclassified: misclassified images shown.
        cam_layers: the layers Grad-CAM explains, or None for the model's own.
        device: where the evaluation runs.
        tensorboard: also write the figures to TensorBoard (None: as the run did).
        data: the data source, or None for the run's.
        wall: the train command's wall-clock parts, or None.
        roofline_gpu: the GPU the report's roofline models, or None.

    Returns:
        eval.json's dict.

    Raises:
        FastCifarError: not a run directory, no checkpoint, an unknown CAM layer.
    """

    started = time.perf_counter()
    run_dir = Path(run_dir)
    recipe, options = read_config(run_dir)
    _check_count(n_misclassified)
    model, ckpt = load_model(run_dir, device=device)
    mean, std = ckpt["mean"], ckpt["std"]
    arrays = load_cifar10(data or options.data)
    test_x, test_y = eval_split(arrays, options.test_subset)
    loader = EvalLoader(test_x, test_y, mean, std, batch_size=500, device=torch.device(device))
    preds, labels = predict(model, loader, recipe.tta, recipe.tta_fraction)
    cm = confusion_matrix(preds, labels)
    wrong = misclassified(preds, labels, n_misclassified)
    layers = cam_layers or [MODELS[recipe.model].cam_layer]
    result = _scores(preds, labels, cm, wrong, layers, ckpt["state"]["epoch"])

    plt = plt_agg()
    plot_confusion(cm, run_dir / "confusion_matrix.png")
    chance = result["test_acc"] < NEAR_CHANCE
    shown = (test_x[wrong], test_y[wrong], preds[wrong])
    figures = _misclassified_figures(run_dir, model, *shown, mean, std, layers, device, chance)
    metrics = _training_figures(run_dir, recipe, arrays, mean, std)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    _close(figures, run_dir, result["checkpoint_epoch"], tensorboard, options.tensorboard, plt)
    summary = _read_summary(run_dir)
    _count_roofline(run_dir, recipe, options, summary.get("device", ""), roofline_gpu)
    _record_wall(run_dir, summary, wall, time.perf_counter() - started)
    report = build_report(run_dir, recipe, result, metrics, summary, MODELS[recipe.model].source)
    write_report(run_dir, report)
    return result


def _read_summary(run_dir: Path) -> dict:
    """summary.json's contents; {} while the run has not finished."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _record_wall(run_dir: Path, summary: dict, wall: dict | None, evaluation_s: float) -> None:
    """The train command's wall-clock parts (``wall``) with this evaluation's seconds, into
    ``summary`` and summary.json: measured once, read by the report and the console."""
    if wall is not None and summary:
        summary["wall"] = {**wall, "evaluation_s": evaluation_s}
        write_summary(run_dir, summary)


def _count_roofline(run_dir: Path, recipe, options, device: str, gpu: str | None) -> None:
    """The report's "Where the time goes" (``count_run``), for ``gpu`` over the run's own
    ``--roofline-gpu`` when given ("": none); a count that fails costs only that section."""
    if gpu is not None:
        options = dataclasses.replace(options, roofline_gpu=gpu or None)
    try:
        count_run(run_dir, recipe, options, device)
    except Exception as exc:  # noqa: BLE001 - any failure of the count: report without it
        print(f"evaluate: roofline count skipped ({type(exc).__name__}: {str(exc)[:200]})")


def _scores(preds, labels, cm, wrong, layers: list[str], epoch: int) -> dict:
    """eval.json's contents: test accuracy (percent) and images, per-class accuracy, the
    confusion matrix (rows true, columns predicted), the misclassified images shown (test
    indices), the Grad-CAM layers and the checkpoint's epoch."""
    return {
        "test_acc": 100.0 * float((preds == labels).mean()),
        "test_images": int(len(labels)),
        "per_class_acc": {
            c: (100.0 * cm[i, i] / cm[i].sum()) if cm[i].sum() else None
            for i, c in enumerate(CLASSES)
        },
        "confusion_matrix": cm.tolist(),
        "misclassified_indices": [int(i) for i in wrong],
        "cam_layers": layers,
        "checkpoint_epoch": epoch,
    }


def _check_count(n_misclassified: int) -> None:
    if n_misclassified < 1:
        raise FastCifarError(f"--misclassified {n_misclassified} is below 1: pass 1 or more")


def _close(figures: dict, run_dir: Path, epoch: int, asked, run_default: bool, plt) -> None:
    """The figures into TensorBoard when asked (``asked``; None: as the run was,
    ``run_default``), then closed."""
    if asked if asked is not None else run_default:
        _to_tensorboard(run_dir, figures, epoch)
    for fig in figures.values():
        plt.close(fig)


def _to_tensorboard(run_dir: Path, figures: dict, epoch: int) -> None:
    """The evaluation's figures into the run's TensorBoard log, at the checkpoint's epoch."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for tag, fig in figures.items():
            writer.add_figure(tag, fig, global_step=epoch)


def _misclassified_figures(
    run_dir, model, images, labels, preds, mean, std, layers, device, near_chance: bool = False
):
    """misclassified.png and one gradcam_<layer>.png per CAM layer for the misclassified
    ``images`` (uint8 (M, 32, 32, 3)) with their ``labels`` and ``preds``; returns the open
    figures by TensorBoard tag (none when nothing was misclassified)."""
    if not len(images):
        return {}
    titles = [f"{CLASSES[p]} /\n{CLASSES[y]}" for p, y in zip(preds, labels, strict=True)]
    grid_title = "Misclassified test images: predicted / actual"
    figures = {
        "misclassified": image_grid(images, titles, run_dir / "misclassified.png", title=grid_title)
    }
    xs = next(iter(EvalLoader(images, labels, mean, std, len(images), device)))[0]
    for layer in layers:
        overlays = overlay(images, grad_cam(model, xs, preds, layer))
        figures[f"gradcam/{layer}"] = image_grid(
            overlays,
            titles,
            run_dir / f"gradcam_{layer}.png",
            title=f"Grad-CAM at {layer} for the predicted class"
            + ("\n(model near chance: the maps show no learned evidence)" if near_chance else ""),
            colorbar="Grad-CAM weight (0: none, 1: the map's maximum)",
        )
    return figures


def _training_figures(run_dir, recipe, arrays, mean, std) -> list[dict]:
    """curves.png (per-epoch metrics), lr.png (every step's lr, when recorded) and
    augmented.png (five augmented training images per class); returns the metrics rows."""
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses_path = run_dir / "losses.json"
    step_losses = json.loads(losses_path.read_text()) if losses_path.exists() else None
    plot_curves(
        metrics,
        run_dir / "curves.png",
        title=f"{recipe.model}, recipe {recipe.name}",
        step_losses=step_losses,
    )
    lr_path = run_dir / "lr.json"
    if lr_path.exists():
        plot_lr(json.loads(lr_path.read_text()), run_dir / "lr.png")
    aug, aug_titles = augmented_samples(recipe.augmentation, arrays, mean, std)
    shown = max(aug_titles.count(c) for c in set(aug_titles))  # five, fewer in tiny sets
    title = f"augmentation '{recipe.augmentation}': {shown} per class, as training draws them"
    grid = image_grid(aug, aug_titles, run_dir / "augmented.png", cols=shown, title=title)
    plt_agg().close(grid)  # one class a row
    return metrics


def build_parser() -> CommandParser:
    """The command's parser: the run directory and what to show.

    Returns:
        The parser.
    """
    p = CommandParser(
        prog=prog_name("fastcifar.evaluate"),
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
    p.add_argument(
        "--roofline-gpu",
        metavar="GPU",
        choices=sorted(GPUS),
        help="the GPU whose roofline the report draws for a CPU run (one of "
        f"{', '.join(sorted(GPUS))}; default: the run's --roofline-gpu; a GPU run draws its "
        "own GPU)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.evaluate RUN_DIR``: the evaluation files and the report of a run.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0.

    Raises:
        FastCifarError: no run directory there, a checkpoint that does not load, or data
            that cannot be read.
    """
    args = build_parser().parse_args(argv)
    layers = (
        [x.strip() for x in args.cam_layers.split(",") if x.strip()] if args.cam_layers else None
    )
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").exists():
        read_config(run_dir)  # the one-line error naming what is missing
    with RunLock(run_dir).acquire("wait for it to finish, then evaluate it"):
        result = evaluate_run(
            run_dir,
            args.misclassified,
            layers,
            args.device,
            args.tensorboard,
            args.data,
            roofline_gpu=args.roofline_gpu,
        )
    summary = _read_summary(run_dir)
    note = reevaluation_note(summary, result)
    print(
        f"test accuracy {result['test_acc']:.2f} % on {result['test_images']} images"
        + (f" ({note})" if note else "")
        + f"; report {run_dir / 'report.html'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
