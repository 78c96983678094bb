"""The two ops of kernels/conv_bn.py: ``conv2d_relu_stats`` on the seeds' Conv -> ReLU ->
BatchNorm shapes (s7, c1c2c3c40: the ReLU and the batch statistics in the convolution's
epilogue) and ``conv2d_prologue_stats`` on the model zoo's chain consumers (depthwise and
grouped KxK convolutions reading a raw tensor through the BatchNorm-and-activation
prologue), forward and forward + backward, against PyTorch's unfused composition of the
same arithmetic (sizes: benchmarks/op_shapes.py).

Bytes are the compulsory ones of the fused op: input, weight and output once each
forward (the statistics are (C,)); the backward reads dy twice and the input and weight
once more, and writes dx and dw. Nothing here asserts speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from op_shapes import layer_shapes, tensor, time_step

from fastcifar.kernels.conv_bn import conv2d_prologue_stats, conv2d_relu_stats


def _supported(conv) -> bool:
    from fastcifar.kernels import check_supported

    k = conv.weight.shape
    try:
        check_supported(
            (2, conv.in_channels, 8, 8),
            k,
            torch.float32,
            torch.device("cpu"),
            conv.stride[0],
            conv.padding[0],
            conv.dilation[0],
            conv.groups,
        )
    except (NotImplementedError, ValueError):
        return False
    return True


RELU_STATS = layer_shapes(lambda c: c.groups == 1 and _supported(c), ("s7", "c1c2c3c40"))
PROLOGUE = layer_shapes(lambda c: c.groups > 1 and _supported(c))


def _args(conv):
    return conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups


def _bytes(x, w, y, backward: bool) -> int:
    nbytes = (x.numel() + w.numel() + y.numel()) * x.element_size()
    if backward:
        nbytes += (2 * y.numel() + 2 * x.numel() + 2 * w.numel()) * x.element_size()
    return nbytes


def _run(benchmark, copy_bandwidth, forward, x, w, mode, **info) -> None:
    y = forward()
    gy = torch.randn_like(y)

    def step():
        out = forward()
        if mode == "forward_backward":
            torch.autograd.grad(out, (x, w), gy)

    time_step(benchmark, step, _bytes(x, w, y, mode == "forward_backward"), copy_bandwidth)
    benchmark.extra_info.update(**info)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("layer,conv,shape", RELU_STATS, ids=[s[0] for s in RELU_STATS])
def test_conv2d_relu_stats(benchmark, copy_bandwidth, layer, conv, shape, impl, mode):
    x, w = tensor(shape), tensor(conv.weight.shape, 0.1)

    def forward():
        if impl == "triton":
            y, mean, var = conv2d_relu_stats(x, w, None, *_args(conv), relu=True)
        else:
            y = F.relu(F.conv2d(x, w, None, *_args(conv)))
            var, mean = torch.var_mean(y.float(), dim=(0, 2, 3), correction=0)
        return y + 0 * (mean.sum() + var.sum()).to(y.dtype)  # the statistics in the graph

    _run(benchmark, copy_bandwidth, forward, x, w, mode, layer=layer, shape=list(shape))


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("layer,conv,shape", PROLOGUE, ids=[s[0] for s in PROLOGUE])
def test_conv2d_prologue_stats(benchmark, copy_bandwidth, layer, conv, shape, impl, mode):
    x, w = tensor(shape), tensor(conv.weight.shape, 0.1)
    cin = shape[1]
    prologue = torch.stack([torch.zeros(cin), torch.ones(cin), torch.zeros(cin)], 1)
    prologue = prologue.to(x.device, torch.float32)

    def forward():
        if impl == "triton":
            y, mean, var = conv2d_prologue_stats(x, w, None, prologue, "relu", *_args(conv))
        else:
            a = F.relu(
                (x.float() - prologue[:, 0, None, None]) * prologue[:, 1, None, None]
                + prologue[:, 2, None, None]
            ).to(x.dtype)
            y = F.conv2d(a, w, None, *_args(conv))
            var, mean = torch.var_mean(y.float(), dim=(0, 2, 3), correction=0)
        return y + 0 * (mean.sum() + var.sum()).to(y.dtype)

    _run(benchmark, copy_bandwidth, forward, x, w, mode, layer=layer, shape=list(shape))
