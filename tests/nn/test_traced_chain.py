"""Links found in a traced forward (fastcifar.nn.traced_chain): flat Sequentials,
torchvision's Conv2dNormActivation and BasicBlock, a kuangliu-style F.relu block; equal to
PyTorch's modules in float64 under the interpreter, training and eval; what is not
converted, said; reverting."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2, resnet18
from torchvision.models.resnet import BasicBlock

from fastcifar.nn.chain import fuse_conv_bn_act, revert_link_end
from fastcifar.nn.fusion import convert, fused_copy, revert_all
from fastcifar.nn.traced_chain import (
    LinkedConv2d,
    find_traced_links,
    fuse_traced_links,
    traced_link_notes,
    traced_units,
)


class KuangliuBlock(nn.Module):
    """kuangliu/pytorch-cifar's BasicBlock as written: the order lives in forward."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


def _resnet18_32px() -> nn.Module:
    # as users adapt torchvision's ResNet18 to CIFAR-10: a 3x3 stem, no max pool
    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _torchvision_basic_block() -> nn.Module:
    # torchvision's own class, as its layer2[0] (stride 2, 1x1 shortcut), narrower
    shortcut = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    return BasicBlock(16, 32, stride=2, downsample=shortcut)


def _mobilenet_v2_32px() -> nn.Module:
    model = mobilenet_v2(num_classes=10)
    model.features[0][0].stride = (1, 1)
    return model


def _flat() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.Conv2d(8, 4, 1),
        nn.BatchNorm2d(4),
    )


def test_links_are_found_in_torchvisions_models_and_flat_sequentials():
    links = find_traced_links(_resnet18_32px())
    assert len(links) == 8 and links[0] == "layer1.0.conv1>layer1.0.conv2"  # conv1 -> conv2
    mobile = find_traced_links(_mobilenet_v2_32px())
    # the depthwise unit -> the bare 1x1 project in all 17 blocks (expand -> depthwise is
    # two Conv2dNormActivation units: chain.find_links')
    assert len(mobile) == 17 and "features.2.conv.1.0>features.2.conv.2" in mobile
    assert find_traced_links(_flat()) == ["0>3", "3>6"]
    assert find_traced_links(KuangliuBlock(8)) == ["conv1>conv2"]


def test_what_is_not_converted_is_said():
    strided = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 5))
    assert traced_link_notes(strided) == ["0 -> 3: a convolution the kernels do not take"]

    class Branchy(KuangliuBlock):
        def forward(self, x):
            out = self.conv1(x)
            return out if self.training else self.bn1(out)

    assert "differs in training and eval" in traced_link_notes(Branchy(4))[0]
    assert find_traced_links(Branchy(4)) == []

    class Twice(KuangliuBlock):  # conv2 also takes a plain tensor: no Pending for it
        def forward(self, x):
            out = self.conv2(F.relu(self.bn1(self.conv1(x))))
            return self.conv2(out)

    assert traced_link_notes(Twice(4)) == ["conv1 -> conv2: a module called twice"]
    assert find_traced_links(Twice(4)) == []


@pytest.mark.parametrize(
    "make, channels",
    [
        (_flat, 3),
        (lambda: KuangliuBlock(8), 8),
        (_torchvision_basic_block, 16),  # strided conv1 and a 1x1 shortcut
        (lambda: _mobilenet_v2_32px().features[2], 16),  # Conv2dNormActivation x2 -> 1x1
    ],
    ids=["flat", "kuangliu", "torchvision_basicblock", "torchvision_inverted_residual"],
)
def test_converted_equals_pytorch_in_float64(make, channels):
    torch.manual_seed(0)
    ref = make().double()
    fused = copy.deepcopy(ref)
    assert fuse_traced_links(fused) and (fuse_conv_bn_act(fused) or True)
    assert any(isinstance(m, LinkedConv2d) for m in fused.modules())
    assert list(fused.state_dict()) == list(ref.state_dict())  # checkpoints unchanged
    x = torch.randn(2, channels, 6, 6, dtype=torch.float64, requires_grad=True)
    xf = x.detach().clone().requires_grad_()
    out, out_f = ref(x), fused(xf)
    torch.testing.assert_close(out_f, out, rtol=0, atol=1e-9)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_f.backward(grad)
    torch.testing.assert_close(xf.grad, x.grad, rtol=0, atol=1e-9)
    for (name, p), pf in zip(ref.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(pf.grad, p.grad, rtol=0, atol=1e-9, msg=name)
    for b, bf in zip(ref.buffers(), fused.buffers(), strict=True):
        torch.testing.assert_close(bf, b, rtol=0, atol=1e-9)  # running statistics
    ref.eval(), fused.eval()
    torch.testing.assert_close(fused(x), ref(x), rtol=0, atol=1e-9)


def test_reverting_one_end_restores_the_module_and_all_its_links():
    model = nn.Sequential(_flat(), KuangliuBlock(4))
    model[1].conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    convert(model, kinds=("traced_chain",))
    flat, block = model[0], model[1]
    assert (
        type(flat).__name__ == "LinkedSequential" and type(block).__name__ == "LinkedKuangliuBlock"
    )
    revert_link_end(flat[6])  # the last consumer: the whole flat Sequential goes back
    assert type(flat) is nn.Sequential and not any(isinstance(m, LinkedConv2d) for m in flat)
    assert "_link_bn" not in flat[0].__dict__ and type(block).__name__ == "LinkedKuangliuBlock"
    revert_all(model)
    assert type(block) is KuangliuBlock and type(block.conv2) is nn.Conv2d


def test_a_units_validation_copy_converts_the_same_link():
    units = traced_units(KuangliuBlock(4))
    assert list(units) == ["conv1>conv2"]
    unit = units["conv1>conv2"]  # conv1, bn1, a ReLU for F.relu, conv2
    assert [type(m) for m in unit] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert find_traced_links(unit) == ["0>3"]
    copied = fused_copy("traced_chain", unit)  # what auto validates and times
    assert isinstance(copied[0][0], LinkedConv2d) and isinstance(copied[0][3], LinkedConv2d)
    assert type(unit[0]) is nn.Conv2d  # the unit itself untouched
