"""Numbers written for people, the one place for it: counts with their noun, percentages,
durations, rates. Console lines, errors and the report use these, so "1 epochs" or
"282.22876033000034 s" never reach a reader.
"""

from __future__ import annotations

__all__ = ["duration", "number", "percent", "plural", "rate"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 epoch"``, ``"3 epochs"``, ``"12,000 images"``: the count with thousands
    separators and its noun (``nouns``, default ``noun + "s"``, when not 1).

    Args:
        count: how many (an int; shown with thousands separators).
        noun: the singular noun.
        nouns: the plural, when it is not ``noun + "s"``.

    Returns:
        ``"<count> <noun or nouns>"``.
    """
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"


def number(value: float, digits: int = 0) -> str:
    """``11,823`` or ``0.0125``: thousands separators, ``digits`` decimals.

    Args:
        value: the number.
        digits: decimals shown.

    Returns:
        The number with thousands separators and ``digits`` decimals.
    """
    return f"{value:,.{digits}f}"


def percent(value: float | None, digits: int = 2) -> str:
    """``"93.41 %"`` for 93.41 (a value already in percent); an em dash for None.

    Args:
        value: a value already in percent (93.41 for 93.41 %), or None.
        digits: decimals shown.

    Returns:
        ``"93.41 %"``, or ``"—"`` for None.
    """
    return "\u2014" if value is None else f"{value:.{digits}f} %"


def duration(seconds: float) -> str:
    """``"0.84 s"``, ``"42.1 s"``, ``"4 min 42 s"``, ``"2 h 05 min"``.

    Args:
        seconds: a duration in seconds (at least 0).

    Returns:
        Seconds with two decimals below 10 s, one below a minute, then whole minutes and
        seconds, and from an hour hours and minutes.
    """
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
    """``"11,823 images/s"``.

    Args:
        count: items per ``unit`` (a float).
        unit: the unit shown after the number.

    Returns:
        The rate rounded to a whole number with thousands separators, then ``unit``.
    """
    return f"{count:,.0f} {unit}"
