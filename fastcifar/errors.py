"""The one exception type for bad user input.

Every ``FastCifarError`` carries a one-line message that names the problem and
the fix. Command-line entry points print it as ``error: <message>`` and exit
with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class FastCifarError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class TrainingDiverged(FastCifarError):
    """The training loss became NaN or infinite (``fastcifar.engine.trainer``): the
    message names the epoch and step, the checkpoint kept and the fix."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) where a command knows what was kept: the message says what was
    saved and the exact command that continues (one or more lines)."""


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, at most 300 characters: how a caught
    exception is named in one line of a log or an error.

    Args:
        exc: any exception.

    Returns:
        Its type name and the first line of its message, cut at 300 characters.
    """
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``, turning a FastCifarError into one line on stderr and exit code 2,
    and Ctrl-C into exit code 130 with ``Interrupted``'s message (what was kept, how to
    continue) on lines of its own, below any progress bar.

    Args:
        main: a command's ``main(argv)``, returning an exit code or None (0).
        argv: the arguments without the program name; None reads ``sys.argv``.

    Returns:
        The process exit code: ``main``'s (None as 0), 2 after a ``FastCifarError``, 130
        after Ctrl-C.
    """
    try:
        code = main(argv)
    except FastCifarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        message = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(("\n" if sys.stderr.isatty() else "") + message, file=sys.stderr, flush=True)
        return 130
    return int(code or 0)
