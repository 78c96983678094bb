"""A hyper-parameter search space over recipe fields, checked before anything starts.

Written on the command line (``fastcifar.tune --space``) as space-separated
``field=distribution(arguments)`` terms::

    lr=loguniform(0.01,0.5) weight_decay=loguniform(1e-5,1e-3) label_smoothing=choice(0,0.1,0.2)

or in a YAML or JSON file of ``field: "distribution(arguments)"`` (or ``field:
{distribution: [arguments]}``). The distributions are Ray Tune's (``ray.tune.loguniform``,
``uniform``, ``choice``, ``grid_search``; docs.ray.io, "Tune Search Space API"), named in
``DISTRIBUTIONS``, the one table of them; ``fastcifar.engine.cluster`` turns a ``Dimension``
into Ray's object. A field is any recipe field a flag may override (``lr``,
``weight_decay``, ``label_smoothing``, ``batch_size``, ``epochs``, ...; ``-`` and ``_`` both
allowed), and every value the distribution can draw is checked against the field's type,
choices and bounds (``options.check_fields``) on the recipe itself.

Torch-free: ``fastcifar.tune --help`` and a bad space answer before torch or Ray import.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from fastcifar.errors import FastCifarError
from fastcifar.options import check_field, field_type
from fastcifar.recipes.recipe import overridable_fields

__all__ = ["DISTRIBUTIONS", "Dimension", "parse_space", "read_space"]

# name -> (what it takes, whether it is a range of numbers between two bounds)
DISTRIBUTIONS = {
    "loguniform": ("two bounds a < b, both above 0: log-uniform on [a, b)", True),
    "uniform": ("two bounds a < b: uniform on [a, b)", True),
    "choice": ("one or more values, drawn at random", False),
    "grid": ("one or more values, each tried (a grid search)", False),
}
USAGE = ", ".join(f"{name}(...)" for name in DISTRIBUTIONS)

_TERM = re.compile(r"^\s*([A-Za-z][\w-]*)\s*=\s*([a-z]+)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class Dimension:
    """One searched field of a study.

    Attributes:
        field: a Recipe field name.
        distribution: a key of ``DISTRIBUTIONS``.
        args: its arguments: the bounds, or the values, typed as the field.
        integer: the field is an int, so a range draws whole numbers.
    """

    field: str
    distribution: str
    args: tuple
    integer: bool = False

    def __str__(self) -> str:
        return f"{self.field}={self.distribution}({','.join(map(str, self.args))})"


def _field(name: str) -> dataclasses.Field:
    fields = {f.name: f for f in overridable_fields()}
    key = name.replace("-", "_")
    if key not in fields:
        near = difflib.get_close_matches(key, fields, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise FastCifarError(
            f"--space: {name!r} is not a recipe field: {hint}search one of the recipe's "
            f"fields ({', '.join(sorted(fields))})"
        )
    return fields[key]


def _typed(f: dataclasses.Field, text) -> object:
    """``text`` (a string from the command line, or a YAML/JSON scalar) as field ``f``'s type."""
    t = field_type(f)
    if not isinstance(text, str):
        text = str(text).lower() if isinstance(text, bool) else repr(text)
    text = text.strip().strip("'\"")
    try:
        if t is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if t is int:
            value = float(text)
            if value != int(value):
                raise ValueError(text)
            return int(value)
        return t(text)
    except ValueError:
        raise FastCifarError(
            f"--space: {f.name} takes {t.__name__} values, not {text!r}: pass {t.__name__} "
            f"values there"
        ) from None


def _check_value(f: dataclasses.Field, value) -> None:
    """``value`` within field ``f``'s choices and bounds, or one line saying which."""
    try:
        check_field(f, value)
    except FastCifarError as exc:
        raise FastCifarError(f"--space: {exc}") from None


