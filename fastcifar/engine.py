"""The training engine: one run of a recipe, with checkpoints, resume and a run directory.

A run directory (docs/DESIGN.md) holds:

* ``config.json``: the recipe and the run options, written before the first epoch;
* ``metrics.jsonl``: one JSON object per finished epoch (epoch, lr, train_loss,
  train_acc, test_loss, test_acc, epoch_time_s, images_per_s); accuracies in percent,
  losses are the criterion alone (no L1 term), times in seconds;
* ``last.pt`` (after every epoch) and ``best.pt`` (best test accuracy) checkpoints;
* ``summary.json``, written only when the run has finished: final and best test
  accuracy, total time, device, versions. A run without it did not finish.

Checkpoints are written atomically at the end of each epoch, so a run killed at any
moment loses at most the epoch in progress. Epoch ``e``'s data order, augmentation
and dropout draw from seeds that depend on (seed, e) alone, so a resumed run sees the
same batches as an uninterrupted one and finishes with the same metrics.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastcifar.data import (
    AlbumentationsLoader,
    EvalLoader,
    GpuLoader,
    build_augmentation,
    channel_stats,
    load_cifar10,
    stratified_subset,
)
from fastcifar.errors import FastCifarError
from fastcifar.models import MODELS, create_model
from fastcifar.recipes import Recipe
from fastcifar.rundir import atomic_save, atomic_write, load_checkpoint


@dataclass
class RunOptions:
    """How (not what) a run trains. Saved in config.json next to the recipe."""

    data: str | None = None
    download: bool = False
    train_subset: int | None = None  # stratified subset of the training set
    test_subset: int | None = None  # stratified subset of the test set (quick runs)
    out: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False
    amp_dtype: str = "auto"  # auto | bfloat16 | float16
    compile: bool = False
    channels_last: bool | None = None  # None: on with --amp
    workers: int | None = None  # DataLoader workers; None: min(cores, 8)
    compile_backend: str = "inductor"
    kernels: str = "auto"  # auto | triton | torch
    loader: str = "auto"  # auto | gpu | dali | albumentations
    tensorboard: bool = False  # log scalars (and, at evaluation, figures) to RUN_DIR/tensorboard


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


class TrainingDiverged(FastCifarError):
    """The loss became NaN or inf."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU.

    Raises:
        FastCifarError: CUDA asked for but not available, or an unknown device string.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FastCifarError(f"unknown device {name!r}: pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastCifarError(
            f"--device {name} asked for CUDA, but torch sees no GPU: pass --device cpu or auto"
        )
    return device


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# The choices of --amp-dtype, --kernels and --loader: the parser and the engine share them.
AMP_DTYPE_CHOICES = ("auto", *AMP_DTYPES)
KERNEL_CHOICES = ("auto", "triton", "torch")
LOADER_CHOICES = ("auto", "gpu", "dali", "albumentations")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16).

    Without them PyTorch emulates bfloat16 on the CPU, which was measured 5-9x slower
    than float32 for the s7 model on an AVX2-only machine.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``--amp``, or None to train in float32.

    ``auto``: bfloat16 where the device runs it natively (Ampere and newer GPUs; CPUs with
    AVX512-BF16 or AMX), float16 with a gradient scaler on older GPUs such as the T4, and
    float32 on a CPU without native bfloat16. ``bfloat16``/``float16`` force that dtype.
    """
    if requested != "auto":
        return AMP_DTYPES[requested]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and not cpu_has_native_bf16():
        return None
    return torch.bfloat16


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over parameter tensors of mean(|p|), the EVA seeds' "L1" (BN affine included)."""
    return sum(p.abs().mean() for p in model.parameters() if p.requires_grad)


def versions() -> dict[str, str]:
    import torchvision

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }
    try:
        import albumentations

        out["albumentations"] = albumentations.__version__
    except ImportError:  # pragma: no cover - a required dependency
        pass
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def resolve_kernels(name: str, device: torch.device) -> str:
    """``auto`` is Triton on CUDA (when triton imports) and PyTorch elsewhere; ``triton`` on
    a CPU turns on the Triton interpreter (slow, for tests).

    Raises:
        FastCifarError: an unknown name, or Triton asked for where it cannot run.
    """
    from fastcifar.kernels import triton_available

    if name not in KERNEL_CHOICES:
        raise FastCifarError(
            f"--kernels {name!r} is not valid: choose one of {', '.join(KERNEL_CHOICES)}"
        )
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "triton":
        if not triton_available():
            raise FastCifarError("--kernels triton needs the triton package: pip install triton")
        if device.type not in ("cuda", "cpu"):
            raise FastCifarError(
                f"--kernels triton runs on CUDA or (interpreted) on the CPU, not {device.type}: "
                f"pass --kernels torch"
            )
        if device.type == "cpu":
            os.environ["TRITON_INTERPRET"] = "1"
    return name


