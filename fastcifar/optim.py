"""What a recipe trains with: the loss, the L1 penalty, the optimizer, the learning-rate
schedule (with when it steps), the EMA of the weights and lookahead averaging.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.muon import NS_COEFFICIENTS, Muon
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
        """Move the average towards ``model``'s current weights (integer buffers copied)."""
        n = self.num_updates
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)  # device tensor
        for avg, cur in zip(self._tensors(self.module), self._tensors(model), strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur.detach(), weight.to(avg.dtype))
            else:
                avg.copy_(cur)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates.copy_(state["num_updates"])


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
    """
    r = recipe
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
    bias_lr, head_lr = r.bias_lr or r.lr, r.head_lr or r.lr
    sgd = dict(muon=False, momentum=r.sgd_momentum, nesterov=True)
    groups = [
        dict(name="filters", params=named["filters"], lr=r.lr, momentum=r.momentum,
             nesterov=r.nesterov, weight_decay=r.muon_weight_decay, muon=True),
        dict(name="whiten_bias", params=named["whiten_bias"], lr=bias_lr,
             weight_decay=r.weight_decay / bias_lr, **sgd),
        dict(name="biases", params=named["biases"], lr=bias_lr,
             weight_decay=r.weight_decay / bias_lr, **sgd),
        dict(name="head", params=named["head"], lr=head_lr,
             weight_decay=r.weight_decay / head_lr, **sgd),
    ]  # fmt: skip
    return [g for g in groups if g["params"]]


def newton_schulz_dtype(device: torch.device | str | None) -> torch.dtype:
    """Muon's Newton-Schulz dtype on ``device``: bfloat16 (the records') on a GPU and on a
    CPU with bfloat16 instructions; float32 on other CPUs, which emulate bfloat16 (5-9x
    slower than float32, ``runtime.cpu_has_native_bf16``), the ``--amp`` rule."""
    from fastcifar.runtime import cpu_has_native_bf16

    cpu = device is not None and torch.device(device).type == "cpu"
    return torch.float32 if cpu and not cpu_has_native_bf16() else torch.bfloat16


def make_optimizer(
    model: nn.Module, recipe: Recipe, compile_backend: str | None = None,
    steps_per_epoch: int | None = None,
) -> torch.optim.Optimizer:  # fmt: skip
    """The recipe's optimizer over ``model``'s trainable parameters: Adam (betas
    (momentum, 0.999)), SGD (momentum, Nesterov where set), or ``muon`` (``Muon`` on the
    convolution filters and SGD on the rest, ``muon_param_groups``; its Newton-Schulz
    iteration in ``newton_schulz_dtype`` of the model's device, compiled with
    ``compile_backend`` when given, as the record does)."""
    r = recipe
    if r.optimizer == "muon":
        device = next(model.parameters()).device
        return Muon(
            muon_param_groups(model, r), ns_steps=r.muon_ns_steps,
            ns_dtype=newton_schulz_dtype(device),
            ns_coefficients=NS_COEFFICIENTS[r.muon_ns], renorm_every=r.muon_renorm_every,
            batched=r.muon_batched, by_shape=r.muon_by_shape,
            renorm_growth=r.muon_renorm_growth,
            renorm_steps=decay_steps(r, steps_per_epoch) if steps_per_epoch else 1,
            compile_backend=compile_backend,
        )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    if r.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=r.lr, betas=(r.momentum, 0.999), weight_decay=r.weight_decay
        )
    return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                           weight_decay=r.weight_decay)  # fmt: skip


def total_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Optimizer steps of a run: ``epochs - 1`` full epochs and ``ceil(last_epoch_fraction
    * steps_per_epoch)`` steps of the last one."""
    last = math.ceil(recipe.last_epoch_fraction * steps_per_epoch - 1e-9)
    return (recipe.epochs - 1) * steps_per_epoch + max(1, last)


