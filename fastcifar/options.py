"""Command-line options as dataclass fields, without torch: ``option()``, ``RunOptions``,
the generic checks of choices and bounds (``check_fields``) and the flag builder
(``add_field_flags``) that every command uses.

Nothing here imports torch, triton or DALI, so ``--help``, ``--version`` and a mistyped
flag answer in the time Python starts (``import torch`` alone takes seconds). A set of
names that lives in a module which needs torch (the models, the augmentations) is named
by a ``Registry``: the module and the dict, imported only when a value is checked.

Layer: below ``fastcifar.recipes`` and ``fastcifar.engine.rundir``; imports only the standard
library and ``fastcifar.errors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field

from fastcifar.errors import FastCifarError

__all__ = [
    "AMP_DTYPE_CHOICES",
    "KERNEL_CHOICES",
    "LOADER_CHOICES",
    "Registry",
    "RunOptions",
    "add_field_flags",
    "check_field",
    "check_fields",
    "flag_name",
    "option",
]

# The closed sets of run-option values; the modules that act on them (fastcifar.engine.runtime,
# fastcifar.data.factory) import them from here.
AMP_DTYPE_CHOICES = ("auto", "bfloat16", "float16")
KERNEL_CHOICES = ("auto", "triton", "torch")
LOADER_CHOICES = ("auto", "gpu", "dali", "albumentations")


@dataclass(frozen=True)
class Registry:
    """The keys of ``module.attr`` (a dict), imported at the first membership test or
    iteration: the names of a set whose members need torch (``Registry("fastcifar.models",
    "MODELS")``), listed in that one place.

    Attributes:
        module: the module to import, e.g. ``"fastcifar.models"``.
        attr: the dict in that module whose keys are the names.
        also: further registries whose names count as members too.
    """

    module: str
    attr: str
    also: tuple[Registry, ...] = ()  # further registries whose names are valid too

    def table(self) -> dict:
        """``module.attr`` itself (the module imported now).

        Returns:
            The dict.
        """
        return getattr(importlib.import_module(self.module), self.attr)

    def names(self) -> tuple[str, ...]:
        """The registry's names, then those of ``also``, each once.

        Returns:
            The names.
        """
        own = tuple(self.table())
        return tuple(dict.fromkeys(own + tuple(n for r in self.also for n in r.names())))

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name) -> bool:
        return name in self.names()


def option(
    default=dataclasses.MISSING,
    help: str = "",
    choices=None,
    metavar: str | None = None,
    flag: bool = True,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
):
    """A dataclass field with its command-line help in its metadata: the one place a
    ``Recipe`` or ``RunOptions`` field is described. ``choices``: a tuple or a
    ``Registry``; bounds: ``min``/``max`` inclusive, ``above``/``below`` exclusive
    (``check_fields`` checks them); ``flag=False``: no command-line flag.

    Args:
        default: the field's default (``dataclasses.MISSING``: required).
        help: the flag's help text (one sentence, with units).
        choices: the valid values: a tuple, or a ``Registry`` of names; None for any.
        metavar: the value's name in ``--help``.
        flag: False for a field with no command-line flag.
        min: inclusive lower bound, or None.
        max: inclusive upper bound, or None.
        above: exclusive lower bound, or None.
        below: exclusive upper bound, or None.

    Returns:
        A ``dataclasses.field`` whose metadata holds the help, choices, metavar, flag and
        bounds.
    """
    bounds = {"min": min, "max": max, "above": above, "below": below}
    metadata = {
        "help": help,
        "choices": choices,
        "metavar": metavar,
        "flag": flag,
        "bounds": {k: v for k, v in bounds.items() if v is not None},
    }
    return field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    """The command-line flag of field ``name``: ``batch_size`` -> ``--batch-size``.

    Args:
        name: a dataclass field name in snake_case.

    Returns:
        Its flag, ``--`` and the name with dashes.
    """
    return "--" + name.replace("_", "-")


def _range(bounds: dict) -> str:
    """A field's bounds as its error shows them: ``0 <= x < 1``, ``x >= 1``, ``x > 0``."""
    low = [(bounds[k], op) for k, op in (("min", "<="), ("above", "<")) if k in bounds]
    high = [(bounds[k], op) for k, op in (("max", "<="), ("below", "<")) if k in bounds]
    if low and high:
        return f"{low[0][0]:g} {low[0][1]} x {high[0][1]} {high[0][0]:g}"
    if low:
        return f"x {low[0][1].replace('<', '>')} {low[0][0]:g}"
    return f"x {high[0][1]} {high[0][0]:g}"