def resolve_loader(name: str, augmentation: str, device: torch.device) -> tuple[str, str]:
    """(backend, why). ``auto``: on CUDA the GPU-resident loader where the recipe's
    augmentation is made only of what it implements (the fastest path), else DALI when
    it is installed; the albumentations CPU loader otherwise. ``gpu`` and ``dali`` also
    run on the CPU (``dali`` CPU-only, ``device_id=None``).

    Raises:
        FastCifarError: an unknown name, a backend that lacks the augmentation, or
            ``dali`` without DALI installed.
    """
    from fastcifar.data.dali_loader import DALI_AUGMENTATIONS, dali_available
    from fastcifar.data.gpu_loader import GPU_AUGMENTATIONS

    if name not in LOADER_CHOICES:
        raise FastCifarError(
            f"--loader {name!r} is not valid: choose one of {', '.join(LOADER_CHOICES)}"
        )
    if name == "gpu" and augmentation not in GPU_AUGMENTATIONS:
        raise FastCifarError(
            f"--loader gpu does not implement augmentation {augmentation!r} (only "
            f"{', '.join(GPU_AUGMENTATIONS)}): use --loader dali or albumentations"
        )
    if name == "dali" and not dali_available():
        raise FastCifarError(
            "--loader dali needs NVIDIA DALI: pip install 'fastcifar[dali]' (or "
            "nvidia-dali-cuda130), or use --loader albumentations"
        )
    if name != "auto":
        return name, "asked for with --loader"
    if device.type != "cuda":
        return "albumentations", "no GPU: albumentations in CPU workers"
    if augmentation in GPU_AUGMENTATIONS:
        return "gpu", f"augmentation {augmentation!r} runs as batched tensor ops on the GPU"
    if dali_available() and augmentation in DALI_AUGMENTATIONS:
        return "dali", "a GPU and DALI are present"
    return "albumentations", "DALI is not installed (pip install 'fastcifar[dali]')"


