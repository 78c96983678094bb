"""Averages of the weights a run keeps beside them: the EMA (evaluated instead of the
model when the recipe has one) and lookahead averaging (the 2026 speed record's: the
weights pulled toward a running average every few steps near the end)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastcifar.engine.optim import decay_steps
from fastcifar.recipes import Recipe

__all__ = ["EMA", "Lookahead", "make_ema", "make_lookahead"]


class EMA:
    """Exponential moving average of a model's parameters and floating-point buffers.

    Step ``n`` (from 0) uses the decay ``min(decay, (1 + n) / (10 + n))``, so a short run
    is not dominated by the initial weights (the warm-up form of TensorFlow's
    ExponentialMovingAverage with num_updates). The step counter is a tensor on the
    model's device and the update is made of device operations only, so ``update`` never
    synchronises with the host (``torch.optim.swa_utils.AveragedModel`` keeps its counter
    on the CPU and, with a Python ``avg_fn``, reads it back for every tensor).

    Attributes:
        module: the averaged copy (evaluate it; its parameters do not require grad).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        device = next(iter(model.state_dict().values())).device
        self.num_updates = torch.zeros((), dtype=torch.float32, device=device)

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return list(model.parameters()) + list(model.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (integer buffers copied).

        Args:
            model: the trained model (its parameters and buffers in the average's order).
        """
        n = self.num_updates
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)  # device tensor
        for avg, cur in zip(self._tensors(self.module), self._tensors(model), strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur.detach(), weight.to(avg.dtype))
            else:
                avg.copy_(cur)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the average.

        Returns:
            ``{"module": the averaged module's state dict, "num_updates": int}``.
        """
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average from a checkpoint.

        Args:
            state: ``state_dict()``'s dict.
        """
        self.module.load_state_dict(state["module"])
        self.num_updates.copy_(state["num_updates"])


class Lookahead:
    """The 2026 record's tail averaging (fulcrumresearch/cifar-10-speedrun,
    ``fable-100m/recipes/e1_1.74s_single-gpu_CHAMPION.py``, ``LookaheadState``): from step
    ``start`` (optimizer steps done) an average of the model's floating-point parameters
    and buffers is kept; every ``every`` steps after it the average moves towards the
    weights (``average = decay x average + (1 - decay) x weights``) and the weights are
    set to it. Device operations only: no host synchronisation.

    Args:
        model: the trained model (its state dict's tensors are read and written in place).
        start: optimizer steps done when the average is taken (the record: the decay's
            steps minus ``lookahead_start``); never when negative.
        every: steps between pulls.
        decay: the average's weight on itself.
    """

    def __init__(self, model: nn.Module, start: int, every: int, decay: float):
        self.start, self.every, self.decay = start, every, decay
        self._weights = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.average: list[torch.Tensor] | None = None

    @torch.no_grad()
    def after_step(self, steps_done: int) -> None:
        """Called after optimizer step ``steps_done`` (from 1) of the run.

        Args:
            steps_done: optimizer steps done in the run, from 1.
        """
        if steps_done == self.start:
            self.average = [t.detach().clone() for t in self._weights]
        elif self.average is not None and (steps_done - self.start) % self.every == 0:
            torch._foreach_lerp_(self.average, self._weights, 1.0 - self.decay)
            for w, a in zip(self._weights, self.average, strict=True):
                w.copy_(a)

    def state_dict(self) -> list[torch.Tensor] | None:
        """What a checkpoint keeps: the slow weights.

        Returns:
            The slow weights (one tensor per weight), or None before the lookahead starts.
        """
        return self.average

    def load_state_dict(self, average: list[torch.Tensor] | None) -> None:
        """Restore the slow weights from a checkpoint.

        Args:
            average: ``state_dict()``'s value.
        """
        self.average = None if average is None else [a.clone() for a in average]


def make_lookahead(model: nn.Module, recipe: Recipe, steps_per_epoch: int) -> Lookahead | None:
    """The recipe's ``Lookahead`` (starting ``lookahead_start`` steps before the linear
    decay's end), or None when ``lookahead_start`` is 0.

    Args:
        model: the trained model (its parameters are the fast weights).
        recipe: the recipe (``lookahead_start``, ``epochs``, the schedule).
        steps_per_epoch: optimizer steps an epoch.

    Returns:
        The ``Lookahead``, or None.
    """
    if not recipe.lookahead_start:
        return None
    start = decay_steps(recipe, steps_per_epoch) - recipe.lookahead_start
    return Lookahead(model, start, recipe.lookahead_every, recipe.lookahead_decay)


def make_ema(model: nn.Module, decay: float) -> EMA | None:
    """An ``EMA`` of ``model`` with ``decay``, or None when ``decay`` is 0.

    Args:
        model: the trained model.
        decay: the EMA's decay per step, in [0, 1).

    Returns:
        The ``EMA``, or None.
    """
    if not decay:
        return None
    return EMA(model, decay)
