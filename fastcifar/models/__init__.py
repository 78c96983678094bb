"""The models, built by name: the seed models (docs/SEEDS.md), the speed-run networks and
the model zoo (``ZOO_MODELS``: MobileNetV2, ResNeXt29 32x4d, RegNetX 200MF,
EfficientNet-B0, ShuffleNetV2, as kuangliu/pytorch-cifar builds them).

``create_model(name)`` returns a fresh ``CifarNet`` (``models/base.py``: an ``nn.Module``
with the engine's hooks) taking float (N, 3, 32, 32) and
returning (N, 10): log-probabilities for the EVA/ERA small nets (NLL loss), raw logits
for the ResNets (cross-entropy). ``MODELS[name].outputs`` says which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fastcifar.errors import FastCifarError
from fastcifar.models.base import CifarNet
from fastcifar.models.mobile import EfficientNetB0, MobileNetV2
from fastcifar.models.resnet import ResNet18, layer_norm
from fastcifar.models.resnext import RegNetX, ResNeXt29
from fastcifar.models.seeds import C1C2C3C40, S7, AttentionNet, S7Mixed
from fastcifar.models.shufflenet import ShuffleNetV2
from fastcifar.models.speedrun import SpeedrunNet
from fastcifar.recipes.zoo import ZOO_ACCURACY


@dataclass(frozen=True)
class ModelInfo:
    """What a model name builds and what the seed says about it.

    Args:
        build: a callable with no arguments returning a new ``CifarNet``, its parameters
            initialised, on the CPU, float32.
        params: the seed's exact trainable parameter count (checked by the tests).
        outputs: ``"log_probs"`` (the model ends in ``log_softmax``; the loss is
            ``nll_loss``) or ``"logits"``.
        cam_layer: the qualified name of the module Grad-CAM targets by default (the
            last convolutional block).
        source: the seed or reference the model reproduces, in words.
    """

    build: Callable[[], CifarNet]
    params: int  # exact trainable parameter count of the seed
    outputs: str  # "log_probs" or "logits"
    cam_layer: str  # default Grad-CAM target: the last convolutional block
    source: str


MODELS: dict[str, ModelInfo] = {
    "s7": ModelInfo(S7, 99_744, "log_probs", "dilated5A", "EVA6 S7 S7_CNNModel"),
    "s7_mixed": ModelInfo(S7Mixed, 99_200, "log_probs", "dilated5A", "EVA6 S7 S7_CNNModel_mixed"),
    "attention": ModelInfo(
        AttentionNet, 25_680, "log_probs", "convblock3", "EVA8 S9 basic_attn_model"
    ),
    "c1c2c3c40": ModelInfo(C1C2C3C40, 178_178, "log_probs", "convblock9", "ERA-V1 S9 CNNModel"),
    "resnet18": ModelInfo(ResNet18, 11_173_962, "logits", "layer4", "ERA-V1 S11 ResNet18"),
    "resnet18_ln": ModelInfo(
        lambda: ResNet18(norm=layer_norm, strides=(1, 1, 2, 2), pool=8),
        11_173_962,
        "logits",
        "layer4",
        "EVA6 S8 ResNet18 with GroupNorm(1, C)",
    ),
    # not seeds: the speed-run networks (trainable parameters: whitening weights and
    # BatchNorm weights are frozen)
    "speedrun94": ModelInfo(
        SpeedrunNet, 1_971_352, "logits", "block3", "cifar10-airbench airbench94_muon network"
    ),
    "speedrun94_silu": ModelInfo(
        lambda: SpeedrunNet(act=nn.SiLU, bn_momentum=1 - 0.5566),
        1_971_352,
        "logits",
        "block3",
        "Hiverge cifar10-speedrun network (SiLU blocks)",
    ),
    "speedrun94_progressive": ModelInfo(
        lambda: SpeedrunNet(act=nn.SiLU, bn_momentum=1 - 0.5566, global_max_pool=True),
        1_971_352,
        "logits",
        "block3",
        "fulcrumresearch cifar-10-speedrun E1 network (SiLU blocks, global max pool)",
    ),
}
# the model zoo: the CIFAR-10 models practitioners train after the course models, as
# kuangliu/pytorch-cifar (commit 49b7aa9, 2021-02-25) builds them for 32x32 inputs
ZOO = "kuangliu/pytorch-cifar 49b7aa9"
MODELS.update(
    {
        "mobilenetv2": ModelInfo(MobileNetV2, 2_296_922, "logits", "head", f"{ZOO} MobileNetV2"),
        "resnext29_32x4d": ModelInfo(
            ResNeXt29, 4_774_218, "logits", "layer3", f"{ZOO} ResNeXt29_32x4d"
        ),
        "regnetx_200mf": ModelInfo(RegNetX, 2_321_946, "logits", "layer4", f"{ZOO} RegNetX_200MF"),
        # the reference's 3,599,686 less the 1,088 of an expansion it builds and never calls
        "efficientnet_b0": ModelInfo(
            EfficientNetB0, 3_598_598, "logits", "blocks", f"{ZOO} EfficientNetB0"
        ),
        "shufflenetv2": ModelInfo(
            ShuffleNetV2, 1_263_854, "logits", "head", f"{ZOO} ShuffleNetV2(1)"
        ),
    }
)
# the zoo's names, in one place: its recipes' table (``fastcifar.recipes.zoo``), which also
# holds each one's reported accuracy; tests/models/test_models.py checks MODELS builds each
ZOO_MODELS = tuple(ZOO_ACCURACY)
SEED_MODELS = ("s7", "s7_mixed", "attention", "c1c2c3c40", "resnet18", "resnet18_ln")


def create_model(name: str) -> CifarNet:
    """A freshly initialised model by name.

    Args:
        name: a key of ``MODELS``.

    Returns:
        The model, on the CPU, in float32 and training mode.

    Raises:
        FastCifarError: unknown name (the message lists the valid ones).
    """
    if name not in MODELS:
        raise FastCifarError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name].build()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``, each tensor counted once (shared ones once).

    Args:
        model: any module.

    Returns:
        The number of elements of the parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "CifarNet",
    "MODELS",
    "SEED_MODELS",
    "ZOO_MODELS",
    "ModelInfo",
    "count_parameters",
    "create_model",
]
