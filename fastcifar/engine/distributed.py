"""Data-parallel training on PyTorch's own engine: ``torchrun`` starts the processes,
``torch.distributed`` connects them, ``DistributedDataParallel`` averages the gradients.

``torchrun --nproc_per_node N -m fastcifar.train ...`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and the rendezvous address in each process's environment; ``init_from_env``
reads them, joins the process group (NCCL on CUDA, gloo on the CPU) and pins each process
to GPU ``LOCAL_RANK``. Without them (a plain ``python -m fastcifar.train``) nothing is
initialised and ``World()`` says rank 0 of 1, so single-process code needs no branches.

The recipe's batch size is the global batch: each rank trains on ``batch_size /
world_size`` images of every step (``per_rank_batch``), so a recipe means the same on 1
or N GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fastcifar.errors import FastCifarError

__all__ = [
    "SINGLE",
    "World",
    "all_reduce_",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "data_parallel",
    "init_from_env",
    "per_rank_batch",
    "shutdown",
]


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node.

    Attributes:
        rank: this process's rank, from 0.
        size: processes in all.
        local_rank: its rank on its node (its GPU's index).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0


SINGLE = World()  # a plain ``python -m fastcifar.train``: rank 0 of 1


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` above 1).

    Returns:
        True under a multi-process torchrun.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment (no-op without it).

    Args:
        device: the ``--device`` flag: ``cpu`` trains on the CPU with gloo even where
            GPUs exist; otherwise CUDA (NCCL) when present, else gloo.

    Returns:
        This process's ``World`` (``SINGLE`` without torchrun).

    Raises:
        FastCifarError: more processes on a node than GPUs there.
    """
    if not launched_by_torchrun():
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise FastCifarError(
                f"torchrun started process {local_rank} on a node with "
                f"{torch.cuda.device_count()} GPU(s): pass --nproc_per_node at most the GPU count"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, local_rank)


def per_rank_batch(batch_size: int, world: World) -> int:
    """Images per rank per step.

    Args:
        batch_size: the global batch.
        world: the processes.

    Returns:
        ``batch_size // world.size``.

    Raises:
        FastCifarError: the global batch does not divide among the processes.
    """
    if batch_size % world.size:
        raise FastCifarError(
            f"--batch-size {batch_size} (the global batch) does not divide among "
            f"{world.size} processes: pass a multiple of {world.size}"
        )
    return batch_size // world.size


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or average, ``op="mean"``) ``tensor`` over all ranks, in place; a no-op in a
    single process.

    Args:
        tensor: the same shape on every rank; reduced in place.
        op: ``"sum"`` or ``"mean"``.

    Returns:
        ``tensor``.
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= dist.get_world_size()
    return tensor


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, so evaluation and
    checkpoints agree across ranks; a no-op in a single process.

    Args:
        module: the model; its buffers are overwritten in place.
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        for b in module.buffers():
            dist.broadcast(b, 0)


def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable value) on every rank; ``obj`` in a single process.

    Args:
        obj: the value (meaningful on rank 0).

    Returns:
        Rank 0's value.
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """--sync-bn: ``model`` with BatchNorm statistics over the global batch (PyTorch's
    SyncBatchNorm; CUDA only). Off by default: the record holders train with per-GPU
    statistics.

    Args:
        model: the model.
        device: the training device.

    Returns:
        The model with its BatchNorms converted.

    Raises:
        FastCifarError: ``device`` is not a CUDA GPU.
    """
    if device.type != "cuda":
        raise FastCifarError(
            "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs only): drop "
            "--sync-bn on the CPU"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def barrier() -> None:
    """Wait until every rank gets here; a no-op in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (torchrun's processes end cleanly); a no-op in a single process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(model: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """``model`` in DistributedDataParallel on this rank's ``device`` (gradients averaged
    during the backward). ``find_unused``: some parameter stops receiving a gradient
    mid-run (the speed run's whitening bias), which DDP must then expect.

    Args:
        model: the model on ``device``.
        device: this rank's device.
        find_unused: some parameter stops receiving a gradient mid-run.

    Returns:
        The DDP-wrapped model.
    """
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
    )
