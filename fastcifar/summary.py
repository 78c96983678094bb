"""``python -m fastcifar.summary --model NAME``: a layer summary and a receptive-field table.

The layer summary is torchinfo's (output shapes and parameters per layer, for input
(1, 3, 32, 32)); the receptive-field table is ``fastcifar.receptive``'s: per convolution
or pooling, kernel, stride, dilation, padding, jump, receptive field and output size, as
seed 002's table lays it out.
"""

from __future__ import annotations

import sys

from fastcifar.cli import CommandParser, prog_name
from fastcifar.errors import run_cli
from fastcifar.models import MODELS, count_parameters, create_model
from fastcifar.receptive import format_rf_table, receptive_field_table


def layer_summary(model, input_size: int = 32) -> str:
    from torchinfo import summary

    stats = summary(
        model,
        input_size=(1, 3, input_size, input_size),
        col_names=("output_size", "kernel_size", "num_params"),
        depth=3,
        verbose=0,
        device="cpu",
    )
    return str(stats)


def main(argv: list[str] | None = None) -> int:
    p = CommandParser(
        prog=prog_name("fastcifar.summary"),
        description="Print a model's layer summary and receptive-field table.",
    )
    p.add_argument("--model", default="s7", help=f"one of {', '.join(MODELS)} (default s7)")
    args = p.parse_args(argv)
    model = create_model(args.model)
    print(layer_summary(model))
    print()
    rows = receptive_field_table(model)
    print(format_rf_table(rows))
    print(
        f"\n{args.model}: {count_parameters(model):,} parameters; receptive field "
        f"{rows[-1].receptive_field} input pixels at the output"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
