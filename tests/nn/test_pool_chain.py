"""The speed run's blocks as chains (``fastcifar.nn.pool_chain``): found, converted,
linked block to block, equal to PyTorch's modules in float64 (training and eval, output,
gradients, running statistics), put back together."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastcifar.models.speedrun import SpeedrunNet
from fastcifar.nn.fusion import convert, revert_all, runs_triton
from fastcifar.nn.pool_chain import PooledBlock, find_pooled_blocks, fuse_pooled_blocks
from tests.kernel_helpers import DEVICE


def small_net(act=nn.SiLU, global_max_pool=True) -> SpeedrunNet:
    torch.manual_seed(0)
    net = SpeedrunNet(widths=(16, 16, 16), whiten_width=8, act=act, global_max_pool=global_max_pool)
    # BatchNorm biases away from zero, so the activations' kinks and curves are exercised
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net.double().to(DEVICE)


def step(model, x):
    """(output, input gradient, parameter gradients, running statistics) of one training
    forward and backward."""
    x = x.detach().requires_grad_()
    out = model(x)
    gen = torch.Generator().manual_seed(3)
    (out * torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    stats = [b for name, b in model.named_buffers() if "running" in name]
    return [out, x.grad, *grads, *stats]


@pytest.mark.parametrize("size", [24])  # 24 -> 23 -> 11 -> 5 -> 2: odd pre-pool sizes
def test_blocks_equal_pytorchs_in_float64_training_and_eval(size):
    torch_net = small_net()
    ours = copy.deepcopy(torch_net)
    assert fuse_pooled_blocks(ours) == ["block1", "block2", "block3"]
    assert ours.block1.gives_pending and ours.block2.gives_pending
    assert not ours.block3.gives_pending  # its output goes to the head's pool
    x = torch.randn(1, 3, size, size, dtype=torch.float64, device=DEVICE)
    for a, b in zip(step(ours, x), step(torch_net, x), strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-9 * max(1.0, b.abs().max().item())
    ours.eval()
    torch_net.eval()
    with torch.no_grad():
        assert (ours(x) - torch_net(x)).abs().max().item() < 1e-9


def test_kernels_triton_converts_the_blocks_and_reverts_them_together():
    net = small_net()
    keys = list(net.state_dict())
    done = convert(net, kinds=("pooled_block", "conv_bn_act", "conv"))
    assert done["pooled_block"] == ["block1", "block2", "block3"]
    # the blocks' convolutions run in their blocks' kernels, not swapped one by one; the
    # whitening convolution (2x2) is not a kernel configuration
    assert not any(n.startswith("block") for n in done["conv"])
    assert list(net.state_dict()) == keys
    assert all(runs_triton(getattr(net, b)) for b in ("block1", "block2", "block3"))
    revert_all(net)
    assert not any(isinstance(m, PooledBlock) for m in net.modules())
    assert not any(getattr(m, "gives_pending", False) for m in net.modules())


def test_what_is_not_a_pooled_block():
    assert find_pooled_blocks(small_net(act=nn.GELU)) == {}  # the record's GELU blocks
    net = small_net()
    net.block2[1] = nn.MaxPool2d(2, ceil_mode=True)
    assert sorted(find_pooled_blocks(net)) == ["block1", "block3"]
    fuse_pooled_blocks(net)
    # block2 stays on PyTorch, so neither neighbour hands it (or gets from it) a Pending
    assert not net.block1.gives_pending and not net.block3.gives_pending