def _is_compile_error(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor", "torch._functorch"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _Forward:
    """Calls the compiled model; on a compilation failure says why once and goes eager."""

    def __init__(self, model: nn.Module, compile: bool, backend: str):
        self.model = model
        self.compiled = None
        if compile:
            self.compiled = torch.compile(model, backend=backend)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.model(x)
        try:
            return self.compiled(x)
        except Exception as exc:
            if not _is_compile_error(exc):
                raise
            print(f"compile: torch.compile failed ({_first_line(exc)}); continuing eagerly")
            self.compiled = None
            return self.model(x)


def _ema_avg(decay: float):
    """EMA with a warm-up: step n uses min(decay, (1 + n) / (10 + n)), so a short run is
    not dominated by the initial weights (the warm-up form of TensorFlow's
    ExponentialMovingAverage with num_updates)."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    return avg


class _Timer:
    """Seconds between construction and ``stop()``: CUDA events on a GPU (what the GPU
    spent, queued work included), the wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000.0
        return time.perf_counter() - self.t0


@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    best_acc: float = -1.0
    metrics: list[dict] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rate of every step
    train_time_s: float = 0.0  # training loops only, device-timed (no evaluation)
    compile_time_s: float = 0.0  # warm-up before the timed epochs


class Trainer:
    """Trains ``recipe`` with ``options`` into ``run_dir``; ``fit()`` runs to the end.

    Construct it only after the inputs were validated: it loads the data (which may
    raise FastCifarError for a bad source) before it creates anything in ``run_dir``.
    """

    def __init__(self, recipe: Recipe, options: RunOptions, run_dir: Path, resume: bool = False):
        self.recipe = recipe.validate()
        self.options = options
        self.run_dir = Path(run_dir)
        self.device = resolve_device(options.device)
        self.amp_dtype = amp_dtype(self.device, options.amp_dtype) if options.amp else None
        self.amp = self.amp_dtype is not None
        if options.amp and not self.amp:
            print(
                "amp: this CPU has no native bfloat16 (AVX512-BF16/AMX), where autocast runs "
                "5-9x slower than float32: training in float32 (--amp-dtype bfloat16 forces it)"
            )
        self.channels_last = (
            options.channels_last if options.channels_last is not None else options.amp
        )

        arrays = load_cifar10(options.data, download=options.download, verbose=True)
        options.data = arrays.source  # config.json records the resolved source
        self.mean, self.std = channel_stats(arrays.train_images)
        train_x, train_y = arrays.train_images, arrays.train_labels
        if options.train_subset:
            idx = stratified_subset(train_y, options.train_subset, seed=recipe.seed)
            train_x, train_y = train_x[idx], train_y[idx]
        test_x, test_y = arrays.test_images, arrays.test_labels
        if options.test_subset:
            idx = stratified_subset(test_y, options.test_subset, seed=0, flag="--test-subset")
            test_x, test_y = test_x[idx], test_y[idx]
        self.arrays = arrays

        workers = options.workers
        if workers is None:
            workers = min(os.cpu_count() or 1, 8)
        image_dtype = self.amp_dtype or torch.float32  # loaders deliver the AMP dtype
        self.loader_name, why = resolve_loader(options.loader, recipe.augmentation, self.device)
        print(f"loader: {self.loader_name} ({why})")
        if self.loader_name == "dali":
            from fastcifar.data.dali_loader import DaliLoader

            self.train_loader = DaliLoader(
                train_x, train_y, recipe.augmentation, self.mean, self.std,
                batch_size=recipe.batch_size, device=self.device, shuffle=True,
                drop_last=recipe.drop_last, channels_last=self.channels_last, seed=recipe.seed,
                threads=workers or 1, dtype=image_dtype,
            )  # fmt: skip
        elif self.loader_name == "gpu":
            self.train_loader = GpuLoader(
                train_x, train_y, recipe.augmentation, self.mean, self.std,
                batch_size=recipe.batch_size, device=self.device, shuffle=True,
                drop_last=recipe.drop_last, channels_last=self.channels_last, seed=recipe.seed,
                dtype=image_dtype,
            )  # fmt: skip
        else:
            self.train_loader = AlbumentationsLoader(
                train_x,
                train_y,
                build_augmentation(recipe.augmentation, self.mean, self.std),
                batch_size=recipe.batch_size,
                device=self.device,
                shuffle=True,
                drop_last=recipe.drop_last,
                workers=workers,
                channels_last=self.channels_last,
                seed=recipe.seed,
                dtype=image_dtype,
            )
        if len(self.train_loader) == 0:
            raise FastCifarError(
                f"--batch-size {recipe.batch_size} with drop_last leaves no batch of the "
                f"{len(train_x)} training images: pass a smaller batch size"
            )
        self.test_loader = EvalLoader(
            test_x,
            test_y,
            self.mean,
            self.std,
            batch_size=max(recipe.batch_size, 256),
            device=self.device,
            channels_last=self.channels_last,
        )

        torch.manual_seed(recipe.seed)
        self.model = create_model(recipe.model).to(self.device)
        if hasattr(self.model, "init_whitening"):
            self.model.init_whitening(train_x, self.mean, self.std)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.log_probs = MODELS[recipe.model].outputs == "log_probs"
        self.kernels = resolve_kernels(options.kernels, self.device)
        if self.kernels == "triton":
            self._use_triton_kernels()
        if recipe.lr_find and not resume:
            self._find_lr()
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.ema = None
        if recipe.ema:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(self.model, avg_fn=_ema_avg(recipe.ema), use_buffers=True)
        use_scaler = self.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.state = RunState()
        if resume:
            self._load_checkpoint(self.run_dir / "last.pt")
        self.forward = _Forward(self.model, options.compile, options.compile_backend)
        self.tensorboard = None
        if options.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    # ------------------------------------------------------------------ set-up

    def _use_triton_kernels(self) -> None:
        """Validate every distinct conv configuration of the model against PyTorch, print the
        table, refuse to train on a failure, then swap the supported layers to Triton."""
        from fastcifar.kernels.validate import (
            collect_conv_configs,
            format_table,
            validate_configs,
        )
        from fastcifar.nn import swap_convolutions

        # the real batch on a GPU; 2 images under the (slow) interpreter on a CPU
        batch = self.recipe.batch_size if self.device.type == "cuda" else 2
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        example = torch.randn(batch, 3, 32, 32, device=self.device).contiguous(memory_format=fmt)
        configs = collect_conv_configs(self.model, example, self.amp_dtype or torch.float32)
        results = validate_configs(configs, self.device)
        print(f"kernels: validating {len(configs)} Triton conv configurations (batch {batch})")
        print(format_table(results), flush=True)
        for r in results:
            if not r.passed:
                raise FastCifarError(
                    f"Triton kernel validation failed on layer {r.layers[0]} "
                    f"({r.config.describe()}): {r.message}; train with --kernels torch"
                )
        swapped = swap_convolutions(self.model)
        print(f"kernels: {len(swapped)} convolutions run in Triton")

    def _find_lr(self) -> None:
        """The recipe asks for its peak lr from an LR range test first (as seed 003 did)."""
        from fastcifar.lr_find import range_test

        result = range_test(
            self.model,
            self._make_optimizer(),
            self._criterion,
            self.train_loader,
            self.device,
            num_iter=self.recipe.lr_find_iters,
        )  # fmt: skip
        print(f"lr_find: suggested lr {result.suggested_lr:.4g} (steepest descent); the recipe "
              f"uses it as its peak lr")  # fmt: skip
        self.recipe = self.recipe.replace(lr=float(result.suggested_lr))

    def _make_optimizer(self) -> torch.optim.Optimizer:
        r = self.recipe
        params = self.model.parameters()
        if r.optimizer == "adam":
            return torch.optim.Adam(
                params, lr=r.lr, betas=(r.momentum, 0.999), weight_decay=r.weight_decay
            )
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                               weight_decay=r.weight_decay)  # fmt: skip

    def _make_scheduler(self):
        r = self.recipe
        if r.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=r.lr,
                epochs=r.epochs,
                steps_per_epoch=len(self.train_loader),
                pct_start=r.pct_start,
                anneal_strategy=r.anneal_strategy,
                cycle_momentum=r.cycle_momentum,
                div_factor=r.div_factor,
                final_div_factor=r.final_div_factor,
            )
        if r.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, r.step_size, r.gamma)
        if r.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", factor=r.plateau_factor, patience=r.plateau_patience
            )
        return None

    def _criterion(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return criterion(self.recipe.loss, self.recipe.label_smoothing)(out, y)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def _seed_epoch(self, epoch: int) -> None:
        torch.manual_seed(self.recipe.seed * 100_003 + epoch)
        self.train_loader.set_epoch(epoch)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> dict:
        evaluated = self.ema.module if self.ema is not None else self.model
        return {
            "model": evaluated.state_dict(),  # the weights evaluated (the EMA when used)
            "train_model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
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
        self.model.load_state_dict(ckpt["train_model"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = RunState(**ckpt["state"])

    def _save_epoch(self, is_best: bool) -> None:
        ckpt = self._checkpoint()
        atomic_save(ckpt, self.run_dir / "last.pt")
        if is_best:
            atomic_save(ckpt, self.run_dir / "best.pt")
        lines = "".join(json.dumps(m) + "\n" for m in self.state.metrics)
        atomic_write(self.run_dir / "metrics.jsonl", lines)
        atomic_write(self.run_dir / "lr.json", json.dumps(self.state.lrs))
        if self.tensorboard is not None:
            row = self.state.metrics[-1]
            for key, value in row.items():
                if key != "epoch":
                    self.tensorboard.add_scalar(key, value, row["epoch"])
            self.tensorboard.flush()

    # ------------------------------------------------------------------ loops

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (criterion loss, model output)."""
        with self._autocast():
            out = self.forward(x)
            loss = self._criterion(out, y)
            total = loss + self.recipe.l1 * l1_penalty(self.model) if self.recipe.l1 else loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            self.scheduler.step()
        return loss, out

    def warm_up(self, steps: int = 3) -> float:
        """Run ``steps`` training steps and one evaluation batch so torch.compile builds its
        graphs before the timed epochs, then restore model, optimizer, schedule, scaler
        and EMA exactly. Returns the seconds it took (the compile time, mostly)."""
        import copy

        saved = copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
            }
        )
        start = time.perf_counter()
        self.model.train()
        self._seed_epoch(self.state.epoch)
        for _, (x, y) in zip(range(steps), self.train_loader, strict=False):
            self._train_step(x, y)
        self.evaluate(max_batches=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        return seconds

    def train_epoch(self, epoch: int) -> dict:
        from tqdm.auto import tqdm

        self.model.train()
        self._seed_epoch(epoch)
        loader = self.train_loader
        steps = len(loader)
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
        timer = _Timer(self.device)
        for step, (x, y) in enumerate(loader):
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
        return {
            "lr": lr,
            "train_loss": float(losses.mean()),
            "train_acc": 100.0 * correct.item() / seen,
            "train_time_s": elapsed,
            "images_per_s": seen / elapsed,
        }

    def _check_finite(self, losses: torch.Tensor, epoch: int) -> None:
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
    def evaluate(self, max_batches: int | None = None) -> dict:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        n = 0
        model = self.ema.module.eval() if self.ema is not None else None
        for i, (x, y) in enumerate(self.test_loader):
            if max_batches is not None and i >= max_batches:
                break
            with self._autocast():
                out = model(x) if model is not None else self.forward(x)
                if self.recipe.tta:  # the mirror image's logits, averaged
                    flipped = model(x.flip(-1)) if model is not None else self.forward(x.flip(-1))
                    out = (out.float() + flipped.float()) / 2
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            n += len(y)
        return {"test_loss": float(loss_sum) / n, "test_acc": 100.0 * correct.item() / n}

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
        for epoch in range(self.state.epoch, r.epochs):
            t0 = time.perf_counter()
            train = self.train_epoch(epoch)
            test = self.evaluate()
            if isinstance(self.scheduler, torch.optim.lr_scheduler.StepLR):
                self.scheduler.step()
            elif isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(test["test_acc"])
            row = {
                "epoch": epoch + 1,
                "lr": train["lr"],
                "train_loss": train["train_loss"],
                "train_acc": train["train_acc"],
                "test_loss": test["test_loss"],
                "test_acc": test["test_acc"],
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": train["images_per_s"],
            }
            self.state.metrics.append(row)
            self.state.epoch = epoch + 1
            is_best = test["test_acc"] > self.state.best_acc
            if is_best:
                self.state.best_acc = test["test_acc"]
            self._save_epoch(is_best)
            print(
                f"epoch {epoch + 1}/{r.epochs}  lr {train['lr']:.4g}  "
                f"train loss {train['train_loss']:.4f} acc {train['train_acc']:.2f}%  "
                f"test loss {test['test_loss']:.4f} acc {test['test_acc']:.2f}%  "
                f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f} s",
                flush=True,
            )
        return self._write_summary(time.perf_counter() - run_start)

    def _write_summary(self, session_time: float) -> dict:
        m = self.state.metrics
        best = max(m, key=lambda row: row["test_acc"])
        summary = {
            "recipe": self.recipe.name,
            "model": self.recipe.model,
            "epochs": len(m),
            "final_test_acc": m[-1]["test_acc"],
            "best_test_acc": best["test_acc"],
            "best_epoch": best["epoch"],
            "expected_accuracy": self.recipe.expected_accuracy,
            "total_time_s": sum(row["epoch_time_s"] for row in m),
            "train_time_s": self.state.train_time_s,
            "compile_time_s": self.state.compile_time_s,
            "loader": self.loader_name,
            "last_session_time_s": session_time,
            "mean_images_per_s": float(np.mean([row["images_per_s"] for row in m])),
            "device": _device_name(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp else None,
            "compiled": self.forward.compiled is not None,
            "kernels": self.kernels,
            "channels_last": self.channels_last,
            "train_images": len(self.train_loader.dataset),
            "test_images": len(self.test_loader.labels),
            "data": self.arrays.source,
            "versions": versions(),
        }
        atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def write_config(run_dir: Path, recipe: Recipe, options: RunOptions) -> None:
    config = {"recipe": asdict(recipe), "run": asdict(options), "argv": sys.argv[1:]}
    atomic_write(run_dir / "config.json", json.dumps(config, indent=2) + "\n")


def read_config(run_dir: Path) -> tuple[Recipe, RunOptions]:
    """The recipe and options a run was started with.

    Raises:
        FastCifarError: the directory holds no readable config.json.
    """
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
        return Recipe(**config["recipe"]), RunOptions(**config["run"])
    except FileNotFoundError:
        raise FastCifarError(
            f"{run_dir} is not a run directory (no config.json): pass --resume with a "
            f"directory that fastcifar.train created"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FastCifarError(f"{path} is not a fastcifar config ({exc}): start a new run") from None
