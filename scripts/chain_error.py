"""Whole-network error of the conv-BN-activation chains, next to PyTorch's own.

    TRITON_INTERPRET=1 python scripts/chain_error.py --model regnetx_200mf [--batch 4]

Builds the model with every BatchNorm's weight and bias drawn at random (so that no
chain is an identity), converts a copy with ``fastcifar.nn.chain.fuse_conv_bn_act`` and runs
one training forward and backward of each on the same batch of random 32 x 32 images:
float64 PyTorch (the reference), float32 PyTorch and float32 with the chains. Prints the
norm-wise relative error against the reference of the output and the worst over the
input and parameter gradients, for the chains and for PyTorch. On a CPU the chains run
in the Triton interpreter (minutes for the model zoo's larger networks); on a GPU, where
one is present, everything runs there. Small batches make BatchNorm's gradients
ill-conditioned (both sides err more); at 2 images ReLU kinks dominate (RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastcifar.models import MODELS, create_model  # noqa: E402
from fastcifar.nn.chain import fuse_conv_bn_act  # noqa: E402


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


def _step(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of one training step; the output's
    gradient is drawn from a fixed seed."""
    x = x.detach().requires_grad_()
    y = model(x)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
    return [y, *torch.autograd.grad((y * gy).sum(), [x, *model.parameters()])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("chain_error: no GPU here; run with TRITON_INTERPRET=1 to use the interpreter")
        return 2
    torch.manual_seed(0)
    model = create_model(args.model)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen)
    fused = copy.deepcopy(model)
    links = fuse_conv_bn_act(fused)
    if not links:
        print(f"chain_error: {args.model} has no conv-BN-activation chain; nothing to compare")
        return 2
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    exact = _step(copy.deepcopy(model).double().to(device), x.double().to(device))
    theirs = _step(copy.deepcopy(model).to(device), x.to(device))
    ours = _step(fused.to(device), x.to(device))
    for label, got in (("chains", ours), ("PyTorch", theirs)):
        grads = max(_relative(a, r) for a, r in zip(got[1:], exact[1:], strict=True))
        print(
            f"{args.model} ({len(links)} links), batch {args.batch}, float32 on {device}, "
            f"{label}: output {_relative(got[0], exact[0]):.2e}, worst gradient "
            f"{grads:.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
