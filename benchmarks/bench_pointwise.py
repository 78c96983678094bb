"""``pointwise_conv2d`` (kernels/pointwise.py) on the model zoo's 1x1 convolutions: the
plain 1x1 and the chain consumer's form (BatchNorm-and-ReLU prologue, statistics
epilogue), forward and forward + backward (sizes: benchmarks/op_shapes.py).

Bytes: the compulsory ones (``op_shapes.time_conv``). Nothing here asserts speed."""

from __future__ import annotations

import pytest
from op_shapes import identity_prologue, layer_shapes, tensor, time_conv

from fastcifar.kernels.pointwise import pointwise_conv2d

SHAPES = layer_shapes(
    lambda c: c.kernel_size == (1, 1) and c.stride == (1, 1) and c.groups == 1 and c.bias is None
)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("form", ["plain", "prologue_stats"])
@pytest.mark.parametrize("layer,conv,shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_pointwise_conv2d(benchmark, copy_bandwidth, layer, conv, shape, form, mode):
    x, w = tensor(shape), tensor(conv.weight.shape, 0.1)
    prologue = identity_prologue(shape[1]) if form == "prologue_stats" else None
    activation = "relu" if prologue is not None else "identity"
    stats = prologue is not None

    def forward():
        out = pointwise_conv2d(x, w, None, prologue, activation, stats)
        return out[0] if stats else out

    info = dict(layer=layer, shape=list(shape), cout=w.shape[0], form=form)
    time_conv(benchmark, copy_bandwidth, forward, x, w, mode, **info)
