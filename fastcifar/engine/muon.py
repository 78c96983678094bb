"""Muon for convolution filters, with Nesterov SGD for everything else, in one optimizer.

Muon (Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024)
replaces each filter's momentum update by its nearest semi-orthogonal matrix: the
(C_out, C_in * k * k) matrix ``G = U S V^T`` becomes approximately ``U V^T``, computed by
a few Newton-Schulz iterations ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` in
bfloat16 (``newton_schulz``). The CIFAR-10 record (cifar10-airbench
``airbench94_muon.py``) also rescales every filter to Frobenius norm ``sqrt(C_out)`` before
each step, so the learning rate sets the size of the update relative to the weights.

Why not ``torch.optim.Muon``: it accepts 2-D parameters only, multiplies the learning
rate by a shape-dependent factor, orthogonalises one matrix at a time, and has no filter
renormalisation; the record's step needs all four (and the faster recipe batches the
iteration over zero-padded filters, which the per-matrix API cannot).

Parameter groups carry ``"muon": True`` (4-D filters: momentum, Newton-Schulz,
renormalisation, decoupled weight decay) or ``False`` (any shape: PyTorch's own SGD step,
``torch.optim.sgd.sgd``, with the group's momentum, Nesterov flag and L2 weight decay).
The step runs on the parameters' device without host synchronisation: learning rates
and counters are Python numbers, never tensors read back.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.optim.sgd import sgd

#: Newton-Schulz coefficients (a, b, c) of the record (quintic, tuned for a fast rise of
#: small singular values; the result has singular values in about [0.7, 1.2], not 1)
RECORD_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
#: the coefficient sets a recipe may name (``Recipe.muon_ns``)
NS_COEFFICIENTS = {
    "record": RECORD_NS_COEFFICIENTS,  # cifar10-airbench airbench94_muon.py
    "hiverge": (3.4576, -4.7391, 2.0843),  # the Hiverge cifar10-speedrun's tuned values
}


def newton_schulz(
    g: torch.Tensor,
    steps: int = 3,
    coefficients: tuple[float, float, float] = RECORD_NS_COEFFICIENTS,
    dtype: torch.dtype = torch.bfloat16,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Approximate orthogonalisation of ``g`` (..., m, n): each matrix of the batch is
    divided by its Frobenius norm (so its spectral norm is at most 1) and iterated
    ``steps`` times in ``dtype``; the result has ``g``'s shape and ``dtype``.

    Zero rows or columns stay zero, so zero-padded matrices of different sizes can share
    one batch (``Muon(batched=True)``). With coefficients (1.5, -0.5, 0) it is the classical
    cubic Newton-Schulz iteration, which converges to ``U V^T`` of the SVD.

    Args:
        g: a matrix (m, n) or a batch of them (..., m, n), any floating dtype.
        steps: iterations.
        coefficients: (a, b, c) of each step ``x <- a x + (b G + c G^2) x``, ``G = x x^T``.
        dtype: the iteration's dtype.
        eps: added to the norm before dividing.

    Returns:
        The orthogonalised matrices.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    norm = x.float().norm(dim=(-2, -1), keepdim=True)
    x = (x / (norm + eps).to(dtype)).to(dtype)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if transposed else x


@functools.cache
def _fused_devices() -> frozenset[str]:
    # the device types with PyTorch's fused optimizer kernels (asked once per process)
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without it: the default path everywhere
        return frozenset()
    return frozenset(_get_fused_kernels_supported_devices())


def fused_sgd(params: list[torch.Tensor]) -> bool | None:
    """True where PyTorch has a fused SGD kernel for ``params`` (floating, dense, one
    device among ``torch.utils._foreach_utils._get_fused_kernels_supported_devices()``:
    CUDA and the CPU in torch 2.11-2.14); None (PyTorch's default, foreach or a loop)
    elsewhere.

    Args:
        params: the parameters one SGD optimizer updates.

    Returns:
        True, or None.
    """
    first = params[0].device
    ok = all(p.device == first and p.is_floating_point() and not p.is_sparse for p in params)
    return True if ok and first.type in _fused_devices() else None


class Muon(torch.optim.Optimizer):
    """Muon on the groups with ``muon=True``, SGD on the others.

    Args:
        params: parameter groups; each group a dict with ``params`` and optional ``lr``,
            ``momentum``, ``nesterov``, ``weight_decay``, ``muon``.
        lr, momentum, nesterov: defaults for the groups.
        weight_decay: Muon groups: decoupled, ``p *= 1 - lr * weight_decay`` each step;
            SGD groups: L2 through the gradient, as ``torch.optim.SGD``.
        ns_steps, ns_coefficients, ns_dtype: the Newton-Schulz iteration.
        renorm_every: rescale each filter to norm ``sqrt(C_out)`` every this many steps
            (1: every step, the record; 0: never).
        batched: orthogonalise all filters of a group in one batched iteration over
            zero-padded matrices (one launch per matrix product instead of one per filter).
        by_shape: with ``batched``, one batched iteration per filter shape instead,
            without padding (the 2026 record's ``_ns_all``: no work on padded zeros).
        renorm_growth, renorm_steps: the renormalisation interval grows from
            ``renorm_every`` by ``renorm_growth`` over ``renorm_steps`` steps (the 2026
            record: 2 + int(15 x step / decay steps)); 0: a fixed interval.
        compile_backend: torch.compile the Newton-Schulz iteration with this backend (the
            record compiles it; ``None``: eager).

    Raises:
        ValueError: a Muon group holds a parameter that is not 4-D (or 2-D), or an option
            out of range.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.6,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 3,
        ns_coefficients: tuple[float, float, float] = RECORD_NS_COEFFICIENTS,
        ns_dtype: torch.dtype = torch.bfloat16,
        renorm_every: int = 1,
        batched: bool = False,
        by_shape: bool = False,
        renorm_growth: float = 0.0,
        renorm_steps: int = 1,
        compile_backend: str | None = None,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0 or ns_steps < 1 or renorm_every < 0:
            raise ValueError("Muon: lr, momentum, weight_decay, renorm_every >= 0, ns_steps >= 1")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            muon=True,
            ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients),
            renorm_every=renorm_every,
            batched=batched,
            by_shape=by_shape,
            renorm_growth=renorm_growth,
            renorm_steps=max(1, renorm_steps),
            last_renorm=0,
            step=0,
        )
        self.ns_dtype = ns_dtype
        self._newton_schulz = newton_schulz
        if compile_backend:
            self._newton_schulz = torch.compile(newton_schulz, backend=compile_backend)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"]:
                for p in group["params"]:
                    if p.ndim not in (2, 4):
                        raise ValueError(
                            f"Muon: a muon group holds a {p.ndim}-D parameter {tuple(p.shape)}; "
                            f"put biases and norms in a group with muon=False"
                        )

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step: Muon's orthogonalised momentum on the matrix parameters, Nesterov SGD
        on the others.

        Args:
            closure: re-evaluates the loss, or None.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            group["step"] += 1
            if group["muon"]:
                self._muon_step(group, params)
            else:
                self._sgd_step(group, params)
        return loss

    def _sgd_step(self, group: dict, params: list[torch.Tensor]) -> None:
        # PyTorch's fused SGD (one multi-tensor kernel for the group, as the 2026 record's
        # torch.optim.SGD(fused=True)) where the device has it, else its foreach path;
        # the two agree to the last bit or so (1.2e-7 apart after 5 steps in float32)
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        sgd(
            params,
            [p.grad for p in params],
            bufs,
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=0.0,
            nesterov=group["nesterov"],
            maximize=False,
            fused=fused_sgd(params),
        )
        for p, buf in zip(params, bufs, strict=True):
            self.state[p]["momentum_buffer"] = buf

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        m = group["momentum"]
        updates = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.mul_(m).add_(p.grad)
            updates.append(p.grad.add(buf, alpha=m) if group["nesterov"] else buf)
        orthogonal = self._orthogonalise(updates, group)
        if self._renorm_due(group):
            group["last_renorm"] = group["step"]
            for p in params:  # filter norm sqrt(C_out): the record's renormalisation
                p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
        lr = group["lr"]
        for p, u in zip(params, orthogonal, strict=True):
            p.add_(u.to(p.dtype), alpha=-lr)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])

    @staticmethod
    def _renorm_due(group: dict) -> bool:
        """Whether this step (``group["step"]``, from 1) renormalises the filters: every
        ``renorm_every`` steps; with ``renorm_growth`` the 2026 record's growing interval,
        ``renorm_every + int(renorm_growth * step / renorm_steps)`` steps since the last
        (``group["last_renorm"]``, which the step records)."""
        every, step = group["renorm_every"], group["step"]
        if not every:
            return False
        if not group["renorm_growth"]:
            return step % every == 0
        interval = every + int(group["renorm_growth"] * step / group["renorm_steps"])
        return step - group["last_renorm"] >= interval

    def _orthogonalise(self, updates: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        """Newton-Schulz of each update reshaped to (C_out, C_in * k * k), back in its shape."""
        kw = dict(
            steps=group["ns_steps"], coefficients=group["ns_coefficients"], dtype=self.ns_dtype
        )
        mats = [u.reshape(len(u), -1) for u in updates]
        if not group["batched"] or len(mats) == 1:
            ns = self._newton_schulz
            return [ns(g, **kw).view_as(u) for g, u in zip(mats, updates, strict=True)]
        if group.get("by_shape"):  # one stack per (C_out, C_in * k * k), no padding
            out: list[torch.Tensor] = [None] * len(mats)  # type: ignore[list-item]
            same: dict[tuple, list[int]] = {}
            for i, g in enumerate(mats):
                same.setdefault(tuple(g.shape), []).append(i)
            for idx in same.values():
                stacked = self._newton_schulz(torch.stack([mats[i] for i in idx]), **kw)
                for j, i in enumerate(idx):
                    out[i] = stacked[j].view_as(updates[i])
            return out
        rows = max(g.shape[0] for g in mats)
        cols = max(g.shape[1] for g in mats)
        stacked = torch.stack(
            [F.pad(g, (0, cols - g.shape[1], 0, rows - g.shape[0])) for g in mats]
        )
        out = self._newton_schulz(stacked, **kw)
        return [
            out[i, : g.shape[0], : g.shape[1]].reshape(u.shape)
            for i, (g, u) in enumerate(zip(mats, updates, strict=True))
        ]
