"""What a recipe trains with: the loss, the L1 penalty, the optimizer, the learning-rate
schedule (with when it steps), and ``Optimization``, these with the weight averages of
``averaging`` (EMA, lookahead) as one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.engine.muon import NS_COEFFICIENTS, Muon
from fastcifar.recipes import Recipe


def criterion(loss: str, label_smoothing: float = 0.0):
    """The training loss of ``Recipe.loss``, computed in float32: a function of
    (output (N, 10), labels (N,) int64) -> scalar mean loss.

    * ``nll``: ``F.nll_loss`` on a model's log-probabilities (the EVA/ERA seeds end in
      log_softmax); with label smoothing, ``F.cross_entropy``, which equals smoothed NLL on
      log-probabilities (log_softmax of log-probabilities is the identity);
    * ``cross_entropy``: ``F.cross_entropy`` on logits (the ResNets, the speed run).

    Args:
        loss: ``"nll"`` or ``"cross_entropy"``.
        label_smoothing: the smoothing factor in [0, 1).

    Returns:
        ``f(output, labels)``: output (N, 10) any float dtype, labels (N,) int64; a float32
        scalar, the mean over the batch.

    Raises:
        ValueError: an unknown loss name (recipes validate it before this).
    """
    if loss == "nll":
        if label_smoothing:
            return lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        return lambda out, y: F.nll_loss(out.float(), y)
    if loss == "cross_entropy":
        return lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {loss!r}: nll or cross_entropy")


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """The EVA seeds' "L1" penalty (BatchNorm's affine parameters included).

    Args:
        model: its trainable parameters are summed over.

    Returns:
        A scalar tensor: the sum over parameter tensors of mean(|p|), differentiable.
    """
    return sum(p.abs().mean() for p in model.parameters() if p.requires_grad)


def _muon_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by their role in the record's groups: 4-D filters, the
    whitening bias (frozen or not), the 2-D head, every other vector."""
    named = {"filters": [], "whiten_bias": [], "biases": [], "head": []}
    for name, p in model.named_parameters():
        if not p.requires_grad and name != "whiten.bias":
            continue
        if p.ndim == 4:
            named["filters"].append(p)
        elif name == "whiten.bias":
            named["whiten_bias"].append(p)
        elif p.ndim == 2:
            named["head"].append(p)
        else:
            named["biases"].append(p)
    return named


def muon_param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """The record's four groups of trainable parameters, each named (``"name"``):

    * ``filters``: 4-D convolution weights -> Muon (lr ``recipe.lr``, momentum
      ``recipe.momentum``, decoupled weight decay ``recipe.muon_weight_decay``);
    * ``whiten_bias``: the whitening layer's bias -> SGD, lr ``bias_lr``, its own schedule;
    * ``biases``: every other vector (BatchNorm biases) -> SGD, lr ``bias_lr``;
    * ``head``: 2-D weights (the linear head) -> SGD, lr ``head_lr``.

    SGD groups use Nesterov momentum ``sgd_momentum`` and L2 weight decay
    ``weight_decay / lr`` of the group, the record's parametrisation (a decay per step
    proportional to the scheduled lr, whatever the group's lr). Empty groups are left out.

    Args:
        model: the network; its parameters are grouped by shape and name.
        recipe: the lrs, momenta and weight decays above.

    Returns:
        The groups as ``Muon`` takes them (``muon=True`` on the filters' group).
    """
    r, named = recipe, _muon_roles(model)
    bias_lr, head_lr = r.bias_lr or r.lr, r.head_lr or r.lr
    sgd = dict(muon=False, momentum=r.sgd_momentum, nesterov=True)
    groups = [
        dict(
            name="filters",
            params=named["filters"],
            lr=r.lr,
            momentum=r.momentum,
            nesterov=r.nesterov,
            weight_decay=r.muon_weight_decay,
            muon=True,
        ),
        dict(
            name="whiten_bias",
            params=named["whiten_bias"],
            lr=bias_lr,
            weight_decay=r.weight_decay / bias_lr,
            **sgd,
        ),
        dict(
            name="biases",
            params=named["biases"],
            lr=bias_lr,
            weight_decay=r.weight_decay / bias_lr,
            **sgd,
        ),
        dict(
            name="head",
            params=named["head"],
            lr=head_lr,
            weight_decay=r.weight_decay / head_lr,
            **sgd,
        ),
    ]
    return [g for g in groups if g["params"]]


