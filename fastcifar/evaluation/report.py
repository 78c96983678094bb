"""The evaluation report, written for people: ``report.html`` and ``report.md`` with the
same content (``build_report`` gathers it here; ``render.render_html`` and
``render.render_markdown`` lay it out, ``render.write_report`` writes both).

What it holds, top to bottom: a headline (model, recipe, the test accuracy with and
without TTA against the seed's reported accuracy and its source); a banner when the run
is not comparable with the seed (a subset of the training or test images, fewer epochs
than the recipe); the run's facts in human units (93.41 %, 4 min 42 s, 11,823 images/s);
the per-epoch table; per-class accuracy; the titled figures with their captions; the
recipe fields this run's optimizer, schedule and augmentation used (the others folded
away); the versions. No number is printed raw and no Python literal reaches the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastcifar.evaluation.recipe_fields import flag as _flag
from fastcifar.evaluation.recipe_fields import recipe_fields_used
from fastcifar.evaluation.recipe_fields import value as _value
from fastcifar.recipes import RECIPES, seeds
from fastcifar.units import duration, number, percent, plural, rate

__all__ = ["Report", "build_report", "reference_name"]

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000  # the seeds' data: all of CIFAR-10
# a test accuracy below this (percent; chance is 10 %) means nothing was learned yet
NEAR_CHANCE = 20.0
SEED_RECIPES = seeds.NAMES  # the course models' recipes: their accuracy is the seed's


@dataclass
class Report:
    """What the report says; each renderer (``fastcifar.evaluation.render``) lays it out.

    Attributes:
        title: the page's title.
        headline: the accuracy in one sentence.
        comparison: against the seed's (or the reference's) reported accuracy.
        banner: why the run is not comparable with the seed, or None.
        facts: (name, value) rows: device, times, data, kernels, ...
        epoch_header: the per-epoch table's column names.
        epoch_rows: its rows, as text.
        per_class: (class, accuracy) rows.
        figures: (title, file name in the run directory, caption) of each figure.
        recipe_used: (flag, value) of the recipe fields this run used.
        recipe_rest: (flag, value) of the others.
        versions: (package, version) rows.
        roofline: "Where the time goes": (what it is, figure file, table header, top layers'
            rows), or None.
    """

    title: str
    headline: str
    comparison: str
    banner: str | None
    facts: list[tuple[str, str]]
    epoch_header: list[str]
    epoch_rows: list[list[str]]
    per_class: list[tuple[str, str]]
    figures: list[tuple[str, str, str]]
    recipe_used: list[tuple[str, str]]
    recipe_rest: list[tuple[str, str]]
    versions: list[tuple[str, str]] = field(default_factory=list)
    roofline: tuple[str, str, list[str], list[list[str]]] | None = None


# "Where the time goes" of a run that models no GPU (a CPU run without --roofline-gpu)
NO_GPU_MODELLED = (
    "This run trained on a CPU, and where a GPU's time would go is a model of that GPU, "
    "the eager path's FLOPs and bytes per layer (counted in seconds; h100, a100, h200, l4, "
    "t4 and more): python -m fastcifar.evaluate {run_dir} --roofline-gpu h100"
)


def _roofline(run_dir: Path) -> tuple[str, str, list[str], list[list[str]]] | None:
    """The run's roofline (``fastcifar.roofline.run.count_run`` wrote it): a sentence, the
    figure and the ten layers with the largest lower bound."""
    path = run_dir / "roofline.json"
    if not path.exists():
        return NO_GPU_MODELLED.format(run_dir=run_dir), "", [], []
    import json

    (r,) = json.loads(path.read_text())["rows"]
    n = r["batch_size"]
    text = (
        f"A model of an {r['gpu'].upper()}, not a timing: the FLOPs and bytes one training "
        f"step of the {r['path']} path moves at batch {n} in {r['dtype']}, counted "
        f"(python -m fastcifar.roofline), give at least "
        f"{r['lower_bound_ms_per_step']:.2f} ms per step and "
        f"{duration(r['lower_bound_s_per_epoch'])} per epoch; "
        f"{r['bytes_per_image'] / 1e6:.1f} MB and {r['flops_per_image'] / 1e9:.2f} GFLOP per "
        f"image per step."
    )
    header = ["layer", "kind", "shape", "GFLOP", "MB", "FLOP/byte", "lower bound"]
    top = sorted(r["layers"], key=lambda x: -x["lower_bound_us"])[:10]
    rows = [
        [
            x["name"],
            x["kind"],
            x["shape"] or "\u2014",
            number(x["flops"] / 1e9, 2),
            number(x["bytes"] / 1e6, 1),
            "\u2014" if x["intensity"] is None else number(x["intensity"], 1),
            f"{number(x['lower_bound_us'], 1)} \u00b5s",
        ]
        for x in top
    ]
    return text, "roofline.png", header, rows


def _banner(recipe, summary: dict, metrics: list[dict], result: dict):
    """Why this run is not comparable with the seed's accuracy (the seeds trained on all
    of CIFAR-10's 50,000 training images and tested on its 10,000), or None."""
    parts = []
    trained = summary.get("train_images", CIFAR10_TRAIN)
    if trained < CIFAR10_TRAIN:
        parts.append(f"{number(trained)} of {plural(CIFAR10_TRAIN, 'training image')}")
    if result["test_images"] < CIFAR10_TEST:
        parts.append(f"{number(result['test_images'])} of 10,000 test images")
    ran = _registered(recipe)  # the recipe as its reference ran it, not as overridden
    if len(metrics) < ran.epochs:
        parts.append(f"{len(metrics)} of {_length(ran)}")
    if not parts:
        return None
    claim = (
        f"{reference_name(recipe)}'s {percent(recipe.expected_accuracy)}"
        if recipe.expected_accuracy
        else "a full run"
    )
    return f"{', '.join(parts)}: not comparable with {claim}"


