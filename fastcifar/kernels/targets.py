"""The GPU targets fastcifar's kernels are compiled for, with the per-SM (per-CU) limits
an occupancy estimate needs and the dtypes each trains in.

One ``Target`` per architecture family users train on: NVIDIA Turing to Blackwell
(``sm_75`` ... ``sm_120``) and AMD Instinct CDNA2/CDNA3 (``gfx90a``, ``gfx942``).
``scripts/aot_check.py`` compiles every kernel for them without a GPU; ``tiles.tiles``
picks a target's own tile entry where one exists (``target_of`` names the target of a
device).

Sources of the limits:

* NVIDIA: CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"
  (32-bit registers per SM, resident warps and blocks per SM, shared memory per SM).
* AMD: the CDNA2 (MI200) and CDNA3 (MI300) ISA references and ROCm's HIP programming
  guide: 64 KiB LDS per CU, 4 SIMDs per CU, 512 unified VGPRs per SIMD lane (arch +
  accumulation registers), at most 8 wavefronts of 64 lanes per SIMD. Their occupancy is
  the compiler's own figure (waves per SIMD, from the ``; Occupancy:`` line of the ISA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TARGETS", "Target", "target_of"]


@dataclass(frozen=True)
class Target:
    """One compile target.

    Attributes:
        name: ``sm_<cc>`` or the AMD ``gfx`` name.
        backend: ``cuda`` or ``hip``.
        arch: what ``triton.backends.compiler.GPUTarget`` takes (an int for CUDA, the gfx
            name for HIP).
        warp_size: 32 (NVIDIA) or 64 (CDNA wavefronts).
        regs: 32-bit registers per SM (NVIDIA).
        warps: resident warps per SM (NVIDIA) or wavefronts per SIMD (AMD).
        blocks: resident blocks per SM.
        smem: shared memory (LDS) bytes per SM (CU).
        dtypes: what training runs in there (``fastcifar.engine.runtime.amp_dtype``'s
            policy).
        gpus: examples.
    """

    name: str
    backend: str
    arch: int | str
    warp_size: int
    regs: int
    warps: int
    blocks: int
    smem: int
    dtypes: tuple[str, ...]
    gpus: str

    @property
    def family(self) -> str:
        """``nvidia`` or ``amd``."""
        return "nvidia" if self.backend == "cuda" else "amd"


_ALL = ("bf16", "fp16", "fp32")
TARGETS = {
    t.name: t
    for t in (
        # Turing: no bfloat16 arithmetic (AMP trains in float16 with a gradient scaler);
        # 64 KB shared memory and 32 resident warps per SM
        Target("sm_75", "cuda", 75, 32, 65536, 32, 16, 65536, ("fp16", "fp32"), "T4, RTX 20"),
        Target("sm_80", "cuda", 80, 32, 65536, 64, 32, 167936, _ALL, "A100, A30"),
        Target("sm_86", "cuda", 86, 32, 65536, 48, 16, 102400, _ALL, "A10, RTX 30"),
        Target("sm_89", "cuda", 89, 32, 65536, 48, 24, 102400, _ALL, "L4, L40, RTX 40"),
        Target("sm_90", "cuda", 90, 32, 65536, 64, 32, 233472, _ALL, "H100, H200"),
        Target("sm_100", "cuda", 100, 32, 65536, 64, 32, 233472, _ALL, "B200, GB200"),
        Target("sm_120", "cuda", 120, 32, 65536, 48, 32, 102400, _ALL, "RTX 50, RTX PRO"),
        Target("gfx90a", "hip", "gfx90a", 64, 512, 8, 32, 65536, _ALL, "MI210, MI250"),
        Target("gfx942", "hip", "gfx942", 64, 512, 8, 32, 65536, _ALL, "MI300X, MI325X"),
    )
}


def target_of(device: torch.device | str) -> str | None:
    """The ``TARGETS`` name of a CUDA/ROCm ``device`` (``sm_<major><minor>``, or the gfx
    name from ``gcnArchName`` under ROCm, its feature suffix such as ``:sramecc+`` cut),
    or None for a CPU. A GPU of an unlisted architecture gets its own name all the same
    (and the default tiles).

    Args:
        device: a torch device or its string (``"cuda:0"``, ``"cpu"``).

    Returns:
        The target's name, or None.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip:
        return str(getattr(props, "gcnArchName", "gfx")).split(":")[0]
    return f"sm_{props.major}{props.minor}"
