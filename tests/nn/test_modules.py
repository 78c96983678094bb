"""fastcifar.nn.modules: the drop-in Conv2d, the in-place swap, and s7 training with the kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastcifar.engine.build import build_trainer
from fastcifar.engine.trainer import RunOptions
from fastcifar.models import create_model
from fastcifar.nn.modules import Conv2d, config_supported, swap_convolutions
from fastcifar.recipes import get_recipe
from tests.conftest import make_tree
from tests.kernel_helpers import DEVICE


@pytest.mark.parametrize(
    "args,kwargs,expected",
    [
        ((4, 4, 3), dict(padding=1, groups=4), True),
        ((8, 8, 3), dict(padding=1, groups=4), True),
        ((6, 5, 3), dict(padding=3, dilation=3), True),
        ((8, 8, 3), dict(stride=2, padding=1), True),
        ((4, 4, 5), dict(padding=2), False),  # dense 5x5
        ((4, 4, 5), dict(padding=2, groups=4), True),  # depthwise 5x5
        ((6, 6, 7), dict(padding=3, groups=6, stride=2), True),  # depthwise 7x7
        ((6, 6, 9), dict(padding=4, groups=6), False),  # 9x9
        ((16, 16, 3), dict(padding=1, groups=2), True),  # 8 input channels per group
        ((64, 64, 3), dict(padding=1, groups=2), False),  # 32 input channels per group
        ((4, 4, 3), dict(padding=1, padding_mode="reflect"), False),
        ((4, 4, 3), dict(padding=2), False),  # padding above the dilation
        ((4, 4, 3), dict(stride=3), False),
        ((4, 4, 1), dict(), False),  # pointwise
    ],
)
def test_support_is_decided_at_construction(args, kwargs, expected):
    conv = Conv2d(*args, **kwargs)
    assert conv.uses_triton is expected
    assert config_supported(nn.Conv2d(*args, **kwargs)) is expected


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_matches_torch(channels_last):
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3).to(DEVICE)
    ours = Conv2d.from_conv(ref)
    x = torch.randn(2, 6, 9, 7, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert ours.weight is ref.weight


def test_autocast_casts_to_the_autocast_dtype():
    conv = Conv2d(4, 4, 3, padding=1, groups=4).to(DEVICE)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        y = conv(torch.randn(1, 4, 5, 5, device=DEVICE))
    assert y.dtype == torch.bfloat16


def test_swap_keeps_weights_keys_and_outputs():
    torch.manual_seed(0)
    model = create_model("s7").to(DEVICE).eval()
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    before = model(x)
    keys = list(model.state_dict())
    ptr = model.depthwise1A[0].weight.data_ptr()
    swapped = swap_convolutions(model)
    # every 3x3 conv of s7 is supported; the 1x1 pointwise and the head are not 3x3
    assert len(swapped) == 18 and "depthwise1A.0" in swapped and "pool3" in swapped
    assert isinstance(model.depthwise1A[0], Conv2d) and type(model.pointwise1A) is nn.Conv2d
    assert model.depthwise1A[0].weight.data_ptr() == ptr
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def test_a_conv2d_subclass_converts_when_its_forward_is_the_convolution():
    from fastcifar.models.speedrun import DiracConv
    from fastcifar.nn.fusion import summary_line
    from fastcifar.nn.modules import own_forward_convs, plain_conv

    class Doubled(nn.Conv2d):  # a forward of its own: not what the kernels compute
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(DiracConv(8, 8), Doubled(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 8, 8, 8, device=DEVICE)
    model = model.to(DEVICE)
    before = model(x)
    assert [plain_conv(m) for m in model] == [True, False, True]
    assert swap_convolutions(model) == ["0", "2"]  # the speed run's convolutions convert
    assert isinstance(model[0], Conv2d) and type(model[1]) is Doubled
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    assert own_forward_convs(model) == ["1"]
    line = summary_line({"conv": 2}, own_forward_convs(model))
    assert "1 nn.Conv2d subclasses with a forward of their own stay on PyTorch" in line
    assert line.endswith(": 1)") and swap_convolutions(model) == []  # nothing left to swap
    speedrun = create_model("speedrun94")
    assert len(swap_convolutions(speedrun)) == 6 and own_forward_convs(speedrun) == []


def test_s7_training_steps_match_torch_convolutions():
    """An SGD step of s7: its gradients agree per convolution, the loss before and after."""
    torch.manual_seed(0)
    a = create_model("s7").to(DEVICE)
    b = create_model("s7").to(DEVICE)
    b.load_state_dict(a.state_dict())
    assert len(swap_convolutions(b)) == 18
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(2, 3, 32, 32, generator=gen), torch.randint(0, 10, (2,), generator=gen))
        for _ in range(2)
    ]
    losses, conv_grads = {}, {}
    for name, model in (("torch", a), ("triton", b)):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        losses[name] = []
        for step, (x, y) in enumerate(batches):
            # the second step's loss needs only its forward: no backward after it
            with torch.set_grad_enabled(step == 0):
                loss = nn.functional.nll_loss(model(x.to(DEVICE)), y.to(DEVICE))
            losses[name].append(loss.item())
            if step == 0:
                opt.zero_grad()
                loss.backward()
                conv_grads[name] = {
                    n: m.weight.grad.clone()
                    for n, m in model.named_modules()
                    if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
                }
                opt.step()
    for layer, g in conv_grads["torch"].items():
        err = ((conv_grads["triton"][layer] - g).norm() / g.norm()).item()
        assert err < 1e-4, f"{layer}: weight gradient relative error {err:.2e}"
    # float32: the first step's loss sees only forward rounding; the second step starts from
    # weights updated with gradients that differ in their last bits
    assert losses["triton"][0] == pytest.approx(losses["torch"][0], rel=1e-6)
    assert losses["triton"][1] == pytest.approx(losses["torch"][1], rel=1e-4)
    assert losses["torch"][0] != losses["torch"][1]  # the step really changed the model


def test_trainer_validates_then_trains_with_triton(tmp_path, capsys):
    make_tree(tmp_path / "tree", per_class=1)
    # 4 training and 2 test images: each interpreted kernel runs a few programs
    recipe = get_recipe("attention").replace(epochs=1, batch_size=4)
    opts = RunOptions(
        data=str(tmp_path / "tree"),
        workers=0,
        device=DEVICE,
        kernels="triton",
        train_subset=4,
        test_subset=2,
    )
    t = build_trainer(recipe, opts, tmp_path)
    out = capsys.readouterr().out
    assert "validating 3 Triton conv configurations" in out
    assert out.count(" pass") == 3 and "FAIL" not in out
    line = "kernels: 3 convolutions in Triton, 0 conv-BN-activation chains, "
    line += "0 conv-BN-activation links in forward, "
    assert line + "0 conv-pool-BN-activation blocks fused" in out
    summary = t.fit()
    assert summary["kernels"] == "triton" and summary["epochs"] == 1


def test_trainer_refuses_to_train_when_validation_fails(tmp_path, monkeypatch):
    import fastcifar.kernels.validate as v
    from fastcifar import FastCifarError

    make_tree(tmp_path / "tree", per_class=1)
    real = v.validate_config

    def broken(cfg, device, seed=0):
        r = real(cfg, device, seed)
        if cfg.weight_shape[:2] == (32, 16):
            r.passed, r.message = False, "grad_w relative error 1.0e-01 > bound 1.0e-05"
        return r

    monkeypatch.setattr(v, "validate_config", broken)
    recipe = get_recipe("attention").replace(epochs=1, batch_size=10)
    opts = RunOptions(data=str(tmp_path / "tree"), workers=0, device=DEVICE, kernels="triton")
    with pytest.raises(FastCifarError, match="validation failed on layer convblock2.0 .*grad_w"):
        build_trainer(recipe, opts, tmp_path / "run")
