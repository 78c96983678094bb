"""Files written so that a crash never leaves a half-written one, and where caches live
(torch-free, importable from every layer above the kernels).

* ``atomic_write(path, text)`` / ``atomic_replace(path, write)``: write to ``NAME.tmp``,
  then ``os.replace`` onto the name; the previous file stays whole until the new one is
  complete (``os.replace`` is atomic on POSIX within one file system).
* ``cache_dir()``: ``$FASTCIFAR_CACHE``, else ``$XDG_CACHE_HOME/fastcifar``, else
  ``~/.cache/fastcifar``: the decoded data arrays, the kernel autotuning decisions
  (``kernel_dispatch.json``) and the roofline's compile-path counts (``roofline/``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_replace", "atomic_write", "cache_dir"]


def atomic_replace(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on ``path`` with ``.tmp`` appended, then rename it onto ``path``.

    Args:
        path: the file to (re)write.
        write: called with the temporary path ``<path>.tmp``; writes the whole new content.

    Raises:
        OSError: what ``write`` or the rename raise (the previous ``path`` is untouched).
    """
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename.

    Args:
        path: the file to (re)write.
        text: its whole new content, written as UTF-8.

    Raises:
        OSError: as ``atomic_replace`` (the previous ``path`` is untouched).
    """
    atomic_replace(path, lambda tmp: tmp.write_text(text))


def cache_dir() -> Path:
    """The cache directory.

    Returns:
        ``$FASTCIFAR_CACHE``, else ``$XDG_CACHE_HOME/fastcifar``, else
        ``~/.cache/fastcifar``, with ``~`` expanded; not created here.
    """
    if os.environ.get("FASTCIFAR_CACHE"):
        return Path(os.environ["FASTCIFAR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fastcifar"
