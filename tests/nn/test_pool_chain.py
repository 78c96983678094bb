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
from fastcifar.nn.traced_chain import traced_link_notes
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


# odd pre-pool sizes: 24 -> 23 -> 11 -> 5 -> 2 and 28 -> 27 -> 13 -> 6 -> 3; the record's
# exact GELU (speedrun94) and the SiLU of the later records
@pytest.mark.parametrize("size, act", [(24, nn.SiLU), (28, nn.GELU)], ids=["24-silu", "28-gelu"])
def test_blocks_equal_pytorchs_in_float64_training_and_eval(size, act):
    torch_net = small_net(act)
    ours = copy.deepcopy(torch_net)
    assert fuse_pooled_blocks(ours) == ["block1", "block2", "block3"]
    assert ours.block1.gives_pending and ours.block2.gives_pending
    assert ours.block3.gives_pending  # the head's global max pool reads it raw
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
    done = convert(net, kinds=("pooled_block", "conv_bn_act", "traced_chain", "conv"))
    assert done["pooled_block"] == ["block1", "block2", "block3"]
    # a converted block is not traced again, nor named as a module left unlinked
    assert done["traced_chain"] == [] and traced_link_notes(net) == []
    # the blocks' convolutions run in their blocks' kernels, not swapped one by one; the
    # whitening convolution (2x2) is not a kernel configuration
    assert not any(n.startswith("block") for n in done["conv"])
    assert list(net.state_dict()) == keys
    assert all(runs_triton(getattr(net, b)) for b in ("block1", "block2", "block3"))
    revert_all(net)
    assert not any(isinstance(m, PooledBlock) for m in net.modules())
    assert not any(getattr(m, "gives_pending", False) for m in net.modules())


def test_what_is_not_a_pooled_block():
    tanh_gelu = small_net(act=lambda: nn.GELU(approximate="tanh"))
    assert find_pooled_blocks(tanh_gelu) == {}  # the kernels compute the exact GELU only
    net = small_net()
    net.block2[1] = nn.MaxPool2d(2, ceil_mode=True)
    assert sorted(find_pooled_blocks(net)) == ["block1", "block3"]
    fuse_pooled_blocks(net)
    # block2 stays on PyTorch, so neither neighbour hands it (or gets from it) a Pending;
    # block3 still hands one to the head's pool
    assert not net.block1.gives_pending and net.block3.gives_pending


@pytest.mark.parametrize("global_max_pool", [True, False], ids=["amax", "maxpool3"])
def test_the_heads_max_sends_the_gradient_where_pytorch_does_ties_included(global_max_pool):
    # the last block's Pending into the head's pool: GlobalMaxPool's amax splits a tie's
    # gradient evenly, MaxPool2d(3) (on a 3x3 map) gives it to the first maximum
    from fastcifar.nn.pending import Pending

    net = small_net(global_max_pool=global_max_pool)
    fuse_pooled_blocks(net)
    pool = net.pool
    assert type(pool).__name__.startswith("Chained") and net.block3.gives_pending
    raw = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    raw[0, 0] = 0.25  # a whole channel tied
    raw[1, 2, 0, 1] = raw[1, 2, 2, 2] = raw[1, 2].max() + 1  # two tied maxima
    if global_max_pool:  # the recipes' layout: the gradient keeps it
        raw = raw.contiguous(memory_format=torch.channels_last)
    prologue = torch.tensor([[0.1, 1.5, 0.2]] * 3, dtype=torch.float64)
    raw_ours, pro_ours = raw.clone().requires_grad_(), prologue.clone().requires_grad_()
    raw_ref, pro_ref = raw.clone().requires_grad_(), prologue.clone().requires_grad_()
    out = pool(Pending(raw_ours, pro_ours, "gelu"))
    ref = pool.__dict__["_unfused_class"].forward(
        pool, Pending(raw_ref, pro_ref, "gelu").materialise()
    )
    grad = torch.randn(ref.shape, dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(raw_ours.grad, raw_ref.grad, rtol=0, atol=1e-12)
    assert raw_ours.grad.stride() == raw.stride()
    torch.testing.assert_close(pro_ours.grad, pro_ref.grad, rtol=0, atol=1e-12)
    revert_all(net)
    assert (
        type(net.pool).__name__ in ("GlobalMaxPool", "MaxPool2d")
        and "_unfused_class" not in net.pool.__dict__
    )
