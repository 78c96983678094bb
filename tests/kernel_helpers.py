"""What the kernel tests share: the device, the norm-wise relative error, the bound a
float16/bfloat16 result is judged by, and random conv inputs."""

from __future__ import annotations

import torch

# Triton kernels run on CUDA, or under the interpreter on the CPU (tests/conftest.py)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# unit roundoff of the 16-bit dtypes
UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error of ``a`` against the float64 reference ``ref``."""
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def low_precision_bound(torch_error: float, dtype: torch.dtype) -> float:
    """What a float16/bfloat16 kernel result may err by: 3x PyTorch's own error in that
    dtype on the same inputs, or 4 units of roundoff, whichever is larger (sums over
    N*H*W terms make element-wise bounds wrong)."""
    return max(3 * torch_error, 4 * UNIT[dtype])


def conv_inputs(cfg, dtype, channels_last, bias=True, seed=0):
    """(x, weight, bias or None) for ``cfg`` = (N, CIN, COUT, H, W, stride, padding,
    dilation, groups[, K]) (K x K kernel, default 3) on ``DEVICE`` in ``dtype``, x
    channels_last when asked."""
    n, cin, cout, h, w, _, _, _, g = cfg[:9]
    k = cfg[9] if len(cfg) > 9 else 3
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen).to(DEVICE, dtype)
    wt = (torch.randn(cout, cin // g, k, k, generator=gen) / k).to(DEVICE, dtype)
    b = torch.randn(cout, generator=gen).to(DEVICE, dtype) if bias else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, wt, b
