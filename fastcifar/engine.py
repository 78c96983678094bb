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
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.components import build_components
from fastcifar.distributed import (
    SINGLE,
    World,
    all_reduce_,
    broadcast_buffers,
    broadcast_object,
)
from fastcifar.errors import FastCifarError
from fastcifar.loggers import EpochLogger, default_loggers
from fastcifar.lr_range import range_test
from fastcifar.models.speedrun import init_whitening_from
from fastcifar.optim import (
    l1_penalty,
    make_ema,
    make_optimizer,
    make_schedule,
    total_steps,
    whiten_bias_steps,
)
from fastcifar.recipes import Recipe
from fastcifar.rundir import (
    RunOptions,
    RunState,
    atomic_write,
    load_checkpoint,
    save_epoch,
    summarise,
)
from fastcifar.runtime import (
    CompiledForward,
    Timer,
    device_name,
    versions,
)
from fastcifar.tta import tta_logits

__all__ = ["RunOptions", "RunState", "Trainer", "TrainingDiverged"]


class TrainingDiverged(FastCifarError):
    """The loss became NaN or inf."""


class Trainer:
    """Trains ``recipe`` with ``options`` into ``run_dir``; ``fit()`` runs to the end.

    Construct it only after the inputs were validated: it loads the data (which may
    raise FastCifarError for a bad source) before it creates anything in ``run_dir``.
    """

    def __init__(
        self,
        recipe: Recipe,
        options: RunOptions,
        run_dir: Path,
        resume: bool = False,
        world: World = SINGLE,
        loggers: list[EpochLogger] | None = None,
    ):
        self.recipe = recipe.validate()
        self.run_dir = Path(run_dir)
        self.world = world
        c = build_components(self.recipe, options, init_whitening=False, world=world)
        # the options as run: config.json records the resolved data source
        self.options = dataclasses.replace(options, data=c.arrays.source)
        self.device, self.amp_dtype, self.channels_last = c.device, c.amp_dtype, c.channels_last
        self.amp = self.amp_dtype is not None
        self.arrays, self.mean, self.std = c.arrays, c.mean, c.std
        self.train_images = c.train_images
        self.loader_name, self.train_loader, self.test_loader = (
            c.loader_name, c.train_loader, c.test_loader
        )  # fmt: skip
        self.model, self.kernels, self._criterion = c.model, c.kernels, c.criterion
        self.kernel_dispatch = c.kernel_dispatch
        if options.sync_bn:
            self.model = self._sync_batchnorm(self.model)
        if self.recipe.lr_find and not resume:
            self._find_lr()
        steps = len(self.train_loader)
        self.total_steps = total_steps(self.recipe, steps)
        self.whiten_bias_steps = whiten_bias_steps(self.recipe, steps)
        self._set_whiten_bias_trainable(0)
        backend = options.compile_backend if options.compile else None
        self.optimizer = make_optimizer(self.model, self.recipe, compile_backend=backend)
        self.schedule = make_schedule(self.optimizer, self.recipe, steps)
        self.ema = make_ema(self.model, self.recipe.ema)
        use_scaler = self.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.state = RunState()
        if resume:
            self._load_checkpoint(self.run_dir / "last.pt")
        # what the training step calls: the model, or under torchrun the model in
        # DistributedDataParallel (gradients averaged over ranks during backward)
        self.train_model = self._data_parallel(self.model) if world.distributed else self.model
        r = self.recipe
        self.forward = CompiledForward(
            self.train_model, options.compile, options.compile_backend, r.compile_mode
        )
        self.eval_forward = self.forward
        if world.distributed:  # evaluation needs no gradient synchronisation
            self.eval_forward = CompiledForward(
                self.model, options.compile, options.compile_backend, r.compile_mode
            )
        # training: forward + loss as one compiled graph (--compile-step), else the compiled
        # model and an eager loss
        self.forward_loss = CompiledForward(
            self._forward_loss, options.compile and r.compile_step, options.compile_backend,
            r.compile_mode,
        )  # fmt: skip
        # rank 0 reports: the console, TensorBoard (fastcifar.loggers), or the caller's
        if loggers is None and world.is_main:
            loggers = default_loggers(r.epochs, self.run_dir, options.tensorboard)
        self.loggers = list(loggers or [])

    # ------------------------------------------------------------------ set-up

    def _sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """--sync-bn: BatchNorm statistics over the global batch (PyTorch's SyncBatchNorm;
        CUDA only). Off by default: the record holders train with per-GPU statistics."""
        if self.device.type != "cuda":
            raise FastCifarError(
                "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs only): drop "
                "--sync-bn on the CPU"
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def _data_parallel(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel on this rank's device. A whitening bias that
        stops training mid-run gets no gradient from then on, so DDP must expect unused
        parameters."""
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.whiten_bias_steps > 0,
        )

    def _find_lr(self) -> None:
        """The recipe asks for its peak lr from an LR range test first (as seed 003 did)."""
        result = range_test(
            self.model, make_optimizer(self.model, self.recipe), self._criterion,
            self.train_loader, self.device, num_iter=self.recipe.lr_find_iters,
        )  # fmt: skip
        print(f"lr_find: suggested lr {result.suggested_lr:.4g} (steepest descent); the recipe "
              f"uses it as its peak lr")  # fmt: skip
        # every rank tested on its own shard: all take rank 0's answer
        self.recipe = self.recipe.replace(lr=broadcast_object(float(result.suggested_lr)))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def _set_whiten_bias_trainable(self, step: int) -> None:
        """The whitening bias (speed-run nets) trains for its first ``whiten_bias_steps``
        optimizer steps, then is frozen (no gradient at all, as the record detaches it)."""
        whiten = getattr(self.model, "whiten", None)
        if whiten is not None and whiten.bias is not None:
            trains = step < self.whiten_bias_steps
            if whiten.bias.requires_grad != trains:
                whiten.bias.requires_grad_(trains)

    def _init_whitening(self) -> None:
        """Whitening filters from ``whiten_images`` training images (a seeded sample,
        ``whitening_indices``), timed (the record counts it): from the device-resident copy
        when the loader keeps one."""
        timer = Timer(self.device)
        resident = getattr(self.train_loader, "images", None)
        images = resident if isinstance(resident, torch.Tensor) else self.train_images
        r = self.recipe
        if init_whitening_from(self.model, images, r.whiten_images, r.seed, self.mean, self.std):
            self.state.whiten_time_s += timer.stop()

    def _seed_epoch(self, epoch: int) -> None:
        torch.manual_seed(self.recipe.seed * 100_003 + epoch)
        self.train_loader.set_epoch(epoch)

    # ------------------------------------------------------------------ checkpoints

    def _training_state(self) -> dict:
        """Everything a step changes: model, optimizer, schedule, scaler, EMA."""
        return {
            "train_model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def _restore_training_state(self, saved: dict) -> None:
        self.model.load_state_dict(saved["train_model"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])

    def _checkpoint(self) -> dict:
        evaluated = self.ema.module if self.ema is not None else self.model
        return {
            "model": evaluated.state_dict(),  # the weights evaluated (the EMA when used)
            **self._training_state(),
            "state": asdict(self.state),
            "recipe": asdict(self.recipe),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def _load_checkpoint(self, path: Path) -> None:
        if not path.exists():
            raise FastCifarError(
                f"{path.parent} has no last.pt checkpoint (the run stopped before its first "
                f"epoch ended): start it again without --resume"
            )
        ckpt = load_checkpoint(path, self.device, "start a new run (drop --resume)")
        self._restore_training_state(ckpt)
        self.state = RunState(**ckpt["state"])

    # ------------------------------------------------------------------ end of an epoch

    def checkpoint_hook(self, row: dict, is_best: bool) -> None:
        """The epoch's checkpoint and records into the run directory (``save_epoch``);
        ``fit`` calls it before the loggers, so a logged epoch is saved."""
        save_epoch(self.run_dir, self._checkpoint(), self.state, is_best)

    # ------------------------------------------------------------------ loops

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean criterion loss, output) of the model on a batch: one graph with
        --compile-step."""
        step_compiled = self.forward_loss.compiled is not None
        out = self.train_model(x) if step_compiled else self.forward(x)
        return self._criterion(out, y), out

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (mean criterion loss, model output)."""
        with self._autocast():
            loss, out = self.forward_loss(x, y)
            if self.recipe.loss_reduction == "sum":  # over the global batch: DDP averages
                total = loss * (len(y) * self.world.size)
            else:
                total = loss
            if self.recipe.l1:
                total = total + self.recipe.l1 * l1_penalty(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        self.schedule.after_step()
        return loss, out

    def warm_up(self, steps: int = 3) -> float:
        """Run ``steps`` training steps and one evaluation batch so torch.compile builds its
        graphs before the timed epochs, then restore model, optimizer, schedule, scaler
        and EMA exactly. Returns the seconds it took (the compile time, mostly)."""
        saved = copy.deepcopy(self._training_state())
        start = time.perf_counter()
        self.model.train()
        self._seed_epoch(self.state.epoch)
        step = len(self.state.lrs)
        for i, (x, y) in zip(range(steps), self.train_loader, strict=False):
            if self.whiten_bias_steps and i == steps - 1:  # the graph without its gradient
                self._set_whiten_bias_trainable(self.whiten_bias_steps)
            self._train_step(x, y)
        self._set_whiten_bias_trainable(step)
        self.evaluate(max_batches=1)
        if self.recipe.tta != "none":
            self.evaluate(tta=True)  # the final evaluation's shapes
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self._restore_training_state(saved)
        return seconds

    def train_epoch(self, epoch: int) -> dict:
        from tqdm.auto import tqdm

        self.model.train()
        self._seed_epoch(epoch)
        loader = self.train_loader
        first = len(self.state.lrs)  # optimizer steps taken before this epoch
        steps = min(len(loader), self.total_steps - first)  # --last-epoch-fraction
        losses = torch.zeros(steps, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{self.recipe.epochs}",
            unit="batch",
            leave=False,
            mininterval=1.0,
            disable=None,
        )
        timer = Timer(self.device)
        for step, (x, y) in zip(range(steps), loader, strict=False):
            self._set_whiten_bias_trainable(first + step)
            self.state.lrs.append(self.optimizer.param_groups[0]["lr"])
            loss, out = self._train_step(x, y)
            losses[step] = loss.detach()
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 19 or step == steps - 1:
                self._check_finite(losses[: step + 1], epoch)
                elapsed = time.perf_counter() - start
                bar.set_postfix(
                    loss=f"{losses[step].item():.3f}",
                    acc=f"{100 * correct.item() / seen:.1f}",
                    img_s=f"{seen / elapsed:.0f}",
                )
            bar.update(1)
        bar.close()
        self.state.train_time_s += timer.stop()
        elapsed = time.perf_counter() - start
        # over all ranks: each step's loss is the mean of the ranks' (equal) shares
        losses = all_reduce_(losses, "mean")
        counts = all_reduce_(torch.stack([correct, torch.tensor(seen, device=self.device)]))
        self.state.step_losses.extend(losses.tolist())
        return {
            "lr": lr,
            "train_loss": float(losses.mean()),
            "train_acc": 100.0 * int(counts[0]) / int(counts[1]),
            "train_time_s": elapsed,
            "images_per_s": int(counts[1]) / elapsed,
        }

    def _check_finite(self, losses: torch.Tensor, epoch: int) -> None:
        """Stop every rank together when any rank's loss is NaN or inf."""
        losses = all_reduce_(losses.clone(), "mean")
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = int(bad[0])
            value = float(losses[step])
            raise TrainingDiverged(
                f"loss became {value} at epoch {epoch + 1}, step {step + 1}: the last good "
                f"checkpoint ({self.state.epoch} epochs) is kept in {self.run_dir}; lower --lr "
                f"or try --no-amp"
            )

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None, tta: bool = False) -> dict:
        """Test loss (mean per image) and accuracy (percent) of the evaluated weights (the
        EMA's when used): single view, or with ``tta`` the recipe's TTA (``tta``,
        ``tta_fraction``; ``fastcifar.tta``) over the whole test set."""
        self.model.eval()
        broadcast_buffers(self.model)  # rank 0's BatchNorm statistics everywhere
        if self.ema is not None:
            broadcast_buffers(self.ema.module)
        forward = self.ema.module.eval() if self.ema is not None else self.eval_forward
        xs, ys = [], []
        for i, (x, y) in enumerate(self.test_loader):
            if max_batches is not None and i >= max_batches:
                break
            xs.append(x)
            ys.append(y)
        x, y = torch.cat(xs), torch.cat(ys)
        mode = self.recipe.tta if tta else "none"
        with self._autocast():
            out = tta_logits(forward, x, mode, self.recipe.tta_fraction,
                             batch_size=self.test_loader.batch_size)  # fmt: skip
        loss = F.cross_entropy(out, y, reduction="sum")
        correct = (out.argmax(1) == y).sum()
        n = len(y)
        return {"test_loss": float(loss) / n, "test_acc": 100.0 * correct.item() / n}

    def fit(self) -> dict:
        """Train the remaining epochs, checkpointing after each; write summary.json.

        Returns:
            The summary dict.

        Raises:
            TrainingDiverged: the loss became NaN or inf (the last good checkpoint stays).
        """
        r = self.recipe
        run_start = time.perf_counter()
        if self.state.epoch:
            print(f"resume: {self.run_dir} from epoch {self.state.epoch + 1}/{r.epochs}")
        if self.options.compile and self.state.epoch < r.epochs:
            self.state.compile_time_s += self.warm_up()
            print(f"compile: warm-up took {self.state.compile_time_s:.1f} s (not timed)")
        if self.state.epoch == 0:
            self._init_whitening()
        for epoch in range(self.state.epoch, r.epochs):
            t0 = time.perf_counter()
            train = self.train_epoch(epoch)
            final_tta = {}
            if epoch == r.epochs - 1 and r.tta != "none":
                timer = Timer(self.device)
                final = self.evaluate(tta=True)
                self.state.tta_time_s += timer.stop()
                final_tta = {"tta_test_loss": final["test_loss"], "tta_test_acc": final["test_acc"]}
            test = self.evaluate()
            self.schedule.after_epoch(test["test_acc"])
            row = {
                "epoch": epoch + 1,
                "lr": train["lr"],
                "train_loss": train["train_loss"],
                "train_acc": train["train_acc"],
                "test_loss": test["test_loss"],
                "test_acc": test["test_acc"],
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": train["images_per_s"],
                **final_tta,
            }
            self.state.metrics.append(row)
            self.state.epoch = epoch + 1
            is_best = test["test_acc"] > self.state.best_acc
            if is_best:
                self.state.best_acc = test["test_acc"]
            if self.world.is_main:  # rank 0 alone writes the run directory and prints
                self.checkpoint_hook(row, is_best)
                for logger in self.loggers:
                    logger.on_epoch_end(row, is_best)
        return self._write_summary(time.perf_counter() - run_start)

    def _write_summary(self, session_time: float) -> dict:
        """summary.json (rank 0) from the run's state and what it ran on (``summarise``)."""
        summary = summarise(
            self.recipe, self.state, loader=self.loader_name, last_session_time_s=session_time,
            device=device_name(self.device),
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp else None,
            compiled=self.forward.compiled is not None, kernels=self.kernels,
            channels_last=self.channels_last, train_images=len(self.train_loader.dataset),
            world_size=self.world.size, test_images=len(self.test_loader.labels),
            data=self.arrays.source, versions=versions(),
        )  # fmt: skip
        if self.world.is_main:
            atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
