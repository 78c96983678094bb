"""``Optimization``: what one optimizer step does, as one object with one checkpoint
state: the scaled backward, the optimizer, the weight averages and the schedule."""

from __future__ import annotations

import torch
from torch import nn

from fastcifar.engine.averaging import make_ema, make_lookahead
from fastcifar.engine.optim import make_optimizer, make_schedule
from fastcifar.recipes import Recipe

__all__ = ["Optimization"]


class Optimization:
    """What a training step updates besides the model: the recipe's optimizer
    (``make_optimizer``), its schedule (``make_schedule``), the gradient scaler (on for
    float16 autocast only: bfloat16 and float32 need none) and the EMA (``make_ema``).

    Args:
        model: the model whose trainable parameters are optimised.
        recipe: the recipe (optimizer, schedule, EMA fields).
        steps_per_epoch: optimizer steps per epoch (the schedule's length).
        amp_dtype: the autocast dtype, or None for float32.
        device: the training device (the scaler's).
        compile_backend: compile Muon's Newton-Schulz iteration with it (None: eager).
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        steps_per_epoch: int,
        amp_dtype: torch.dtype | None,
        device: torch.device,
        compile_backend: str | None = None,
    ):
        self.optimizer = make_optimizer(model, recipe, compile_backend, steps_per_epoch)
        self.schedule = make_schedule(self.optimizer, recipe, steps_per_epoch)
        self.ema = make_ema(model, recipe.ema)
        self.lookahead = make_lookahead(model, recipe, steps_per_epoch)
        scaled = amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=scaled)

    @property
    def lr(self) -> float:
        """The first parameter group's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor, model: nn.Module, step: int) -> None:
        """Backward of ``loss`` (scaled when float16), optimizer step ``step`` of the run
        (from 0), the EMA's update towards ``model``, the schedule's per-step advance and
        the lookahead's (which reads ``step``).

        Args:
            loss: the step's loss, a scalar.
            model: the trained model (the EMA follows it).
            step: the optimizer step of the run, from 0.
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(model)
        self.schedule.after_step()
        if self.lookahead is not None:
            self.lookahead.after_step(step + 1)

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The weights evaluated and saved as "model": the EMA's when there is one.

        Args:
            model: the trained model.

        Returns:
            The module to evaluate.
        """
        return self.ema.module if self.ema is not None else model

    def state_dict(self) -> dict:
        """The checkpoint's "ema", "optimizer", "scheduler", "scaler" and "lookahead"
        entries.

        Returns:
            The dict (None for what the run does not have).
        """
        return {
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
        }

    def load_state_dict(self, saved: dict) -> None:
        """Restore the optimizer, schedule, scaler, EMA and lookahead from a checkpoint.

        Args:
            saved: the checkpoint (``state_dict()``'s entries).
        """
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(saved.get("lookahead"))
