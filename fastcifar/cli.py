"""What every command's argument parser shares: ``CommandParser``.

argparse answers a mistyped flag with the whole usage (48 lines for the train command)
and no suggestion. ``CommandParser`` answers with three lines at most: one usage line,
the error, and "did you mean --lr?" from the flags it knows (a close spelling, or a
name the field uses elsewhere: ``--learning-rate`` is ``--lr``). Its program name is
the console script's when it was started as one (``fastcifar-train``), else
``python -m fastcifar.<command>``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["CommandParser", "prog_name"]

# names users reach for, and the flag this project gives them
SYNONYMS = {
    "learning-rate": "lr",
    "learningrate": "lr",
    "bs": "batch-size",
    "batch": "batch-size",
    "batchsize": "batch-size",
    "epoch": "epochs",
    "num-epochs": "epochs",
    "output": "out",
    "output-dir": "out",
    "model-name": "model",
    "wd": "weight-decay",
}


def prog_name(module: str, script: str | None = None) -> str:
    """``script`` when this process was started as that console script, else
    ``python -m module``.

    Args:
        module: the command's module, e.g. ``"fastcifar.train"``.
        script: the console script's name, e.g. ``"fastcifar-train"``, or None.

    Returns:
        The program name ``--help`` and error messages show.
    """
    if script and os.path.basename(sys.argv[0]) == script:
        return script
    return f"python -m {module}"


class CommandParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are short and suggest the fix; exits 2
    as argparse does."""

    def error(self, message: str):
        """Exit 2 with the usage line, the error and, for an unknown flag, the nearest known one.

        Args:
            message: argparse's error message.
        """
        lines = [f"usage: {self.prog} [options] (--help lists them)", f"error: {message}"]
        suggestion = self.suggest(message)
        if suggestion:
            lines.append(suggestion)
        self.exit(2, "\n".join(lines) + "\n")

    def flags(self) -> list[str]:
        """The parser's long flags.

        Returns:
            Every ``--flag`` it takes.
        """
        return [s for s in self._option_string_actions if s.startswith("--")]

    def suggest(self, message: str) -> str | None:
        """'did you mean --lr?' for the first unknown flag in argparse's ``message``.

        Args:
            message: argparse's error message.

        Returns:
            The suggestion, or None.
        """
        unknown = (
            re.findall(r"(--[\w-]+)", message.split(":", 1)[-1])
            if ("unrecognized arguments" in message or "ambiguous option" in message)
            else []
        )
        known = {f[2:]: f for f in self.flags()}
        for flag in unknown:
            name = flag[2:].lower().replace("_", "-")
            if name in known and flag not in known.values():  # --batch_size
                return f"did you mean {known[name]}?"
            candidates = list(known) + [s for s, t in SYNONYMS.items() if t in known]
            close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
            if close:
                target = SYNONYMS.get(close[0], close[0])
                return f"did you mean {known[target]}?"
        return None


def help_columns() -> int:
    """The width ``--help`` wraps at: the terminal's, between 80 and 110 columns.

    Returns:
        The column count (80 to 110).
    """
    return min(110, max(80, shutil.get_terminal_size((100, 24)).columns))


def first_sentence(text: str) -> str:
    """The first sentence of a docstring (its lines joined), for one-line listings.

    Args:
        text: a docstring (or any text).

    Returns:
        Up to and including its first full stop, its lines joined by spaces.
    """
    joined = " ".join(text.replace("``", "").split())  # reStructuredText's literals: plain
    end = joined.find(". ")
    return joined if end < 0 else joined[: end + 1]


def process_age_s() -> float:
    """Seconds since this process started (Linux: ``/proc``), so that a command's wall time
    includes the interpreter's start and ``import torch``; 0.0 where it cannot be read.

    Returns:
        Seconds (float) since the process started, or 0.0.
    """
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def interpret_triton_on_cpu(device: str) -> None:
    """Choose the Triton interpreter (``TRITON_INTERPRET=1``) when ``device`` (``auto``,
    ``cpu``, ``cuda``, ...) is the CPU. It must be chosen before triton is first imported:
    triton makes its own ``@triton.jit`` helpers then (``tl.sum``'s combine function among
    them), and a kernel interpreted later cannot call them ("Cannot call @triton.jit'd
    outside of the scope of a kernel"); torch 2.14's ``torch.utils.flop_counter``, which
    ``fastcifar.kernels`` imports, imports triton. A command that may run the kernels on
    the CPU calls this before importing them; once triton is imported it does nothing.

    Args:
        device: the ``--device`` value: ``"auto"`` (the CPU when CUDA is absent), ``"cpu"``,
            ``"cuda"``, ``"cuda:1"``, ...
    """
    if "triton" in sys.modules:
        return
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        os.environ["TRITON_INTERPRET"] = "1"
