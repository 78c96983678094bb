"""A recipe's training step as the roofline counts it, and the count a run's report
shows ("Where the time goes"): on a GPU run, the path the run used on its own GPU; on a
CPU run, the eager path on the GPU ``--roofline-gpu`` names, or none.

``roofline.json`` / ``roofline.png`` in a run directory hold one row. A run's path:
``compile`` for ``--compile`` with Inductor (``fastcifar`` with ``--kernels triton``
too), else ``eager`` (``--compile`` with another backend runs PyTorch's kernels). The
GPU's dtype stands in for ``--amp`` (bfloat16; float16 when ``--amp-dtype float16``;
float32 without ``--amp``), channels_last unless the run turned it off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from fastcifar import _io
from fastcifar.engine.averaging import make_ema
from fastcifar.engine.muon import Muon
from fastcifar.engine.optim import criterion, make_optimizer, newton_schulz_dtype
from fastcifar.models import create_model
from fastcifar.roofline.count import count_step
from fastcifar.roofline.gpus import Gpu, get_gpu, gpu_for_device
from fastcifar.roofline.ledger import StepSetup

__all__ = ["cache_dir", "count_run", "recipe_setup", "report_target", "run_path"]


def recipe_setup(
    recipe, batch_size: int | None = None, amp_dtype=torch.bfloat16, channels_last: bool = True
) -> StepSetup:
    """One training step of ``recipe``: its model (freshly initialised: values do not
    change a count), loss, optimizer and EMA, at ``batch_size`` (default the recipe's).

    Args:
        recipe: the recipe.
        batch_size: images a step, or None for the recipe's.
        amp_dtype: the autocast dtype, or None (float32).
        channels_last: the step's layout.

    Returns:
        The ``StepSetup``.
    """
    torch.manual_seed(recipe.seed)
    return StepSetup(
        create_model(recipe.model),
        recipe.model,
        criterion(recipe.loss, recipe.label_smoothing),
        lambda m: cuda_optimizer(m, recipe),
        batch_size or recipe.batch_size,
        amp_dtype,
        channels_last=channels_last,
        ema=(lambda m: make_ema(m, recipe.ema)) if recipe.ema else None,
    )


def cuda_optimizer(model: torch.nn.Module, recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer as a CUDA run builds it, whatever this host's CPU: Muon's
    Newton-Schulz in ``newton_schulz_dtype("cuda")`` (bfloat16), not in the dtype the
    counting host's CPU would take (float32 where it lacks bfloat16 instructions: counted
    so, a speed run's step moved 96.5-176.9 MB more on one host than on another).

    Args:
        model: the model.
        recipe: the recipe (its optimizer and hyper-parameters).

    Returns:
        The optimizer.
    """
    optimizer = make_optimizer(model, recipe)
    if isinstance(optimizer, Muon):
        optimizer.ns_dtype = newton_schulz_dtype("cuda")
    return optimizer


def run_path(options) -> str:
    """The roofline path a run with ``options`` (``RunOptions``) took.

    Args:
        options: the run's ``RunOptions``.

    Returns:
        ``"fastcifar"`` or ``"compile"`` (a compiled run), else ``"eager"``.
    """
    if options.compile and options.compile_backend == "inductor":
        return "fastcifar" if options.kernels == "triton" else "compile"
    return "eager"


def cache_dir() -> Path:
    """Where compile-path counts are kept between runs: ``roofline/`` in the project's
    cache directory (``fastcifar._io.cache_dir``: ``$FASTCIFAR_CACHE``, else
    ``$XDG_CACHE_HOME/fastcifar``, else ``~/.cache/fastcifar``).

    Returns:
        The folder (not made here).
    """
    return _io.cache_dir() / "roofline"


def _cache_key(recipe, setup: StepSetup, path: str, gpu: Gpu) -> str:
    """A digest of everything a count depends on: the recipe, batch, dtype, layout, path,
    the GPU lowered for, torch's version and the roofline's own source (a rule change
    recounts)."""
    source = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        source.update(module.read_bytes())
    key = {
        "recipe": dataclasses.asdict(recipe),
        "batch": setup.batch_size,
        "path": path,
        "gpu": gpu.key,
        "dtype": setup.dtype_name,
        "channels_last": setup.channels_last,
        "torch": torch.__version__,
        "source": source.hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def report_target(options, device: str) -> tuple[Gpu | None, str]:
    """(GPU, path) a run's report models: a GPU run, its own GPU (``gpu_for_device`` on
    the device summary.json names) and path; a CPU run, the eager path on the GPU
    ``options.roofline_gpu`` names (the compile paths would cost an Inductor compile on the
    CPU for a GPU the run never used), or no GPU at all when it names none. An asked GPU
    wins over the run's own. A GPU without a CUDA profile (the MI300X) gets the eager
    path: the compile paths lower for CUDA only.

    Args:
        options: the run's ``RunOptions``.
        device: the device summary.json names.

    Returns:
        (GPU or None, path).
    """
    on_gpu = bool(device) and not device.lower().startswith("cpu")
    gpu, path = None, "eager"
    if options.roofline_gpu:
        gpu, path = get_gpu(options.roofline_gpu), run_path(options) if on_gpu else "eager"
    elif on_gpu:
        gpu, path = gpu_for_device(device), run_path(options)
    if gpu is not None and gpu.cuda is None:
        path = "eager"
    return gpu, path


def count_run(run_dir: Path, recipe, options, device: str = "") -> dict | None:
    """Count the step a run's report models (``report_target``: ``device`` is the device
    summary.json names) at the recipe's batch, write ``roofline.json`` and ``roofline.png``
    into ``run_dir``; returns the JSON row, or None (nothing to model: any earlier
    roofline.json and roofline.png are removed). A compile path's count (an Inductor
    compile on the CPU, a minute or two) is kept in ``cache_dir()`` and reused by later
    runs of the same recipe, batch, dtype, layout and torch.

    Args:
        run_dir: the run directory.
        recipe: the run's recipe.
        options: its ``RunOptions``.
        device: the device summary.json names.

    Returns:
        The JSON row, or None.
    """
    from fastcifar.roofline.figure import plot_roofline
    from fastcifar.roofline.result import row, steps_per_epoch

    gpu, path = report_target(options, device)
    if gpu is None:
        for name in ("roofline.json", "roofline.png"):
            (Path(run_dir) / name).unlink(missing_ok=True)
        return None
    amp = None
    if options.amp:
        amp = torch.float16 if options.amp_dtype == "float16" else torch.bfloat16
    setup = recipe_setup(recipe, amp_dtype=amp, channels_last=options.channels_last is not False)
    cached = None
    if path != "eager":
        cached = cache_dir() / f"{_cache_key(recipe, setup, path, gpu)}.json"
    if cached is not None and cached.exists():
        out = json.loads(cached.read_text())
    else:
        if cached is not None:
            where = cached.parent
            print(
                f"evaluate: counting the {path} path's bytes for the report (Inductor "
                f"lowering for the {gpu.name} on the CPU; kept in {where} for later runs)",
                flush=True,
            )
        count = count_step(setup, [path], gpu=gpu)[path]
        out = row(count, gpu, steps_per_epoch(setup.batch_size, recipe.drop_last))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(out))
    (Path(run_dir) / "roofline.json").write_text(json.dumps({"rows": [out]}, indent=1))
    plot_roofline([out], gpu, Path(run_dir) / "roofline.png")
    return out
