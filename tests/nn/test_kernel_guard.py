"""fastcifar.nn.kernel_guard: a Triton kernel that fails to compile or launch, or a fused block
that computes wrong numbers, leaves that configuration on PyTorch and the run goes on.

Failures are injected: a fake timer or launcher raises triton's own ``OutOfResources`` and
``CompilationError``-like errors, and a fused kernel is made to return wrong numbers; the
kernels themselves run under the interpreter on tiny shapes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from triton.runtime.errors import OutOfResources

from fastcifar.kernels.validate import collect_conv_configs
from fastcifar.nn import autotune, kernel_guard
from fastcifar.nn.conv_bn import FusedConvReLUBN
from fastcifar.nn.fusion import runs_triton
from fastcifar.nn.modules import Conv2d, swap_convolutions


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


class Net(nn.Module):
    """A dense layer, a depthwise layer and a conv+ReLU+BN block, on 8x8 images."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.crb = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(8)
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.crb(self.dw(self.dense(x))).mean((2, 3)))


def _fail_kernel(monkeypatch, name: str, exc: Exception) -> list[str]:
    """Make every launch of the kernel called ``name`` raise ``exc`` (as triton raises a
    compile or launch failure); returns the names of the kernels launched."""
    from fastcifar.kernels import conv_launch, conv_launch_bwd, dwsep

    seen = []
    for module in (conv_launch, conv_launch_bwd, dwsep):
        real = module.launch

        def fake(kernel, grid, *args, _real=real, **meta):
            seen.append(kernel.__name__)
            if kernel.__name__ == name:
                raise exc
            return _real(kernel, grid, *args, **meta)

        monkeypatch.setattr(module, "launch", fake)
    return seen


def _timer(runner: autotune.Runner) -> float:
    return 1.0 if runner.side == "triton" else 2.0  # Triton always faster when it runs


def _decide(tmp_path, timer, validate=lambda *a: "", report=None):
    model = Net()
    lines = []
    decisions = autotune.decide(
        model,
        torch.randn(2, 3, 8, 8),
        torch.float32,
        torch.device("cpu"),
        timer=timer,
        cache=autotune.DispatchCache(tmp_path / "c.json"),
        env="e",
        validate=validate,
        report=report or lines.append,
    )
    return model, decisions, lines


def test_triton_failures_are_recognised_and_other_errors_are_not():
    assert kernel_guard.is_triton_failure(OutOfResources(232448, 101376, "shared memory"))
    assert kernel_guard.is_triton_failure(RuntimeError("Triton Error [CUDA]: invalid argument"))
    assert not kernel_guard.is_triton_failure(RuntimeError("CUDA out of memory"))
    assert not kernel_guard.is_triton_failure(ValueError("bad shape"))


def test_a_triton_failure_while_timing_stays_on_pytorch_with_one_line(tmp_path):
    def timer(runner):
        if runner.side == "triton" and runner.kind == "conv" and "depthwise" in runner.config:
            raise OutOfResources(232448, 101376, "shared memory")
        return _timer(runner)

    model, decisions, lines = _decide(tmp_path, timer)
    dw = next(d for d in decisions if "depthwise" in d.config)
    assert dw.choice.startswith("torch (Triton failed: OutOfResources")
    assert dw.triton_ms is None
    assert all(d.choice == "triton" for d in decisions if d is not dw)
    assert len(lines) == 1 and "stays on PyTorch" in lines[0] and "depthwise" in lines[0]
    changed = autotune.apply(model, decisions)
    assert "dw" not in changed["conv"] and type(model.dw) is nn.Conv2d
    assert "shared memory" in autotune.format_table(decisions)
    # a failure is not cached: the next run measures it again
    cached = json.loads((tmp_path / "c.json").read_text())["e"]
    assert not any("depthwise" in k for k in cached)


def test_an_error_that_is_not_tritons_is_not_hidden(tmp_path):
    def timer(runner):
        raise ValueError("a bug in the runner")

    with pytest.raises(ValueError, match="a bug in the runner"):
        _decide(tmp_path, timer)


def test_a_fused_block_is_validated_before_it_is_timed(tmp_path):
    timed = []

    def timer(runner):
        timed.append(runner.kind)
        return _timer(runner)

    def validate(kind, block, cfg, device):
        return "output relative error 3.1e-01 > bound 1.0e-05" if kind == "conv_relu_bn" else ""

    model, decisions, lines = _decide(tmp_path, timer, validate)
    crb = next(d for d in decisions if d.kind == "conv_relu_bn")
    assert crb.choice == "torch (failed validation: output relative error 3.1e-01 > bound 1.0e-05)"
    assert "conv_relu_bn" not in timed
    assert any("conv_relu_bn" in line for line in lines)
    autotune.apply(model, decisions)
    assert type(model.crb) is nn.Sequential


