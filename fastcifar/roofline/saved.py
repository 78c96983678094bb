"""Activation memory a training step keeps for its backward: the bytes of every tensor
autograd saves during the forward (``torch.autograd.graph.saved_tensors_hooks``), each
storage once, parameters and their 16-bit casts left out.

Counted on fake tensors at the full batch (no memory is allocated), for the eager model
and for the model as ``--kernels triton`` converts it (``fastcifar.nn.fusion``): the
fastcifar path's custom operators save what their ``setup_context`` saves (a chain saves
the raw convolution output and per-channel statistics, never the normalised tensor).
torch.compile's partitioner chooses its own saved set (it may recompute): not counted
here.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from fastcifar.roofline.count import _fake_copy
from fastcifar.roofline.inductor import _triton_recorded
from fastcifar.roofline.ledger import StepSetup

__all__ = ["saved_activations", "saved_bytes"]


@contextlib.contextmanager
def saved_activations(batch: int) -> Iterator[dict[int, int]]:
    """Within it, every tensor autograd saves whose first dimension is ``batch`` (an
    activation) is recorded in the yielded ``{storage id: bytes}``, each storage once at
    its full size; ``sum(d.values())`` is the activation memory kept for the backward.

    Args:
        batch: the batch size that marks an activation.

    Yields:
        The dict, filled as autograd saves.
    """
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.dim() > 0 and t.shape[0] == batch:
            storage = t.untyped_storage()
            saved[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def saved_bytes(setup: StepSetup, fastcifar: bool = False) -> int:
    """Bytes saved for the backward by one training-mode forward of ``setup``'s model at
    its batch, dtype and layout (the loss included); with ``fastcifar`` the model is
    converted as ``--kernels triton`` converts it first. Each storage counts once, at its
    full size. Activations are the saved tensors whose first dimension is the batch;
    parameters, their autocast copies and per-channel statistics are left out.

    Args:
        setup: the step's setup.
        fastcifar: convert the model as ``--kernels triton`` does first.

    Returns:
        Bytes.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = copy.deepcopy(setup.model)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fastcifar:
        from fastcifar.nn.fusion import FUSIONS, convert

        convert(model, kinds=tuple(k.name for k in FUSIONS if k.triton))
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = _fake_copy(model, mode).train()
    batch = setup.batch_size
    # the kernels' device check passes on the CPU; on fake tensors nothing launches
    with _triton_recorded(None), mode, saved_activations(batch) as saved:
        x, y = setup.example(batch)
        with setup.autocast():
            setup.loss(model(x), y)
    return sum(saved.values())


def saved_summary(setup: StepSetup, paths) -> tuple[dict[str, int], str]:
    """({path: bytes saved for the backward}, one console line) for the eager and
    fastcifar paths among ``paths`` (the compile path's saved set is the partitioner's:
    not counted).

    Args:
        setup: the step's setup.
        paths: the paths asked for.

    Returns:
        ({path: bytes}, the line).
    """
    saved = {
        p: saved_bytes(setup, fastcifar=p == "fastcifar")
        for p in paths
        if p in ("eager", "fastcifar")
    }
    parts = [f"{p} {b / 1e6:,.0f} MB" for p, b in saved.items()]
    if len(saved) == 2:
        parts.append(f"fastcifar/eager {saved['fastcifar'] / saved['eager']:.2f}")
    line = "activations saved for the backward (one forward, fake tensors): " + ", ".join(parts)
    return saved, line
