"""Muon: the Newton-Schulz iteration against an SVD, the step's renormalisation and weight
decay, the SGD groups against torch.optim.SGD, batched against per-filter, no host sync."""

from __future__ import annotations

import pytest
import torch

from fastcifar.engine.muon import NS_COEFFICIENTS, Muon, fused_sgd, newton_schulz
from tests.sync_helpers import assert_no_host_sync


def _polar(g: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    return (u @ vh).float()


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (16, 16)])
def test_cubic_newton_schulz_converges_to_the_svd_polar_factor(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = newton_schulz(g, steps=40, coefficients=(1.5, -0.5, 0.0), dtype=torch.float32)
    torch.testing.assert_close(out, _polar(g), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(NS_COEFFICIENTS))
@pytest.mark.parametrize("shape", [(64, 216), (256, 576), (30, 10)])
def test_record_iteration_gives_the_polar_directions_with_singular_values_near_one(name, shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = newton_schulz(g, steps=3, coefficients=NS_COEFFICIENTS[name]).float()
    assert out.dtype == torch.float32 and out.shape == g.shape
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ out @ vh.T  # diagonal when out = U diag(s') V^T
    diag = torch.diagonal(core)
    off = core - torch.diag(diag)
    # the quintic coefficients trade exactness for speed: singular values in about
    # [0.6, 1.25] after 3 steps in bfloat16, singular vectors those of the SVD
    assert diag.min() > 0.55 and diag.max() < 1.3, (diag.min(), diag.max())
    assert off.abs().max() < 0.08
    # semi-orthogonality: the Gram matrix of the short side is near the identity
    small = out @ out.T if shape[0] <= shape[1] else out.T @ out
    eigs = torch.linalg.eigvalsh(small.double())
    assert eigs.min() > 0.3 and eigs.max() < 1.6


def test_batched_iterations_padded_or_by_shape_equal_one_filter_at_a_time():
    gen = torch.Generator().manual_seed(2)
    shapes = [(64, 24, 3, 3), (256, 64, 3, 3), (64, 64, 3, 3), (64, 64, 3, 3)]  # two alike
    filters = [torch.randn(*shape, generator=gen) for shape in shapes]
    models = []
    for batched, by_shape in ((False, False), (True, False), (True, True)):
        params = [torch.nn.Parameter(f.clone()) for f in filters]
        for p in params:
            p.grad = torch.ones_like(p) * 0.01 + p.detach() * 0.1
        Muon(
            [{"params": params}], lr=0.1, batched=batched, by_shape=by_shape, ns_dtype=torch.float32
        ).step()
        models.append(params)
    one_at_a_time = models[0]
    for other in models[1:]:
        for a, b in zip(one_at_a_time, other, strict=True):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)


def test_muon_step_renormalises_filters_then_adds_the_orthogonal_update():
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=gen) * 5)
    p.grad = torch.randn(16, 8, 3, 3, generator=gen)
    grad = p.grad.clone()
    opt = Muon([{"params": [p]}], lr=0.2, momentum=0.6, nesterov=True, ns_dtype=torch.float32)
    opt.step()
    update = newton_schulz(grad.add(grad, alpha=0.6).view(16, -1), dtype=torch.float32)
    before_update = p.detach() + 0.2 * update.view_as(p)
    assert float(before_update.norm()) == pytest.approx(16**0.5, rel=1e-4)
    # momentum buffer: the record's form, buf = m buf + g
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], grad)


def test_renormalisation_every_k_steps_and_decoupled_weight_decay():
    p = torch.nn.Parameter(torch.full((4, 2, 3, 3), 3.0))
    opt = Muon([{"params": [p]}], lr=0.0, weight_decay=0.5, renorm_every=2)
    p.grad = torch.ones_like(p)
    opt.step()  # step 1: no renormalisation; lr 0: no update, no decay
    assert torch.equal(p.detach(), torch.full_like(p, 3.0))
    opt.step()  # step 2: renormalised to norm sqrt(4) = 2
    assert float(p.detach().norm()) == pytest.approx(2.0, rel=1e-5)
    opt.param_groups[0]["lr"] = 0.1
    opt.param_groups[0]["renorm_every"] = 0
    q = p.detach().clone()
    p.grad = torch.zeros_like(p)  # zero update: only the decay acts
    opt.state[p]["momentum_buffer"].zero_()
    opt.step()
    torch.testing.assert_close(p.detach(), q * (1 - 0.1 * 0.5))


