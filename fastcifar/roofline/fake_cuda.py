"""A CUDA device that is not there: what lets Inductor lower a graph for CUDA, and
autocast apply CUDA's policy, on a machine with no GPU or no driver.

Nothing runs on the device: every tensor on it is a ``FakeTensor`` (shapes, strides and
dtypes only). What PyTorch asks the device while lowering is answered from the GPU's
``CudaProfile`` (``gpus.py``): its properties, its compute capability, that Triton can
compile for it and that it has bfloat16. One more answer differs from this machine's: on
a fake CUDA tensor ``torch._C._select_conv_backend`` picks the slow reference
convolution (``Slow2d``, contiguous output), which no CUDA build runs; cuDNN's is put in
its place, so a channels_last convolution's output stays channels_last, as on a GPU.

The patches touch PyTorch's private device layer (``torch._dynamo.device_interface``,
``torch._inductor.runtime.hints``), which moves between releases: ``SUPPORTED_TORCH``
lists the ones tested (CI runs both), and any other is refused in one line.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator
from unittest import mock

import torch

from fastcifar.errors import FastCifarError
from fastcifar.roofline.gpus import Gpu

__all__ = ["SUPPORTED_TORCH", "check_torch", "fake_cuda", "fake_cuda_tensor", "require_cuda"]

# torch releases whose private device layer these patches were written against: the
# development and CI stack (2.14) and the GPU machines' (2.11)
SUPPORTED_TORCH = ("2.11", "2.14")
DEVICE = torch.device("cuda", 0)


def check_torch(version: str | None = None) -> None:
    """Raises ``FastCifarError`` unless ``version`` (default torch's) is one of
    ``SUPPORTED_TORCH``.

    Args:
        version: a torch version string, or None for the running torch's.

    Raises:
        FastCifarError: an unsupported version (the message names the supported ones).
    """
    version = version or torch.__version__
    if ".".join(version.split(".")[:2]) not in SUPPORTED_TORCH:
        raise FastCifarError(
            f"the roofline's compile paths lower for CUDA through Inductor internals "
            f"tested on torch {' and '.join(SUPPORTED_TORCH)}, not {version}: count "
            f"--paths eager, or install one of those"
        )


def require_cuda(gpu: Gpu) -> None:
    """Raises ``FastCifarError`` unless this torch is one of ``SUPPORTED_TORCH`` and
    ``gpu`` has a CUDA profile (what ``fake_cuda`` needs).

    Args:
        gpu: the GPU the compile paths would lower for.

    Raises:
        FastCifarError: an unsupported torch, or a GPU without a CUDA profile.
    """
    check_torch()
    if gpu.cuda is None:
        raise FastCifarError(
            f"the compile paths lower for CUDA, and the {gpu.name} is not a CUDA GPU: "
            f"count --paths eager for it, or pick a CUDA --gpu"
        )


def _properties(gpu: Gpu) -> types.SimpleNamespace:
    """``torch.cuda.get_device_properties``'s answer for ``gpu``."""
    cuda = gpu.cuda
    return types.SimpleNamespace(
        name=gpu.name,
        major=cuda.capability[0],
        minor=cuda.capability[1],
        multi_processor_count=cuda.sm_count,
        total_memory=cuda.memory_bytes,
        L2_cache_size=cuda.l2_bytes,
        shared_memory_per_block_optin=cuda.smem_optin,
        shared_memory_per_block=48 * 1024,
        shared_memory_per_multiprocessor=cuda.smem_optin + 1024,
        regs_per_multiprocessor=65536,
        max_threads_per_multi_processor=2048 if cuda.capability[0] >= 8 else 1024,
        max_threads_per_block=1024,
        warp_size=32,
        gcnArchName="",
        is_integrated=False,
    )


def _cudnn_conv_backend(select):
    """``torch._C._select_conv_backend`` answering cuDNN where it answers a slow
    reference backend for a CUDA input (``Slow2d``: no CUDA build picks it)."""
    backends = torch._C._ConvBackend
    swap = {
        backends.Slow2d: backends.Cudnn,
        backends.SlowDilated2d: backends.Cudnn,
        backends.SlowTranspose2d: backends.CudnnTranspose,
    }

    @functools.wraps(select)
    def selected(input, *args, **kwargs):
        backend = select(input, *args, **kwargs)
        return swap.get(backend, backend) if input.device.type == "cuda" else backend

    return selected


def _no_op(*args, **kwargs) -> None:
    return None


def _clear_device_caches() -> None:
    """Forget what PyTorch cached about the devices (Triton's availability, device
    properties), so that answers given inside ``fake_cuda`` do not outlive it."""
    import torch._inductor.runtime.hints as hints
    import torch._inductor.utils as inductor_utils
    import torch.utils._triton as triton_utils

    for module in (triton_utils, inductor_utils):
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    hints.DeviceProperties.create.cache_clear()


@contextlib.contextmanager
def fake_cuda(gpu: Gpu) -> Iterator[None]:
    """Within: PyTorch believes ``cuda:0`` is ``gpu`` (``gpu.cuda``'s profile), for
    Inductor's lowering and for autocast. Tensors on it must be fake
    (``fake_cuda_tensor``); nothing may run on it.

    Args:
        gpu: the GPU ``cuda:0`` stands for.

    Yields:
        None; on leaving, torch's CUDA queries answer as before.

    Raises:
        FastCifarError: a torch not in ``SUPPORTED_TORCH``, or a GPU with no CUDA profile.
    """
    require_cuda(gpu)
    from torch._dynamo.device_interface import CudaInterface

    props = _properties(gpu)
    capability = gpu.cuda.capability
    answers = {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "get_device_properties": lambda device=None: props,
        "get_device_capability": lambda device=None: capability,
        "get_device_name": lambda device=None: gpu.name,
        "is_bf16_supported": lambda including_emulation=True: capability >= (8, 0),
        "get_rng_state": lambda device="cuda": torch.zeros(16, dtype=torch.uint8),
        "set_rng_state": lambda new_state, device="cuda": None,
        "_exchange_device": lambda device: 0,
        "_maybe_exchange_device": lambda device: 0,
        "set_device": lambda device: None,
    }
    interface = {
        "get_compute_capability": lambda device=None: capability[0] * 10 + capability[1],
        "is_triton_capable": lambda device=None: True,
        "raise_if_triton_unavailable": lambda device=None: None,
    }
    with contextlib.ExitStack() as stack:
        for name, answer in answers.items():
            stack.enter_context(mock.patch.object(torch.cuda, name, answer))
            if hasattr(CudaInterface, name):
                stack.enter_context(mock.patch.object(CudaInterface, name, staticmethod(answer)))
        for name, answer in interface.items():
            stack.enter_context(mock.patch.object(CudaInterface, name, staticmethod(answer)))
        for name in ("current_device", "get_device_properties"):
            answer = staticmethod(answers[name])
            stack.enter_context(mock.patch.object(CudaInterface.Worker, name, answer))
        from torch._subclasses import fake_tensor

        if hasattr(fake_tensor, "init_gpu_context"):  # torch 2.11: a real CUDA tensor
            stack.enter_context(mock.patch.object(fake_tensor, "init_gpu_context", _no_op))
        select = _cudnn_conv_backend(torch._C._select_conv_backend)
        stack.enter_context(mock.patch.object(torch._C, "_select_conv_backend", select))
        stack.callback(_clear_device_caches)
        _clear_device_caches()
        yield


def fake_cuda_tensor(t: torch.Tensor, mode, device: torch.device = DEVICE) -> torch.Tensor:
    """A ``FakeTensor`` of ``mode`` on ``device`` (default ``cuda:0``) with ``t``'s sizes,
    strides and dtype (sizes that are symbolic are taken at their value).

    Args:
        t: any tensor (real, meta or fake).
        mode: the ``FakeTensorMode`` the new tensor belongs to.
        device: its device.

    Returns:
        The fake tensor.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    sizes = [int(s) for s in t.shape]
    strides = [int(s) for s in t.stride()]
    meta = torch.empty_strided(sizes, strides, dtype=t.dtype, device="meta")
    return FakeTensor(mode, meta, device)
