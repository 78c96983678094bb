"""The GPUs the roofline is drawn for: memory bandwidth and dense 16-bit tensor-core
peak, each from the vendor's data sheet (``source``), and the lower-bound time of a
kernel on one of them.

Peaks are dense (no 2:4 sparsity), 16-bit inputs with 32-bit accumulation, at boost
clock: the data sheets' "BF16 Tensor Core" (or FP16 where the GPU has no bfloat16, the
T4). ``attainable`` is the fraction of the bandwidth a copy kernel reaches on that GPU
where it has been measured with a cited source; None where not (no GPU has been lent to
this project yet: ``scripts/gpu_check.sh`` measures it on one that is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "GPUS",
    "CudaProfile",
    "Gpu",
    "get_gpu",
    "gpu_for_device",
    "lower_bound_s",
    "sum_lower_bound_s",
]


@dataclass(frozen=True)
class CudaProfile:
    """What Inductor asks a CUDA device when it lowers a graph for it
    (``torch.cuda.get_device_properties``), for a GPU that is not there. SM counts and
    memory: the GPU's data sheet or architecture whitepaper; shared memory: the CUDA C++
    Programming Guide's table of compute capabilities.

    Attributes:
        sm_count: streaming multiprocessors.
        capability: compute capability (major, minor).
        smem_optin: the shared memory one block may opt in to, bytes.
        l2_bytes: L2 cache, bytes.
        memory_bytes: device memory, bytes.
    """

    sm_count: int
    capability: tuple[int, int]
    smem_optin: int
    l2_bytes: int
    memory_bytes: int


@dataclass(frozen=True)
class Gpu:
    """One GPU of the table.

    Attributes:
        key: the table's key and ``--gpu``'s value (``h100``, ``a100-40gb``, ...).
        name: its product name.
        bandwidth: memory bandwidth, bytes/s.
        peak_flops: dense 16-bit tensor-core peak with FP32 accumulate, FLOP/s.
        source: the data sheet both come from.
        note: what a reader of the table should know (a variant, a missing dtype), or "".
        attainable: the fraction of ``bandwidth`` a copy kernel reaches, where measured;
            None where not.
        attainable_source: where that fraction was measured, or "".
        cuda: its ``CudaProfile``; None for a GPU that is not CUDA (the compile paths lower
            for CUDA).
    """

    key: str
    name: str
    bandwidth: float
    peak_flops: float
    source: str
    note: str = ""
    attainable: float | None = None
    attainable_source: str = ""
    cuda: CudaProfile | None = None

    @property
    def target(self) -> str | None:
        """Its ``fastcifar.kernels.targets`` name (``sm_90``), whose tiles fastcifar's
        launchers use; None without a CUDA profile."""
        if self.cuda is None:
            return "gfx942" if self.key == "mi300x" else None
        major, minor = self.cuda.capability
        return f"sm_{major}{minor}"

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute bound."""
        return self.peak_flops / self.bandwidth


MB, GB = 2**20, 2**30

