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


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``, turning a FastCifarError into one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except FastCifarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130
    return int(code or 0)
