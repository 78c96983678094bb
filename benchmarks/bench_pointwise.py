"""``pointwise_conv2d`` (kernels/pointwise.py) on the model zoo's 1x1 convolutions: the
plain 1x1 and the chain consumer's form (BatchNorm-and-ReLU prologue, statistics
epilogue), forward and forward + backward (sizes: benchmarks/op_shapes.py).

Bytes are the compulsory ones: input, weight and output once each forward; the backward
reads dy twice and the input and weight once more, and writes dx and dw. Nothing here
asserts speed."""

from __future__ import annotations

import pytest
import torch
from op_shapes import layer_shapes, tensor, time_step

from fastcifar.kernels.pointwise import pointwise_conv2d

SHAPES = layer_shapes(
    lambda c: c.kernel_size == (1, 1) and c.stride == (1, 1) and c.groups == 1 and c.bias is None
)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("form", ["plain", "prologue_stats"])
@pytest.mark.parametrize("layer,conv,shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_pointwise_conv2d(benchmark, copy_bandwidth, layer, conv, shape, form, mode):
    x, w = tensor(shape), tensor(conv.weight.shape, 0.1)
    prologue = None
    if form == "prologue_stats":
        cin = shape[1]
        prologue = torch.stack([torch.zeros(cin), torch.ones(cin), torch.zeros(cin)], 1)
        prologue = prologue.to(x.device, torch.float32)
    activation = "relu" if prologue is not None else "identity"
    stats = prologue is not None

    def forward():
        out = pointwise_conv2d(x, w, None, prologue, activation, stats)
        return out[0] if stats else out

    y = forward()
    gy = torch.randn_like(y)

    def step():
        out = forward()
        if mode == "forward_backward":
            torch.autograd.grad(out, (x, w), gy)

    e = x.element_size()
    nbytes = (x.numel() + w.numel() + y.numel()) * e
    if mode == "forward_backward":
        nbytes += (2 * y.numel() + 2 * x.numel() + 2 * w.numel()) * e
    time_step(benchmark, step, nbytes, copy_bandwidth)
    benchmark.extra_info.update(layer=layer, shape=list(shape), cout=w.shape[0], form=form)
