"""One float64 training step of a speed run's own network, its blocks chained against
PyTorch's modules.

    python scripts/speedrun_f64_step.py [--model speedrun94_progressive] [--size 24] [--batch 8]

Builds the model at its full widths (every BatchNorm bias drawn in [-0.5, 0.5], so that
the activations' kinks and curves are exercised), converts a copy's blocks with
``fastcifar.nn.pool_chain.fuse_pooled_blocks`` (each convolution's max pool, BatchNorm
statistics and window positions in its epilogue, the next BatchNorm and activation in the
next convolution's prologue, the head's global max through the prologue), and runs one
training forward and backward of each on the same random float64 batch. Prints, per
tensor (output, input gradient, each trainable parameter's gradient, each running
statistic), the max-norm difference relative to PyTorch's, and the largest. On a CPU the
kernels run in the Triton interpreter: about 20 minutes for speedrun94_progressive at
24 px and batch 8 on a 2-core machine (tests/nn/test_pool_chain.py runs the same check
at widths 16 in seconds).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if not torch.cuda.is_available():  # the interpreter, chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastcifar.models import create_model  # noqa: E402
from fastcifar.nn.pool_chain import fuse_pooled_blocks  # noqa: E402


def one_step(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient, trainable parameters' gradients and running statistics of
    one training forward and backward; the output's gradient is drawn from a fixed seed."""
    x = x.detach().requires_grad_()
    out = model(x)
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    (out * weight).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    stats = [b for name, b in model.named_buffers() if "running" in name]
    return [out, x.grad, *grads, *stats]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="speedrun94_progressive")
    parser.add_argument("--size", type=int, default=24, help="image size in pixels")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = create_model(args.model)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.bias, -0.5, 0.5)
    net = net.double().to(device)
    ours = copy.deepcopy(net)
    print("chained blocks:", ", ".join(fuse_pooled_blocks(ours)) or "none")
    x = torch.randn(args.batch, 3, args.size, args.size, dtype=torch.float64, device=device)
    start = time.time()
    got = one_step(ours, x)
    print(f"chained step: {time.time() - start:.1f} s on {device}")
    want = one_step(net, x)
    names = ["output", "input gradient"]
    names += [f"{n} gradient" for n, p in net.named_parameters() if p.requires_grad]
    names += [n for n, _ in net.named_buffers() if "running" in n]
    worst = 0.0
    for name, a, b in zip(names, got, want, strict=True):
        rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
        worst = max(worst, rel)
        print(f"  {name:36s} {rel:.1e}")
    print(f"largest relative difference: {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
