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


# ------------------------------------------------------------- the second stack's sample

# parameters whose every value runs the same code under the interpreter (a target changes
# only tile sizes): the sample keeps the first
SAMPLED_ONCE = ("target",)


def sample_key(name: str, value) -> object:
    """What a parameter value stands for in the stack sample (``stack_sample``): a
    convolution configuration ``(N, CIN, COUT, H, W, stride, padding, dilation, groups[,
    K])`` stands for its kernel family and window size; anything else for itself."""
    from fastcifar.kernels.conv_launch import family

    if name in SAMPLED_ONCE:
        return None
    if (
        isinstance(value, tuple)
        and len(value) in (9, 10)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        _, cin, cout, _, _, stride, _, _, groups, *k = value
        return family(cin, cout, groups, stride), (k or [3])[0]
    return repr(value)


def stack_sample(items: list) -> list:
    """The kernel tests a second torch/triton stack runs: per test function, the cases that
    bring a (parameter, value) not yet seen, values standing for ``sample_key``'s: every
    kernel family, window size, dtype and layout at least once, not their cross product."""
    seen: dict[str, set] = {}
    kept = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        keys = {(n, sample_key(n, v)) for n, v in params.items()}
        group = seen.setdefault(f"{item.path}::{item.originalname}", set())
        if not group or not keys <= group:
            group |= keys
            kept.append(item)
    return kept