def decay_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Steps of the ``linear`` schedule's decay: ``ceil(decay_epochs * steps)`` (as the
    2026 record counts them), or the whole run when ``decay_epochs`` is 0."""
    if not recipe.decay_epochs:
        return total_steps(recipe, steps_per_epoch)
    return max(1, math.ceil(recipe.decay_epochs * steps_per_epoch - 1e-9))


def whiten_bias_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Steps during which the whitening bias trains (``ceil(whiten_bias_epochs * steps)``)."""
    return math.ceil(recipe.whiten_bias_epochs * steps_per_epoch - 1e-9)


def onecycle_pct_start(pct_start: float, total: int) -> float:
    """``pct_start`` where OneCycleLR can use it, else the middle of the run: its warm-up
    phase ends at step ``pct_start * total - 1``, which must lie strictly between 0 and
    the last step (``total - 1``), or PyTorch divides by zero (a 4-step run at 0.25) or
    anneals backwards. Only runs of a handful of steps are moved (they warn anyway)."""
    up = pct_start * total - 1
    if total >= 3 and not 0 < up < total - 1:
        return (1 + (total - 1) / 2) / total
    return pct_start


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
    """The recipe's schedule: OneCycleLR (per step; every group peaks at its own lr),
    ``linear`` (per step: ``lr x max(lr_floor, 1 - step / decay_steps)``, no warm-up, the
    records'; a group named ``whiten_bias`` decays to 0 over ``whiten_bias_steps``), cosine
    annealing to 0 over the epochs (per epoch), StepLR (per epoch), ReduceLROnPlateau on
    the test accuracy (per epoch), or a constant lr."""
    r = recipe
    if r.scheduler == "onecycle":
        return Schedule(torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], epochs=r.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=onecycle_pct_start(r.pct_start, r.epochs * steps_per_epoch),
            anneal_strategy=r.anneal_strategy, cycle_momentum=r.cycle_momentum,
            div_factor=r.div_factor, final_div_factor=r.final_div_factor,
        ), "step")  # fmt: skip
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
        return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=r.plateau_factor, patience=r.plateau_patience
        ), "metric")  # fmt: skip
    return Schedule(None, "never")


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
        """Called after optimizer step ``steps_done`` (from 1) of the run."""
        if steps_done == self.start:
            self.average = [t.detach().clone() for t in self._weights]
        elif self.average is not None and (steps_done - self.start) % self.every == 0:
            torch._foreach_lerp_(self.average, self._weights, 1.0 - self.decay)
            for w, a in zip(self._weights, self.average, strict=True):
                w.copy_(a)

    def state_dict(self) -> list[torch.Tensor] | None:
        return self.average

    def load_state_dict(self, average: list[torch.Tensor] | None) -> None:
        self.average = None if average is None else [a.clone() for a in average]


def make_lookahead(model: nn.Module, recipe: Recipe, steps_per_epoch: int) -> Lookahead | None:
    """The recipe's ``Lookahead`` (starting ``lookahead_start`` steps before the linear
    decay's end), or None when ``lookahead_start`` is 0."""
    if not recipe.lookahead_start:
        return None
    start = decay_steps(recipe, steps_per_epoch) - recipe.lookahead_start
    return Lookahead(model, start, recipe.lookahead_every, recipe.lookahead_decay)


def make_ema(model: nn.Module, decay: float) -> EMA | None:
    """An ``EMA`` of ``model`` with ``decay``, or None when ``decay`` is 0."""
    if not decay:
        return None
    return EMA(model, decay)


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

    def __init__(self, model: nn.Module, recipe: Recipe, steps_per_epoch: int,
                 amp_dtype: torch.dtype | None, device: torch.device,
                 compile_backend: str | None = None):  # fmt: skip
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
        the lookahead's (which reads ``step``)."""
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
        """The weights evaluated and saved as "model": the EMA's when there is one."""
        return self.ema.module if self.ema is not None else model

    def state_dict(self) -> dict:
        """The checkpoint's "ema", "optimizer", "scheduler", "scaler" and "lookahead"
        entries."""
        return {
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
        }

    def load_state_dict(self, saved: dict) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(saved.get("lookahead"))
