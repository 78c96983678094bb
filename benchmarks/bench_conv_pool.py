"""The op of kernels/conv_pool.py: ``conv2d_pool_stats`` (a dense 3x3 convolution with
its 2x2 max pool and the next BatchNorm's batch statistics in the epilogue) on the speed
run's pooled blocks (``speedrun94``: conv -> MaxPool2d(2) -> BatchNorm -> GELU), with
and without the previous BatchNorm-and-activation prologue, forward and forward +
backward, against PyTorch's unfused composition of the same arithmetic (sizes:
benchmarks/op_shapes.py).

Bytes: the fused op's compulsory ones (``op_shapes.time_conv``: the input, the weight
and the pooled output; the pre-pool output is never written). The packed window
positions the backward reads (one byte per four channels of a pooled pixel, a sixteenth
of a 16-bit pooled output) are left out. Nothing here asserts speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from op_shapes import identity_prologue, layer_shapes, tensor, time_conv

from fastcifar.kernels.conv_pool import conv2d_pool_stats

# the speed run's block convolutions: the first of each block is followed by the pool
POOLED = layer_shapes(
    lambda c: c.groups == 1 and c.kernel_size == (3, 3) and c.stride == (1, 1),
    ("speedrun94",),
)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("prologue", [False, True], ids=["raw", "prologue"])
@pytest.mark.parametrize("layer,conv,shape", POOLED, ids=[s[0] for s in POOLED])
def test_conv2d_pool_stats(benchmark, copy_bandwidth, layer, conv, shape, prologue, impl, mode):
    x, w = tensor(shape), tensor(conv.weight.shape, 0.1)
    pro = identity_prologue(shape[1]) if prologue else None

    def forward():
        if impl == "triton":
            act = "gelu" if prologue else "identity"
            y, mean, var = conv2d_pool_stats(x, w, None, pro, act, 1, conv.padding[0])
        else:
            a = x
            if prologue:
                z = (x.float() - pro[:, 0, None, None]) * pro[:, 1, None, None]
                a = F.gelu(z + pro[:, 2, None, None]).to(x.dtype)
            y = F.max_pool2d(F.conv2d(a, w, None, 1, conv.padding[0]), 2)
            var, mean = torch.var_mean(y.float(), dim=(0, 2, 3), correction=0)
        return y + 0 * (mean.sum() + var.sum()).to(y.dtype)  # the statistics in the graph

    info = dict(layer=layer, shape=list(shape), prologue=prologue)
    time_conv(benchmark, copy_bandwidth, forward, x, w, mode, **info)
