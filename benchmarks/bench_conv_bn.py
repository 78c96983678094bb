"""The two ops of kernels/conv_bn.py: ``conv2d_relu_stats`` on the seeds' Conv -> ReLU ->
BatchNorm shapes (s7, c1c2c3c40: the ReLU and the batch statistics in the convolution's
epilogue) and ``conv2d_prologue_stats`` on the model zoo's chain consumers (depthwise and
grouped KxK convolutions reading a raw tensor through the BatchNorm-and-activation
prologue), forward and forward + backward, against PyTorch's unfused composition of the
same arithmetic (sizes: benchmarks/op_shapes.py).

Bytes: the fused op's compulsory ones (``op_shapes.time_conv``; the statistics are (C,)).
Nothing here asserts speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from op_shapes import identity_prologue, layer_shapes, tensor, time_conv

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

    time_conv(benchmark, copy_bandwidth, forward, x, w, mode, layer=layer, shape=list(shape))


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("layer,conv,shape", PROLOGUE, ids=[s[0] for s in PROLOGUE])
def test_conv2d_prologue_stats(benchmark, copy_bandwidth, layer, conv, shape, impl, mode):
    x, w = tensor(shape), tensor(conv.weight.shape, 0.1)
    prologue = identity_prologue(shape[1])

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

    time_conv(benchmark, copy_bandwidth, forward, x, w, mode, layer=layer, shape=list(shape))
