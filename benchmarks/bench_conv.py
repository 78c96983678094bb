"""Triton convolutions vs cuDNN vs torch.compile on every conv configuration of s7 and
c1c2c3c40, and with ``FASTCIFAR_BENCH_FULL=1`` every grouped or depthwise one of the model
zoo (3x3 and 5x5 depthwise, groups of 4 to 16), at batch 512, bfloat16, channels_last; the
s7 training step with and without the kernels; and, with ``FASTCIFAR_BENCH_FULL=1``, the
MobileNetV2 and EfficientNet-B0 training steps with PyTorch's modules and as
``--kernels triton`` converts them (the conv-BN-activation chains: issue 30's seconds,
beside the bytes the roofline counts). Run: ``pytest benchmarks
--benchmark-json=bench.json`` on a GPU.

Each benchmark records in ``extra_info``: the configuration, the bytes it must move at
least (inputs read once, outputs written once), GB/s and the fraction of the measured copy
bandwidth. Times are synchronised (``torch.cuda.synchronize`` inside the timed call).
Goals (issue 3): depthwise forward+backward at least 2x cuDNN; the largest depthwise
shape at 70 % or more of copy bandwidth; dilated dense at parity with cuDNN; the s7
training step faster with the kernels. Nothing here asserts speed.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fastcifar.kernels import conv2d
from fastcifar.kernels.validate import ConvConfig, collect_conv_configs
from fastcifar.models import ZOO_MODELS, create_model
from fastcifar.nn.conv_bn import fuse_conv_relu_bn
from fastcifar.nn.fusion import FUSIONS, convert
from fastcifar.nn.modules import swap_convolutions

pytestmark = pytest.mark.cuda
BATCH = 512
DTYPE = torch.bfloat16


def _configs() -> list[tuple[str, ConvConfig]]:
    if not torch.cuda.is_available():
        return []
    out = []
    # the zoo's configurations with FASTCIFAR_BENCH_FULL=1 only: gpu_check --quick runs
    # this file and must stay inside its minutes
    zoo = ZOO_MODELS if os.environ.get("FASTCIFAR_BENCH_FULL") == "1" else ()
    for name in ("s7", "c1c2c3c40", *zoo):
        model = create_model(name).cuda().to(memory_format=torch.channels_last)
        x = torch.randn(BATCH, 3, 32, 32, device="cuda").contiguous(
            memory_format=torch.channels_last
        )
        for cfg, layers in collect_conv_configs(model, x, DTYPE).items():
            if name in ZOO_MODELS and cfg.groups == 1:
                continue  # the zoo's dense 3x3 convolutions are few; its grouped ones count
            out.append((f"{name}:{layers[0]}", cfg))
    return out


CONFIGS = _configs()


def _tensors(cfg: ConvConfig):
    x = torch.randn(cfg.input_shape, device="cuda", dtype=DTYPE)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(cfg.weight_shape, device="cuda", dtype=DTYPE) / 3).requires_grad_()
    return x, w


def _bytes(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, backward: bool) -> int:
    e = x.element_size()
    fwd = (x.numel() + w.numel() + y.numel()) * e
    if not backward:
        return fwd
    # dx = f(dy, w), dw = f(dy, x): read dy twice, x and w once, write dx and dw
    return fwd + (2 * y.numel() + x.numel() + w.numel() + x.numel() + w.numel()) * e


def _impl(kind: str, cfg: ConvConfig):
    args = (cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    if kind == "triton":
        return lambda x, w: conv2d(x, w, None, *args)
    if kind == "cudnn":
        return lambda x, w: F.conv2d(x, w, None, *args)
    compiled = torch.compile(lambda x, w: F.conv2d(x, w, None, *args))
    return compiled


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("kind", ["triton", "cudnn", "compile"])
@pytest.mark.parametrize("name,cfg", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_conv(benchmark, copy_bandwidth, name, cfg, kind, mode):
    fn = _impl(kind, cfg)
    x, w = _tensors(cfg)
    y = fn(x, w)
    gy = torch.randn_like(y)
    backward = mode == "forward_backward"

    def step():
        out = fn(x, w)
        if backward:
            torch.autograd.grad(out, (x, w), gy)
        torch.cuda.synchronize()

    for _ in range(5):  # warm-up, compile
        step()
    benchmark.pedantic(step, rounds=30, iterations=5)
    seconds = benchmark.stats.stats.median
    nbytes = _bytes(x, w, y, backward)
    benchmark.extra_info.update(
        config=cfg.describe(),
        layer=name,
        bytes=nbytes,
        gb_per_s=nbytes / seconds / 1e9,
        copy_fraction=nbytes / seconds / 1e9 / copy_bandwidth,
        copy_bandwidth_gb_per_s=copy_bandwidth,
    )


def _training_step(benchmark, model: torch.nn.Module, kernels: str, loss_fn) -> None:
    """Time one SGD training step of ``model`` with ``loss_fn`` (batch 512, bfloat16
    autocast, channels_last), synchronised; images/s in ``extra_info``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=DTYPE):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()

    for _ in range(5):
        step()
    benchmark.pedantic(step, rounds=20, iterations=5)
    benchmark.extra_info.update(kernels=kernels, images_per_s=BATCH / benchmark.stats.stats.median)


@pytest.mark.parametrize("kernels", ["torch", "triton", "triton_fused_crb"])
def test_s7_training_step(benchmark, kernels):
    torch.manual_seed(0)
    model = create_model("s7").cuda().to(memory_format=torch.channels_last)
    if kernels.startswith("triton"):
        swap_convolutions(model)
    if kernels == "triton_fused_crb":
        fuse_conv_relu_bn(model)
    _training_step(benchmark, model, kernels, F.nll_loss)  # s7 ends in log_softmax


# the two models issue 30's chains were measured on, and RegNetX, whose 1x1 -> grouped
# links run the tl.dot kernels' prologue (with FASTCIFAR_BENCH_FULL=1: the chains'
# Triton kernels compile for a minute or two on first use)
CHAIN_MODELS = (
    ("mobilenetv2", "efficientnet_b0", "regnetx_200mf")
    if os.environ.get("FASTCIFAR_BENCH_FULL") == "1"
    else ()
)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("name", CHAIN_MODELS)
def test_zoo_training_step_with_chains(benchmark, name, kernels):
    # triton: as --kernels triton converts the model (the conv-BN-activation chains first,
    # then single Triton convolutions; fastcifar.nn.fusion.convert with its triton kinds)
    torch.manual_seed(0)
    model = create_model(name).cuda().to(memory_format=torch.channels_last)
    if kernels == "triton":
        converted = convert(model, kinds=tuple(k.name for k in FUSIONS if k.triton))
        benchmark.extra_info.update(chains=len(converted["conv_bn_act"]))
    _training_step(benchmark, model, kernels, F.cross_entropy)
