"""Train a CIFAR-10 recipe: ``python -m fastcifar.train --amp --compile``.

Loads CIFAR-10 (``--data``, ``$FASTCIFAR_DATA`` or the cache directory; ``--download``
fetches the official set), trains the recipe (default ``s7``) with a progress bar and a
test evaluation every epoch, and writes the run directory described in
``fastcifar.engine``. ``--resume RUN_DIR`` continues a stopped run from its last
completed epoch. Every recipe field has a flag (``--lr``, ``--batch-size``, ...).

Under ``torchrun --nproc_per_node N -m fastcifar.train ...`` it trains data-parallel
(``fastcifar.distributed``): the recipe's batch is the global batch, rank 0 writes the
run directory, and ``--resume`` needs the same number of processes.

Bad input ends the program with one line naming the problem and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
import types
import typing
from pathlib import Path

from fastcifar import distributed
from fastcifar.data.factory import LOADER_CHOICES
from fastcifar.engine import Trainer
from fastcifar.errors import FastCifarError, run_cli
from fastcifar.recipes import DEFAULT_RECIPE, RECIPE_DOCS, RECIPES, get_recipe, overridable_fields
from fastcifar.rundir import RunOptions, prepare_run_dir, read_config, write_config
from fastcifar.runtime import AMP_DTYPE_CHOICES, KERNEL_CHOICES

_FIELD_HELP = {
    "model": "model name (see fastcifar.models.MODELS)",
    "augmentation": "training augmentation name (see fastcifar.data.AUGMENTATIONS)",
    "batch_size": "images per training batch (>= 1)",
    "epochs": "number of epochs (>= 1)",
    "optimizer": "sgd, adam, or muon (Muon on the conv filters, Nesterov SGD on the rest)",
    "lr": "peak learning rate (OneCycleLR max_lr, else the optimizer's lr; muon: the filters')",
    "momentum": "SGD momentum, Adam's beta1, or (muon) the filters' Muon momentum",
    "bias_lr": "muon: SGD lr of the biases (BatchNorm, whitening); 0 means --lr",
    "head_lr": "muon: SGD lr of the linear head; 0 means --lr",
    "sgd_momentum": "muon: Nesterov momentum of the SGD groups",
    "muon_weight_decay": "muon: decoupled weight decay of the filters, p *= 1 - lr x wd per step",
    "muon_ns_steps": "muon: Newton-Schulz iterations per step",
    "muon_ns": "muon: Newton-Schulz coefficients, record or hiverge",
    "muon_renorm_every": "muon: rescale filters to norm sqrt(C_out) every N steps (0 never)",
    "muon_batched": "muon: one batched Newton-Schulz over zero-padded filters",
    "loss_reduction": "mean or sum of the loss over the batch (sum: the record's; lr scales)",
    "last_epoch_fraction": "train only this fraction of the last epoch's steps (0 < x <= 1)",
    "tta_fraction": "TTA only on this least-confident fraction of the test images",
    "whiten_images": "whitening nets: training images the patch covariance is taken over",
    "whiten_bias_epochs": "whitening nets: epochs the whitening bias trains (then frozen)",
    "compile_mode": "torch.compile mode with --compile: default, max-autotune, ...",
    "compile_step": "with --compile, compile forward + loss as one graph (not only the model)",
    "nesterov": "SGD with Nesterov momentum",
    "ema": "weight averaging: EMA decay per step (0 off); evaluation uses the averaged weights",
    "tta": "test-time augmentation after the last epoch: none, flip (2 views), or "
    "flip_translate (6 views: mirror x {0, +-1 px})",
    "weight_decay": "L2 weight decay through the optimizer (muon: each SGD group gets it / its lr)",
    "scheduler": "onecycle, linear (1 -> 0, no warm-up; both per batch), step, plateau (per "
    "epoch) or constant",
    "pct_start": "OneCycleLR: fraction of steps spent rising to the peak",
    "div_factor": "OneCycleLR: the start lr is lr / div_factor",
    "final_div_factor": "OneCycleLR: the final lr is start lr / final_div_factor",
    "anneal_strategy": "OneCycleLR: cos or linear",
    "cycle_momentum": "OneCycleLR: cycle momentum between 0.85 and 0.95",
    "step_size": "StepLR: epochs between decays",
    "gamma": "StepLR: decay factor",
    "plateau_factor": "ReduceLROnPlateau (on test accuracy): decay factor",
    "plateau_patience": "ReduceLROnPlateau: epochs without improvement before a decay",
    "loss": "nll (for log-probability models) or cross_entropy",
    "label_smoothing": "label smoothing of the loss, 0 <= x < 1",
    "l1": "factor of the L1 term: sum over parameter tensors of mean(|p|)",
    "drop_last": "drop the last partial training batch",
    "seed": "seed for initialisation, data order and augmentation",
    "lr_find": "run an LR range test (torch-lr-finder) first and train with its suggested lr",
    "lr_find_iters": "steps of that LR range test (default 200, as seed 003)",
}


def _field_type(field: dataclasses.Field):
    hints = typing.get_type_hints(type("H", (), {"__annotations__": {"x": field.type}}))
    t = hints["x"]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {name:<12} {RECIPE_DOCS[name].splitlines()[0]}" for name in RECIPES)
    p = argparse.ArgumentParser(
        prog="python -m fastcifar.train",
        description="Train a CIFAR-10 classifier from a named recipe.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"recipes (default {DEFAULT_RECIPE}):\n{recipes}",
    )
    p.add_argument("--recipe", help=f"recipe name (default {DEFAULT_RECIPE})")
    p.add_argument(
        "--data",
        help="CIFAR-10 source: cifar-10-batches-py directory, image-folder "
        "tree train/<class>/ test/<class>/, or a .tar/.tar.gz of one "
        "(default: $FASTCIFAR_DATA, else the cache directory)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the official CIFAR-10 with torchvision when --data holds none",
    )
    p.add_argument(
        "--train-subset",
        type=int,
        metavar="N",
        help="train on a stratified subset of N training images (quick runs)",
    )
    p.add_argument(
        "--test-subset",
        type=int,
        metavar="N",
        help="evaluate on a stratified subset of N test images (quick runs)",
    )
    p.add_argument("--out", help="run directory (default runs/<recipe>-<date>-<time>)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last completed epoch, with its own config",
    )
    p.add_argument("--device", help="auto (CUDA if present, default), cpu, cuda or cuda:N")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision: bfloat16 autocast where supported (CPU, Ampere and "
        "newer GPUs), else float16 with a gradient scaler",
    )
    p.add_argument(
        "--amp-dtype",
        choices=AMP_DTYPE_CHOICES,
        default="auto",
        help="autocast dtype with --amp (auto: bfloat16 where native, float16 on "
        "older GPUs, float32 on a CPU without bfloat16 instructions)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model; on failure say why and continue eagerly",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on with --amp)",
    )
    p.add_argument(
        "--loader",
        choices=LOADER_CHOICES,
        default=None,
        help="training loader: gpu (data set resident on the device, batched flip/"
        "translate/cutout), dali (NVIDIA DALI pipeline, GPU or CPU-only), albumentations "
        "(CPU workers), or auto (gpu on CUDA when the recipe's augmentation allows, else "
        "dali when installed, else albumentations)",
    )
    p.add_argument(
        "--workers", type=int, help="data loader worker processes (default: cores, at most 8)"
    )
    p.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        default=None,
        help="convolutions: triton (our kernels, validated against PyTorch before training), "
        "torch, or auto (on CUDA: each conv configuration and fusable block timed, Triton "
        "against cuDNN, the faster kept, cached per GPU/driver/versions; torch elsewhere); "
        "triton on a CPU uses the Triton interpreter (slow, for tests)",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, "
        "CUDA only); off by default, as the speed records train with per-GPU statistics",
    )
    p.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after training, write the evaluation figures and report.html into "
        "the run directory (python -m fastcifar.evaluate; default on)",
    )
    p.add_argument(
        "--cam-layers",
        help="comma-separated Grad-CAM layers for the evaluation "
        "(default: the model's last convolutional block)",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="log scalars, the misclassified grid and the CAMs to RUN_DIR/tensorboard",
    )
    group = p.add_argument_group("recipe fields (override the recipe's value)")
    for f in overridable_fields():
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(f)
        if t is bool:
            group.add_argument(
                flag,
                dest=f"r_{f.name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=_FIELD_HELP.get(f.name),
            )
        else:
            group.add_argument(
                flag,
                dest=f"r_{f.name}",
                type=t,
                default=None,
                metavar=f.name.upper(),
                help=_FIELD_HELP.get(f.name),
            )
    return p


def _recipe_overrides(args: argparse.Namespace) -> dict:
    return {
        f.name: getattr(args, f"r_{f.name}")
        for f in overridable_fields()
        if getattr(args, f"r_{f.name}") is not None
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = _recipe_overrides(args)
    if args.workers is not None and args.workers < 0:
        raise FastCifarError(f"--workers {args.workers} is negative: pass 0 or more")
    # under torchrun: join the process group; rank 0 alone prints and writes
    world = distributed.init_from_env(args.device or "auto")
    if not world.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        return _train(args, overrides, world)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, overrides: dict, world: distributed.World) -> int:
    created = False
    if args.resume:
        run_dir = Path(args.resume)
        recipe, options = read_config(run_dir)
        if args.recipe and args.recipe != recipe.name:
            raise FastCifarError(
                f"{run_dir} was made with recipe {recipe.name}, not {args.recipe}: drop "
                f"--recipe to resume it, or start a new run with another --out"
            )
        changed = {k: v for k, v in overrides.items() if getattr(recipe, k) != v}
        if changed:
            names = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise FastCifarError(
                f"{names} differ from the run being resumed: a resumed run keeps its recipe; "
                f"start a new run with another --out to change them"
            )
        if (run_dir / "summary.json").exists():
            print(f"{run_dir} has already finished all {recipe.epochs} epochs; nothing to do")
            return 0
        if args.device:
            options.device = args.device
        if args.workers is not None:
            options.workers = args.workers
        if options.world_size != world.size:
            raise FastCifarError(
                f"{run_dir} was trained by {options.world_size} process(es), this is "
                f"{world.size}: resume it with torchrun --nproc_per_node {options.world_size}"
                if options.world_size > 1 else
                f"{run_dir} was trained by 1 process, this is {world.size}: resume it "
                f"without torchrun"
            )  # fmt: skip
        if world.is_main:
            prepare_run_dir(run_dir, resume=True)
    else:
        recipe = get_recipe(args.recipe or DEFAULT_RECIPE).replace(**overrides).validate()
        options = RunOptions(
            data=args.data,
            download=args.download,
            train_subset=args.train_subset,
            test_subset=args.test_subset,
            device=args.device or "auto",
            amp=bool(args.amp),
            amp_dtype=args.amp_dtype,
            compile=bool(args.compile),
            channels_last=args.channels_last,
            workers=args.workers,
            kernels=args.kernels or "auto",
            tensorboard=args.tensorboard,
            loader=args.loader or "auto",
            world_size=world.size,
            sync_bn=args.sync_bn,
        )
        if args.train_subset is not None and args.train_subset < 1:
            raise FastCifarError(f"--train-subset {args.train_subset} is below 1: pass 1 or more")
        if args.test_subset is not None and args.test_subset < 1:
            raise FastCifarError(f"--test-subset {args.test_subset} is below 1: pass 1 or more")
        default = f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.out or distributed.broadcast_object(default))  # one name for all
        created = not run_dir.exists()
        if world.is_main:
            prepare_run_dir(run_dir, resume=False)
        options.out = str(run_dir)
    distributed.barrier()  # the run directory exists before any rank goes on

    try:
        trainer = Trainer(recipe, options, run_dir, resume=bool(args.resume), world=world)
    except BaseException:
        if created and world.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not args.resume and world.is_main:
        write_config(run_dir, trainer.recipe, trainer.options, trainer.kernel_dispatch)
    t = trainer
    print(
        f"train: recipe {recipe.name}, model {recipe.model}, {len(t.train_loader.dataset)} train / "
        f"{len(t.test_loader.labels)} test images, batch {recipe.batch_size}, {recipe.epochs} "
        f"epochs, device {t.device}, amp {t.amp_dtype if t.amp else 'off'}, "
        f"channels_last {t.channels_last}, compile {options.compile}, kernels {t.kernels}, "
        f"run dir {run_dir}",
        flush=True,
    )
    summary = trainer.fit()
    if not world.is_main:
        return 0
    if args.evaluate:
        from fastcifar.evaluate import evaluate_run

        layers = args.cam_layers.split(",") if args.cam_layers else None
        evaluate_run(run_dir, cam_layers=layers, device=str(trainer.device))
        print(f"evaluation: figures and report in {run_dir / 'report.html'}")
    if recipe.name.startswith("speedrun"):
        print(
            f"speedrun: {summary['timed_span_s']:.2f} s on {summary['device']} (whitening "
            f"{summary['whiten_time_s']:.2f} + training {summary['train_time_s']:.2f} + final "
            f"TTA {summary['tta_time_s']:.2f}; timed with "
            f"{'CUDA events' if trainer.device.type == 'cuda' else 'the wall clock'}; compile "
            f"warm-up {summary['compile_time_s']:.1f} s and per-epoch evaluation excluded); "
            f"final test accuracy {summary['final_test_acc']:.2f}%"
        )
    expected = f" (seed reported {recipe.expected_accuracy}%)" if recipe.expected_accuracy else ""
    print(
        f"done: test accuracy {summary['final_test_acc']:.2f}% final, "
        f"{summary['best_test_acc']:.2f}% best{expected}; {summary['mean_images_per_s']:.0f} "
        f"img/s; {summary['total_time_s']:.1f} s; run dir {run_dir}"
    )
    return 0


def cli() -> int:
    """The ``fastcifar-train`` console script: bad input ends in one line, exit 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
