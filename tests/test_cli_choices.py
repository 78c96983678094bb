"""Every choice of every choice flag reaches the engine through the real argument parser;
the installed ``fastcifar-train`` script fails in one line like ``python -m``; the
DALI loader trains from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastcifar.data import factory
from fastcifar.data.factory import LOADER_CHOICES
from fastcifar.engine import runtime
from fastcifar.engine.runtime import AMP_DTYPE_CHOICES, KERNEL_CHOICES
from fastcifar.errors import FastCifarError
from fastcifar.train import build_parser
from tests.conftest import ROOT, run_train


def _choices(flag: str) -> tuple:
    parser = build_parser()
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return tuple(action.choices)


@pytest.mark.parametrize(
    "flag,shared",
    [
        ("--loader", LOADER_CHOICES),
        ("--kernels", KERNEL_CHOICES),
        ("--amp-dtype", AMP_DTYPE_CHOICES),
    ],
)
def test_parser_offers_exactly_the_engines_choices(flag, shared):
    assert _choices(flag) == shared


@pytest.mark.parametrize("choice", LOADER_CHOICES)
def test_each_loader_choice_parses_and_resolves(choice):
    args = build_parser().parse_args(["--loader", choice])
    assert args.loader == choice
    backend, why = factory.resolve_loader(args.loader, "flip_translate", torch.device("cpu"))
    assert backend in LOADER_CHOICES and backend != "auto" and why
    if choice != "auto":
        assert backend == choice


@pytest.mark.parametrize("choice", KERNEL_CHOICES)
def test_each_kernel_choice_parses_and_resolves(choice, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    args = build_parser().parse_args(["--kernels", choice])
    assert args.kernels == choice
    resolved = runtime.resolve_kernels(args.kernels, torch.device("cpu"))
    assert resolved == ("torch" if choice == "auto" else choice)


@pytest.mark.parametrize("choice", AMP_DTYPE_CHOICES)
def test_each_amp_dtype_choice_parses_and_resolves(choice):
    args = build_parser().parse_args(["--amp-dtype", choice])
    got = runtime.amp_dtype(torch.device("cpu"), args.amp_dtype)
    if choice == "auto":
        assert got in (None, torch.bfloat16)
    else:
        assert got == runtime.AMP_DTYPES[choice]


def test_unknown_choices_are_refused_by_the_engine_too():
    with pytest.raises(FastCifarError, match="choose one of auto, gpu, dali, albumentations"):
        factory.resolve_loader("nope", "s7", torch.device("cpu"))
    with pytest.raises(FastCifarError, match="choose one of auto, triton, torch"):
        runtime.resolve_kernels("nope", torch.device("cpu"))


def _installed_script() -> Path:
    script = Path(sys.executable).parent / "fastcifar-train"
    if not script.exists():
        pytest.skip(f"fastcifar is not pip-installed in this environment ({script} missing)")
    return script


def test_console_script_bad_recipe_is_one_line():
    r = subprocess.run(
        [str(_installed_script()), "--recipe", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: unknown recipe 'nope'")


@pytest.mark.slow
def test_cli_trains_through_dali_on_the_cpu(real_archive, tmp_path):
    pytest.importorskip("nvidia.dali")
    run = tmp_path / "run"
    r = run_train(
        "--loader",
        "dali",
        "--data",
        str(real_archive),
        "--train-subset",
        "512",
        "--test-subset",
        "256",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-evaluate",
        "--out",
        str(run),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loader: dali on the CPU (asked for with --loader)" in r.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loader"] == "dali" and summary["train_images"] == 512
    assert 0 <= summary["final_test_acc"] <= 100