def _registered(recipe):
    """The named recipe as registered (the seed's own settings), or ``recipe`` itself for
    a name that is not registered."""
    return RECIPES.get(recipe.name, recipe)


def _headline(recipe, summary: dict, result: dict, model_source: str) -> tuple[str, str]:
    """(the accuracy line, the comparison line)."""
    final = summary.get("final_test_acc", result["test_acc"])
    single = summary.get("final_test_acc_single_view")
    line = f"{percent(final)} test accuracy"
    if recipe.tta != "none" and single is not None:
        line += f" with TTA ({recipe.tta}), {percent(single)} single view"
    ref = reference_name(recipe).capitalize()
    if recipe.expected_accuracy:
        comparison = (
            f"{ref} reported {percent(recipe.expected_accuracy)} "
            f"({model_source}, {_length(_registered(recipe))})."
        )
    else:
        comparison = f"{ref} ({model_source}) reports no accuracy for this recipe."
    return line, comparison


def reference_name(recipe) -> str:
    """What a recipe's reported accuracy comes from: "the seed" for the course models'
    recipes, "the reference" for the others (the speed records, the model zoo's source).

    Args:
        recipe: the run's ``Recipe``.

    Returns:
        ``"the seed"`` or ``"the reference"``.
    """
    return "the seed" if recipe.name in SEED_RECIPES else "the reference"


def _length(recipe) -> str:
    """A recipe's length in epochs as it ran: ``8.875 epochs`` for 9 with the last cut to
    0.875 (``last_epoch_fraction``)."""
    length = recipe.epochs - 1 + recipe.last_epoch_fraction
    return plural(recipe.epochs, "epoch") if length == recipe.epochs else f"{length:g} epochs"


def reevaluation_note(summary: dict, result: dict) -> str | None:
    """When the evaluation's accuracy (the checkpoint re-evaluated in float32, eager, by
    ``fastcifar.evaluate``: the per-class table, the confusion matrix) differs from the
    training's own last evaluation (in its AMP dtype, compiled when it was) by 0.01
    percentage points or more, a sentence naming both; else None (one number).

    Args:
        summary: summary.json's dict.
        result: eval.json's ``result``.

    Returns:
        The sentence, or None.
    """
    final = summary.get("final_test_acc")
    if final is None or abs(final - result["test_acc"]) < 0.005:
        return None
    how = ", ".join(
        p
        for p in (summary.get("amp") or "float32", "compiled" if summary.get("compiled") else "")
        if p
    )
    return (
        f"{percent(result['test_acc'])} when the evaluation re-runs the checkpoint in "
        f"float32, eagerly (the per-class table and the confusion matrix); "
        f"{percent(final)} in the training's own evaluation ({how}): the same weights, "
        f"other rounding"
    )


def _facts(summary: dict, result: dict, metrics: list[dict]) -> list[tuple[str, str]]:
    best = max(metrics, key=lambda m: m["test_acc"]) if metrics else None
    facts = [("test images", number(result["test_images"]))]
    if best:
        facts.append(("best test accuracy", f"{percent(best['test_acc'])} (epoch {best['epoch']})"))
    note = reevaluation_note(summary, result)
    if note:
        facts.append(("two accuracies", note))
    if summary:
        facts += [
            ("training images", number(summary["train_images"])),
            wall_time(summary),
            _timed(summary),
            ("throughput", rate(summary["mean_images_per_s"])),
            (
                "device",
                summary["device"]
                + (
                    f" \u00d7 {summary['world_size']} processes"
                    if summary.get("world_size", 1) > 1
                    else ""
                ),
            ),
            ("mixed precision", summary["amp"] or "off (float32)"),
            ("memory format", "channels_last" if summary["channels_last"] else "NCHW"),
            ("torch.compile", "on" if summary["compiled"] else "off"),
            ("convolutions", summary["kernels"]),
            ("loader", summary["loader"]),
        ]
    facts.append(("evaluated checkpoint", f"epoch {result['checkpoint_epoch']} (last.pt)"))
    return facts


