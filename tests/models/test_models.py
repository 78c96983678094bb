import pytest
import torch

from fastcifar import FastCifarError
from fastcifar.models import MODELS, SEED_MODELS, ZOO_MODELS, count_parameters, create_model

EXPECTED = {
    "s7": 99_744,
    "s7_mixed": 99_200,
    "attention": 25_680,
    "c1c2c3c40": 178_178,
    "resnet18": 11_173_962,
    "resnet18_ln": 11_173_962,
    "speedrun94": 1_971_352,  # not seeds; trainable (whitening and BN weights frozen)
    "speedrun94_silu": 1_971_352,
    "speedrun94_progressive": 1_971_352,
    # the model zoo: kuangliu/pytorch-cifar 49b7aa9's counts, run there
    "mobilenetv2": 2_296_922,
    "resnext29_32x4d": 4_774_218,
    "regnetx_200mf": 2_321_946,
    "efficientnet_b0": 3_599_686 - 1_088,  # less its first block's unused expansion 1x1 + BN
    "shufflenetv2": 1_263_854,
}


def test_every_seed_model_is_listed():
    assert set(MODELS) == set(EXPECTED)
    speedrun = {"speedrun94", "speedrun94_silu", "speedrun94_progressive"}
    assert set(SEED_MODELS) == set(EXPECTED) - {*speedrun, *ZOO_MODELS}


@pytest.mark.parametrize("name", EXPECTED)
def test_parameter_count_matches_the_seed(name):
    model = create_model(name)
    assert count_parameters(model) == EXPECTED[name] == MODELS[name].params


@pytest.mark.parametrize("name", EXPECTED)
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_shape_and_kind(name, channels_last):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(3, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    if MODELS[name].outputs == "log_probs":
        torch.testing.assert_close(out.exp().sum(1), torch.ones(3))
    else:  # raw logits: not normalised
        assert not torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-3)


def test_s7_layer_types_follow_the_spec():
    m = create_model("s7")
    assert m.depthwise1A[0].groups == 32 and m.depthwise1A[0].in_channels == 64
    assert m.depthwise2B[0].groups == 64
    assert m.pool1[0].dilation == (2, 2) and m.pool1[0].padding == (0, 0)
    assert m.pool3.stride == (2, 2)
    assert m.dilated5A[0].dilation == (2, 2) and m.dilated5A[0].padding == (2, 2)
    # activation before the norm (CRB)
    assert isinstance(m.convblock1A[1], torch.nn.ReLU)
    assert isinstance(m.convblock1A[2], torch.nn.BatchNorm2d)


def test_attention_blocks_are_independent():
    m = create_model("attention")
    blocks = list(m.ultimus)
    assert len(blocks) == 4
    assert len({id(b.k.weight) for b in blocks}) == 4


def test_resnet18_ln_has_no_batchnorm_and_strides_1122():
    m = create_model("resnet18_ln")
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert m.layer2[0].conv1.stride == (1, 1) and m.layer3[0].conv1.stride == (2, 2)
    feats = m.layer2(m.layer1(torch.relu(m.bn1(m.conv1(torch.randn(1, 3, 32, 32))))))
    assert feats.shape == (1, 128, 32, 32)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(FastCifarError, match="s7, s7_mixed, attention"):
        create_model("vgg")


# (convolution kernel, groups > 1, input channels per group) of every grouped convolution
ZOO_GROUPED = {
    "mobilenetv2": {(3, 1)},
    "resnext29_32x4d": {(3, 4), (3, 8), (3, 16)},
    "regnetx_200mf": {(3, 8)},
    "efficientnet_b0": {(3, 1), (5, 1)},
    "shufflenetv2": {(3, 1)},
}


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_models_convolutions_are_the_references(name):
    model = create_model(name)
    grouped = {
        (m.kernel_size[0], m.in_channels // m.groups)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1
    }
    assert grouped == ZOO_GROUPED[name]
    assert all(
        m.bias is None
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1
    )
    cam = dict(model.named_modules())[MODELS[name].cam_layer]  # Grad-CAM's default exists
    assert sum(p.numel() for p in cam.parameters()) > 0


def test_shufflenet_channel_shuffle_interleaves_two_groups():
    from fastcifar.models.shufflenet import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]