def check_fields(obj, registries: bool = True) -> None:
    """Check every field of dataclass ``obj`` that has choices or bounds in its metadata
    (``check_field``); ``registries=False`` leaves out the choices a ``Registry`` names
    (checking them imports their modules, and so torch).

    Args:
        obj: a dataclass instance (a ``Recipe``, ``RunOptions``, ...).
        registries: also check the choices that a ``Registry`` names.

    Raises:
        FastCifarError: one line naming the flag, the value and the valid choices or
            range (a NaN fails any bound).
    """
    for f in dataclasses.fields(obj):
        check_field(f, getattr(obj, f.name), registries)


def check_field(f: dataclasses.Field, value, registries: bool = True) -> None:
    """Check ``value`` against the choices and bounds in field ``f``'s metadata.

    Args:
        f: the dataclass field, whose metadata holds ``choices`` and ``bounds``.
        value: the value to check; None passes (not given).
        registries: also check the choices that a ``Registry`` names.

    Raises:
        FastCifarError: as ``check_fields``.
    """
    meta = f.metadata
    choices = meta.get("choices")
    if isinstance(choices, Registry) and not registries:
        choices = None
    if choices is not None and value is not None and value not in choices:
        shown = (
            f"unknown {f.name} {value!r}"
            if isinstance(choices, Registry)
            else f"{flag_name(f.name)} {value!r} is not valid"
        )
        raise FastCifarError(f"{shown}: choose one of {', '.join(choices)}")
    bounds = meta.get("bounds") or {}
    if not bounds or value is None or isinstance(value, bool):
        return
    ok = not (isinstance(value, float) and math.isnan(value))
    ok = ok and value >= bounds.get("min", -math.inf) and value <= bounds.get("max", math.inf)
    ok = ok and value > bounds.get("above", -math.inf) and value < bounds.get("below", math.inf)
    if not ok:
        raise FastCifarError(
            f"{flag_name(f.name)} {value:g} is out of range: pass {_range(bounds)}"
        )


def field_type(f: dataclasses.Field):
    """The type of dataclass field ``f`` (its annotation is a string under ``from
    __future__ import annotations``), ``X`` for ``X | None``.

    Args:
        f: a dataclass field.

    Returns:
        The resolved type (``int``, ``float``, ``str``, ``bool``, ...), the ``X`` of
        ``X | None``.
    """
    hints = typing.get_type_hints(type("H", (), {"__annotations__": {"x": f.type}}))
    t = hints["x"]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def add_field_flags(
    group,
    cls,
    shown=None,
    dest=lambda name: name,
    checked: bool = False,
    only: tuple[str, ...] | None = None,
) -> None:
    """``--field-name`` on argparse ``group`` for every flag field of dataclass ``cls``
    (``only``: these names alone): its help, choices and metavar from the field's
    metadata, default None (not given), bools as ``--x/--no-x``. ``shown``: an instance
    whose values the help shows in brackets (none for None; bools on/off); ``dest``: the
    attribute name for a field name; ``checked``: argparse itself refuses values outside a
    tuple of choices (a closed set of run options); otherwise ``check_fields`` does, after
    parsing, in one line. A ``Registry``'s names are not listed (that would import torch):
    its metavar is NAME.

    Args:
        group: an argparse parser or argument group.
        cls: the dataclass whose flag fields become flags.
        shown: an instance whose values ``--help`` shows as defaults, or None.
        dest: maps a field name to the argparse destination attribute.
        checked: let argparse refuse values outside a tuple of choices.
        only: the field names to add, or None for every flag field.
    """
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag") or (only is not None and f.name not in only):
            continue
        t, meta = field_type(f), f.metadata
        kwargs: dict = {"action": argparse.BooleanOptionalAction}
        if t is not bool:
            choices = meta.get("choices")
            listed = choices if isinstance(choices, tuple) else None
            plain = {int: "N", float: "X"}.get(t, "NAME" if choices is not None else f.name.upper())
            metavar = "{" + ",".join(listed) + "}" if listed else plain
            kwargs = {"type": t, "metavar": meta.get("metavar") or metavar}
            if checked and listed:
                kwargs["choices"] = listed
        value = getattr(shown, f.name) if shown is not None else None
        if value is not None:
            value = ("on" if value else "off") if isinstance(value, bool) else value
        help_ = meta["help"] + (f" [{value}]" if value is not None else "")
        group.add_argument(flag_name(f.name), dest=dest(f.name), default=None, help=help_, **kwargs)


# The timing contracts of a speed run: each one's summary.json key and what it charges.
# Neither charges the model's construction and reset or the compile warm-up (reported
# apart), and per-epoch evaluation is outside both.
TIMINGS = {
    "fastcifar": ("timed_span_s", "whitening + training + final TTA"),
    "record": ("record_span_s", "whitening + training (evaluation and TTA excluded)"),
}


