"""The ``Recipe``: a named training recipe, and the registry every recipe is added to.

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

from fastcifar.errors import FastCifarError
from fastcifar.options import Registry, check_fields, option

# the names of sets whose members need torch, imported only when a recipe is checked
MODEL_NAMES = Registry("fastcifar.models", "MODELS")
AUGMENTATION_NAMES = Registry(
    "fastcifar.data.augment",
    "AUGMENTATIONS",
    also=(Registry("fastcifar.data.gpu_loader", "GPU_AUGMENTATIONS"),),
)
NS_NAMES = Registry("fastcifar.engine.muon", "NS_COEFFICIENTS")
TTA_NAMES = Registry("fastcifar.engine.tta", "TTA_MODES")

OPTIMIZERS = ("sgd", "adam", "muon")
SCHEDULERS = ("onecycle", "linear", "cosine", "step", "plateau", "constant")
LOSSES = ("nll", "cross_entropy")
LOSS_REDUCTIONS = ("mean", "sum")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Recipe:
    """A training recipe: every hyper-parameter of a run, each field with its help text,
    choices and bounds in its ``option()`` metadata (the command line's flags are built
    from them). Units: lr per optimizer step; step_size and the schedules' epochs in epochs;
    weight decay as the optimizer takes it. Frozen; ``replace`` gives a changed copy.

    Args:
        name: the recipe's name, as ``--recipe`` takes it.
        model: a name of ``fastcifar.models.MODELS``.
        augmentation: a name of ``fastcifar.data.AUGMENTATIONS``.
        **fields: every other field by name (their defaults and meaning: the fields'
            ``option()`` help, or ``python -m fastcifar.train --help``).

    Raises:
        FastCifarError: from ``validate``, not from construction: a field out of its
            bounds or choices, with the valid ones.
    """

    name: str = option(help="the recipe's name (--recipe)")
    model: str = option(help="model name (fastcifar.models.MODELS)", choices=MODEL_NAMES)
    augmentation: str = option(
        help="training augmentation name (see fastcifar.data.AUGMENTATIONS)",
        choices=AUGMENTATION_NAMES,
    )
    batch_size: int = option(128, "images per training batch", min=1)
    epochs: int = option(20, "number of epochs", min=1)
    optimizer: str = option(
        "sgd",
        "sgd, adam, or muon (Muon on the conv filters, Nesterov SGD on the rest)",
        choices=OPTIMIZERS,
    )
    lr: float = option(
        0.1,
        "peak learning rate (OneCycleLR max_lr, else the optimizer's lr; muon: the filters')",
        above=0,
    )
    momentum: float = option(
        0.9, "SGD momentum, Adam's beta1, or (muon) the filters' Muon momentum"
    )
    nesterov: bool = option(False, "SGD with Nesterov momentum")
    weight_decay: float = option(
        0.0, "L2 weight decay through the optimizer (muon: each SGD group gets it / its lr)", min=0
    )
    bias_lr: float = option(
        0.0, "muon: SGD lr of the biases (BatchNorm, whitening); 0 means --lr", min=0
    )
    head_lr: float = option(0.0, "muon: SGD lr of the linear head; 0 means --lr", min=0)
    sgd_momentum: float = option(0.85, "muon: Nesterov momentum of the SGD groups")
    muon_weight_decay: float = option(
        0.0, "muon: decoupled weight decay of the filters, p *= 1 - lr x wd per step", min=0
    )
    muon_ns_steps: int = option(3, "muon: Newton-Schulz iterations per step", min=1)
    muon_ns: str = option(
        "record",
        "muon: Newton-Schulz coefficients, record or hiverge",
        choices=NS_NAMES,
    )
    muon_renorm_every: int = option(
        1, "muon: rescale filters to norm sqrt(C_out) every N steps (0 never)", min=0
    )
    muon_batched: bool = option(False, "muon: one batched Newton-Schulz over zero-padded filters")
    muon_by_shape: bool = option(False, "muon, batched: one Newton-Schulz per filter shape")
    muon_renorm_growth: float = option(
        0.0, "muon: renormalise every renorm_every + int(x step / decay steps) steps", min=0
    )
    scheduler: str = option(
        "constant",
        "onecycle, linear (1 -> 0, no warm-up; both per batch), cosine (CosineAnnealingLR "
        "over the epochs), step, plateau (these three per epoch) or constant",
        choices=SCHEDULERS,
    )
    pct_start: float = option(
        0.3, "OneCycleLR: fraction of steps spent rising to the peak", above=0, below=1
    )
    div_factor: float = option(25.0, "OneCycleLR: the start lr is lr / div_factor")
    final_div_factor: float = option(1e4, "OneCycleLR: the final lr is start lr / final_div_factor")
    anneal_strategy: str = option("cos", "OneCycleLR: cos or linear", choices=("cos", "linear"))
    cycle_momentum: bool = option(True, "OneCycleLR: cycle momentum between 0.85 and 0.95")
    step_size: int = option(6, "StepLR: epochs between decays")
    gamma: float = option(0.2, "StepLR: decay factor")
    plateau_factor: float = option(0.2, "ReduceLROnPlateau (on test accuracy): decay factor")
    plateau_patience: int = option(
        3, "ReduceLROnPlateau: epochs without improvement before a decay"
    )
    loss: str = option(
        "cross_entropy", "nll (for log-probability models) or cross_entropy", choices=LOSSES
    )
    loss_reduction: str = option(
        "mean",
        "mean or sum of the loss over the batch (sum: the record's; lr scales)",
        choices=LOSS_REDUCTIONS,
    )
    label_smoothing: float = option(0.0, "label smoothing of the loss, 0 <= x < 1", min=0, below=1)
    l1: float = option(0.0, "factor of the L1 term: sum over parameter tensors of mean(|p|)")
    drop_last: bool = option(False, "drop the last partial training batch")
    last_epoch_fraction: float = option(
        1.0, "train only this fraction of the last epoch's steps (0 < x <= 1)", above=0, max=1
    )
    seed: int = option(1, "seed for initialisation, data order and augmentation")
    lr_find: bool = option(
        False, "run an LR range test (torch-lr-finder) first and train with its suggested lr"
    )
    lr_find_iters: int = option(
        200, "steps of that LR range test (default 200, as seed 003)", min=2
    )
    ema: float = option(
        0.0,
        "weight averaging: EMA decay per step (0 off); evaluation uses the averaged weights",
        min=0,
        below=1,
    )
    tta: str = option(
        "none",
        "test-time augmentation after the last epoch: none, flip (2 views), or "
        "flip_translate (6 views: mirror x {0, +-1 px})",
        choices=TTA_NAMES,
    )
    tta_fraction: float = option(
        1.0, "TTA only on this least-confident fraction of the test images", above=0, max=1
    )
    whiten_images: int = option(
        5000, "whitening nets: training images the patch covariance is taken over", min=1
    )
    whiten_bias_epochs: float = option(
        0.0, "whitening nets: epochs the whitening bias trains (then frozen)", min=0
    )
    decay_epochs: float = option(0.0, "linear: epochs of the decay (0: the whole run)", min=0)
    lr_floor: float = option(0.0, "linear: lr fraction held after the decay", min=0, below=1)
    res_schedule: str = option(
        "",
        "per-epoch training resolution, comma-separated pixels (e.g. 24,28,32; later "
        "epochs take the last), each batch downsampled inside the step; empty: the data's",
        metavar="PX,PX,...",
    )
    lookahead_start: int = option(
        0,
        "lookahead averaging: starts this many steps before decay_epochs ends; the weights "
        "are pulled onto their average every lookahead_every steps (0: off)",
        min=0,
    )
    lookahead_every: int = option(4, "lookahead averaging: steps between pulls", min=1)
    lookahead_decay: float = option(
        0.7, "lookahead: average = decay x average + (1 - decay) x weights", min=0, below=1
    )
    prebuild_augmentation: bool = option(False, "gpu loader: all epochs built before training")
    compile_mode: str = option(
        "default",
        "torch.compile mode with --compile: default, max-autotune, ...",
        choices=COMPILE_MODES,
    )
    compile_step: bool = option(
        False, "with --compile, compile forward + loss as one graph (not only the model)"
    )
    expected_accuracy: float | None = option(
        None, "the seed's reported test accuracy, percent (None: not claimed)"
    )

    def validate(self) -> Recipe:
        """Check every field against the choices and bounds in its metadata
        (``options.check_fields``), and that an NLL loss meets a model that returns
        log-probabilities; return self.

        Returns:
            ``self``.

        Raises:
            FastCifarError: a value out of range or an unknown name, with the valid choices.
        """
        check_fields(self)
        self.resolutions()
        if self.loss == "nll" and MODEL_NAMES.table()[self.model].outputs != "log_probs":
            raise FastCifarError(
                f"--loss nll needs a model that returns log-probabilities; {self.model} returns "
                f"logits: use --loss cross_entropy"
            )
        return self

    def resolutions(self) -> tuple[int, ...]:
        """``res_schedule`` as pixels (``parse_resolutions``).

        Returns:
            The sizes, in pixels (empty: none).
        """
        return parse_resolutions(self.res_schedule)

    def resolution(self, epoch: int) -> int | None:
        """Epoch ``epoch``'s (from 0) training resolution in pixels, or None (the data's).

        Args:
            epoch: the epoch, from 0.

        Returns:
            Pixels, or None.
        """
        res = self.resolutions()
        return res[min(epoch, len(res) - 1)] if res else None

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes`` (field name -> value) applied; not validated.

        Args:
            **changes: field name -> value.

        Returns:
            The new ``Recipe``.

        Raises:
            TypeError: a name that is not a field.
        """
        return dataclasses.replace(self, **changes)


