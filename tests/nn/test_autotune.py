"""``--kernels auto``'s measured dispatch with a fake timer: the choice follows the
timings, the cache is reused and invalidated by a version change, fused blocks enter the
same dispatch, and the table is printed and recorded."""

from __future__ import annotations

import json

import torch
from torch import nn

from fastcifar.engine.runtime import resolve_kernels
from fastcifar.nn import autotune
from fastcifar.nn.conv_bn import FusedConvBN, FusedConvReLUBN
from fastcifar.nn.dwsep import FusedDepthwiseSeparable
from fastcifar.nn.modules import Conv2d


class Net(nn.Module):
    """Two dense 3x3 configurations, a conv+ReLU+BN block, a depthwise 5x5 + BN block (the
    model zoo's) and a depthwise-separable one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)  # dense 3->8 32x32
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2)  # dense dilated 8->8
        self.crb = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(8)
        )
        self.cb = nn.Sequential(
            nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False), nn.BatchNorm2d(8)
        )
        self.sep = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
            nn.ReLU(),
            nn.Conv2d(8, 16, 1, bias=False),
        )

    def forward(self, x):
        return self.sep(self.cb(self.crb(self.b(self.a(x)))))


class FakeTimer:
    """Milliseconds from a table keyed by (kind, side, configuration word); counts calls
    and never runs a runner (nothing is allocated or launched)."""

    def __init__(self, triton_wins: set[str]):
        self.triton_wins = triton_wins  # kinds or "dilated" whose Triton side is faster
        self.calls = []

    def __call__(self, runner: autotune.Runner) -> float:
        self.calls.append((runner.kind, runner.side, runner.config))
        key = "dilated" if (runner.kind == "conv" and " d2 " in runner.config) else runner.kind
        fast = (runner.side == "triton") == (key in self.triton_wins)
        return 1.0 if fast else 2.0


def _decide(tmp_path, timer, env="GPU X | driver 1 | torch 2.11 | triton 3.6"):
    model = Net()
    cache = autotune.DispatchCache(tmp_path / "kernel_dispatch.json")
    example = torch.randn(4, 3, 32, 32)
    decisions = autotune.decide(
        model,
        example,
        torch.float32,
        torch.device("cpu"),
        timer=timer,
        cache=cache,
        env=env,
        validate=lambda *a: "",
    )
    return model, decisions


def test_choice_follows_the_timings_for_each_configuration_and_block(tmp_path):
    timer = FakeTimer(triton_wins={"dilated", "conv_relu_bn", "conv_bn"})
    model, decisions = _decide(tmp_path, timer)
    by_kind = {}
    for d in decisions:
        by_kind.setdefault(d.kind, []).append(d)
    assert {d.kind for d in decisions} == {"conv", "conv_relu_bn", "conv_bn", "dwsep"}
    dilated = next(d for d in by_kind["conv"] if " d2 " in d.config)
    assert dilated.choice == "triton" and dilated.layers == ["b"]
    assert all(d.choice == "torch" for d in by_kind["conv"] if d is not dilated)
    crb = by_kind["conv_relu_bn"][0]
    assert crb.choice == "triton" and crb.layers == ["crb"]
    assert by_kind["dwsep"][0].choice == "torch"
    changed = autotune.apply(model, decisions)
    assert changed == {
        "conv": ["b"],
        "conv_relu_bn": ["crb"],
        "conv_bn": ["cb"],
        "dwsep": [],
        "conv_bn_act": [],
        "traced_chain": [],
        "pooled_block": [],
    }
    assert isinstance(model.cb, FusedConvBN)
    assert type(model.b) is Conv2d and type(model.a) is nn.Conv2d
    assert isinstance(model.crb, FusedConvReLUBN)
    assert type(model.crb[0]) is nn.Conv2d  # inside the fused block: the fused kernel runs it
    assert type(model.sep) is nn.Sequential


def test_fused_depthwise_separable_wins_where_measured_faster(tmp_path):
    model, decisions = _decide(tmp_path, FakeTimer(triton_wins={"dwsep"}))
    changed = autotune.apply(model, decisions)
    assert changed["dwsep"] == ["sep"] and isinstance(model.sep, FusedDepthwiseSeparable)
    assert changed["conv"] == [] and changed["conv_relu_bn"] == []


def test_a_tie_goes_to_pytorch(tmp_path):
    _, decisions = _decide(tmp_path, lambda runner: 1.0)
    assert all(d.choice == "torch" for d in decisions)


def test_cache_is_reused_and_a_version_change_measures_again(tmp_path):
    first = FakeTimer(triton_wins={"dilated"})
    _, decisions = _decide(tmp_path, first)
    n = len(decisions)
    assert len(first.calls) == 2 * n and not any(d.cached for d in decisions)

    def must_not_time(runner):
        raise AssertionError("a cached decision was timed again")

    _, again = _decide(tmp_path, must_not_time)
    assert all(d.cached for d in again)
    assert [d.choice for d in again] == [d.choice for d in decisions]
    newer = FakeTimer(triton_wins=set())
    _, remeasured = _decide(tmp_path, newer, env="GPU X | driver 1 | torch 2.12 | triton 3.6")
    assert len(newer.calls) == 2 * n and not any(d.cached for d in remeasured)
    saved = json.loads((tmp_path / "kernel_dispatch.json").read_text())
    assert len(saved) == 2  # one entry per environment


def test_damaged_cache_is_measured_again_not_an_error(tmp_path):
    (tmp_path / "kernel_dispatch.json").write_text("{not json")
    timer = FakeTimer(set())
    _, decisions = _decide(tmp_path, timer)
    assert timer.calls and decisions


def test_failed_validation_stays_on_pytorch_untimed(tmp_path):
    model = Net()
    example = torch.randn(2, 3, 32, 32)
    from fastcifar.kernels.validate import collect_conv_configs

    bad = next(c for c in collect_conv_configs(model, example, torch.float32) if c.dilation == 2)
    timer = FakeTimer(triton_wins={"dilated"})
    decisions = autotune.decide(
        model,
        example,
        torch.float32,
        torch.device("cpu"),
        timer=timer,
        cache=autotune.DispatchCache(tmp_path / "c.json"),
        env="e",
        exclude={bad},
        validate=lambda *a: "",
    )
    d = next(d for d in decisions if " d2 " in d.config)
    assert d.choice.startswith("torch") and d.triton_ms is None
    assert all(" d2 " not in c[2] for c in timer.calls if c[0] == "conv")


def test_table_is_printed_and_returned_for_config_json(tmp_path, monkeypatch, capsys):
    # the engine's path: validation (stubbed: the interpreter is too slow for a unit test)
    monkeypatch.setattr("fastcifar.nn.autotune._validate", lambda *a: [])
    model = Net()
    cache = autotune.DispatchCache(tmp_path / "c.json")
    records = autotune.choose_kernels(
        "auto",
        model,
        4,
        torch.device("cpu"),
        False,
        None,
        timer=FakeTimer({"dilated"}),
        cache=cache,
        env="e",
        validate=lambda *a: "",
    )
    out = capsys.readouterr().out
    assert "triton ms" in out and "torch ms" in out and "choice" in out
    assert "kernels: 1 convolutions in Triton" in out
    json.dumps(records)
    assert {r["kind"] for r in records} == {"conv", "conv_relu_bn", "conv_bn", "dwsep"}


def test_auto_on_a_cpu_is_pytorch_without_timing():
    assert resolve_kernels("auto", torch.device("cpu")) == "torch"


def test_block_runners_run_forward_and_backward_on_the_cpu(monkeypatch):
    # the real runners (what cuda_timer calls), once each, under the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Net()
    example = torch.randn(2, 3, 32, 32)
    configs = autotune.collect_conv_configs(model, example, torch.float32)
    blocks = list(autotune._blocks(model, configs))
    assert {kind for kind, *_ in blocks} == {"conv_relu_bn", "conv_bn", "dwsep"}
    for kind, _, block, cfg in blocks:
        for side in ("triton", "torch"):
            autotune.block_runner(kind, block, cfg, side, "cpu").fn()
    cfg = next(iter(configs))
    for side in ("triton", "torch"):
        autotune.conv_runner(cfg, side, "cpu").fn()
    assert type(model.crb) is nn.Sequential  # the model itself is left as it was


def test_config_json_records_the_dispatch(tmp_path):
    from fastcifar.engine.rundir import RunOptions, write_config
    from fastcifar.recipes import get_recipe

    records = [{"kind": "conv", "config": "dense 3->8", "choice": "torch"}]
    write_config(tmp_path, get_recipe("s7"), RunOptions(), records)
    assert json.loads((tmp_path / "config.json").read_text())["kernel_dispatch"] == records


def test_a_chain_is_validated_timed_and_converted_as_one_unit(tmp_path):
    # depthwise 3x3 -> BN -> ReLU -> 1x1 -> BN: one conv_bn_act unit, validated for real
    # against float64 (under the interpreter here), timed by the fake timer, converted
    from fastcifar.nn.chain import FusedConvBNAct
    from fastcifar.nn.kernel_guard import validate_block

    model = nn.Sequential(
        nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        ),
        nn.Sequential(nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12)),
    )
    seen = []

    def validate(kind, unit, cfg, device):
        seen.append(kind)
        return validate_block(kind, unit, cfg, device)

    decisions = autotune.decide(
        model,
        torch.randn(2, 8, 6, 6),
        torch.float32,
        torch.device("cpu"),
        timer=FakeTimer({"conv_bn_act"}),
        env="e",
        validate=validate,
        cache=autotune.DispatchCache(tmp_path / "c.json"),
    )
    chain = next(d for d in decisions if d.kind == "conv_bn_act")
    assert chain.layers == ["0>1"] and chain.choice == "triton" and "conv_bn_act" in seen
    assert autotune.apply(model, decisions)["conv_bn_act"] == ["0>1"]
    assert type(model[0]) is FusedConvBNAct and model[0].gives_pending
    assert model(torch.randn(2, 8, 6, 6)).shape == (2, 12, 6, 6)
