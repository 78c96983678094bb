"""The evaluation report laid out: ``report.html`` (one page, no script, its figures
beside it) and ``report.md``, from the ``Report`` that ``report.build_report`` gathers."""

from __future__ import annotations

import html
import re
from pathlib import Path

from fastcifar.evaluation.report import Report

__all__ = ["render_html", "render_markdown", "write_report"]


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:0 12px;
line-height:1.45;color:#222}
h1{font-size:1.5em}.headline{font-size:1.35em;font-weight:600;margin:.2em 0}
.banner{background:#fff4d6;border-left:5px solid #e0a800;padding:8px 12px;margin:12px 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:8px 0}
td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
table.wide td,table.wide th{white-space:nowrap}
td.num,th.num{text-align:right}img{max-width:100%;height:auto}
figure{margin:18px 0}figcaption{color:#555;font-size:.92em}
code{white-space:nowrap;background:#f3f3f3;padding:0 3px}
"""


def _table(
    header: list[str] | None, rows: list, numeric_from: int | None = None, wide: bool = False
) -> str:
    """An HTML table (scrolling sideways on a narrow screen); columns from
    ``numeric_from`` on are right-aligned numbers."""

    def cells(values, tag):
        def num(i):
            return " class=num" if numeric_from is not None and i >= numeric_from else ""

        return "".join(
            f"<{tag}{num(i)}>{html.escape(str(v))}</{tag}>" for i, v in enumerate(values)
        )

    head = f"<tr>{cells(header, 'th')}</tr>" if header else ""
    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    kind = " class=wide" if wide else ""  # wide: one line a row, scrolled on a phone
    return f"<div class=scroll><table{kind}>{head}{body}</table></div>"


def _commands(escaped: str) -> str:
    """``escaped`` HTML text with each ``python -m ...`` command (up to a parenthesis or a
    semicolon) set as code that does not break across lines."""
    return re.sub(r"(python -m [^();]+?)(?= \(|\)|;|$)", r"<code>\1</code>", escaped)


def render_html(r: Report) -> str:
    """The report as one self-contained HTML page (its figures linked relatively, beside it in the
    run directory).

    Args:
        r: the report's content.

    Returns:
        The HTML text.
    """
    e = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{e(r.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(r.title)}</h1>",
        f"<p class=headline>{e(r.headline)}</p>",
        f"<p>{e(r.comparison)}</p>",
    ]
    if r.banner:
        parts.append(f"<p class=banner>{e(r.banner)}</p>")
    parts += ["<h2>The run</h2>", _table(None, r.facts)]
    parts += ["<h2>Per epoch</h2>", _table(r.epoch_header, r.epoch_rows, numeric_from=0, wide=True)]
    parts += ["<h2>Per class</h2>", _table(["class", "test accuracy"], r.per_class, 1)]
    for title, name, caption in r.figures:
        parts.append(
            f"<figure><h2>{e(title)}</h2><img src='{e(name)}' alt='{e(title)}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    if r.roofline:
        text, name, header, rows = r.roofline
        parts += ["<h2>Where the time goes</h2>", f"<p>{_commands(e(text))}</p>"]
        if name:
            parts += [
                f"<img src='{e(name)}' alt='roofline of the training step'>",
                _table(header, rows, numeric_from=3, wide=True),
            ]
    parts += [
        "<h2>Recipe</h2>",
        "<p>The fields this run's optimizer, schedule and augmentation used:</p>",
        _table(None, r.recipe_used),
    ]
    parts.append(
        "<details><summary>The other recipe fields (not used by this run)</summary>"
        + _table(None, r.recipe_rest)
        + "</details>"
    )
    if r.versions:
        parts.append(
            "<details><summary>Versions</summary>" + _table(None, r.versions) + "</details>"
        )
    return "\n".join(parts + ["</body></html>"]) + "\n"


def _md_table(header: list[str], rows: list) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def render_markdown(r: Report) -> str:
    """The report as Markdown (GitHub's flavour: tables, relative image links).

    Args:
        r: the report's content.

    Returns:
        The Markdown text.
    """
    md = [f"# {r.title}", "", f"**{r.headline}**", "", r.comparison]
    if r.banner:
        md += ["", f"> **{r.banner}**"]
    md += ["", "## The run", "", *_md_table(["", ""], r.facts)]
    md += ["", "## Per epoch", "", *_md_table(r.epoch_header, r.epoch_rows)]
    md += ["", "## Per class", "", *_md_table(["class", "test accuracy"], r.per_class)]
    for title, name, caption in r.figures:
        md += ["", f"## {title}", "", f"![{title}]({name})", "", caption]
    if r.roofline:
        text, name, header, rows = r.roofline
        md += ["", "## Where the time goes", "", text]
        if name:
            md += ["", f"![roofline]({name})", "", *_md_table(header, rows)]
    md += [
        "",
        "## Recipe",
        "",
        "The fields this run's optimizer, schedule and augmentation used:",
        "",
        *_md_table(["flag", "value"], r.recipe_used),
    ]
    md += [
        "",
        "<details><summary>The other recipe fields (not used by this run)</summary>",
        "",
        *_md_table(["flag", "value"], r.recipe_rest),
        "",
        "</details>",
    ]
    if r.versions:
        md += [
            "",
            "<details><summary>Versions</summary>",
            "",
            *_md_table(["package", "version"], r.versions),
            "",
            "</details>",
        ]
    return "\n".join(md) + "\n"


def write_report(run_dir: Path, report: Report) -> None:
    """report.html and report.md beside the figures (relative links).

    Args:
        run_dir: the run directory (the figures' folder).
        report: the report's content.
    """
    (run_dir / "report.html").write_text(render_html(report))
    (run_dir / "report.md").write_text(render_markdown(report))