def test_a_cached_fused_block_is_validated_again_on_every_run(tmp_path):
    _decide(tmp_path, _timer)  # first run: the block is timed, Triton faster, cached
    _, decisions, _ = _decide(tmp_path, _timer)
    assert next(d for d in decisions if d.kind == "conv_relu_bn").choice == "triton"

    def fails(kind, *_):
        return "output relative error 1e+00 > bound 1e-05" if kind == "conv_relu_bn" else ""

    _, decisions, lines = _decide(tmp_path, _timer, fails)
    crb = next(d for d in decisions if d.kind == "conv_relu_bn")
    assert crb.choice.startswith("torch (failed validation") and not crb.cached
    assert any("conv_relu_bn" in line for line in lines)


def test_validate_block_passes_the_real_fused_kernel_and_catches_wrong_numbers(monkeypatch):
    model = Net()
    configs = collect_conv_configs(model, torch.randn(2, 3, 8, 8), torch.float32)
    [(kind, _, block, cfg)] = [b for b in autotune._blocks(model, configs)]
    assert kind == "conv_relu_bn"
    assert kernel_guard.validate_block(kind, block, cfg, "cpu") == ""

    import fastcifar.nn.conv_bn as fnn

    real = fnn.conv2d_relu_stats

    def wrong(*args, **kwargs):
        y, mean, var = real(*args, **kwargs)
        return y * 1.01, mean, var  # off by 1 %: normalisation hides a scale, not this

    monkeypatch.setattr(fnn, "conv2d_relu_stats", wrong)
    failed = kernel_guard.validate_block(kind, block, cfg, "cpu")
    assert failed.startswith("output relative error") and "> bound" in failed

    def raises(*args, **kwargs):
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(fnn, "conv2d_relu_stats", raises)
    assert kernel_guard.validate_block(kind, block, cfg, "cpu").startswith("OutOfResources")


def test_a_kernel_that_fails_at_the_first_step_goes_back_to_pytorch_and_training_goes_on(
    monkeypatch,
):
    torch.manual_seed(0)
    model = Net()
    swap_convolutions(model)
    assert runs_triton(model.dense) and runs_triton(model.dw)
    # the depthwise input gradient fails to launch: only the backward pass raises
    seen = _fail_kernel(
        monkeypatch, "conv_bwd_input_grouped_kernel", OutOfResources(98304, 65536, "shared memory")
    )
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    failed = kernel_guard.trial_step(model, x, torch.float32, report=lines.append)
    assert list(failed) == ["dw"] and "OutOfResources" in failed["dw"]
    assert len(lines) == 1 and lines[0].startswith("kernels: dw stays on PyTorch")
    assert not runs_triton(model.dw) and runs_triton(model.dense)
    for k, v in model.state_dict().items():  # the trial ran on a copy
        assert torch.equal(v, state[k]), k
    # a real training step now runs, the dense layer still through Triton
    seen.clear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and "conv_fwd_dot_kernel" in seen
    assert "conv_fwd_grouped_kernel" not in seen


def test_a_step_that_fails_for_another_reason_is_not_blamed_on_the_kernels():
    class Broken(Net):
        def forward(self, x):
            raise ValueError("a bug in the model")

    model = Broken()
    swap_convolutions(model)
    with pytest.raises(ValueError, match="a bug in the model"):
        kernel_guard.trial_step(model, torch.randn(2, 3, 8, 8), torch.float32)


def test_the_auto_path_trains_on_and_the_table_says_why(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("fastcifar.nn.autotune._validate", lambda *a: [])
    _fail_kernel(
        monkeypatch, "conv_bwd_input_grouped_kernel", OutOfResources(98304, 65536, "shared memory")
    )
    model = Net()
    records = autotune.choose_kernels(
        "auto",
        model,
        2,
        torch.device("cpu"),
        False,
        None,
        timer=_timer,
        cache=autotune.DispatchCache(tmp_path / "c.json"),
        env="e",
        validate=lambda *a: "",
    )
    out = capsys.readouterr().out
    dw = next(r for r in records if "depthwise" in r["config"])
    assert dw["choice"].startswith("torch (failed at the first step: OutOfResources")
    assert "kernels: dw stays on PyTorch" in out and "failed at the first step" in out
    assert isinstance(model.dense, Conv2d) and model.dense.uses_triton
    assert isinstance(model.crb, FusedConvReLUBN) and not model.dw.uses_triton
    line = "kernels: 1 convolutions in Triton, 0 conv-BN-activation chains, "
    line += "0 conv-BN-activation links in forward, "
    assert line + "0 conv-pool-BN-activation blocks, 1 conv+ReLU+BN" in out
    y = model(torch.randn(2, 3, 8, 8))
    y.sum().backward()
    assert torch.isfinite(y).all()
