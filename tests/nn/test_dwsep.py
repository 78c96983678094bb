"""``fastcifar.nn.dwsep``: a depthwise 3x3 -> [ReLU] -> 1x1 block converted in place
computes what the unfused block computes (the kernel's own numerics:
tests/kernels/test_dwsep.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastcifar.nn.dwsep import (
    FusedDepthwiseSeparable,
    fuse_depthwise_separable,
    is_depthwise_separable,
)


@pytest.mark.parametrize("relu", [False, True])
def test_fused_depthwise_separable_module_matches_the_unfused_block(relu, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    layers = [nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)]
    layers += [nn.ReLU()] if relu else []
    layers += [nn.Conv2d(4, 6, 1, bias=False)]
    block = nn.Sequential(*layers)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    ref = block(x)
    (gx_ref,) = torch.autograd.grad(ref.sum(), x)
    assert is_depthwise_separable(block)
    assert fuse_depthwise_separable(block) == [""]
    assert isinstance(block, FusedDepthwiseSeparable)
    out = block(x)
    (gx,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