def wall_time(summary: dict) -> tuple[str, str]:
    """("wall time", the command's real seconds and their parts) when the train command
    recorded them (``summary["wall"]``: start-up from the process's start, compile
    warm-up, the epochs with their evaluations, the evaluation and report); for a run
    without them, ("epochs", the epochs' seconds with their evaluations).

    Args:
        summary: summary.json's dict.

    Returns:
        (label, value) for the report's facts.
    """
    wall = summary.get("wall")
    if not wall:
        return (
            "epochs",
            f"{duration(summary['total_time_s'])} (with their evaluations; "
            f"start-up and the final evaluation not recorded)",
        )
    parts = [
        ("start-up", wall["startup_s"]),
        ("compile warm-up", wall["compile_s"]),
        ("epochs", wall["epochs_s"]),
        ("evaluation and report", wall["evaluation_s"]),
    ]
    shown = ", ".join(f"{name} {duration(s)}" for name, s in parts if s or name == "epochs")
    total = sum(s for _, s in parts)
    resumed = "; this session, a resumed run" if wall.get("resumed") else ""
    return "wall time", f"{duration(total)} ({shown}{resumed})"


def _timed(summary: dict) -> tuple[str, str]:
    """The device-timed seconds: the speed records' span where there is whitening or a
    final TTA, else the training loops; a compile warm-up is said apart."""
    compiled = (
        f"; compile warm-up {duration(summary['compile_time_s'])} apart"
        if summary["compiled"]
        else ""
    )
    if summary["whiten_time_s"] or summary["tta_time_s"]:
        return (
            "timed span",
            f"{duration(summary['timed_span_s'])} (whitening "
            f"{duration(summary['whiten_time_s'])}, training loops "
            f"{duration(summary['train_time_s'])}, final TTA "
            f"{duration(summary['tta_time_s'])}{compiled})",
        )
    return ("training loops", f"{duration(summary['train_time_s'])} (device-timed{compiled})")


def _epochs(metrics: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = [
        "epoch",
        "lr at its start",
        "train loss",
        "train acc",
        "test loss",
        "test acc",
        "time",
        "images/s",
    ]
    rows = [
        [
            str(m["epoch"]),
            f"{m['lr']:.3g}",
            f"{m['train_loss']:.3f}",
            percent(m["train_acc"]),
            f"{m['test_loss']:.3f}",
            percent(m.get("tta_test_acc", m["test_acc"]))
            + (" (TTA)" if "tta_test_acc" in m else ""),
            duration(m["epoch_time_s"]),
            number(m["images_per_s"]),
        ]
        for m in metrics
    ]
    return header, rows


def _figures(run_dir: Path, result: dict) -> list[tuple[str, str, str]]:
    chance = result["test_acc"] < NEAR_CHANCE
    cam_note = (
        " The model is still near chance (10 %): its maps show where an untrained "
        "net happens to respond, not what it learned."
        if chance
        else ""
    )
    figures = [
        (
            "Loss and accuracy",
            "curves.png",
            "Per epoch, train and test, with the training loss of every step as a thin line; "
            "the star marks the best test accuracy.",
        ),
        ("Learning rate", "lr.png", "The learning rate of every optimizer step."),
        (
            "Confusion matrix",
            "confusion_matrix.png",
            "Rows: the actual class; columns: the predicted one; counts of test images.",
        ),
        (
            "Misclassified test images",
            "misclassified.png",
            "Each titled predicted / actual, in a fixed shuffled order of the test set.",
        ),
        *[
            (
                f"Grad-CAM at {layer}",
                f"gradcam_{layer}.png",
                "Where the layer's activations raise the predicted class's score (Selvaraju et "
                "al., 2017), on the misclassified images above." + cam_note,
            )
            for layer in result["cam_layers"]
        ],
        (
            "Augmented training samples",
            "augmented.png",
            "Five training images per class after the recipe's augmentation.",
        ),
    ]
    return [f for f in figures if (run_dir / f[1]).exists()]


def build_report(
    run_dir: Path, recipe, result: dict, metrics: list[dict], summary: dict, model_source: str
) -> Report:
    """The report's content from eval.json's ``result``, the ``metrics`` rows, summary.json
    (``summary``; empty while the run has not finished) and the seed the model comes from
    (``model_source``).

    Args:
        run_dir: the run directory.
        recipe: the run's ``Recipe``.
        result: eval.json's ``result``.
        metrics: the per-epoch rows.
        summary: summary.json's dict, or empty.
        model_source: the seed or reference the model comes from.

    Returns:
        The ``Report``.
    """
    headline, comparison = _headline(recipe, summary, result, model_source)
    used, rest = recipe_fields_used(recipe)
    per_class = [(c, percent(a, 1)) for c, a in result["per_class_acc"].items()]
    header, rows = _epochs(metrics)
    return Report(
        title=f"{recipe.model} trained with recipe {recipe.name} ({run_dir.name})",
        headline=headline,
        comparison=comparison,
        banner=_banner(recipe, summary, metrics, result),
        facts=_facts(summary, result, metrics),
        epoch_header=header,
        epoch_rows=rows,
        per_class=per_class,
        figures=_figures(run_dir, result),
        recipe_used=[(_flag(n), _value(getattr(recipe, n))) for n in used],
        recipe_rest=[(_flag(n), _value(getattr(recipe, n))) for n in rest],
        versions=sorted(summary.get("versions", {}).items()),
        roofline=_roofline(run_dir),
    )
