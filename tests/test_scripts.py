"""scripts/gpu_check.sh and scripts/aot_check.py: their behaviour without a GPU."""

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
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), str(out), "--quick"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_gpu_check_stage_records_failures_and_time_outs_and_goes_on(tmp_path):
    gc = _load("gpu_check")
    log = open(tmp_path / "log", "w+")  # noqa: SIM115 - the stages write to its descriptor
    ok = gc.run_stage("a", [[sys.executable, "-c", "print('hi')"]], {}, 30, log)
    failed = gc.run_stage("b", [[sys.executable, "-c", "raise SystemExit(3)"],
                                [sys.executable, "-c", "print('next')"]], {}, 30, log)  # fmt: skip
    slow = gc.run_stage("c", [[sys.executable, "-c", "import time; time.sleep(30)"]], {}, 1, log)
    assert ok["status"] == "ok"
    assert failed["status"] == "failed (exit 3)"
    assert slow["status"] == "timeout" and slow["seconds"] < 10
    log.seek(0)
    text = log.read()
    log.close()
    assert "hi" in text and "next" in text  # the command after the failure still ran
    report = {"quick": True, "date": "d", "stages": [ok, failed, slow],
              "environment": {"gpu": "X", "copy_bandwidth_gb_s": 3000}}  # fmt: skip
    md = gc.markdown(report)
    assert "| b | failed (exit 3) |" in md and "| copy_bandwidth_gb_s | 3000 |" in md
    json.dumps(report)  # the report is JSON as written


def test_gpu_check_stage_limits_fit_the_promised_totals():
    gc = _load("gpu_check")
    assert sum(q for q, _ in gc.LIMITS.values()) < 9 * 60
    assert sum(f for _, f in gc.LIMITS.values()) < 30 * 60


def test_aot_occupancy_estimate():
    aot = _load("aot_check")
    # 56 registers x 32 lanes -> 1,792 per warp; 4 warps -> 9 blocks -> 36 of 64 warps
    assert aot.occupancy(90, 56, 0, 4) == pytest.approx(36 / 64)
    # 255 registers -> 8,192 per warp: 2 blocks of 4 warps
    assert aot.occupancy(90, 255, 0, 4) == pytest.approx(8 / 64)
    # shared memory bound: 83,072 B + 1 KiB reserved -> 2 blocks on sm_90, 1 on sm_80
    assert aot.occupancy(90, 32, 83072, 4) == pytest.approx(8 / 64)
    assert aot.occupancy(80, 32, 83072, 4) == pytest.approx(4 / 64)
