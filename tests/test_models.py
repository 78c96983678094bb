import pytest
import torch

from fastcifar import FastCifarError
from fastcifar.models import MODELS, SEED_MODELS, count_parameters, create_model

EXPECTED = {
    "s7": 99_744,
    "s7_mixed": 99_200,
    "attention": 25_680,
    "c1c2c3c40": 178_178,
    "resnet18": 11_173_962,
    "resnet18_ln": 11_173_962,
    "speedrun94": 1_971_352,  # not seeds; trainable (whitening and BN weights frozen)
    "speedrun94_silu": 1_971_352,
}


def test_every_seed_model_is_listed():
    assert set(MODELS) == set(EXPECTED)
    assert set(SEED_MODELS) == set(EXPECTED) - {"speedrun94", "speedrun94_silu"}


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