def newton_schulz_dtype(device: torch.device | str | None) -> torch.dtype:
    """Muon's Newton-Schulz dtype on ``device``: bfloat16 (the records') on a GPU and on a
    CPU with bfloat16 instructions; float32 on other CPUs, which emulate bfloat16 (5-9x
    slower than float32, ``runtime.cpu_has_native_bf16``), the ``--amp`` rule.

    Args:
        device: where the model's parameters are; None counts as a GPU.

    Returns:
        ``torch.bfloat16`` or ``torch.float32``.
    """
    from fastcifar.engine.runtime import cpu_has_native_bf16

    cpu = device is not None and torch.device(device).type == "cpu"
    return torch.float32 if cpu and not cpu_has_native_bf16() else torch.bfloat16


def make_optimizer(
    model: nn.Module,
    recipe: Recipe,
    compile_backend: str | None = None,
    steps_per_epoch: int | None = None,
) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s trainable parameters: Adam (betas
    (momentum, 0.999)), SGD (momentum, Nesterov where set), or ``muon`` (``Muon`` on the
    convolution filters and SGD on the rest, ``muon_param_groups``; its Newton-Schulz
    iteration in ``newton_schulz_dtype`` of the model's device, compiled with
    ``compile_backend`` when given, as the record does).

    Args:
        model: the network, its parameters on their device.
        recipe: the optimizer's name and hyper-parameters.
        compile_backend: a ``torch.compile`` backend for Muon's Newton-Schulz, or None.
        steps_per_epoch: optimizer steps an epoch (Muon's renormalisation schedule
            counts the decay's steps with it); None: one.

    Returns:
        ``torch.optim.Adam``, ``torch.optim.SGD`` or ``Muon``.
    """
    r = recipe
    if r.optimizer == "muon":
        device = next(model.parameters()).device
        return Muon(
            muon_param_groups(model, r),
            ns_steps=r.muon_ns_steps,
            ns_dtype=newton_schulz_dtype(device),
            ns_coefficients=NS_COEFFICIENTS[r.muon_ns],
            renorm_every=r.muon_renorm_every,
            batched=r.muon_batched,
            by_shape=r.muon_by_shape,
            renorm_growth=r.muon_renorm_growth,
            renorm_steps=decay_steps(r, steps_per_epoch) if steps_per_epoch else 1,
            compile_backend=compile_backend,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if r.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=r.lr, betas=(r.momentum, 0.999), weight_decay=r.weight_decay
        )
    return torch.optim.SGD(
        params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, weight_decay=r.weight_decay
    )


def total_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Optimizer steps of a run.

    Args:
        recipe: its ``epochs`` and ``last_epoch_fraction``.
        steps_per_epoch: optimizer steps of a full epoch.

    Returns:
        ``epochs - 1`` full epochs and ``ceil(last_epoch_fraction * steps_per_epoch)``
        steps (at least one) of the last.
    """
    last = math.ceil(recipe.last_epoch_fraction * steps_per_epoch - 1e-9)
    return (recipe.epochs - 1) * steps_per_epoch + max(1, last)


def decay_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Steps of the ``linear`` schedule's decay.

    Args:
        recipe: its ``decay_epochs`` (0: the whole run).
        steps_per_epoch: optimizer steps of a full epoch.

    Returns:
        ``ceil(decay_epochs * steps_per_epoch)`` (as the 2026 record counts them), at
        least 1, or ``total_steps`` when ``decay_epochs`` is 0.
    """
    if not recipe.decay_epochs:
        return total_steps(recipe, steps_per_epoch)
    return max(1, math.ceil(recipe.decay_epochs * steps_per_epoch - 1e-9))


def whiten_bias_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Steps during which the whitening bias trains.

    Args:
        recipe: its ``whiten_bias_epochs``.
        steps_per_epoch: optimizer steps of a full epoch.

    Returns:
        ``ceil(whiten_bias_epochs * steps_per_epoch)`` (0: it never trains).
    """
    return math.ceil(recipe.whiten_bias_epochs * steps_per_epoch - 1e-9)


def onecycle_pct_start(pct_start: float, total: int) -> float:
    """``pct_start`` where OneCycleLR can use it, else the middle of the run: its warm-up
    phase ends at step ``pct_start * total - 1``, which must lie strictly between 0 and
    the last step (``total - 1``), or PyTorch divides by zero (a 4-step run at 0.25) or
    anneals backwards. Only runs of a handful of steps are moved (they warn anyway).

    Args:
        pct_start: the recipe's fraction of the run spent warming up.
        total: the run's optimizer steps.

    Returns:
        ``pct_start``, or ``(1 + (total - 1) / 2) / total`` where it cannot be used.
    """
    up = pct_start * total - 1
    if total >= 3 and not 0 < up < total - 1:
        return (1 + (total - 1) / 2) / total
    return pct_start


@dataclass
class Schedule:
    """A learning-rate scheduler and when the engine steps it: ``"step"`` after every
    optimizer step (OneCycleLR), ``"epoch"`` after every epoch (StepLR), ``"metric"``
    after every epoch with the test accuracy (ReduceLROnPlateau), ``"never"`` (none).

    Args:
        scheduler: a ``torch.optim.lr_scheduler`` scheduler, or None with ``"never"``.
        when: ``"step"``, ``"epoch"``, ``"metric"`` or ``"never"``.
    """

    scheduler: object | None
    when: str

    def after_step(self) -> None:
        """After an optimizer step: step the scheduler when it steps per step (``when`` is
        ``"step"``).

        """
        if self.when == "step":
            self.scheduler.step()

    def after_epoch(self, test_acc: float) -> None:
        """After an epoch: step the scheduler when it steps per epoch, or on the test accuracy when
        it steps on a metric (``ReduceLROnPlateau``).

        Args:
            test_acc: the epoch's test accuracy, percent.
        """
        if self.when == "epoch":
            self.scheduler.step()
        elif self.when == "metric":
            self.scheduler.step(test_acc)

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps of the schedule.

        Returns:
            The scheduler's state dict, or None without a scheduler.
        """
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        """Restore the schedule from a checkpoint.

        Args:
            state: ``state_dict()``'s value.
        """
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


def make_schedule(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> Schedule:
    """The recipe's schedule: OneCycleLR (per step; every group peaks at its own lr),
    ``linear`` (per step: ``lr x max(lr_floor, 1 - step / decay_steps)``, no warm-up, the
    records'; a group named ``whiten_bias`` decays to 0 over ``whiten_bias_steps``), cosine
    annealing to 0 over the epochs (per epoch), StepLR (per epoch), ReduceLROnPlateau on
    the test accuracy (per epoch), or a constant lr.

    Args:
        optimizer: the run's optimizer; each group's ``lr`` is its peak.
        recipe: ``scheduler`` and its hyper-parameters.
        steps_per_epoch: optimizer steps of a full epoch.

    Returns: the scheduler and when the engine steps it.
    """
    r = recipe
    if r.scheduler == "onecycle":
        return Schedule(
            torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g["lr"] for g in optimizer.param_groups],
                epochs=r.epochs,
                steps_per_epoch=steps_per_epoch,
                pct_start=onecycle_pct_start(r.pct_start, r.epochs * steps_per_epoch),
                anneal_strategy=r.anneal_strategy,
                cycle_momentum=r.cycle_momentum,
                div_factor=r.div_factor,
                final_div_factor=r.final_div_factor,
            ),
            "step",
        )
    if r.scheduler == "linear":
        total, floor = decay_steps(r, steps_per_epoch), r.lr_floor
        bias_steps = max(1, whiten_bias_steps(r, steps_per_epoch))

        def decay(step: int) -> float:
            return max(floor, 1.0 - step / total)

        def bias_decay(step: int) -> float:
            return max(0.0, 1.0 - step / bias_steps)

        lambdas = [
            bias_decay if g.get("name") == "whiten_bias" else decay for g in optimizer.param_groups
        ]
        return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas), "step")
    if r.scheduler == "cosine":  # kuangliu/pytorch-cifar's: T_max = the run's epochs
        return Schedule(
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=r.epochs), "epoch"
        )
    if r.scheduler == "step":
        return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, r.step_size, r.gamma), "epoch")
    if r.scheduler == "plateau":
        return Schedule(
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=r.plateau_factor, patience=r.plateau_patience
            ),
            "metric",
        )
    return Schedule(None, "never")