@dataclass
class RunOptions:
    """How (not what) a run trains. Saved in config.json next to the recipe.

    Each field is one flag (``train_subset`` is ``--train-subset``); its full meaning,
    units, choices and bounds are its ``option()`` help below, which ``--help`` prints.

    Attributes:
        data: the CIFAR-10 source (directory, image tree or tar), or None for the default.
        download: fetch the official set when the source holds none.
        train_subset: class-balanced training images to use, or None for all.
        test_subset: class-balanced test images to use, or None for all.
        out: the run directory, or None for ``runs/<recipe>-<date>-<time>``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision (autocast).
        amp_dtype: ``auto``, ``bfloat16`` or ``float16``.
        compile: ``torch.compile`` the model.
        channels_last: the memory format, or None for the device's default.
        workers: the loader's worker processes, or None (the cores, at most 8).
        compile_backend: ``torch.compile``'s backend.
        kernels: ``auto``, ``triton`` or ``torch``.
        loader: ``auto``, ``gpu``, ``dali`` or ``albumentations``.
        timing: ``fastcifar`` or ``record``, the timing contract reported first.
        progress_every: seconds between progress lines in a log (0: none).
        tensorboard: also log to TensorBoard.
        roofline_gpu: the GPU the report's roofline models, or None.
        world_size: processes (GPUs) of a torchrun run.
        sync_bn: BatchNorm statistics over the global batch.
    """

    data: str | None = option(
        None,
        "CIFAR-10 source: cifar-10-batches-py directory, image-folder tree train/<class>/ "
        "test/<class>/, or a .tar/.tar.gz of one (default: $FASTCIFAR_DATA, else the cache "
        "directory)",
    )
    download: bool = option(
        False, "download the official CIFAR-10 with torchvision when --data holds none"
    )
    train_subset: int | None = option(
        None,
        "train on a stratified subset of N training images (quick runs)",
        metavar="N",
        min=1,
    )
    test_subset: int | None = option(
        None,
        "evaluate on a stratified subset of N test images (quick runs)",
        metavar="N",
        min=1,
    )
    out: str | None = option(None, "run directory (default runs/<recipe>-<date>-<time>)")
    device: str = option("auto", "auto (CUDA if present), cpu, cuda or cuda:N")
    amp: bool = option(
        False,
        "mixed precision: bfloat16 autocast where the device runs it natively (CPUs with "
        "bfloat16 instructions, NVIDIA Ampere and newer, AMD Instinct), else float16 with a "
        "gradient scaler (T4) or float32 (other CPUs)",
    )
    amp_dtype: str = option(
        "auto",
        "autocast dtype with --amp (auto: bfloat16 where native, float16 on older GPUs, "
        "float32 on a CPU without bfloat16 instructions)",
        choices=AMP_DTYPE_CHOICES,
    )
    compile: bool = option(
        False, "torch.compile the model; on failure say why and continue eagerly"
    )
    channels_last: bool | None = option(
        None, "channels_last memory format (default: on with --amp)"
    )
    workers: int | None = option(
        None, "data loader worker processes (default: cores, at most 8)", min=0
    )
    compile_backend: str = option(
        "inductor", "torch.compile backend (inductor; the tests use aot_eager)", flag=False
    )
    kernels: str = option(
        "auto",
        "convolutions: triton (our kernels, validated against PyTorch before training), "
        "torch, or auto (on a GPU: each conv configuration and fusable block timed, Triton "
        "against cuDNN, the faster kept; torch elsewhere)",
        choices=KERNEL_CHOICES,
    )
    loader: str = option(
        "auto",
        "training loader: gpu (data set on the device, batched augmentation), dali (NVIDIA "
        "DALI, GPU or CPU-only), albumentations (CPU workers), or auto (gpu where the "
        "recipe's augmentation allows on a GPU, else dali when installed, else "
        "albumentations)",
        choices=LOADER_CHOICES,
    )
    timing: str = option(
        "fastcifar",
        "the timing contract of the seconds a speed run reports first and a sweep describes "
        "(both are always written): fastcifar (whitening + training + final TTA) or record "
        "(whitening + training: evaluation and TTA excluded, as fulcrumresearch/"
        "cifar-10-speedrun's harness)",
        choices=tuple(TIMINGS),
    )
    progress_every: float = option(
        30.0,
        "seconds between progress lines within an epoch when the output is not a terminal "
        "(a log file; 0: none); a terminal gets a progress bar",
        metavar="SECONDS",
        min=0,
    )
    tensorboard: bool = option(
        False, "log scalars, the misclassified grid and the CAMs to RUN_DIR/tensorboard"
    )
    roofline_gpu: str | None = option(
        None,
        "the GPU whose roofline a CPU run's report draws (its eager path, a few seconds to "
        "count; default none: the report says how to get it); a GPU run's report draws "
        "its own GPU and path",
        choices=Registry("fastcifar.roofline.gpus", "GPUS"),
        metavar="GPU",
    )
    world_size: int = option(
        1, "data-parallel processes (torchrun); a resume needs the same", flag=False
    )
    sync_bn: bool = option(
        False,
        "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA "
        "only); off by default, as the speed records train with per-GPU statistics",
    )
