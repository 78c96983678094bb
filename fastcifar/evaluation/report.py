"""The evaluation report: ``report.html`` and ``report.md`` with the figures, the
configuration and the summary of a run."""

from __future__ import annotations

import html
import json
from pathlib import Path

__all__ = ["asdict_recipe", "write_report"]


def asdict_recipe(recipe) -> dict:
    from dataclasses import asdict

    return asdict(recipe)


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
