"""Older NVIDIA GPUs and AMD GPUs under PyTorch's ROCm build take the same paths: the
target of a device, the AMP dtype policy, the loader choice and the dispatch cache key,
each driven here by patching torch's version and device properties (no GPU needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fastcifar.data.factory import resolve_loader
from fastcifar.engine.runtime import amp_dtype
from fastcifar.errors import FastCifarError
from fastcifar.kernels import tiles
from fastcifar.kernels.targets import TARGETS, target_of
from fastcifar.nn import autotune_cache

CUDA = torch.device("cuda", 0)


def _gpu(monkeypatch, name: str, major=0, minor=0, hip: str | None = None, arch: str = ""):
    """Pretend GPU 0 is ``name``: compute capability ``major.minor`` (NVIDIA), or under
    ROCm ``hip`` with ``gcnArchName`` ``arch``."""
    props = SimpleNamespace(
        name=name, major=major, minor=minor, gcnArchName=arch, multi_processor_count=40
    )
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 12080, raising=False)


def test_every_target_has_the_limits_an_occupancy_estimate_needs():
    assert list(TARGETS) == [
        "sm_75",
        "sm_80",
        "sm_86",
        "sm_89",
        "sm_90",
        "sm_100",
        "sm_120",
        "gfx90a",
        "gfx942",
    ]
    for t in TARGETS.values():
        assert t.warp_size == (64 if t.family == "amd" else 32)
        assert t.regs > 0 and t.warps > 0 and t.blocks > 0 and t.smem >= 65536
        assert "fp16" in t.dtypes and "fp32" in t.dtypes
    assert "bf16" not in TARGETS["sm_75"].dtypes  # Turing has no bfloat16 arithmetic
    assert TARGETS["sm_75"].warps == 32 and TARGETS["sm_75"].smem == 65536


def test_a_t4_trains_in_float16_with_a_gradient_scaler(monkeypatch):
    _gpu(monkeypatch, "Tesla T4", 7, 5)
    assert target_of(CUDA) == "sm_75"
    assert amp_dtype(CUDA) == torch.float16
    assert amp_dtype(CUDA, "bfloat16") == torch.bfloat16  # forced: the user's choice


@pytest.mark.parametrize(
    ("name", "cc", "target"),
    [
        ("NVIDIA A100-SXM4-80GB", (8, 0), "sm_80"),
        ("NVIDIA L4", (8, 9), "sm_89"),
        ("NVIDIA H200", (9, 0), "sm_90"),
        ("NVIDIA B200", (10, 0), "sm_100"),
        ("NVIDIA GeForce RTX 5090", (12, 0), "sm_120"),
    ],
)
def test_ampere_and_newer_train_in_bfloat16(monkeypatch, name, cc, target):
    _gpu(monkeypatch, name, *cc)
    assert target_of(CUDA) == target
    assert amp_dtype(CUDA) == torch.bfloat16


def test_an_unlisted_older_gpu_asks_torch(monkeypatch):
    _gpu(monkeypatch, "Tesla V100-SXM2-16GB", 7, 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert target_of(CUDA) == "sm_70" and amp_dtype(CUDA) == torch.float16


def test_rocm_instinct_is_its_gfx_target_and_trains_in_bfloat16(monkeypatch):
    _gpu(monkeypatch, "AMD Instinct MI300X", 9, 4, hip="6.4.43482", arch="gfx942:sramecc+:xnack-")
    assert target_of(CUDA) == "gfx942"
    assert amp_dtype(CUDA) == torch.bfloat16


def test_rocm_dispatch_cache_key_names_the_architecture_and_hip(monkeypatch):
    _gpu(monkeypatch, "AMD Instinct MI250X", 9, 0, hip="6.2.41133", arch="gfx90a:sramecc+")
    key = autotune_cache.environment_key(CUDA)
    assert key.startswith("AMD Instinct MI250X (gfx90a) | hip 6.2.41133 | torch ")
    _gpu(monkeypatch, "NVIDIA H200", 9, 0)
    key = autotune_cache.environment_key(CUDA)
    assert key.startswith("NVIDIA H200 (sm_90) | driver 12080 |")
    # a change to the kernels' sources (or tiles) measures again
    assert key.endswith(f" | kernels {autotune_cache.kernels_digest()}")
    assert len(autotune_cache.kernels_digest()) == 12


def test_rocm_loader_choice_never_picks_dali(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.4")
    monkeypatch.setattr("fastcifar.data.dali_loader.dali_available", lambda: True)
    name, why = resolve_loader("auto", "s7", CUDA)
    assert name == "albumentations" and "DALI has no ROCm build" in why
    assert resolve_loader("auto", "flip_translate", CUDA)[0] == "gpu"
    with pytest.raises(FastCifarError, match="DALI has no ROCm build"):
        resolve_loader("dali", "s7", CUDA)
    monkeypatch.setattr(torch.version, "hip", None)
    assert resolve_loader("auto", "s7", CUDA)[0] == "dali"


def test_a_targets_own_tile_entry_is_used_there_and_only_there(monkeypatch):
    special = tiles.Tiles(block_p=32, block_c=8, block_n=16, block_k=16, pixels_per_partial=1024)
    monkeypatch.setitem(tiles.TARGET_TILES, "sm_75", {"grouped": special})
    with tiles.compile_target("sm_75"):
        assert tiles.tiles(torch.float16, "grouped") == special
        assert tiles.tiles(torch.float16, "dense") == tiles.GPU_TILES["dense"]
    with tiles.compile_target("sm_90"):
        assert tiles.tiles(torch.float16, "grouped") == tiles.GPU_TILES["grouped"]
