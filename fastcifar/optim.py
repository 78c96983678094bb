"""What a recipe trains with: the loss, the L1 penalty, the optimizer, the learning-rate
schedule (with when it steps), and the EMA of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.recipes import Recipe


def criterion(loss: str, label_smoothing: float = 0.0):
    """The training loss of ``Recipe.loss``, computed in float32: a function of
    (output (N, 10), labels (N,) int64) -> scalar mean loss.

    * ``nll``: ``F.nll_loss`` on a model's log-probabilities (the EVA/ERA seeds end in
      log_softmax); with label smoothing, ``F.cross_entropy``, which equals smoothed NLL on
      log-probabilities (log_softmax of log-probabilities is the identity);
    * ``cross_entropy``: ``F.cross_entropy`` on logits (the ResNets, the speed run).

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
    """Sum over parameter tensors of mean(|p|), the EVA seeds' "L1" (BN affine included)."""
    return sum(p.abs().mean() for p in model.parameters() if p.requires_grad)


def ema_avg(decay: float):
    """EMA with a warm-up: step n uses min(decay, (1 + n) / (10 + n)), so a short run is
    not dominated by the initial weights (the warm-up form of TensorFlow's
    ExponentialMovingAverage with num_updates)."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    return avg


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params``: Adam (betas (momentum, 0.999)) or SGD
    (momentum, Nesterov where set), with the recipe's lr and weight decay."""
    r = recipe
    if r.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=r.lr, betas=(r.momentum, 0.999), weight_decay=r.weight_decay
        )
    return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                           weight_decay=r.weight_decay)  # fmt: skip


@dataclass
class Schedule:
    """A learning-rate scheduler and when the engine steps it: ``"step"`` after every
    optimizer step (OneCycleLR), ``"epoch"`` after every epoch (StepLR), ``"metric"``
    after every epoch with the test accuracy (ReduceLROnPlateau), ``"never"`` (none)."""

    scheduler: object | None
    when: str

    def after_step(self) -> None:
        if self.when == "step":
            self.scheduler.step()

    def after_epoch(self, test_acc: float) -> None:
        if self.when == "epoch":
            self.scheduler.step()
        elif self.when == "metric":
            self.scheduler.step(test_acc)

    def state_dict(self) -> dict | None:
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


def make_schedule(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> Schedule:
    """The recipe's schedule: OneCycleLR (per step), StepLR (per epoch), ReduceLROnPlateau
    on the test accuracy (per epoch), or a constant learning rate."""
    r = recipe
    if r.scheduler == "onecycle":
        return Schedule(torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=r.lr, epochs=r.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=r.pct_start, anneal_strategy=r.anneal_strategy,
            cycle_momentum=r.cycle_momentum, div_factor=r.div_factor,
            final_div_factor=r.final_div_factor,
        ), "step")  # fmt: skip
    if r.scheduler == "step":
        return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, r.step_size, r.gamma), "epoch")
    if r.scheduler == "plateau":
        return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=r.plateau_factor, patience=r.plateau_patience
        ), "metric")  # fmt: skip
    return Schedule(None, "never")


def make_ema(model: nn.Module, decay: float):
    """An ``AveragedModel`` of ``model`` (buffers averaged too) with ``ema_avg(decay)``,
    or None when ``decay`` is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, avg_fn=ema_avg(decay), use_buffers=True)
