"""The training engine: one run of a recipe, with checkpoints, resume and a run directory.

What a run directory holds, file by file, is written once: docs/DESIGN.md, "Run
directory". ``summary.json`` is written only when the run has finished: a run without it
did not finish.

The timed span (``summary.json``'s ``timed_span_s``) is the speed records': the
whitening layer's initialisation, the training loops and the final TTA evaluation, timed
with CUDA events on a GPU (the wall clock elsewhere), after a compile warm-up reported
apart (``compile_time_s``); per-epoch evaluation is outside it.

Checkpoints are written atomically at the end of each epoch, so a run killed at any
moment loses at most the epoch in progress. Epoch ``e``'s data order, augmentation
and dropout draw from seeds that depend on (seed, e) alone, so a resumed run sees the
same batches as an uninterrupted one and finishes with the same metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastcifar.engine.components import Components
from fastcifar.engine.distributed import (
    SINGLE,
    World,
    all_reduce_,
    broadcast_buffers,
    data_parallel,
)
from fastcifar.engine.loggers import EpochLogger, progress_bar, running_values
from fastcifar.engine.optim import l1_penalty, total_steps, whiten_bias_steps
from fastcifar.engine.optimization import Optimization
from fastcifar.engine.rundir import (
    RunOptions,
    RunState,
    checkpoint,
    diverged_note,
    load_last,
    nothing_to_resume,
    save_epoch,
    summarise,
    write_summary,
)
from fastcifar.engine.runtime import CompiledForward, Timer
from fastcifar.engine.tta import tta_logits
from fastcifar.engine.warmup import (
    announce_first_step,
    last_partial_batch,
    prebuild,
    warm_up_variants,
)
from fastcifar.errors import TrainingDiverged
from fastcifar.recipes import Recipe

__all__ = ["RunOptions", "RunState", "Trainer", "TrainingDiverged"]


class Trainer:
    """Trains ``recipe`` on ``components`` (``fastcifar.engine.components.build_components``)
    into ``run_dir``; ``fit()`` runs to the end.

    The caller builds the components (which loads the data and may raise FastCifarError
    for a bad source) and runs the LR range test when the recipe asks for one
    (``fastcifar.engine.lr_range.with_found_lr``) first. ``resume`` continues from
    ``run_dir/last.pt``; ``loggers`` (``fastcifar.engine.loggers``) hear of every epoch on rank 0.

    Args:
        recipe: what to train.
        components: the device, data, loaders, model and loss.
        options: how to train (compile, timing, progress, ...).
        run_dir: the run directory, locked by the caller.
        resume: continue from ``run_dir/last.pt``.
        world: this process's place under torchrun.
        loggers: the epoch loggers, or None for ``default_loggers``.
    """

    def __init__(
        self,
        recipe: Recipe,
        components: Components,
        options: RunOptions,
        run_dir: Path,
        resume: bool = False,
        world: World = SINGLE,
        loggers: list[EpochLogger] | None = None,
    ):
        self.recipe, self.components, c = recipe.validate(), components, components
        self.model, self.run_dir, self.world = c.model, Path(run_dir), world
        self.loggers = list(loggers or []) if world.is_main else []
        self.session_wall: dict[str, float] = {}  # fit()'s compile and epoch seconds
        # the options as run: config.json records the resolved data source
        self.options = dataclasses.replace(options, data=c.arrays.source)
        steps = len(c.train_loader)
        self.total_steps = total_steps(self.recipe, steps)
        self.whiten_bias_steps = whiten_bias_steps(self.recipe, steps)
        self.model.set_whiten_bias_trainable(self.whiten_bias_steps > 0)
        backend = options.compile_backend if options.compile else None
        self.opt = Optimization(self.model, self.recipe, steps, c.amp_dtype, c.device, backend)
        self.state = RunState()
        last = load_last(self.run_dir, c.device) if resume else None
        if last is not None:
            self._restore(last[0])
            self.state = last[1]
        elif resume:
            print(nothing_to_resume(self.run_dir))
        self._compile(options)

    def _compile(self, options: RunOptions) -> None:
        """The forwards the loops call: the model (under torchrun in DistributedDataParallel,
        gradients averaged during backward; evaluation without it), compiled with
        --compile; forward + loss as one graph with the recipe's ``compile_step``."""
        train_model = self.model
        if self.world.distributed:  # a whitening bias that stops training gets no gradient
            train_model = data_parallel(
                self.model, self.components.device, self.whiten_bias_steps > 0
            )
        on, backend, mode = options.compile, options.compile_backend, self.recipe.compile_mode
        self.forward = CompiledForward(train_model, on, backend, mode)
        self.eval_forward = self.forward
        if self.world.distributed:
            self.eval_forward = CompiledForward(self.model, on, backend, mode)
        self.train_model = train_model
        step_on = on and self.recipe.compile_step
        self.forward_loss = CompiledForward(self._forward_loss, step_on, backend, mode)

    def _autocast(self):
        dtype = self.components.amp_dtype
        return torch.autocast(self.components.device.type, dtype=dtype, enabled=dtype is not None)

    def _seed_epoch(self, epoch: int) -> None:
        torch.manual_seed(self.recipe.seed * 100_003 + epoch)
        self.components.train_loader.set_epoch(epoch)

    def _init_from_data(self) -> None:
        """The model's data-dependent initialisation (the speed-run network's whitening)
        from ``whiten_images`` training images, timed (the record counts it): from the
        loader's device-resident copy when it keeps one."""
        c, r, timer = self.components, self.recipe, Timer(self.components.device)
        resident = getattr(c.train_loader, "images", None)
        images = resident if isinstance(resident, torch.Tensor) else c.train_images
        if self.model.init_from_data(images, r.whiten_images, r.seed, c.mean, c.std):
            self.state.whiten_time_s += timer.stop()

    # ------------------------------------------------------------------ checkpoints

    def _training_state(self) -> dict:
        """Everything a step changes: model, optimizer, schedule, scaler, EMA."""
        return {"train_model": self.model.state_dict(), **self.opt.state_dict()}

    def _restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["train_model"])
        self.opt.load_state_dict(saved)

    def save_epoch(self, is_best: bool) -> None:
        """The epoch's checkpoint and records into the run directory (rank 0; before the
        loggers hear of it, so a logged epoch is saved).

        Args:
            is_best: this epoch's test accuracy is the best so far (best.pt written too).
        """
        weights = self.opt.evaluated(self.model).state_dict()
        c = self.components
        ckpt = checkpoint(weights, self._training_state(), self.state, self.recipe, c.mean, c.std)
        save_epoch(self.run_dir, ckpt, self.state, is_best)

    # ------------------------------------------------------------------ loops

    def _forward_loss(self, x, y, res: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean criterion loss, output) of the model on a batch, first downsampled
        (bilinear, the whole image) to ``res`` x ``res`` pixels when given (the recipe's
        ``res_schedule``): one graph with --compile-step, one per resolution."""
        if res is not None and res != x.shape[-1]:
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        step_compiled = self.forward_loss.compiled is not None
        out = self.train_model(x) if step_compiled else self.forward(x)
        return self.components.criterion(out, y), out

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, step: int, res: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of the run on a batch.

        Args:
            x: normalised images (B, 3, H, W) on the device.
            y: int64 labels (B,).
            step: the optimizer step of the run, from 0.
            res: the resolution to train at, pixels (None: the batch's own).

        Returns:
            (mean criterion loss, a scalar; the model's output (B, 10)).
        """
        self.model.set_whiten_bias_trainable(step < self.whiten_bias_steps)
        with self._autocast():
            loss, out = self.forward_loss(x, y, res)
            total = loss
            if self.recipe.loss_reduction == "sum":  # over the global batch: DDP averages
                total = loss * (len(y) * self.world.size)
            if self.recipe.l1:
                total = total + self.recipe.l1 * l1_penalty(self.model)
        self.opt.step(total, self.model, step)
        return loss, out

    def warm_up(self, steps: int = 3) -> float:
        """Run the training steps of ``warm_up_variants`` (and one on the epoch's last,
        partial batch) and, where the recipe times it, the final TTA, so torch.compile
        builds the timed span's graphs before it; then restore model, optimizer, schedule,
        scaler and EMA exactly. The untimed per-epoch evaluation compiles at its first call.
        Prints the first step's loss when it is done.

        Args:
            steps: the least number of warm-up steps.

        Returns:
            Seconds (wall clock).
        """
        saved, start = copy.deepcopy(self._training_state()), time.perf_counter()
        self.model.train()
        self._seed_epoch(self.state.epoch)
        first = len(self.state.lrs)
        variants = warm_up_variants(self.recipe, self.state.epoch, self.whiten_bias_steps, steps)
        loader = self.components.train_loader
        for i, ((res, frozen), (x, y)) in enumerate(zip(variants, loader, strict=False)):
            loss, _ = self.train_step(x, y, self.whiten_bias_steps if frozen else first, res)
            if i == 0:
                announce_first_step(loss, time.perf_counter() - start, len(variants))
                for xs, ys in last_partial_batch(loader, x, y):
                    self.train_step(xs, ys, first, res)
        self.model.set_whiten_bias_trainable(first < self.whiten_bias_steps)
        if self.recipe.tta != "none":
            self.evaluate(tta=True)  # the final evaluation's shapes: timed
        if self.components.device.type == "cuda":
            torch.cuda.synchronize(self.components.device)
        self._restore(saved)
        return time.perf_counter() - start

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (``--last-epoch-fraction`` shortens the last).

        Args:
            epoch: the epoch, from 0.

        Returns:
            Its training metrics over all ranks: lr at its start, mean loss, accuracy
            (percent), seconds, images/s.

        Raises:
            TrainingDiverged: a NaN or infinite loss (the last good checkpoint is kept).
        """
        self.model.train()
        self._seed_epoch(epoch)
        loader, device = self.components.train_loader, self.components.device
        first = len(self.state.lrs)  # optimizer steps taken before this epoch
        steps = min(len(loader), self.total_steps - first)
        losses = torch.zeros(steps, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen, lr, start = 0, self.opt.lr, time.perf_counter()
        every = self.options.progress_every
        bar = progress_bar(steps, f"epoch {epoch + 1}/{self.recipe.epochs}", every)
        res = self.recipe.resolution(epoch)
        timer = Timer(device)
        # the loop reads nothing back from the device but the progress's running values,
        # once a progress refresh (a second on a terminal, --progress-every in a log)
        for step, (x, y) in zip(range(steps), loader, strict=False):
            self.state.lrs.append(self.opt.lr)
            loss, out = self.train_step(x, y, first + step, res)
            losses[step] = loss.detach()
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if bar.due():
                bar.set_postfix(**running_values(losses[: step + 1], correct, seen, start))
            bar.update(1)
        self.state.train_time_s += timer.stop()
        self._check_finite(losses, epoch)
        bar.set_postfix(**running_values(losses, correct, seen, start))
        bar.close()
        elapsed = time.perf_counter() - start
        # over all ranks: each step's loss is the mean of the ranks' (equal) shares
        losses = all_reduce_(losses, "mean")
        counts = all_reduce_(torch.stack([correct, torch.tensor(seen, device=device)]))
        self.state.step_losses.extend(losses.tolist())
        return {
            "lr": lr,
            "train_loss": float(losses.mean()),
            "train_acc": 100.0 * int(counts[0]) / int(counts[1]),
            "images_per_s": int(counts[1]) / elapsed,
        }

    def _check_finite(self, losses: torch.Tensor, epoch: int) -> None:
        """Stop every rank together when any rank's loss is NaN or inf."""
        losses = all_reduce_(losses.clone(), "mean")
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = int(bad[0])
            raise TrainingDiverged(
                f"loss became {float(losses[step])} at epoch {epoch + 1}, step {step + 1}: "
                + diverged_note(self.state.epoch, self.run_dir, self.components.amp_dtype)
            )

    @torch.no_grad()
    def evaluate(self, tta: bool = False) -> dict:
        """Test loss (mean per image) and accuracy (percent) of the evaluated weights (the
        EMA's when used): single view, or with ``tta`` the recipe's TTA (``tta``,
        ``tta_fraction``; ``fastcifar.engine.tta``) over the whole test set.

        Args:
            tta: apply the recipe's test-time augmentation.

        Returns:
            ``{"test_loss": ..., "test_acc": ...}``.
        """
        self.model.eval()
        broadcast_buffers(self.model)  # rank 0's BatchNorm statistics everywhere
        ema = self.opt.ema
        if ema is not None:
            broadcast_buffers(ema.module)
        forward = ema.module.eval() if ema is not None else self.eval_forward
        test_loader = self.components.test_loader
        batches = list(test_loader)
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        mode = self.recipe.tta if tta else "none"
        with self._autocast():
            out = tta_logits(
                forward, x, mode, self.recipe.tta_fraction, batch_size=test_loader.batch_size
            )
        loss = F.cross_entropy(out, y, reduction="sum")
        correct = (out.argmax(1) == y).sum()
        return {"test_loss": float(loss) / len(y), "test_acc": 100.0 * correct.item() / len(y)}

    def fit(self) -> dict:
        """Train the remaining epochs, checkpointing after each; write summary.json.

        Returns:
            The summary dict.

        Raises:
            TrainingDiverged: the loss became NaN or inf (the last good checkpoint stays).
        """
        r, run_start, compile_s = self.recipe, time.perf_counter(), 0.0
        if self.state.epoch:
            print(f"resume: {self.run_dir} from epoch {self.state.epoch + 1}/{r.epochs}")
        if self.options.compile and self.state.epoch < r.epochs:
            compile_s = self.warm_up()
            self.state.compile_time_s += compile_s
            print(f"compile: warm-up took {compile_s:.1f} s (not timed)")
        if self.state.epoch == 0:
            self._init_from_data()
        epochs = range(self.state.epoch, r.epochs)
        self.state.augment_time_s += prebuild(self.components, r, epochs)
        for epoch in epochs:
            self._fit_epoch(epoch)
        session = time.perf_counter() - run_start
        # this call's wall-clock parts (seconds), for the command's "wall time"
        self.session_wall = {"compile_s": compile_s, "epochs_s": session - compile_s}
        facts = self.components.facts(self.forward.compiled is not None, self.world.size)
        facts.update(last_session_time_s=session, timing=self.options.timing)
        summary = summarise(self.recipe, self.state, **facts)
        if self.world.is_main:
            write_summary(self.run_dir, summary)
        return summary

    def _fit_epoch(self, epoch: int) -> None:
        """Train epoch ``epoch``, evaluate (the recipe's TTA after the last, timed), step an
        epoch schedule, save the epoch and tell the loggers."""
        start, r = time.perf_counter(), self.recipe
        train = self.train_epoch(epoch)
        final_tta = {}
        if epoch == r.epochs - 1 and r.tta != "none":
            timer = Timer(self.components.device)
            final = self.evaluate(tta=True)
            self.state.tta_time_s += timer.stop()
            final_tta = {"tta_test_loss": final["test_loss"], "tta_test_acc": final["test_acc"]}
        test = self.evaluate()
        self.opt.schedule.after_epoch(test["test_acc"])
        row = {
            "epoch": epoch + 1,
            "lr": train["lr"],
            "train_loss": train["train_loss"],
            "train_acc": train["train_acc"],
            "test_loss": test["test_loss"],
            "test_acc": test["test_acc"],
            "epoch_time_s": time.perf_counter() - start,
            "images_per_s": train["images_per_s"],
            **final_tta,
        }
        self.state.metrics.append(row)
        self.state.epoch = epoch + 1
        is_best = test["test_acc"] > self.state.best_acc
        self.state.best_acc = max(self.state.best_acc, test["test_acc"])
        if self.world.is_main:  # rank 0 alone writes the run directory and prints
            self.save_epoch(is_best)
            for logger in self.loggers:
                logger.on_epoch_end(row, is_best)
