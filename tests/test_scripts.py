"""scripts/gpu_check.sh, aot_check.py and chain_error.py: their behaviour without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"scripts_{name}", ROOT / "scripts" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"scripts_{name}"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_check.sh"), str(out), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_gpu_check_stage_records_failures_and_time_outs_and_goes_on(tmp_path):
    gc = _load("gpu_check")
    log = open(tmp_path / "log", "w+")  # noqa: SIM115 - the stages write to its descriptor
    ok = gc.run_stage("a", [[sys.executable, "-c", "print('hi')"]], {}, 30, log)
    failed = gc.run_stage(
        "b",
        [[sys.executable, "-c", "raise SystemExit(3)"], [sys.executable, "-c", "print('next')"]],
        {},
        30,
        log,
    )
    slow = gc.run_stage("c", [[sys.executable, "-c", "import time; time.sleep(30)"]], {}, 1, log)
    assert ok["status"] == "ok"
    assert failed["status"] == "failed (exit 3)"
    assert slow["status"] == "timeout" and slow["seconds"] < 10
    log.seek(0)
    text = log.read()
    log.close()
    assert "hi" in text and "next" in text  # the command after the failure still ran
    report = {
        "quick": True,
        "date": "d",
        "stages": [ok, failed, slow],
        "environment": {"gpu": "X", "copy_bandwidth_gb_s": 3000},
    }
    md = gc.markdown(report)
    assert "| b | failed (exit 3) |" in md and "| copy_bandwidth_gb_s | 3000 |" in md
    json.dumps(report)  # the report is JSON as written


def test_gpu_check_stage_limits_fit_the_promised_totals():
    gc = _load("gpu_check")
    assert sum(q for q, _ in gc.LIMITS.values()) < 9 * 60
    assert sum(f for _, f in gc.LIMITS.values()) < 30 * 60


def test_gpu_check_times_the_chained_speed_run_against_pytorchs_modules(tmp_path):
    gc = _load("gpu_check")
    paired = [("speedrun94_progressive", 1, "triton"), ("speedrun94_progressive", 1, "torch")]
    assert gc.speedrun_plan(quick=True) == paired
    assert gc.speedrun_plan(quick=False)[:2] == paired
    commands = dict((name, cmds) for name, cmds, _ in gc.stages(tmp_path, True, "d", "bfloat16"))
    kernels = [c[c.index("--kernels") + 1] for c in commands["speedrun"]]
    assert kernels == ["triton", "torch"]


def test_aot_occupancy_estimate():
    aot = _load("aot_check")
    # 56 registers x 32 lanes -> 1,792 per warp; 4 warps -> 9 blocks -> 36 of 64 warps
    assert aot.occupancy("sm_90", 56, 0, 4) == pytest.approx(36 / 64)
    # 255 registers -> 8,192 per warp: 2 blocks of 4 warps
    assert aot.occupancy("sm_90", 255, 0, 4) == pytest.approx(8 / 64)
    # shared memory bound: 83,072 B + 1 KiB reserved -> 2 blocks on sm_90, 1 on sm_80
    assert aot.occupancy("sm_90", 32, 83072, 4) == pytest.approx(8 / 64)
    assert aot.occupancy("sm_80", 32, 83072, 4) == pytest.approx(4 / 64)
    # a T4 holds 32 warps and 64 KB: 56 registers x 4 warps -> 8 blocks by warps
    assert aot.occupancy("sm_75", 56, 0, 4) == pytest.approx(32 / 32)
    assert aot.occupancy("sm_75", 32, 40000, 4) == pytest.approx(4 / 32)
    # AMD: the compiler's waves per SIMD out of 8
    assert aot.occupancy("gfx942", 100, 0, 4, waves=5) == pytest.approx(5 / 8)


def test_aot_targets_parse_and_unknown_ones_are_named():
    aot = _load("aot_check")
    names = [t.name for t in aot.parse_targets(aot.ALL_TARGETS)]
    assert names == [
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
    assert [t.name for t in aot.parse_targets("sm_90, gfx942")] == ["sm_90", "gfx942"]
    with pytest.raises(ValueError, match="unknown target 'sm_61'.*sm_75"):
        aot.parse_targets("sm_61")


SASS = """
        /*0090*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*00a0*/              @!P0 LDG.E.U16 R8, desc[UR4][R6.64] ;
        /*00b0*/                   LDG.E.U16 R9, desc[UR4][R6.64+0x2] ;
        /*00c0*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R10.64] ;
        /*00d0*/                   LDGDEPBAR ;
        /*00e0*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*00f0*/                   LDG.E R12, desc[UR4][R6.64] ;
        /*0100*/                   STG.E.64 desc[UR4][R2.64], R4 ;
"""

AMDGCN = """
    buffer_load_dwordx4 v[0:3], v4, s[0:3], 0 offen
    global_load_ushort v5, v[6:7], off
    buffer_load_short_d16_hi v8, v9, s[0:3], 0 offen
    v_mfma_f32_32x32x8_bf16 a[0:15], v[0:1], v[2:3], a[0:15]
    buffer_store_dwordx2 v[0:1], v4, s[0:3], 0 offen
    ds_read_b64 v[10:11], v12
