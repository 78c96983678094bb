"""Named training recipes, one per seed model (docs/SEEDS.md).

A ``Recipe`` holds everything that decides what a run learns: model, augmentation,
optimizer, schedule, loss and regularisation, batch size and epochs. Every field
can be overridden on the command line (``--batch-size 256``, ``--lr 0.1``,
``--label-smoothing 0.1``...).

``lr`` is the peak learning rate: for ``scheduler="onecycle"`` it is OneCycleLR's
``max_lr`` (the run starts at ``lr / div_factor``); otherwise the optimizer's lr.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastcifar.data.augment import AUGMENTATIONS
from fastcifar.errors import FastCifarError
from fastcifar.models import MODELS

OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("onecycle", "step", "plateau", "constant")
LOSSES = ("nll", "cross_entropy")


@dataclass(frozen=True)
class Recipe:
    """A training recipe. Units: lr per optimizer step; step_size in epochs."""

    name: str
    model: str
    augmentation: str
    batch_size: int = 128
    epochs: int = 20
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9  # SGD momentum; Adam's beta1
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 0.0  # L2 through the optimizer
    scheduler: str = "constant"  # onecycle (per step) | step, plateau (per epoch) | constant
    pct_start: float = 0.3  # OneCycleLR
    div_factor: float = 25.0  # OneCycleLR: start lr = lr / div_factor
    final_div_factor: float = 1e4  # OneCycleLR: end lr = start lr / final_div_factor
    anneal_strategy: str = "cos"  # OneCycleLR: cos | linear
    cycle_momentum: bool = True  # OneCycleLR: cycle momentum 0.95 -> 0.85 -> 0.95
    step_size: int = 6  # StepLR, epochs
    gamma: float = 0.2  # StepLR factor
    plateau_factor: float = 0.2  # ReduceLROnPlateau on test accuracy (mode max)
    plateau_patience: int = 3
    loss: str = "cross_entropy"  # nll (model gives log-probabilities) | cross_entropy (logits)
    label_smoothing: float = 0.0
    l1: float = 0.0  # factor of sum over parameter tensors of mean(|p|), as the EVA seeds
    drop_last: bool = False
    seed: int = 1
    lr_find: bool = False  # run an LR range test first and use its suggestion as lr
    lr_find_iters: int = 200  # steps of that test, 1e-6 -> 0.9 exponentially (seed 003: 200)
    ema: float = 0.0  # weight averaging: EMA decay per step (0: off); evaluation uses the EMA
    tta: bool = False  # test-time augmentation: average the logits of x and its mirror image
    expected_accuracy: float | None = None  # the seed's reported test accuracy, percent

    def validate(self) -> Recipe:
        """Check every field; return self.

        Raises:
            FastCifarError: a value out of range or an unknown name, with the valid choices.
        """
        if self.model not in MODELS:
            raise FastCifarError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.augmentation not in AUGMENTATIONS:
            raise FastCifarError(
                f"unknown augmentation {self.augmentation!r}: choose one of "
                f"{', '.join(AUGMENTATIONS)}"
            )
        for field, choices in (
            ("optimizer", OPTIMIZERS),
            ("scheduler", SCHEDULERS),
            ("loss", LOSSES),
            ("anneal_strategy", ("cos", "linear")),
        ):
            if getattr(self, field) not in choices:
                raise FastCifarError(
                    f"--{field.replace('_', '-')} {getattr(self, field)!r} is not valid: "
                    f"choose one of {', '.join(choices)}"
                )
        if self.batch_size < 1:
            raise FastCifarError(f"--batch-size {self.batch_size} is below 1: pass 1 or more")
        if self.epochs < 1:
            raise FastCifarError(f"--epochs {self.epochs} is below 1: pass 1 or more")
        if not self.lr > 0:
            raise FastCifarError(f"--lr {self.lr} must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise FastCifarError(
                f"--label-smoothing {self.label_smoothing} is out of range: pass 0 <= x < 1"
            )
        if not 0.0 < self.pct_start < 1.0:
            raise FastCifarError(f"--pct-start {self.pct_start} is out of range: pass 0 < x < 1")
        if not 0.0 <= self.ema < 1.0:
            raise FastCifarError(f"--ema {self.ema} is out of range: pass 0 (off) <= x < 1")
        if self.lr_find_iters < 2:
            raise FastCifarError(f"--lr-find-iters {self.lr_find_iters} is below 2: pass 2 or more")
        if self.loss == "nll" and MODELS[self.model].outputs != "log_probs":
            raise FastCifarError(
                f"--loss nll needs a model that returns log-probabilities; {self.model} returns "
                f"logits: use --loss cross_entropy"
            )
        return self

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)


S7 = Recipe(
    name="s7",
    model="s7",
    augmentation="s7",
    batch_size=128,
    epochs=200,
    optimizer="sgd",
    lr=0.2,
    momentum=0.8,
    scheduler="onecycle",
    div_factor=8.0,
    cycle_momentum=False,
    loss="nll",
    l1=5e-4,
    expected_accuracy=87.17,
)
RECIPES: dict[str, Recipe] = {}
RECIPE_DOCS: dict[str, str] = {}  # each recipe's seed, what it follows and what the seed ran


def _register(recipe: Recipe, doc: str) -> Recipe:
    RECIPES[recipe.name] = recipe.validate()
    RECIPE_DOCS[recipe.name] = doc
    return recipe


_register(
    S7,
    """EVA6 S7, 99,744 parameters, README 87.17 % after 200 epochs.

    README intent, followed here: SGD momentum 0.8, OneCycleLR from 0.025 to a 0.2 peak,
    stepped every batch, L1 0.0005 x sum of per-tensor mean |p|, NLL on log_softmax.
    What the seed run really did: its training loop never called scheduler.step(), so it
    trained at a constant lr 0.008 (0.2 / 25) with momentum 0.95 for all 200 epochs.""",
)
_register(
    S7.replace(name="s7_mixed", model="s7_mixed", epochs=250, expected_accuracy=86.23),
    """EVA6 S7 mixed, 99,200 parameters, README 86.23 % at epoch 246 of 250.

    Same recipe as ``s7`` (its seed run never stepped the scheduler either).""",
)
_register(
    Recipe(
        name="attention",
        model="attention",
        augmentation="attention",
        batch_size=512,
        epochs=24,
        optimizer="adam",
        lr=0.01,
        scheduler="onecycle",
        pct_start=5 / 24,
        div_factor=10.0,
        final_div_factor=1.0,
        loss="nll",
        l1=5e-4,
        expected_accuracy=38.53,
    ),
    """EVA8 S9 attention model, 25,680 parameters, README 38.53 % after 24 epochs.

    Adam, OneCycleLR 0.001 -> 0.01 (peak at epoch 5) -> 0.001, stepped every batch, beta1
    cycling 0.95 -> 0.85; L1 0.0005; NLL. The 0.01 peak is read off the seed's LR plot.""",
)
_register(
    Recipe(
        name="c1c2c3c40",
        model="c1c2c3c40",
        augmentation="c1c2c3c40",
        batch_size=128,
        epochs=25,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        scheduler="step",
        step_size=6,
        gamma=0.2,
        loss="nll",
        expected_accuracy=85.28,
    ),
    """ERA-V1 S9 C1C2C3C40, 178,178 parameters, README 85.28 % after 25 epochs.

    SGD 0.1 momentum 0.9 with StepLR(6 epochs, x0.2), really stepped each epoch. What the
    seed run really did: it built the StepLR but never stepped it, so lr stayed 0.1.""",
)
_register(
    Recipe(
        name="resnet18",
        model="resnet18",
        augmentation="resnet18",
        batch_size=64,
        epochs=20,
        optimizer="sgd",
        lr=0.0657,
        momentum=0.9,
        scheduler="onecycle",
        pct_start=5 / 20,
        div_factor=100.0,
        final_div_factor=100.0,
        anneal_strategy="linear",
        loss="cross_entropy",
        expected_accuracy=91.09,
    ),
    """ERA-V1 S11 ResNet18, 11,173,962 parameters, README 91.09 % (notebook log 90.49 %).

    SGD momentum 0.9, OneCycleLR peak 0.0657 (the seed's LR range test) at epoch 5 of 20,
    div 100 / final div 100, linear annealing, stepped every batch; cross-entropy.""",
)
_register(
    Recipe(
        name="resnet18_ln",
        model="resnet18_ln",
        augmentation="resnet18_ln",
        batch_size=128,
        epochs=40,
        optimizer="adam",
        lr=1e-3,
        weight_decay=1e-4,
        scheduler="plateau",
        plateau_factor=0.2,
        plateau_patience=3,
        loss="cross_entropy",
        expected_accuracy=90.03,
    ),
    """EVA6 S8 ResNet18 with GroupNorm(1, C), 11,173,962 parameters, README 90.03 % at epoch 40.

    Adam 1e-3 with weight decay 1e-4, ReduceLROnPlateau(x0.2, patience 3) on test accuracy
    once per epoch, cross-entropy (the notebook's run-time recipe).""",
)