GPUS: dict[str, Gpu] = {
    g.key: g
    for g in (
        Gpu(
            "t4",
            "NVIDIA T4",
            320e9,
            65e12,
            "NVIDIA T4 Tensor Core GPU data sheet (nvidia.com, t4-tensor-core-datasheet): "
            "320 GB/s GDDR6, 65 TFLOPS mixed-precision FP16/FP32",
            note="no bfloat16 on Turing: FP16 peak",
            cuda=CudaProfile(40, (7, 5), 65536, 4 * MB, 16 * GB),
        ),
        Gpu(
            "a100",
            "NVIDIA A100 80GB SXM",
            2039e9,
            312e12,
            "NVIDIA A100 Tensor Core GPU data sheet (nvidia.com, nvidia-a100-datasheet): "
            "2,039 GB/s HBM2e (80GB SXM), 312 TFLOPS BF16 Tensor Core dense",
            note="the A100 40GB (a100-40gb): 1,555 GB/s, same peak",
            cuda=CudaProfile(108, (8, 0), 166912, 40 * MB, 80 * GB),
        ),
        Gpu(
            "a100-40gb",
            "NVIDIA A100 40GB SXM",
            1555e9,
            312e12,
            "NVIDIA A100 Tensor Core GPU data sheet (nvidia.com, nvidia-a100-datasheet): "
            "1,555 GB/s HBM2 (40GB SXM), 312 TFLOPS BF16 Tensor Core dense",
            note="the speed-run records name an A100 without its memory",
            cuda=CudaProfile(108, (8, 0), 166912, 40 * MB, 40 * GB),
        ),
        Gpu(
            "l4",
            "NVIDIA L4",
            300e9,
            121e12,
            "NVIDIA L4 Tensor Core GPU data sheet (nvidia.com): 300 GB/s GDDR6, "
            "242 TFLOPS BF16 with sparsity, 121 dense",
            cuda=CudaProfile(58, (8, 9), 101376, 48 * MB, 24 * GB),
        ),
        Gpu(
            "rtx4090",
            "NVIDIA GeForce RTX 4090",
            1008e9,
            165.2e12,
            "NVIDIA Ada GPU Architecture whitepaper v2.1, appendix A, RTX 4090: "
            "1,008 GB/s GDDR6X, 165.2 TFLOPS FP16/BF16 Tensor with FP32 accumulate, dense",
            cuda=CudaProfile(128, (8, 9), 101376, 72 * MB, 24 * GB),
        ),
        Gpu(
            "h100",
            "NVIDIA H100 SXM",
            3.35e12,
            989e12,
            "NVIDIA H100 Tensor Core GPU data sheet (nvidia.com, h100-datasheet): "
            "3.35 TB/s HBM3 (SXM), 1,979 TFLOPS BF16 with sparsity, 989 dense",
            cuda=CudaProfile(132, (9, 0), 232448, 50 * MB, 80 * GB),
        ),
        Gpu(
            "h200",
            "NVIDIA H200 SXM",
            4.8e12,
            989e12,
            "NVIDIA H200 Tensor Core GPU data sheet (nvidia.com): 4.8 TB/s HBM3e, "
            "1,979 TFLOPS BF16 with sparsity, 989 dense",
            cuda=CudaProfile(132, (9, 0), 232448, 50 * MB, 141 * GB),
        ),
        Gpu(
            "b200",
            "NVIDIA B200",
            8e12,
            2.25e15,
            "NVIDIA DGX B200 / HGX B200 data sheet (nvidia.com): 8 TB/s HBM3e per GPU, "
            "4.5 PFLOPS FP16/BF16 with sparsity per GPU, 2.25 dense",
            cuda=CudaProfile(148, (10, 0), 232448, 126 * MB, 180 * GB),
        ),
        Gpu(
            "mi300x",
            "AMD Instinct MI300X",
            5.3e12,
            1307.4e12,
            "AMD Instinct MI300X data sheet (amd.com): 5.3 TB/s HBM3, "
            "1,307.4 TFLOPS BF16 dense (2,614.9 with sparsity)",
        ),
    )
}


def get_gpu(key: str) -> Gpu:
    """The table's entry for ``key`` (``h100``, ``a100``, ...).

    Args:
        key: a key of ``GPUS``, any case.

    Returns:
        The ``Gpu``.

    Raises:
        ValueError: an unknown key, naming the known ones.
    """
    try:
        return GPUS[key.lower()]
    except KeyError:
        raise ValueError(f"unknown GPU {key!r}: one of {', '.join(GPUS)}") from None


def gpu_for_device(name: str) -> Gpu | None:
    """The table's entry for a device as ``torch.cuda.get_device_name`` names it ("NVIDIA
    H100 80GB HBM3", "AMD Instinct MI300X", "NVIDIA A100-SXM4-40GB"), or None (a CPU, a
    GPU the table lacks). The key whose every word the name has wins, the longest first
    (``a100-40gb`` over ``a100``).

    Args:
        name: the device's name.

    Returns:
        The ``Gpu``, or None.
    """
    words = re.findall(r"[a-z0-9]+", name.lower())
    pairs = {a + b for a, b in zip(words, words[1:], strict=False)}  # "rtx 4090": rtx4090
    names = set(words) | pairs
    matches = [key for key in GPUS if set(key.split("-")) <= names]
    return GPUS[max(matches, key=len)] if matches else None


def lower_bound_s(flops: float, nbytes: float, gpu: Gpu) -> float:
    """Seconds a kernel of ``flops`` FLOPs moving ``nbytes`` bytes needs at least on
    ``gpu``: max(flops / peak, bytes / bandwidth), the roofline (Williams, Waterman and
    Patterson, "Roofline: an insightful visual performance model for multicore
    architectures", CACM 52(4), 2009).

    Args:
        flops: floating-point operations.
        nbytes: bytes read + written.
        gpu: the GPU.

    Returns:
        Seconds.
    """
    return max(flops / gpu.peak_flops, nbytes / gpu.bandwidth)


def sum_lower_bound_s(kernels, gpu: Gpu) -> float:
    """The sum of ``lower_bound_s`` over ``kernels``, (FLOPs, bytes) pairs: a step's floor
    from its layers (each layer's kernels are of one sort).

    Args:
        kernels: (FLOPs, bytes) pairs.
        gpu: the GPU.

    Returns:
        Seconds.
    """
    return sum(lower_bound_s(flops, nbytes, gpu) for flops, nbytes in kernels)
