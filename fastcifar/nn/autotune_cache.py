"""Where ``--kernels auto``'s timings are kept: ``<cache>/kernel_dispatch.json``
(``fastcifar._io.cache_dir``), keyed by the environment a timing is valid for
(``environment_key``: GPU, architecture, driver or HIP, torch, triton and a digest of
the kernels' sources), the kind and the configuration."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from fastcifar._io import atomic_write, cache_dir

__all__ = ["DispatchCache", "default_cache", "environment_key", "kernels_digest"]


def environment_key(device: torch.device) -> str:
    """GPU name, architecture, driver (CUDA) or HIP version (ROCm), torch and triton
    versions and the kernels' sources (``kernels_digest``): what a cached timing is valid
    for. Under PyTorch's ROCm build the device is
    "cuda" too; its architecture is ``gcnArchName`` (gfx942, ...), its driver the HIP
    runtime.

    Args:
        device: the CUDA (or ROCm) device.

    Returns:
        The key, one line: ``"<GPU name> (<arch>) | <driver> | torch <v> | triton <v> |
        kernels <digest>"``.
    """
    import triton

    from fastcifar.kernels.targets import target_of

    name, arch, driver = device.type, "", "unknown"
    if device.type == "cuda":
        name, arch = torch.cuda.get_device_name(device), f" ({target_of(device)})"
        if torch.version.hip:
            driver = f"hip {torch.version.hip}"
        else:
            with contextlib.suppress(AttributeError, RuntimeError):
                driver = f"driver {torch._C._cuda_getDriverVersion()}"
    return (
        f"{name}{arch} | {driver} | torch {torch.__version__} | triton {triton.__version__}"
        f" | kernels {kernels_digest()}"
    )


def kernels_digest() -> str:
    """12 hex digits of a hash of fastcifar.kernels' sources: a change to a kernel or its
    tiles measures again, as a new driver or version does.

    Returns:
        The first 12 hex digits of the SHA-256 of the kernels' source files.
    """
    import hashlib

    import fastcifar.kernels as pkg

    digest = hashlib.sha256()
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class DispatchCache:
    """Timings per (environment, kind, configuration) in a JSON file, written atomically.

    Args:
        path: the JSON file; read if it exists (an unreadable one counts as empty), written
            by ``save``.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}  # a missing or damaged cache is only a cost, never an error

    def get(self, env: str, kind: str, config: str) -> dict | None:
        """A cached timing.

        Args:
            env: the environment key (``environment_key``).
            kind: the unit's kind.
            config: ``ConvConfig.describe()``.

        Returns:
            ``{"triton_ms": ..., "torch_ms": ...}``, or None.
        """
        return self.data.get(env, {}).get(f"{kind} {config}")

    def put(self, env: str, kind: str, config: str, triton_ms: float, torch_ms: float) -> None:
        """Keep a timing (``save`` writes it).

        Args:
            env: the environment key.
            kind: the unit's kind.
            config: ``ConvConfig.describe()``.
            triton_ms: the Triton side, milliseconds.
            torch_ms: the PyTorch side, milliseconds.
        """
        entry = {"triton_ms": triton_ms, "torch_ms": torch_ms}
        self.data.setdefault(env, {})[f"{kind} {config}"] = entry

    def save(self) -> None:
        """Write the file atomically (its folder made if missing)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def default_cache() -> DispatchCache:
    """The cache of this machine's decisions, ``<cache>/kernel_dispatch.json``
    (``fastcifar._io.cache_dir``).

    Returns:
        A ``DispatchCache`` on that file.
    """
    return DispatchCache(cache_dir() / "kernel_dispatch.json")