def test_sgd_groups_step_exactly_as_torch_sgd():
    gen = torch.Generator().manual_seed(4)
    init = torch.randn(10, generator=gen)
    grads = [torch.randn(10, generator=gen) for _ in range(3)]
    ours = torch.nn.Parameter(init.clone())
    ref = torch.nn.Parameter(init.clone())
    opt = Muon(
        [{"params": [ours], "muon": False, "lr": 0.05, "momentum": 0.85, "weight_decay": 0.07}]
    )
    # the fused kernel where the device has one (the CPU does), as the 2026 record steps
    assert fused_sgd([ours]) is True
    sgd = torch.optim.SGD(
        [ref], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.07, fused=True
    )
    for g in grads:
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), atol=0, rtol=0)


def test_fused_sgd_only_where_pytorch_has_the_kernel():
    assert fused_sgd([torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)]) is True
    assert fused_sgd([torch.zeros(3, device="meta")]) is None  # the sync check's device
    assert fused_sgd([torch.zeros(3, dtype=torch.int64)]) is None


def test_muon_refuses_a_bias_in_a_muon_group():
    with pytest.raises(ValueError, match="muon=False"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(5))]}])


def test_the_step_never_synchronises_with_the_host():
    params = [
        torch.nn.Parameter(torch.randn(64, 24, 3, 3, device="meta")),
        torch.nn.Parameter(torch.randn(256, 64, 3, 3, device="meta")),
    ]
    bias = torch.nn.Parameter(torch.zeros(64, device="meta"))
    for p in [*params, bias]:
        p.grad = torch.randn_like(p)
    for batched in (False, True):
        opt = Muon(
            [
                {"params": params, "batched": batched, "weight_decay": 1e-3},
                {"params": [bias], "muon": False, "lr": 0.05},
            ]
        )
        assert_no_host_sync(lambda opt=opt: [opt.step() for _ in range(2)])


def test_the_sync_detector_catches_a_read_back_and_a_host_counter():
    x = torch.randn(4, device="meta")
    with pytest.raises(AssertionError, match="read back"):
        assert_no_host_sync(lambda: x.sum().item())
    counter = torch.zeros((), dtype=torch.long)  # AveragedModel's n_averaged, on the CPU
    with pytest.raises(AssertionError, match="CPU tensor mixed"):
        assert_no_host_sync(lambda: x.mul(counter.to(x.device)).add(counter))


def test_compiled_newton_schulz_steps_as_the_eager_one():
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(16, 8, 3, 3, generator=gen), torch.randn(8, 8, 3, 3, generator=gen)]
    grads = [torch.randn_like(w) for w in init]
    out = []
    for backend in (None, "aot_eager"):
        params = [torch.nn.Parameter(w.clone()) for w in init]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        Muon([{"params": params}], lr=0.1, ns_dtype=torch.float32, compile_backend=backend).step()
        out.append(params)
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_growing_renormalisation_interval_follows_the_2026_record():
    """fulcrumresearch/cifar-10-speedrun E1's OrthoMomentum: norm_freq = 2 + int(15 x
    progress), progress = step / total; a step renormalises when at least norm_freq steps
    passed since the last one that did."""
    total, group = (
        40,
        {"renorm_every": 2, "renorm_growth": 15, "renorm_steps": 40, "last_renorm": 0},
    )
    ours = []
    for step in range(1, 45):
        group["step"] = step
        if Muon._renorm_due(group):
            ours.append(step)
            group["last_renorm"] = step  # what the step records
    theirs, last = [], 0
    for step in range(1, 45):
        if step - last >= 2 + int(15 * step / total):
            theirs.append(step)
            last = step
    assert ours == theirs == [2, 5, 10, 18, 31]
    fixed = {"renorm_every": 8, "renorm_growth": 0, "renorm_steps": 1, "last_renorm": 0}
    assert [s for s in range(1, 30) if Muon._renorm_due({**fixed, "step": s})] == [8, 16, 24]