"""


def test_aot_reads_load_widths_and_tensor_cores_from_the_disassembly():
    aot = _load("aot_check")
    sass = aot.read_sass(SASS)
    # LDG.128, LDG.U16 (predicated), LDG.U16, LDGSTS.128, LDG (32): LDGDEPBAR is no load
    assert sass["loads"] == 5 and sass["load_widest"] == 128 and sass["load_common"] in (16, 128)
    assert sass["narrow_loads"] == 3 and sass["stores"] == 1 and sass["store_widest"] == 64
    assert sass["tensor_ops"] == 1
    amd = aot.read_amdgcn(AMDGCN)
    assert amd["loads"] == 3 and amd["load_widest"] == 128 and amd["narrow_loads"] == 2
    assert amd["stores"] == 1 and amd["store_widest"] == 64 and amd["tensor_ops"] == 1
    assert aot.sass_width("LDG.E.64.CONSTANT") == 64 and aot.amd_width("ubyte") == 8


def test_aot_findings_name_narrow_loads_missing_tensor_cores_and_16_bit_spills():
    aot = _load("aot_check")
    base = dict(
        shared=0,
        num_warps=4,
        num_stages=3,
        waves=None,
        registers=64,
        spill=0,
        loads=9,
        load_widest=128,
        load_common=16,
        narrow_loads=8,
        stores=1,
        store_widest=128,
        tensor_ops=0,
    )
    narrow = {**base, "load_widest": 32, "load_common": 32, "narrow_loads": 9}
    # (kernel, dtype, target, job, label, calls tl.dot, wide loads possible)
    jobs = [
        ("conv_fwd_grouped_kernel", "bf16", "sm_90", None, "32->32 20x20 g32 cl", False, True),
        ("conv_fwd_grouped_kernel", "bf16", "sm_90", None, "3->16 32x32 g1 cl", False, False),
        ("dwsep_fwd_kernel", "fp16", "sm_75", None, "32->32 20x20 g32 cl", True, True),
        ("conv_fwd_dot_kernel", "fp32", "sm_90", None, "64->64 cl", True, True),
        ("bias_grad_kernel", "fp16", "gfx942", None, "64->64 cl", False, True),
        ("conv_bwd_input_grouped_kernel", "fp16", "sm_90", None, "144->144 g144 5x5", False, True),
    ]
    results = [
        base,
        narrow,
        {**base, "spill": 48},
        {**narrow, "spill": 96},
        {"error": "E: x"},
        {**base, "spill": 360},
    ]
    rows, compiled, failed, spilling = aot.summarise(jobs, results)
    assert (compiled, failed, spilling) == (5, 1, 3)
    found = aot.findings(rows)
    # every 16-bit spill is a finding, the model zoo's configurations' too
    assert any(f.startswith("SPILLS conv_bwd_input_grouped_kernel fp16 sm_90: 360") for f in found)
    # the narrow compile has channels that cannot be wide (3 -> 16): not a finding
    assert not any(f.startswith("NARROW conv_fwd_grouped") for f in found)
    assert any(f.startswith("SPILLS dwsep_fwd_kernel fp16 sm_75: 48 bytes") for f in found)
    assert any(f.startswith("NO-TC dwsep_fwd_kernel fp16 sm_75") for f in found)
    assert not any("fp32" in f for f in found)  # float32 is never a finding
    md = aot.markdown(rows)
    assert "| dwsep_fwd_kernel | fp16 | sm_75 | 1 | 64 | 48 |" in md and "**no**" in md
    assert "| bias_grad_kernel | fp16 | gfx942 | 0 (1 failed) |" in md
    rows, *_ = aot.summarise(jobs[:1], [narrow])
    assert aot.findings(rows)[0].startswith("NARROW conv_fwd_grouped_kernel bf16 sm_90: 1 of 1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_chain_error_refuses_in_one_line_without_a_gpu_or_a_chain(monkeypatch, capsys):
    chain_error = _load("chain_error")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert chain_error.main(["--model", "mobilenetv2"]) == 2
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith("run with TRITON_INTERPRET=1 to use the interpreter")
    )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert chain_error.main(["--model", "s7"]) == 2  # the seeds' blocks are conv -> ReLU -> BN
    assert "s7 has no conv-BN-activation chain" in capsys.readouterr().out


def test_the_offline_wheel_list_is_what_fastcifar_needs_less_the_gpu_stack():
    from importlib import metadata

    from packaging.requirements import Requirement

    wheels = _load("offline_wheels")
    assert wheels.main(["check"]) == 0, "run: python scripts/offline_wheels.py write"
    names = {Requirement(w).name for w in wheels.wheels()}
    # the ones README's hand-written list lacked, and the direct ones
    assert {
        "opencv-python-headless",
        "matplotlib",
        "scipy",
        "tensorboard",
        "tqdm",
        "pyyaml",
        "scikit-learn",
        "albumentations",
        "grad-cam",
        "nvidia-dali-cuda130",
    } <= names
    assert not names & {"torch", "torchvision", "triton", "numpy"}  # the GPU machine's
    stack = set(wheels.closure([Requirement(n) for n in wheels.STACK]))
    for text in metadata.distribution("fastcifar").requires:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "dali"}):
            assert wheels._norm(req.name) in names | stack, req.name
    for name in names:  # each one a distribution that exists here
        assert metadata.distribution(name).version