def make_dimension(name: str, distribution: str, args: list) -> Dimension:
    """One checked ``Dimension``.

    Args:
        name: a Recipe field name.
        distribution: a key of ``DISTRIBUTIONS``.
        args: its arguments, as given.

    Returns:
        The ``Dimension``.

    Raises:
        FastCifarError: an unknown field or distribution, the wrong number or type of
            arguments, or a value the field's bounds or choices refuse.
    """
    f = _field(name)
    if distribution not in DISTRIBUTIONS:
        raise FastCifarError(
            f"--space: {distribution!r} ({name}) is not a distribution: use one of {USAGE}"
        )
    what, is_range = DISTRIBUTIONS[distribution]
    values = tuple(_typed(f, a) for a in args)
    if not values or (is_range and len(values) != 2):
        raise FastCifarError(f"--space: {name}={distribution}(...) takes {what}")
    if is_range:
        low, high = values
        if field_type(f) not in (int, float) or not low < high:
            raise FastCifarError(f"--space: {name}={distribution}(...) takes {what}")
        if distribution == "loguniform" and low <= 0:
            raise FastCifarError(f"--space: {name}={distribution}(...) takes {what}")
    for value in values:
        _check_value(f, value)
    return Dimension(f.name, distribution, values, field_type(f) is int)


def parse_space(text: str) -> tuple[Dimension, ...]:
    """The command-line form: ``field=distribution(a,b,...)`` terms separated by spaces.

    Args:
        text: the terms, e.g. ``"lr=loguniform(0.01,0.5) batch_size=choice(256,512)"``.

    Returns:
        The dimensions, in order.

    Raises:
        FastCifarError: a term that does not parse, a field given twice, or any error of
            ``make_dimension``.
    """
    terms = re.findall(r"[^\s=]+\s*=\s*[a-z]+\s*\([^)]*\)|\S+", text)
    if not terms:
        raise FastCifarError(
            f"--space is empty: pass terms such as 'lr=loguniform(0.01,0.5)' ({USAGE})"
        )
    dims = []
    for term in terms:
        m = _TERM.match(term)
        if not m:
            raise FastCifarError(
                f"--space: cannot read {term!r}: write field=distribution(arguments), such "
                f"as lr=loguniform(0.01,0.5) ({USAGE})"
            )
        args = [a for a in m.group(3).split(",") if a.strip()]
        dims.append(make_dimension(m.group(1), m.group(2), args))
    return _unique(dims)


def read_space(path: Path) -> tuple[Dimension, ...]:
    """A YAML (``.yaml``/``.yml``) or JSON file's space: a mapping of field to
    ``"distribution(a,b)"`` or to ``{distribution: [a, b]}``.

    Args:
        path: the file.

    Returns:
        The dimensions, in the file's order.

    Raises:
        FastCifarError: an unreadable file, not a mapping, or any error of ``parse_space``.
    """
    try:
        text = Path(path).read_text()
        if Path(path).suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise FastCifarError(
            f"--space {path}: cannot read it ({exc}): pass a YAML or JSON file"
        ) from None
    if not isinstance(data, dict) or not data:
        raise FastCifarError(
            f"--space {path}: expected a mapping of field to distribution, such as "
            f"lr: loguniform(0.01,0.5)"
        )
    dims = []
    for name, spec in data.items():
        if isinstance(spec, str):
            dims.extend(parse_space(f"{name}={spec.replace(' ', '')}"))
        elif isinstance(spec, dict) and len(spec) == 1:
            ((distribution, args),) = spec.items()
            args = args if isinstance(args, list) else [args]
            dims.append(make_dimension(str(name), str(distribution), args))
        else:
            raise FastCifarError(
                f'--space {path}: {name}\'s entry must be "distribution(a,b)" or '
                f"{{distribution: [a, b]}} ({USAGE})"
            )
    return _unique(dims)


def space_from_argument(text: str) -> tuple[Dimension, ...]:
    """``--space``'s value: a YAML/JSON file when it names one, else the inline form.

    Args:
        text: ``--space``'s value.

    Returns:
        The dimensions.

    Raises:
        FastCifarError: a path that names no file, or any error of ``read_space`` or
            ``parse_space``.
    """
    if text.strip().endswith((".yaml", ".yml", ".json")):
        if not Path(text.strip()).is_file():
            raise FastCifarError(
                f"--space {text}: no such file: pass an existing YAML or JSON file"
            )
        return read_space(Path(text.strip()))
    return parse_space(text)


def _unique(dims: list[Dimension]) -> tuple[Dimension, ...]:
    seen = set()
    for d in dims:
        if d.field in seen:
            raise FastCifarError(f"--space: {d.field} is given twice: keep one distribution for it")
        seen.add(d.field)
    return tuple(dims)
