"""``assert_no_host_sync``: run a function under a dispatch mode that fails on anything
that would make a GPU step wait for the host: a scalar read back (``.item()``,
``float(t)``, ``bool(t)``: ``aten._local_scalar_dense``), a copy to the CPU, or a
CPU-resident tensor (a counter kept on the host) fed to an operation on another device.

Run it with tensors on the ``meta`` device: every operation dispatches as on a GPU, no data
exists, and a value read back cannot even be produced.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _HostSyncDetector(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if "_local_scalar_dense" in name or name.endswith(".item"):
            self.problems.append(f"{name}: a value read back to the host")
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if "cpu" in devices and len(devices) > 1:
            self.problems.append(f"{name}: a CPU tensor mixed with {devices - {'cpu'}}")
        to_cpu = kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu"
        if to_cpu and devices - {"cpu"}:
            self.problems.append(f"{name}: a copy to the CPU")
        return func(*args, **kwargs)


def assert_no_host_sync(fn) -> None:
    """Run ``fn()``; fail naming each operation that would synchronise with the host."""
    mode = _HostSyncDetector()
    try:
        with mode:
            fn()
    except RuntimeError:  # a meta tensor cannot be read back: say which operation tried
        if not mode.problems:
            raise
    assert not mode.problems, "host synchronisation: " + "; ".join(sorted(set(mode.problems)))
