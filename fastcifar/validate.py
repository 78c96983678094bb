"""``python -m fastcifar.validate --model NAME``: validate the Triton convolutions on every
distinct convolution configuration of a fastcifar model against PyTorch, forward and
backward, and print the table (``fastcifar.kernels.validate`` does the work).

Without a GPU it turns on the Triton interpreter (slow: batch 2 unless ``--batch`` says
otherwise). Exits 1 when a configuration fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from fastcifar.cli import CommandParser, interpret_triton_on_cpu, prog_name
from fastcifar.errors import FastCifarError, run_cli


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.validate``: the Triton convolutions against PyTorch on every
    distinct convolution configuration of a model, forward and backward.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0 when every configuration matched within its dtype's bound, 1 otherwise.

    Raises:
        FastCifarError: ``--batch`` below 1, or an unknown model.
    """
    p = CommandParser(
        prog=prog_name("fastcifar.validate"),
        description="Validate the Triton convolutions on every distinct conv configuration "
        "of a model against PyTorch, forward and backward.",
    )
    p.add_argument("--model", default="s7", help="model name (default s7)")
    p.add_argument("--batch", type=int, help="batch size (default 128 on CUDA, 2 on the CPU)")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float16", "bfloat16", "float64")
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format (default on)",
    )
    p.add_argument("--device", default="auto", help="auto, cuda or cpu (interpreter)")
    args = p.parse_args(argv)
    interpret_triton_on_cpu(args.device)  # before fastcifar.kernels imports triton
    from fastcifar.kernels.validate import collect_conv_configs, format_table, validate_configs
    from fastcifar.models import create_model

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    batch = args.batch or (128 if device.type == "cuda" else 2)
    if batch < 1:
        raise FastCifarError(f"--batch {batch} is below 1: pass 1 or more")
    dtype = getattr(torch, args.dtype)
    model = create_model(args.model).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    example = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    configs = collect_conv_configs(model.to(memory_format=fmt), example, dtype)
    results = validate_configs(configs, device)
    print(
        f"{args.model}: {len(configs)} distinct Triton conv configurations, batch {batch}, "
        f"device {device}"
    )
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"FAILED: {failed[0].layers[0]}: {failed[0].message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
