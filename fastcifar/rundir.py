"""Files of a run directory written so that a crash never leaves a half-written one, and
checkpoints read so that a file from elsewhere cannot run code.

* ``atomic_write`` / ``atomic_save``: write to ``NAME.tmp``, then ``os.replace`` onto the
  name; the previous file stays whole until the new one is complete.
* ``load_checkpoint``: ``torch.load(..., weights_only=True)``. A checkpoint holds only
  tensors, numbers, strings and lists/dicts of them, which is what weights-only
  unpickling allows; anything else, a truncated file or no checkpoint at all ends in
  one ``FastCifarError`` line naming the file.
* ``prepare_run_dir``: create the directory and prove it writable.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from fastcifar.errors import FastCifarError

__all__ = ["atomic_save", "atomic_write", "load_checkpoint", "prepare_run_dir"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location, fix: str) -> dict:
    """The checkpoint at ``path``, unpickled weights-only onto ``map_location``.

    Raises:
        FastCifarError: the file is missing, truncated, corrupt, or holds objects that
            weights-only loading refuses; ``fix`` ends the message (what to do instead).
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every way a file fails to load is one line
        if isinstance(exc, pickle.UnpicklingError) and "Weights only" in str(exc):
            why = "it holds objects other than tensors, numbers and strings"
        else:
            text = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {text[0][:160] if text else 'unreadable'}"
        raise FastCifarError(f"checkpoint {path} does not load ({why}): {fix}") from None
    if not isinstance(ckpt, dict):
        raise FastCifarError(f"checkpoint {path} is not a fastcifar checkpoint: {fix}")
    return ckpt


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Create ``out`` and prove it writable.

    Raises:
        FastCifarError: it cannot be written, or it already holds a run and this is no resume.
    """
    if not resume and (out / "config.json").exists():
        raise FastCifarError(
            f"{out} already holds a run: pass --resume {out} to continue it, or choose "
            f"another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise FastCifarError(
            f"cannot write the output directory {out} ({exc.strerror or exc}): pass --out with "
            f"a writable path"
        ) from None
