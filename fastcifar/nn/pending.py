"""A BatchNorm and activation not yet applied (layer 2): ``Pending``, what a chain's
producer hands its consumer, and the PyTorch autograd functions that apply it where no
kernel does (``fastcifar.nn.chain``): materialised, pooled for a squeeze-excitation gate,
gated. Each saves the raw tensor and the (C, 3) prologue, never the normalised or the
activated tensor, and recomputes the affine map in its backward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from fastcifar.kernels.conv_bn import prologue_grad
from fastcifar.kernels.launch import acc_dtype, memory_format

__all__ = ["Pending", "gated", "global_max", "pooled_activation"]


class Pending(NamedTuple):
    """A BatchNorm and activation not yet applied: ``act((raw - center) * scale + shift)``.

    Attributes:
        raw: (N, C, H, W) the producing convolution's output, its dtype and layout.
        prologue: (C, 3) float32 (float64 for float64 ``raw``): per channel the center (the
            batch mean, or the running mean in eval), the scale (BatchNorm's weight over the
            deviation) and the shift (its bias).
        activation: a name of ``fastcifar.kernels.launch.ACTIVATIONS``.
    """

    raw: torch.Tensor
    prologue: torch.Tensor
    activation: str

    def materialise(self) -> torch.Tensor:
        """The normalised, activated tensor, in ``raw``'s dtype (what an unfused chain
        would have passed on).

        Returns:
            (N, C, H, W) in ``raw``'s dtype and layout.
        """
        return _Materialise.apply(self.raw, self.prologue, self.activation)


_ACTIVATE = {
    "identity": lambda t: t,
    "relu": torch.relu,
    "relu6": lambda t: torch.clamp(t, 0, 6),
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,  # exact (erf), nn.GELU()'s default
}


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    # Phi(z) + z phi(z), the standard normal's CDF and density
    return 0.5 * (1 + torch.erf(z * 0.5**0.5)) + z * torch.exp(-0.5 * z * z) * (2 * math.pi) ** -0.5


# act'(z) of each activation (0 at ReLU's and ReLU6's kinks, as PyTorch takes them)
_ACTIVATE_GRAD = {
    "identity": torch.ones_like,
    "relu": lambda z: (z > 0).to(z.dtype),
    "relu6": lambda z: ((z > 0) & (z < 6)).to(z.dtype),
    "silu": _silu_grad,
    "gelu": _gelu_grad,
}


def _affine(raw: torch.Tensor, prologue: torch.Tensor) -> torch.Tensor:
    # (raw - center) * scale + shift in float32 (float64 for float64 raw)
    acc = acc_dtype(raw.dtype)
    center, scale, shift = (prologue[:, i].view(1, -1, 1, 1).to(acc) for i in range(3))
    return (raw.to(acc) - center) * scale + shift


def _activated(raw: torch.Tensor, prologue: torch.Tensor, activation: str) -> torch.Tensor:
    # act((raw - center) * scale + shift), in the accumulation dtype (not yet rounded)
    return _ACTIVATE[activation](_affine(raw, prologue))


def _prologue_backward(raw, prologue, activation, grad_a) -> tuple[torch.Tensor, torch.Tensor]:
    """(the raw tensor's gradient in its dtype, the (C, 3) prologue's) from ``grad_a``, the
    gradient of ``act((raw - center) * scale + shift)``, as the kernels take it: the
    affine map recomputed, the prologue's gradient from centred sums (float32 autograd
    over ``raw * scale`` would cancel ``sum g raw`` against ``center sum g``)."""
    z = _affine(raw, prologue)
    dz = grad_a.to(z.dtype) * _ACTIVATE_GRAD[activation](z)
    centred = raw.to(dz.dtype) - prologue[:, 0].view(1, -1, 1, 1).to(dz.dtype)
    scale = prologue[:, 1].view(1, -1, 1, 1).to(dz.dtype)
    sums = torch.stack((dz.sum((0, 2, 3)), (dz * centred).sum((0, 2, 3))), dim=1)
    return (dz * scale).to(raw.dtype), prologue_grad(prologue, sums)


class _Materialise(torch.autograd.Function):
    """``act((raw - center) * scale + shift)``, saving only ``raw`` and the (C, 3)
    prologue; the backward recomputes the affine map (``_prologue_backward``)."""

    @staticmethod
    def forward(ctx, raw, prologue, activation):
        ctx.save_for_backward(raw, prologue)
        ctx.activation = activation
        return _activated(raw, prologue, activation).to(raw.dtype)

    @staticmethod
    def backward(ctx, grad):
        raw, prologue = ctx.saved_tensors
        return (*_prologue_backward(raw, prologue, ctx.activation, grad), None)


class _PooledActivation(torch.autograd.Function):
    """The (N, C, 1, 1) spatial mean of ``act((raw - center) * scale + shift)`` in
    ``raw``'s dtype, without writing the activated tensor; saves ``raw`` and the
    prologue."""

    @staticmethod
    def forward(ctx, raw, prologue, activation):
        ctx.save_for_backward(raw, prologue)
        ctx.activation = activation
        return _activated(raw, prologue, activation).mean((2, 3), keepdim=True).to(raw.dtype)

    @staticmethod
    def backward(ctx, grad):
        raw, prologue = ctx.saved_tensors
        acc = acc_dtype(raw.dtype)
        grad_a = (grad.to(acc) / (raw.shape[2] * raw.shape[3])).expand(raw.shape)
        return (*_prologue_backward(raw, prologue, ctx.activation, grad_a), None)


class _Gated(torch.autograd.Function):
    """``act((raw - center) * scale + shift) * gate`` with a (N, C, 1, 1) gate, rounded
    once to ``raw``'s dtype; saves ``raw``, the prologue and the gate (the activated
    tensor is recomputed in the backward, not saved)."""

    @staticmethod
    def forward(ctx, raw, prologue, activation, gate):
        ctx.save_for_backward(raw, prologue, gate)
        ctx.activation = activation
        a = _activated(raw, prologue, activation)
        return (a * gate.to(a.dtype)).to(raw.dtype)

    @staticmethod
    def backward(ctx, grad):
        raw, prologue, gate = ctx.saved_tensors
        a = _activated(raw, prologue, ctx.activation)
        g = grad.to(a.dtype)
        dgate = (g * a).sum((2, 3), keepdim=True).to(gate.dtype)
        dx, dpro = _prologue_backward(raw, prologue, ctx.activation, g * gate.to(a.dtype))
        return dx, dpro, None, dgate


class _GlobalMax(torch.autograd.Function):
    """The (N, C, 1, 1) spatial maximum of ``act((raw - center) * scale + shift)`` rounded
    to ``raw``'s dtype (the tensor the unfused block would have written), without writing
    it; saves ``raw``, the prologue, the maxima and their first positions ((N, C) int64).

    The gradient goes where PyTorch's would: ``first_only`` (``max_pool2d``'s rule) to the
    first maximum in row-major order; else (``amax``'s) split evenly among the equal
    maxima, found again on the recomputed tensor (the first position always counted, so a
    recompute that rounds differently cannot lose the gradient)."""

    @staticmethod
    def forward(ctx, raw, prologue, activation, first_only):
        a = _activated(raw, prologue, activation).to(raw.dtype).flatten(2)
        out, first = a.max(-1, keepdim=True)  # the first maximum's position
        ctx.save_for_backward(raw, prologue, out, first)
        ctx.activation, ctx.first_only = activation, first_only
        return out.unsqueeze(-1)

    @staticmethod
    def backward(ctx, grad):
        raw, prologue, out, first = ctx.saved_tensors
        acc = acc_dtype(raw.dtype)
        positions = torch.arange(raw.shape[2] * raw.shape[3], device=raw.device)
        hit = positions == first
        if not ctx.first_only:
            a = _activated(raw, prologue, ctx.activation).to(raw.dtype).flatten(2)
            hit = hit | (a == out)
        share = hit.to(acc) / hit.sum(-1, keepdim=True)
        grad_a = (grad.to(acc).flatten(2) * share).view(raw.shape)
        grad_a = grad_a.contiguous(memory_format=memory_format(raw))  # raw's gradient's layout
        return (*_prologue_backward(raw, prologue, ctx.activation, grad_a), None, None)


def global_max(x: Pending, first_only: bool) -> torch.Tensor:
    """(N, C, 1, 1) spatial maximum of ``x`` applied, in its raw dtype (``_GlobalMax``):
    ``first_only`` gives the gradient to the first maximum (``max_pool2d``), else splits it
    among equal maxima (``amax``).

    Args:
        x: the pending tensor, raw (N, C, H, W).
        first_only: ``max_pool2d``'s tie rule (True) or ``amax``'s (False).

    Returns:
        (N, C, 1, 1) in ``x.raw``'s dtype.
    """
    return _GlobalMax.apply(x.raw, x.prologue, x.activation, first_only)


def pooled_activation(x: Pending) -> torch.Tensor:
    """(N, C, 1, 1) spatial mean of ``x`` applied, in its raw dtype (``_PooledActivation``).

    Args:
        x: the pending tensor, raw (N, C, H, W).

    Returns:
        (N, C, 1, 1) in ``x.raw``'s dtype.
    """
    return _PooledActivation.apply(x.raw, x.prologue, x.activation)


def gated(x: Pending, gate: torch.Tensor) -> torch.Tensor:
    """``x`` applied and multiplied by the (N, C, 1, 1) ``gate``, rounded once (``_Gated``).

    Args:
        x: the pending tensor, raw (N, C, H, W).
        gate: (N, C, 1, 1).

    Returns:
        (N, C, H, W) in ``x.raw``'s dtype and layout.
    """
    return _Gated.apply(x.raw, x.prologue, x.activation, gate)
