"""fastcifar.kernels.interpreter: under the Triton interpreter a kernel's float32 ->
bfloat16 conversion rounds as a GPU's (and torch's) does, to nearest with ties to even."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastcifar.kernels.interpreter import round_bfloat16_to_nearest_even, to_bfloat16_bits
from fastcifar.kernels.tiles import interpreted

# a tie (1 + 2^-8 lies halfway between two bfloat16 values: to the even one), a tie that
# rounds up (1 + 3 * 2^-8), a carry into the exponent, the largest float32 (to infinity),
# a subnormal, signed zero, infinities and NaN
SPECIAL = [
    1.00390625,
    1.01171875,
    1.9990234375,
    255.5,
    3.4028235e38,
    1e-40,
    -0.0,
    float("inf"),
    -float("inf"),
    float("nan"),
]


def _values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat(
        [
            torch.randn(4000, generator=g)
            * 10 ** torch.randint(-30, 30, (4000,), generator=g).float(),
            torch.tensor(SPECIAL),
        ]
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    both_nan = torch.isnan(a.float()) & torch.isnan(b.float())
    return (a.view(torch.int16) == b.view(torch.int16)) | both_nan


def test_bits_are_torchs_rounding():
    x = _values()
    bits = torch.from_numpy(to_bfloat16_bits(x.numpy()).view(np.int16))
    assert bool(_same(bits.view(torch.bfloat16), x.to(torch.bfloat16)).all())


@pytest.mark.skipif(not interpreted(), reason="the interpreter's conversion (no GPU here)")
def test_an_interpreted_kernel_rounds_to_bfloat16_as_torch():
    import triton
    import triton.language as tl

    @triton.jit
    def to_bf16(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(tl.bfloat16), mask=mask)

    round_bfloat16_to_nearest_even()
    x = _values()
    y = torch.empty(len(x), dtype=torch.bfloat16)
    to_bf16[(1,)](x, y, len(x), BLOCK=triton.next_power_of_2(len(x)))
    assert bool(_same(y, x.to(torch.bfloat16)).all())
