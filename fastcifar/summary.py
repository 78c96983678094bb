"""``python -m fastcifar.summary --model NAME``: a layer summary and a receptive-field table.

The layer summary comes from torchinfo's per-layer statistics (output shape, kernel,
trainable parameters and multiply-adds of every leaf layer for one 32x32 image), its rows
named as the receptive-field table names them; the receptive-field table is
``fastcifar.models.receptive``'s: per convolution or pooling, kernel, stride, dilation, padding,
jump, receptive field and output size, as seed 002's table lays it out.
"""

from __future__ import annotations

import sys

from fastcifar.cli import CommandParser, prog_name
from fastcifar.errors import run_cli
from fastcifar.models import MODELS, count_parameters, create_model
from fastcifar.models.receptive import format_rf_table, receptive_field_table


def _dotted_name(info) -> str:
    """A torchinfo row's module name as ``named_modules`` gives it (``convblock1A.0``): the
    name the receptive-field table uses."""
    names = []
    while info is not None and info.parent_info is not None:
        names.append(info.var_name)
        info = info.parent_info
    return ".".join(reversed(names))


def layer_summary(model, input_size: int = 32) -> str:
    """One row per leaf layer (name as in the receptive-field table, type, output shape for
    one (1, 3, input_size, input_size) image, kernel, trainable parameters, multiply-adds),
    from torchinfo's per-layer statistics, then the totals in their units.

    Args:
        model: any model taking (N, 3, H, W) images.
        input_size: the image side, pixels.

    Returns:
        The table (torchinfo's), as text.
    """
    from torchinfo import summary

    stats = summary(
        model, input_size=(1, 3, input_size, input_size), depth=64, verbose=0, device="cpu"
    )
    header = (
        f"{'layer':<24} {'type':<18} {'output':<18} {'kernel':<8} {'params':>10} {'mult-adds':>12}"
    )
    lines = [header, "-" * len(header)]
    for info in stats.summary_list:
        if not info.is_leaf_layer or info.parent_info is None:
            continue
        shape = "x".join(str(d) for d in info.output_size[1:]) if info.output_size else "-"
        size = info.kernel_size
        kernel = "x".join(map(str, size)) if isinstance(size, list | tuple) else str(size or "-")
        lines.append(
            f"{_dotted_name(info):<24} {info.class_name:<18} {shape:<18} {kernel:<8} "
            f"{info.trainable_params:>10,} {info.macs:>12,}"
        )
    lines += [
        "-" * len(header),
        f"trainable parameters {stats.trainable_params:,} of {stats.total_params:,}; "
        f"{stats.total_mult_adds / 1e6:,.2f} million multiply-adds per image; parameters "
        f"{stats.total_param_bytes / 2**20:.2f} MiB, activations (forward and backward) "
        f"{stats.total_output_bytes / 2**20:.2f} MiB per image in float32",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcifar.summary``: a model's layers, parameters and receptive field.

    Args:
        argv: the command-line arguments (``--help`` lists them); None reads ``sys.argv``.

    Returns:
        0.

    Raises:
        FastCifarError: an unknown model.
    """
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
