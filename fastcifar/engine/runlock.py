"""One run per directory at a time: ``RunLock``, an exclusive lock on a run directory
that a process holds for its whole life.

The lock is the operating system's: a POSIX record lock (``fcntl.lockf``) on
``RUN_DIR/.lock``. It goes with the process that holds it, however that process ends, so
a directory left by a killed run is free at once; no marker file has to be cleaned up.
Not ``fcntl.flock``: a flock belongs to the open file, which forked children share, so
the DataLoader workers of a SIGKILLed run (alive a moment longer, or orphaned) would keep
the directory locked; a POSIX lock belongs to the process alone. Its one trap: closing
any descriptor of the file in the holding process drops it, so a process opens ``.lock``
once (training and the evaluate command each take it once). The file also names its
holder (PID, host, start time, command) for the message a refused process prints.
Training holds the lock (rank 0 under torchrun) from before it reads or writes anything
in the directory until it exits; ``fastcifar.evaluate`` holds it while it writes the
figures and report.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from fastcifar.errors import FastCifarError

__all__ = ["RunLock"]

LOCK_NAME = ".lock"


class RunLock:
    """An exclusive, non-blocking lock on ``run_dir`` (which must exist).

    Use ``acquire(fix)`` (or ``with RunLock(d).acquire(fix):``); ``release()`` or the end
    of the process frees it. Another process is refused; the holding process must not take
    it twice (its second ``release`` would drop the first).

    Args:
        run_dir: the run directory; the lock file is ``run_dir/.lock``.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._file = None

    def acquire(self, fix: str) -> RunLock:
        """Take the lock, then record this process as its holder.

        Args:
            fix: what the user should do when the directory is held (ends the message).

        Returns:
            ``self``, holding the lock.

        Raises:
            FastCifarError: a live process holds the directory (the message names it), or
                the directory cannot be written.
        """
        try:
            file = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's life
        except OSError as exc:
            raise FastCifarError(
                f"cannot lock {self.path.parent} ({exc.strerror or exc}): the run directory "
                f"must be writable; copy it somewhere writable first"
            ) from None
        try:
            fcntl.lockf(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EACCES or EAGAIN: another process holds it
            file.seek(0)
            holder = _describe(file.read())
            file.close()
            raise FastCifarError(
                f"{self.path.parent} is in use by a live run ({holder}): {fix}"
            ) from None
        file.seek(0)
        file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        file.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": started,
                    "argv": sys.argv,
                }
            )
        )
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        """Free the directory (closing the lock file drops the lock); a no-op when not held."""
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(text: str) -> str:
    """'PID 123 on host, started 2026-12-01 14:00:00 UTC' from a lock file's contents."""
    try:
        info = json.loads(text)
        return f"PID {info['pid']} on {info['host']}, started {info['started']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "a process that has not yet said which"
