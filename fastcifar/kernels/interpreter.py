"""What the Triton interpreter (``TRITON_INTERPRET=1``, the CPU path of every kernel
test) does differently from a GPU in the kernels' arithmetic, and its correction.

float32 -> bfloat16. On a GPU, ``x.to(tl.bfloat16)`` rounds to nearest, ties to even
(``triton.language.semantic.cast`` lowers it to ``fptrunc``; PTX ``cvt.rn.bf16.f32``),
as ``torch.Tensor.to(torch.bfloat16)`` does. The interpreter (triton 3.6 and 3.8,
``InterpreterBuilder.cast_impl``) drops the low 16 bits instead: rounding toward zero,
with twice the error and always the same sign. Measured here (2026-12-06, triton 3.8):
522 of 1,024 random float32 values converted differently from torch, mean signed
relative error -9.4e-5 against torch's -1.9e-5. A bias of one sign adds up in every
sum: a depthwise convolution fed by a BatchNorm-and-activation prologue (each activation
rounded to bfloat16, as PyTorch's BatchNorm writes it) erred 5.9e-3 against float64
where the same arithmetic with nearest rounding errs 2.2e-3, and a block's input
gradient through it 0.09 where PyTorch's errs 0.02: an error of the interpreter, not of
the kernels.

``round_bfloat16_to_nearest_even()`` makes the interpreter's float32 -> bfloat16
conversion round as the GPU does; ``launch.launch`` calls it before the first launch
under the interpreter. Nothing changes on a GPU, where the interpreter is not used.
"""

from __future__ import annotations

import numpy as np

__all__ = ["round_bfloat16_to_nearest_even", "to_bfloat16_bits"]

_installed = False


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` (any shape) rounded to bfloat16, nearest with ties to even, as
    their uint16 bit patterns; NaN stays a (quiet) NaN, overflow rounds to infinity.

    Args:
        values: a float32 array.

    Returns:
        A uint16 array of ``values``' shape.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    # add just under half of the dropped part's unit, plus the kept part's lowest bit
    # (ties go to the even neighbour); a carry into the exponent is the right rounding
    rounded = (bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if np.any(nan):
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


def round_bfloat16_to_nearest_even() -> None:
    """Make the Triton interpreter's float32 -> bfloat16 conversion round to nearest,
    ties to even (once per process; other conversions are left to the interpreter).
    Raises nothing: where the interpreter's internals are not as expected (another
    triton version), it is left as it is."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover
        return
    builder = getattr(interpreter, "InterpreterBuilder", None)
    handle = getattr(interpreter, "TensorHandle", None)
    original = getattr(builder, "cast_impl", None)
    if original is None or handle is None:  # pragma: no cover
        return

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return handle(to_bfloat16_bits(src.data), dst_type.scalar)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl
