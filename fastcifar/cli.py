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
import sys

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
    ``python -m module``."""
    if script and os.path.basename(sys.argv[0]) == script:
        return script
    return f"python -m {module}"


class CommandParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are short and suggest the fix; exits 2
    as argparse does."""

    def error(self, message: str):
        lines = [f"usage: {self.prog} [options] (--help lists them)", f"error: {message}"]
        suggestion = self.suggest(message)
        if suggestion:
            lines.append(suggestion)
        self.exit(2, "\n".join(lines) + "\n")

    def flags(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("--")]

    def suggest(self, message: str) -> str | None:
        """'did you mean --lr?' for the first unknown flag in argparse's ``message``."""
        unknown = re.findall(r"(--[\w-]+)", message.split(":", 1)[-1]) if (
            "unrecognized arguments" in message or "ambiguous option" in message
        ) else []  # fmt: skip
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
