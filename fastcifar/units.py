"""Numbers written for people, the one place for it: counts with their noun, percentages,
durations, rates. Console lines, errors and the report use these, so "1 epochs" or
"282.22876033000034 s" never reach a reader.
"""

from __future__ import annotations

__all__ = ["duration", "number", "percent", "plural", "rate"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 epoch"``, ``"3 epochs"``, ``"12,000 images"``: the count with thousands
    separators and its noun (``nouns``, default ``noun + "s"``, when not 1)."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"


def number(value: float, digits: int = 0) -> str:
    """``11,823`` or ``0.0125``: thousands separators, ``digits`` decimals."""
    return f"{value:,.{digits}f}"


def percent(value: float | None, digits: int = 2) -> str:
    """``"93.41 %"`` for 93.41 (a value already in percent); an em dash for None."""
    return "\u2014" if value is None else f"{value:.{digits}f} %"


def duration(seconds: float) -> str:
    """``"0.84 s"``, ``"42.1 s"``, ``"4 min 42 s"``, ``"2 h 05 min"``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def rate(count: float, unit: str = "images/s") -> str:
    """``"11,823 images/s"``."""
    return f"{count:,.0f} {unit}"
