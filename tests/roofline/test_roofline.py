"""The roofline's counts against hand formulas, the paths against each other, the command
on every model, the GPU table's sources."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from fastcifar.roofline.count import count_step
from fastcifar.roofline.gpus import GPUS, get_gpu, lower_bound_s
from fastcifar.roofline.ledger import LOSS, StepSetup
from fastcifar.roofline.traffic import tensor_bytes
from tests.conftest import run_train

ROOFLINE = "fastcifar.roofline.__main__"
N, CIN, COUT, H = 4, 3, 8, 32  # CIFAR images: 32 x 32
F32 = 4  # bytes


def _setup(model: nn.Module, amp=None, channels_last=True, batch=N) -> StepSetup:
    return StepSetup(
        model,
        "test",
        lambda out, y: out.float().mean(),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        batch,
        amp_dtype=amp,
        channels_last=channels_last,
    )


def _conv_bn_relu() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(CIN, COUT, 3, padding=1, bias=False), nn.BatchNorm2d(COUT), nn.ReLU()
    )


def _rows(count) -> dict[str, object]:
    return {layer.name: layer for layer in count.layers}


def test_eager_conv_bn_relu_matches_the_hand_formula():
    rows = _rows(count_step(_setup(_conv_bn_relu()), ["eager"])["eager"])
    x = N * CIN * H * H * F32  # the input image batch
    a = N * COUT * H * H * F32  # each activation: conv output, BN output, their gradients
    w = COUT * CIN * 9 * F32
    c = COUT * F32  # one per-channel vector
    macs = N * COUT * H * H * CIN * 9

    # convolution: forward reads x and w, writes y; backward (x needs no gradient): the
    # weight gradient alone, reading dy and x, writing dw
    conv = rows["0"]
    assert conv.kind == "dense"
    assert conv.bytes == (x + w + a) + (a + x + w)
    assert conv.flops == 2 * macs + 2 * macs
    assert conv.kernels == 2

    # BatchNorm in training: statistics pass (x; mean, invstd out), normalise pass (x in, y
    # out), each with weight, bias and running statistics; the batch counter (int64 +1);
    # backward: reduction (dy, x; dweight, dbias out) then elementwise (dy, x in, dx out),
    # each with weight, running stats, saved mean and invstd
    bn = rows["1"]
    vectors_fwd = 4 * c + 2 * c  # weight, bias, running mean, var; saved mean, invstd
    vectors_bwd = 5 * c  # weight, running mean, var, saved mean, invstd
    forward = (a + vectors_fwd) + (a + a + vectors_fwd) + 2 * 8
    backward = (2 * a + vectors_bwd + 2 * c) + (2 * a + vectors_bwd + a)
    assert bn.kind == "batchnorm"
    assert bn.bytes == forward + backward
    assert bn.flops == 0

    # ReLU: forward reads and writes; backward reads dz and z, writes dy
    relu = rows["2"]
    assert relu.kind == "activation"
    assert relu.bytes == 2 * a + 3 * a
    assert relu.kernels == 2


def test_channels_last_and_bfloat16_halve_the_activation_bytes():
    f32 = count_step(_setup(_conv_bn_relu()), ["eager"])["eager"]
    bf16 = count_step(_setup(_conv_bn_relu(), torch.bfloat16), ["eager"])["eager"]
    a32 = N * COUT * H * H * F32
    # the ReLU moves five activations, at half the width in bfloat16
    assert _rows(f32)["2"].bytes == 5 * a32
    assert _rows(bf16)["2"].bytes == 5 * a32 // 2
    assert bf16.flops == f32.flops


def test_expanded_tensors_are_read_once():
    t = torch.zeros(8, 1).expand(8, 1000)
    assert tensor_bytes(t) == 8 * 4
    assert tensor_bytes(torch.zeros(3, 5, dtype=torch.bfloat16)) == 30


def test_the_loss_and_optimizer_are_their_own_rows():
    count = count_step(_setup(_conv_bn_relu()), ["eager"])["eager"]
    kinds = {layer.name: layer.kind for layer in count.layers}
    assert kinds[LOSS] == "loss"
    assert kinds["optimizer"] == "optimizer"
    # plain SGD: each parameter reads itself and its gradient and writes itself
    params = sum(p.numel() * F32 for p in _conv_bn_relu().parameters())
    assert _rows(count)["optimizer"].bytes == 3 * params


def test_a_speed_runs_count_does_not_depend_on_the_counting_hosts_cpu(monkeypatch):
    # Muon's Newton-Schulz runs in bfloat16 on a GPU; a host CPU without bfloat16
    # instructions picks float32 for itself, and a speed run's committed count once
    # differed by 96.5 MB a step between two hosts
    from fastcifar.recipes import get_recipe
    from fastcifar.roofline.run import recipe_setup

    optimizer_bytes = {}
    for host_bf16 in (True, False):
        monkeypatch.setattr("fastcifar.engine.runtime.cpu_has_native_bf16", lambda v=host_bf16: v)
        setup = recipe_setup(get_recipe("speedrun94"), batch_size=2)
        assert setup.optimizer(setup.model).ns_dtype == torch.bfloat16
        count = count_step(setup, ["eager"])["eager"]
        optimizer_bytes[host_bf16] = _rows(count)["optimizer"].bytes
    assert optimizer_bytes[True] == optimizer_bytes[False] > 0


def test_compile_moves_fewer_bytes_than_eager_on_a_chain_and_the_same_on_a_lone_conv():
    chain = count_step(_setup(_conv_bn_relu()), ["eager", "compile"])
    assert chain["compile"].bytes < chain["eager"].bytes
    assert chain["compile"].flops == chain["eager"].flops
    torch.manual_seed(0)
    lone = nn.Sequential(nn.Conv2d(CIN, COUT, 3, padding=1, bias=False))
    lone = count_step(_setup(lone), ["eager", "compile"])
    assert lone["compile"].bytes == lone["eager"].bytes


def test_fastcifar_equals_compile_without_a_convertible_layer_and_differs_with_one():
    torch.manual_seed(0)
    pointwise = nn.Sequential(nn.Conv2d(CIN, COUT, 1, bias=False), nn.BatchNorm2d(COUT), nn.ReLU())
    counts = count_step(_setup(pointwise), ["compile", "fastcifar"])
    assert counts["fastcifar"].bytes == counts["compile"].bytes
    counts = count_step(_setup(_conv_bn_relu()), ["compile", "fastcifar"])
    rows = _rows(counts["fastcifar"])
    # the Triton weight gradient writes per-program partials and sums them: more bytes
    # than cuDNN's one kernel, and more kernels
    assert rows["0"].kernels > _rows(counts["compile"])["0"].kernels
    assert rows["0"].flops == _rows(counts["compile"])["0"].flops


def test_every_gpu_carries_a_source_and_the_bound_is_the_roofline():
    for gpu in GPUS.values():
        assert "data sheet" in gpu.source or "whitepaper" in gpu.source, gpu.key
        assert gpu.bandwidth > 1e11 and gpu.peak_flops > 1e13
        assert gpu.attainable is None or gpu.attainable_source
    h100 = get_gpu("H100")
    assert lower_bound_s(0, h100.bandwidth, h100) == pytest.approx(1.0)
    assert lower_bound_s(h100.peak_flops, 1, h100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one of t4"):
        get_gpu("v100")


def _models():
    from fastcifar.recipes import RECIPES

    return sorted({recipe.model for recipe in RECIPES.values()})


@pytest.mark.parametrize("model", _models())
def test_every_recipe_model_runs_through_the_command(model, tmp_path):
    r = run_train(
        "--model",
        model,
        "--batch-size",
        "2",
        "--paths",
        "eager",
        "--out",
        str(tmp_path),
        module=ROOFLINE,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    rows = json.loads((tmp_path / "roofline.json").read_text())["rows"]
    (row,) = rows
    assert row["model"] == model and row["path"] == "eager" and row["batch_size"] == 2
    assert row["flops_per_image"] > 0 and row["bytes_per_image"] > 0
    layers = row["layers"]
    assert sum(x["bytes"] for x in layers) == pytest.approx(row["bytes_per_image"] * 2)
    assert {x["kind"] for x in layers} >= {"optimizer", "loss"}
    assert (tmp_path / "roofline.png").stat().st_size > 10_000
    assert "moves" in out and "costliest layers" in out


def test_the_command_runs_all_three_paths(tmp_path):
    r = run_train(
        "--recipe",
        "c1c2c3c40",
        "--batch-size",
        "4",
        "--json",
        str(tmp_path / "x.json"),
        "--out",
        str(tmp_path),
        module=ROOFLINE,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    rows = json.loads((tmp_path / "x.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["eager", "compile", "fastcifar"]
    # the compile paths are lowered for a fake cuda:0 with the H100's profile
    assert [r["lowered_for"] for r in rows] == [None, "cuda:h100", "cuda:h100"]
    assert "lowers forward and backward for CUDA, NVIDIA H100 SXM profile" in out
    # a top ten for each path, every kernel named by kind (no "other")
    for path in ("eager path, batch 4", "compile path, lowered for cuda:h100, batch 4"):
        assert f"c1c2c3c40, {path}, bfloat16: the 10 costliest layers" in out
    assert "fastcifar path, lowered for cuda:h100" in out
    assert all(x["kind"] != "other" for r in rows for x in r["layers"])
    flops = [r["flops_per_image"] for r in rows]  # the same arithmetic (Inductor may
    assert flops[1:] == pytest.approx(flops[:-1], rel=1e-3)  # decompose a tiny matmul)
    assert "moves fewest bytes" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "s7", "--paths", "eager,jit"], "--paths"),
        (["--model", "vgg16"], "no recipe trains model 'vgg16'"),
        (["--recipe", "s7", "--batch-size", "1"], "at least 2"),
    ],
)
def test_bad_input_is_one_line(args, message):
    r = run_train(*args, module=ROOFLINE)
    code, err = r.returncode, r.stderr
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_whole_run_floor_adds_every_step_the_whitening_and_the_tta_views(tmp_path):
    from fastcifar.engine.optim import total_steps
    from fastcifar.recipes import get_recipe
    from fastcifar.roofline.run import recipe_setup
    from fastcifar.roofline.wholerun import RECORDS, whole_run

    recipe = get_recipe("speedrun94_fast")  # TTA on the least confident quarter
    setup = recipe_setup(recipe)
    step = count_step(setup, ["eager"])["eager"]
    run = whole_run(recipe, setup, step, get_gpu("a100"))
    assert run["steps"] == total_steps(recipe, 50_000 // recipe.batch_size)
    # every test image once un-augmented, the 2,500 least confident in all six views
    assert run["tta_forward_images"] == 10_000 + 2_500 * 6
    assert run["whiten_s"] > 0 and run["tta_s"] > 0
    assert run["floor_s"] == pytest.approx(run["train_s"] + run["whiten_s"] + run["tta_s"])
    assert sum(run["train_by_kind_s"].values()) == pytest.approx(run["train_s"])
    (record,) = run["records"]  # the method's published time, on both A100s
    assert record["record_s"] == RECORDS["hiverge"].seconds
    assert record["floor_s"]["a100"] == pytest.approx(run["floor_s"])
    assert record["floor_s"]["a100-40gb"] > record["floor_s"]["a100"]  # less bandwidth
    fractions = record["floor_over_record"]
    assert fractions["a100"] == pytest.approx(run["floor_s"] / record["record_s"])
    assert record["suspect"] == (max(fractions.values()) > 0.8)
    assert run["maxpool_backward"] == "ATen's kernel (eager)"
    r = run_train(
        "--recipe",
        "speedrun94",
        "--paths",
        "eager",
        "--whole-run",
        "--gpu",
        "a100",
        "--out",
        str(tmp_path),
        module=ROOFLINE,
    )
    assert r.returncode == 0, r.stderr
    assert "airbench94_muon published 2.59 s" in r.stdout
    assert json.loads((tmp_path / "roofline.json").read_text())["whole_run"][0]["steps"] == 200


def test_group_norm_is_counted_as_two_passes_like_batch_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(CIN, COUT, 3, padding=1, bias=False), nn.GroupNorm(1, COUT))
    gn = _rows(count_step(_setup(model), ["eager"])["eager"])["1"]
    a, c, stats = N * COUT * H * H * F32, COUT * F32, 2 * N * F32  # one group a sample
    forward = (a + 2 * c + stats) + (2 * a + 2 * c + stats)
    backward = (2 * a + stats + c + 2 * c) + (3 * a + stats + c)
    assert gn.kind == "batchnorm"
    assert gn.bytes == forward + backward


def test_max_pool_backward_reads_the_gradient_and_indices_not_the_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(CIN, COUT, 3, padding=1, bias=False), nn.MaxPool2d(2))
    pool = _rows(count_step(_setup(model), ["eager"])["eager"])["1"]
    a = N * COUT * H * H * F32  # the input of the pool, and its gradient
    p, idx = a // 4, a // 4 * 2  # the pooled output (float32) and its int64 indices
    assert pool.kind == "pooling"
    assert pool.bytes == (a + p + idx) + (p + idx + a)


def _counting(monkeypatch, tmp_path) -> list:
    """count_step replaced by a cheap eager count that records the paths asked for; the
    roofline cache in ``tmp_path``."""
    from fastcifar.roofline import run

    calls = []
    real = run.count_step

    def counting(setup, paths, **kwargs):
        calls.append(tuple(paths))
        return {p: real(setup, ["eager"], **kwargs)["eager"] for p in paths}  # cheap stand-in

    monkeypatch.setattr(run, "count_step", counting)
    monkeypatch.delenv("FASTCIFAR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return calls


H100 = "NVIDIA H100 80GB HBM3"  # as torch.cuda.get_device_name names it


def test_a_gpu_runs_compile_count_is_counted_once_and_reused(tmp_path, monkeypatch):
    from fastcifar.options import RunOptions
    from fastcifar.recipes import get_recipe
    from fastcifar.roofline import run

    calls = _counting(monkeypatch, tmp_path)
    recipe = get_recipe("c1c2c3c40")
    options = RunOptions(compile=True, compile_backend="inductor", amp=True)
    for i in range(2):
        (tmp_path / f"run{i}").mkdir()
        row = run.count_run(tmp_path / f"run{i}", recipe, options, H100)
        assert (tmp_path / f"run{i}" / "roofline.png").exists()
    assert calls == [("compile",)]  # the second run read the cache
    assert row["batch_size"] == recipe.batch_size and row["dtype"] == "bfloat16"
    assert row["gpu"] == "h100"  # the run's own GPU
    assert len(list((tmp_path / "cache" / "fastcifar" / "roofline").glob("*.json"))) == 1
    run.count_run(tmp_path / "run0", recipe.replace(batch_size=64), options, H100)
    assert calls == [("compile",), ("compile",)]  # another batch: counted again
    run.count_run(tmp_path / "run0", recipe, RunOptions(compile=False), "NVIDIA A100-SXM4-80GB")
    assert calls[-1] == ("eager",)  # eager counts are not cached (seconds)
    assert json.loads((tmp_path / "run0" / "roofline.json").read_text())["rows"][0]["gpu"] == "a100"


def test_a_cpu_run_models_no_gpu_unless_asked_and_never_compiles(tmp_path, monkeypatch):
    from fastcifar.options import RunOptions
    from fastcifar.recipes import get_recipe
    from fastcifar.roofline import run

    calls = _counting(monkeypatch, tmp_path)
    recipe = get_recipe("c1c2c3c40")
    options = RunOptions(compile=True, compile_backend="inductor", amp=True)
    cpu = "cpu (x86_64, 2 cores)"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "roofline.json").write_text("{}")  # a stale one from before
    assert run.count_run(tmp_path / "run", recipe, options, cpu) is None
    assert calls == [] and not (tmp_path / "run" / "roofline.json").exists()
    asked = dataclasses.replace(options, roofline_gpu="a100")
    row = run.count_run(tmp_path / "run", recipe, asked, cpu)
    assert calls == [("eager",)] and row["gpu"] == "a100" and row["path"] == "eager"


def test_a_rocm_runs_report_models_the_eager_path():
    from fastcifar.options import RunOptions
    from fastcifar.roofline.run import report_target

    options = RunOptions(compile=True, compile_backend="inductor", amp=True)
    gpu, path = report_target(options, "AMD Instinct MI300X")
    assert (gpu.key, path) == ("mi300x", "eager")  # the compile paths lower for CUDA only
    gpu, path = report_target(options, "NVIDIA H100 80GB HBM3")
    assert (gpu.key, path) == ("h100", "compile")


def test_device_names_map_to_the_table():
    from fastcifar.roofline.gpus import gpu_for_device

    names = {
        "NVIDIA H100 80GB HBM3": "h100",
        "NVIDIA H200": "h200",
        "NVIDIA A100-SXM4-40GB": "a100-40gb",
        "NVIDIA A100-SXM4-80GB": "a100",
        "Tesla T4": "t4",
        "NVIDIA L4": "l4",
        "NVIDIA GeForce RTX 4090": "rtx4090",
        "AMD Instinct MI300X": "mi300x",
    }
    assert {n: gpu_for_device(n).key for n in names} == names
    for other in ("NVIDIA A10G", "NVIDIA L40S", "cpu (x86_64)"):  # not in the table
        assert gpu_for_device(other) is None, other


def test_saved_bytes_lose_exactly_the_normalised_tensor_of_a_chain():
    # conv 3x3 -> BN -> ReLU -> 1x1 -> BN: eager saves x, y1 (BatchNorm's input), a1 (the
    # ReLU's output, also the 1x1's input) and y2; the chain never materialises a1
    from torch.nn import functional as F

    from fastcifar.roofline.ledger import StepSetup
    from fastcifar.roofline.saved import saved_bytes

    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)),
        nn.Flatten(),
        nn.Linear(4 * 32 * 32, 10),
    )
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)  # noqa: E731
    # batch 6: no channel count equals it (a (C,) statistic would pass for an activation)
    setup = StepSetup(model, "chain", F.cross_entropy, sgd, 6, None, False)
    eager, fused = saved_bytes(setup), saved_bytes(setup, fastcifar=True)
    assert eager - fused == 6 * 8 * 32 * 32 * 4  # a1 in float32
    assert fused >= 6 * (3 + 8 + 4) * 32 * 32 * 4  # x, y1, y2 are still kept


def test_the_fastcifar_path_compiles_a_chain_and_moves_fewer_bytes():
    # the chain's modules, its Pending and its custom autograd.Function under Inductor
    from fastcifar.roofline.count import count_step
    from fastcifar.roofline.ledger import StepSetup

    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.SiLU()
        ),
        nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)),
        nn.Flatten(),
        nn.Linear(8 * 32 * 32, 10),
    )
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)  # noqa: E731
    setup = StepSetup(model, "chain", nn.functional.cross_entropy, sgd, 64)
    counts = count_step(setup, ("compile", "fastcifar"))
    assert counts["fastcifar"].bytes < counts["compile"].bytes