def parse_resolutions(text: str) -> tuple[int, ...]:
    """``--res-schedule`` as integers (pixels; empty: none).

    Args:
        text: comma-separated pixel sizes, e.g. ``"16,24,32"``.

    Returns:
        The sizes.

    Raises:
        FastCifarError: an entry that is not a whole number from 8 to 32.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and 8 <= int(p) <= 32 for p in parts):
        raise FastCifarError(
            f"--res-schedule {text!r}: give whole pixel sizes from 8 to 32, comma-separated, "
            f"one per epoch (e.g. 24,24,28,32)"
        )
    return tuple(int(p) for p in parts)


RECIPES: dict[str, Recipe] = {}
RECIPE_DOCS: dict[str, str] = {}  # each recipe's seed, what it follows and what the seed ran


def register(recipe: Recipe, doc: str) -> Recipe:
    """Add ``recipe`` to ``RECIPES`` with ``doc``, what it follows and why. It is
    validated where it is used (a run validates its recipe before it starts; the names of
    models and augmentations need their torch modules), and every registered recipe is in
    tests/recipes/test_recipes.py.

    Args:
        recipe: the recipe.
        doc: its description (what it follows, and why).

    Returns:
        ``recipe``.

    Raises:
        FastCifarError: a field out of its bounds or a closed set of choices.
    """
    check_fields(recipe, registries=False)
    RECIPES[recipe.name] = recipe
    RECIPE_DOCS[recipe.name] = doc
    return recipe


DEFAULT_RECIPE = "s7"


def get_recipe(name: str) -> Recipe:
    """The named recipe.

    Args:
        name: a key of ``RECIPES``.

    Returns:
        The ``Recipe``.

    Raises:
        FastCifarError: unknown name (the message lists the valid ones).
    """
    if name not in RECIPES:
        raise FastCifarError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def overridable_fields() -> list[dataclasses.Field]:
    """The Recipe fields a command-line flag may override.

    Returns:
        ``dataclasses.fields(Recipe)`` without ``name`` and ``expected_accuracy`` (a
        recipe's identity and its reference's claim), in declaration order.
    """
    return [f for f in dataclasses.fields(Recipe) if f.name not in ("name", "expected_accuracy")]
