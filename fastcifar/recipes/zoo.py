"""The model zoo's recipes, as data: each model's reference fields (kuangliu/pytorch-cifar's
training) and the ``_fast`` variant's overrides, with each one's reasoning.
Each model's two recipes are registered at the end of this module (use
``fastcifar.recipes.get_recipe``)."""

from __future__ import annotations

from fastcifar.recipes.recipe import Recipe, register

# kuangliu/pytorch-cifar (commit 49b7aa9, 2021-02-25) trains every model the same way
# (main.py): SGD lr 0.1, momentum 0.9, weight decay 5e-4, CosineAnnealingLR with T_max 200
# stepped per epoch, batch 128, RandomCrop(32, padding=4) and a flip, cross-entropy; its
# README reports the best test accuracy of that run (none for two of these models).
ZOO_SOURCE = "kuangliu/pytorch-cifar 49b7aa9 (main.py; README's accuracy table)"
ZOO_ACCURACY = {
    "mobilenetv2": 94.43,
    "resnext29_32x4d": 94.73,
    "regnetx_200mf": 94.24,
    "efficientnet_b0": None,
    "shufflenetv2": None,
}

REFERENCE = dict(
    augmentation="crop4_flip",
    batch_size=128,
    epochs=200,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    scheduler="cosine",
    loss="cross_entropy",
)

FAST = dict(
    augmentation="flip_translate4",
    batch_size=512,
    epochs=30,
    lr=0.4,
    nesterov=True,
    scheduler="onecycle",
    pct_start=0.25,
    div_factor=10.0,
    final_div_factor=100.0,
    anneal_strategy="linear",
    cycle_momentum=False,
    label_smoothing=0.1,
    drop_last=True,
    expected_accuracy=None,
)


def reference_doc(model: str) -> str:
    """The reference recipe's description: its source and reported accuracy.

    Args:
        model: a zoo model's name.

    Returns:
        The description.
    """
    reported = ZOO_ACCURACY[model]
    claim = f"its README reports {reported} %" if reported else "its README reports none"
    return f"""{model} as {ZOO_SOURCE} trains it: {claim}.

    SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine annealing to 0 over 200 epochs
    (stepped per epoch), batch 128, zero-padded 4-pixel random crop and horizontal flip
    (``crop4_flip``, albumentations in CPU workers), cross-entropy."""


def fast_doc(model: str) -> str:
    """The ``_fast`` variant's description: each change against the reference, and why.

    Args:
        model: a zoo model's name.

    Returns:
        The description.
    """
    return f"""{model} for speed, designed to train it in minutes on one GPU (not measured
    yet); no accuracy is claimed until it is measured. Run with ``--amp --compile``
    (bfloat16 and channels_last where the GPU has them).

    Against ``{model}``: batch 512 (four times the work per step keeps a GPU busy, a
    quarter of the steps) with the lr scaled linearly to 0.4, reached by a one-cycle
    schedule (25 % linear warm-up from 0.04, linear decay to 0.004), which tolerates that
    lr where a cold start diverges; Nesterov momentum; 30 epochs, the budget one-cycle
    schedules train CIFAR-10 models in; label smoothing 0.1 for the short schedule; flip
    and 4-pixel translation batched on the GPU (``flip_translate4``, reflect padding where
    the reference pads with black): no CPU worker limits the step; drop_last, so every
    step has the same shape for torch.compile."""


# each model's reference recipe and its ``_fast`` variant
for _model, _accuracy in ZOO_ACCURACY.items():
    _reference = register(
        Recipe(name=_model, model=_model, expected_accuracy=_accuracy, **REFERENCE),
        reference_doc(_model),
    )
    register(_reference.replace(name=f"{_model}_fast", **FAST), fast_doc(_model))