_register(
    Recipe(
        name="speedrun94",
        model="speedrun94",
        augmentation="flip_translate",
        batch_size=1024,
        epochs=10,
        optimizer="sgd",
        lr=0.8,
        momentum=0.85,
        nesterov=True,
        weight_decay=5e-4,
        scheduler="onecycle",
        pct_start=0.23,
        div_factor=10.0,
        final_div_factor=1.0,
        anneal_strategy="linear",
        cycle_momentum=False,
        loss="cross_entropy",
        label_smoothing=0.2,
        drop_last=True,
        ema=0.99,
        tta=True,
        expected_accuracy=94.0,
    ),
    """Speed run to 94 %: the fastest route fastcifar offers (not a seed).

    Airbench-style network with a frozen patch-whitening first layer, GPU-resident data
    with flip and 2-pixel translation (``--loader gpu``), batch 1024, SGD Nesterov with a
    linear warm-up/decay schedule, label smoothing 0.2, EMA weight averaging, test-time
    flip augmentation; run with --amp --compile. Its hyper-parameters have not yet been
    tuned on a GPU.""",
)

DEFAULT_RECIPE = "s7"


def get_recipe(name: str) -> Recipe:
    """The named recipe.

    Raises:
        FastCifarError: unknown name (the message lists the valid ones).
    """
    if name not in RECIPES:
        raise FastCifarError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def overridable_fields() -> list[dataclasses.Field]:
    """The Recipe fields a command-line flag may override (all but ``name``)."""
    return [f for f in dataclasses.fields(Recipe) if f.name not in ("name", "expected_accuracy")]
