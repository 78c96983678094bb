"""fastcifar.engine.runtime: the device, the AMP dtype policy, the kernel choice, the compile
fallback and the timer."""

from __future__ import annotations

import time

import pytest
import torch

from fastcifar.engine import runtime
from fastcifar.errors import FastCifarError


def test_device_names_resolve_and_bad_ones_say_what_to_pass():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FastCifarError, match="unknown device 'gpu0'"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(FastCifarError, match="torch sees no GPU: pass --device cpu"):
            runtime.resolve_device("cuda:1")


def test_amp_dtype_policy(monkeypatch):
    cpu = torch.device("cpu")
    assert runtime.amp_dtype(cpu, "float16") is torch.float16  # forced
    assert runtime.amp_dtype(cpu, "bfloat16") is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.amp_dtype(cpu) is None  # emulated bfloat16 is slower than float32
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.amp_dtype(cpu) is torch.bfloat16


@pytest.mark.parametrize(
    ("target", "dtype"),
    [("sm_75", torch.float16), ("sm_90", torch.bfloat16), ("gfx942", torch.bfloat16)],
)
def test_amp_dtype_follows_the_gpu_target(monkeypatch, target, dtype):
    from fastcifar.kernels import targets

    monkeypatch.setattr(targets, "target_of", lambda device: target)
    assert runtime.amp_dtype(torch.device("cuda", 0)) is dtype


def test_kernel_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert runtime.resolve_kernels("auto", cpu) == "torch"  # no timing on a CPU
    assert runtime.resolve_kernels("torch", cpu) == "torch"
    with pytest.raises(FastCifarError, match="--kernels 'cudnn' is not valid"):
        runtime.resolve_kernels("cudnn", cpu)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert runtime.resolve_kernels("triton", cpu) == "triton"
    import os

    assert os.environ["TRITON_INTERPRET"] == "1"  # the CPU runs Triton interpreted


def test_compiled_forward_falls_back_once_on_a_compile_error(capsys):
    from torch._dynamo import register_backend

    @register_backend(name="fastcifar_runtime_broken")
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    fn = runtime.CompiledForward(lambda x: x * 2, True, "fastcifar_runtime_broken")
    x = torch.ones(3)
    assert torch.equal(fn(x), x * 2) and fn.compiled is None
    assert torch.equal(fn(x), x * 2)
    out = capsys.readouterr().out
    assert out.count("compile: torch.compile failed") == 1 and "continuing eagerly" in out
    # an error of the function itself is not a compile error: it is raised
    bad = runtime.CompiledForward(lambda x: x @ torch.ones(5, 5), True, "eager")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        bad(torch.ones(2, 3))


def test_timer_measures_seconds_on_the_cpu():
    timer = runtime.Timer(torch.device("cpu"))
    time.sleep(0.05)
    assert 0.04 < timer.stop() < 2.0


def test_versions_and_device_name():
    v = runtime.versions()
    assert v["torch"] == torch.__version__ and "python" in v
    assert runtime.device_name(torch.device("cpu")).startswith("cpu (")
