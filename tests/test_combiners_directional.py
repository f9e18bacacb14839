"""Direction-based aggregators (PCGrad, GradVac, GradDrop, Aligned-MTL, DiBS-MTL, DB-MTL, GradNorm): each method's
defining property, hand-derived values, what it does not have, its configuration errors and its state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtl_bench.combiners.aligned_mtl import AlignedMTL
from mtl_bench.combiners.db_mtl import DBMTL, balance_to_max_norm
from mtl_bench.combiners.dibs_mtl import DiBSMTL, DiBSMTLMulti
from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.combiners.graddrop import GradDrop
from mtl_bench.combiners.gradnorm import GradNorm
from mtl_bench.combiners.gradvac import GradVac
from mtl_bench.combiners.pcgrad import PCGrad
from mtl_bench.engine import GradientEngine
from mtl_bench.errors import ConfigError
from mtl_bench.optim import param_groups
from tests.combiner_utils import TASKS3, conflicting_grads, engine_update, losses_for, random_grads
from tests.helpers import tiny_batch, tiny_model

F64 = torch.float64


def ready(combiner, k: int = 3):
    combiner.setup([f"t{i}" for i in range(k)])
    return combiner


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def step_grads(combiner, transforms=None, seed: int = 0) -> torch.Tensor:
    """One engine step on the tiny float64 model with (optionally transformed) task losses: every parameter's
    gradient, flattened (shared and heads)."""
    model = tiny_model(TASKS3, seed=seed)
    combiner.setup(list(TASKS3))
    engine = GradientEngine(model, combiner, TASKS3)
    x, y = tiny_batch(seed=seed + 1)
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    losses = {task: torch.nn.functional.mse_loss(out[task], y[task]) for task in TASKS3}
    if transforms is not None:
        losses = {task: transforms[task](loss) for task, loss in losses.items()}
    engine.backward(losses, 0, rep=rep, leaves=leaves)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def restored(combiner, factory, k: int):
    """A fresh combiner from ``factory`` loaded with a deep copy of ``combiner``'s state."""
    fresh = ready(factory(), k)
    fresh.load_state_dict(copy.deepcopy(combiner.state_dict()))
    return fresh


# Monotone transforms of each task loss (φ' > 0 for L > 0): positive scalings and non-linear ones.
SCALINGS = {"a": lambda loss: 100.0 * loss, "b": lambda loss: 0.01 * loss, "c": lambda loss: loss}
MONOTONE = {"a": torch.exp, "b": lambda loss: loss**3, "c": lambda loss: 7.0 * loss}


# ===================================================================================================== PCGrad
def test_pcgrad_two_tasks_hand_case():
    # g0 = (1, 0), g1 = (-1, 1): g0·g1 = -1 < 0.
    # g0' = g0 - (-1/2) g1 = (0.5, 0.5);  g1' = g1 - (-1/1) g0 = (0, 1);  sum = (0.5, 1.5)
    grads = t([1.0, 0.0], [-1.0, 1.0])
    pc = ready(PCGrad(), 2)
    torch.testing.assert_close(pc.projected_gradients(grads), t([0.5, 0.5], [0.0, 1.0]))
    agg = pc.aggregate(grads, torch.ones(2, dtype=F64))
    torch.testing.assert_close(agg.direction, t(0.5, 1.5))
    assert agg.weights is None  # heads keep their own gradients


def test_pcgrad_two_tasks_closed_form_and_no_remaining_conflict():
    grads = conflicting_grads(d=20, cos=-0.6, ratio=5.0)
    g0, g1 = grads
    dot = g0 @ g1
    expected = torch.stack([g0 - dot / (g1 @ g1) * g1, g1 - dot / (g0 @ g0) * g0])
    projected = ready(PCGrad(), 2).projected_gradients(grads)
    torch.testing.assert_close(projected, expected)
    # each projected gradient is orthogonal to (no longer conflicts with) the other task's original gradient
    assert abs(float(projected[0] @ g1)) < 1e-12 and abs(float(projected[1] @ g0)) < 1e-12
    torch.testing.assert_close(ready(PCGrad(), 2).aggregate(grads, losses_for(2)).direction, expected.sum(0))


def test_pcgrad_without_conflicts_is_the_plain_sum():
    grads = random_grads(4, 30, seed=3) + 2.0
    assert bool((grads @ grads.T > 0).all())
    direction = ready(PCGrad(), 4).aggregate(grads, losses_for(4)).direction
    torch.testing.assert_close(direction, grads.sum(0))


def test_pcgrad_is_not_invariant_to_per_task_rescaling():
    grads = conflicting_grads(d=20, cos=-0.6, ratio=1.0)
    scaled = grads * t(1.0, 10.0).unsqueeze(1)
    a = ready(PCGrad(), 2).aggregate(grads, losses_for(2)).direction
    b = ready(PCGrad(), 2).aggregate(scaled, losses_for(2)).direction
    assert cosine(a, b) < 0.99


def test_pcgrad_random_order_comes_from_its_own_seeded_generator_and_round_trips():
    grads = random_grads(5, 3, seed=0)  # 5 tasks in 3-D: many conflicts, so the order matters
    losses = losses_for(5)
    global_state = torch.get_rng_state()
    outputs = {s: ready(PCGrad(seed=s), 5).aggregate(grads, losses).direction for s in range(4)}
    assert torch.equal(torch.get_rng_state(), global_state), "PCGrad must not draw from the global RNG"
    assert len({tuple(v.tolist()) for v in outputs.values()}) > 1, "the projection order should depend on the seed"
    torch.testing.assert_close(ready(PCGrad(seed=2), 5).aggregate(grads, losses).direction, outputs[2], rtol=0, atol=0)
    pc = ready(PCGrad(seed=7), 5)
    pc.aggregate(grads, losses)
    fresh = restored(pc, lambda: PCGrad(seed=7), 5)
    torch.testing.assert_close(fresh.aggregate(grads, losses).direction, pc.aggregate(grads, losses).direction, rtol=0, atol=0)


def test_pcgrad_edge_cases_and_config_errors():
    g = random_grads(1, 10)
    torch.testing.assert_close(ready(PCGrad(), 1).aggregate(g, losses_for(1)).direction, g[0])
    zero = ready(PCGrad(), 3).aggregate(torch.zeros(3, 10, dtype=F64), losses_for(3)).direction
    assert torch.equal(zero, torch.zeros(10, dtype=F64))
    f32 = ready(PCGrad(), 3).aggregate(random_grads(3, 10, dtype=torch.float32), losses_for(3)).direction
    assert f32.dtype == torch.float32
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ConfigError, match=r"combiner\.seed=.*valid: an integer >= 0"):
            PCGrad(seed=bad)
    with pytest.raises(ConfigError, match="does not support grad_source='last_shared'"):
        PCGrad(grad_source="last_shared")
    assert PCGrad(grad_source="representation").grad_source == "representation"


# ===================================================================================================== GradVac
def test_gradvac_first_step_with_zero_targets_hand_case():
    # targets start at 0: cos(g0, g1) = -1/√2 < 0, so each gradient is moved until its cosine with the other is 0,
    # which for a pair is the PCGrad projection: g0' = g0 + ½ g1 = (0.5, 0.5), g1' = g1 + 1·g0 = (0, 1).
    # Then φ̂ ← (1-β)·0 + β·(-1/√2) = -0.5/√2 for both pairs (β = 0.5).
    grads = t([1.0, 0.0], [-1.0, 1.0])
    gv = ready(GradVac(beta=0.5), 2)
    torch.testing.assert_close(gv.adjusted_gradients(grads), t([0.5, 0.5], [0.0, 1.0]))
    torch.testing.assert_close(gv.targets, t([0.0, -0.5 / math.sqrt(2)], [-0.5 / math.sqrt(2), 0.0]))
    first = ready(GradVac(beta=0.5), 2).aggregate(grads, losses_for(2)).direction
    torch.testing.assert_close(first, ready(PCGrad(), 2).aggregate(grads, losses_for(2)).direction)


def test_gradvac_raises_the_cosine_exactly_to_a_target_above_it():
    # target φ̂ = 0.5, g0 = (1, 0), g1 = (0, 1), φ = 0: w = 1·(0.5·1 - 0)/(1·√0.75) = 1/√3,
    # g0' = (1, 1/√3) with cos(g0', g1) = (1/√3)/(2/√3) = 0.5; symmetrically g1' = (1/√3, 1).  EMA: 0.5·0.5 + 0.5·0 = 0.25
    gv = ready(GradVac(beta=0.5), 2)
    gv.targets.fill_(0.5)
    grads = t([1.0, 0.0], [0.0, 1.0])
    adjusted = gv.adjusted_gradients(grads)
    torch.testing.assert_close(adjusted, t([1.0, 1.0 / math.sqrt(3)], [1.0 / math.sqrt(3), 1.0]))
    assert cosine(adjusted[0], grads[1]) == pytest.approx(0.5, abs=1e-12)
    torch.testing.assert_close(gv.targets, t([0.5, 0.25], [0.25, 0.5]))  # the diagonal is never used
    # the same property in 40 dimensions for a learned (EMA) target: the second call targets -0.5/√2 > -0.6
    gv = ready(GradVac(beta=0.5), 2)
    pair = conflicting_grads(d=40, cos=-0.6, ratio=3.0)
    gv.aggregate(pair, losses_for(2))
    target = float(gv.targets[0, 1])
    assert target == pytest.approx(0.5 * -0.6)
    adjusted = gv.adjusted_gradients(pair)
    assert cosine(adjusted[0], pair[1]) == pytest.approx(target, abs=1e-12)
    assert cosine(adjusted[1], pair[0]) == pytest.approx(target, abs=1e-12)


def test_gradvac_leaves_pairs_above_their_target_alone_but_still_updates_the_ema():
    gv = ready(GradVac(beta=0.5), 2)
    gv.targets.fill_(-0.5)
    grads = t([1.0, 0.0], [0.0, 2.0])  # φ = 0 > -0.5
    torch.testing.assert_close(gv.aggregate(grads, losses_for(2)).direction, grads.sum(0))
    # every visited pair updates its target (paper / TorchJD); LibMTL would keep -0.5
    torch.testing.assert_close(gv.targets, t([-0.5, -0.25], [-0.25, -0.5]))  # the diagonal is never used


def test_gradvac_state_round_trip_and_edge_cases():
    grads, losses = random_grads(4, 25, seed=5), losses_for(4)
    gv = ready(GradVac(beta=0.3, seed=11), 4)
    for step in range(2):
        gv.aggregate(grads + 0.1 * random_grads(4, 25, seed=step + 20), losses)
    assert "targets" in gv.state_dict() and float(gv.targets.abs().sum()) > 0
    fresh = restored(gv, lambda: GradVac(beta=0.3, seed=11), 4)
    torch.testing.assert_close(fresh.aggregate(grads, losses).direction, gv.aggregate(grads, losses).direction, rtol=0, atol=0)
    torch.testing.assert_close(fresh.targets, gv.targets, rtol=0, atol=0)
    zero = ready(GradVac(), 3)
    assert torch.equal(zero.aggregate(torch.zeros(3, 5, dtype=F64), losses_for(3)).direction, torch.zeros(5, dtype=F64))
    assert torch.equal(zero.targets, torch.zeros(3, 3, dtype=F64))  # undefined cosines are skipped
    g = random_grads(1, 5)
    torch.testing.assert_close(ready(GradVac(), 1).aggregate(g, losses_for(1)).direction, g[0])
    for bad in (-0.1, 1.5, "0.5", float("nan")):
        with pytest.raises(ConfigError, match=r"combiner\.beta=.*valid: beta >= 0 and beta <= 1"):
            GradVac(beta=bad)


# ===================================================================================================== GradDrop
def test_graddrop_output_is_a_sum_of_same_sign_contributions_only():
    grads = random_grads(4, 3000, seed=1)
    out = ready(GradDrop(), 4).aggregate(grads, losses_for(4)).direction
    positive, negative = grads.clamp(min=0).sum(0), grads.clamp(max=0).sum(0)
    chose_positive = torch.isclose(out, positive, rtol=0, atol=1e-12)
    chose_negative = torch.isclose(out, negative, rtol=0, atol=1e-12)
    assert bool((chose_positive | chose_negative).all())
    assert bool(chose_positive.any()) and bool(chose_negative.any())


def test_graddrop_keeps_everything_when_tasks_agree_in_sign():
    sign = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=F64).sign()
    grads = random_grads(3, 500, seed=2).abs() * sign
    torch.testing.assert_close(ready(GradDrop()).aggregate(grads, losses_for(3)).direction, grads.sum(0))


def test_graddrop_keeps_the_positive_sign_with_probability_equal_to_the_purity():
    # first half: g0 = +3, g1 = -1 -> P = ½(1 + 2/4) = 0.75; second half: g0 = +1, g1 = -3 -> P = 0.25.
    # 20,000 draws per half: the standard error of the frequency is ≤ 0.0031, so ±0.015 is ~5 σ, while a
    # purity that ignored magnitudes (P = ½, counting signs) would be off by 0.25.
    n = 20000
    g0 = torch.cat([torch.full((n,), 3.0), torch.full((n,), 1.0)]).to(F64)
    g1 = torch.cat([torch.full((n,), -1.0), torch.full((n,), -3.0)]).to(F64)
    grads = torch.stack([g0, g1])
    gd = ready(GradDrop(seed=3), 2)
    torch.testing.assert_close(gd.purity(grads[:, [0, -1]]), t(0.75, 0.25))
    out = gd.aggregate(grads, losses_for(2)).direction
    assert bool(((out == g0) | (out == g1)).all())
    assert abs(float((out[:n] > 0).double().mean()) - 0.75) < 0.015
    assert abs(float((out[n:] > 0).double().mean()) - 0.25) < 0.015


def test_graddrop_leak():
    grads = random_grads(2, 400, seed=4)
    torch.testing.assert_close(ready(GradDrop(leak=1.0), 2).aggregate(grads, losses_for(2)).direction, grads.sum(0))
    # task 0 leaks fully: out = g0 + M1 ∘ g1 with M1 ∈ {0, 1}
    rest = ready(GradDrop(leak=[1.0, 0.0]), 2).aggregate(grads, losses_for(2)).direction - grads[0]
    kept = torch.isclose(rest, grads[1], rtol=0, atol=1e-12)
    dropped = torch.isclose(rest, torch.zeros_like(rest), rtol=0, atol=1e-12)
    assert bool((kept | dropped).all()) and bool(kept.any()) and bool(dropped.any())
    # half leak: every contribution is at least half of the task gradient
    half = ready(GradDrop(leak=0.5), 2).aggregate(grads, losses_for(2)).direction
    torch.testing.assert_close(half, grads.sum(0) - 0.5 * (grads.sum(0) - ready(GradDrop(), 2).aggregate(grads, losses_for(2)).direction))


def test_graddrop_randomness_state_sources_and_edge_cases():
    grads, losses = random_grads(3, 200, seed=5), losses_for(3)
    global_state = torch.get_rng_state()
    gd = ready(GradDrop(seed=9))
    first = gd.aggregate(grads, losses).direction
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(ready(GradDrop(seed=9)).aggregate(grads, losses).direction, first)
    assert not torch.equal(ready(GradDrop(seed=10)).aggregate(grads, losses).direction, first)
    fresh = restored(gd, lambda: GradDrop(seed=9), 3)
    assert torch.equal(fresh.aggregate(grads, losses).direction, gd.aggregate(grads, losses).direction)
    assert GradDrop().grad_source == "representation" and GradDrop(grad_source="params").grad_source == "params"
    with pytest.raises(ConfigError, match="does not support grad_source='last_shared'"):
        GradDrop(grad_source="last_shared")
    zero = ready(GradDrop()).aggregate(torch.zeros(3, 7, dtype=F64), losses).direction
    assert torch.equal(zero, torch.zeros(7, dtype=F64))
    g = random_grads(1, 50)
    torch.testing.assert_close(ready(GradDrop(), 1).aggregate(g, losses_for(1)).direction, g[0])
    with pytest.raises(ConfigError, match=r"combiner\.leak=.*valid: leak >= 0 and leak <= 1"):
        GradDrop(leak=1.5)
    with pytest.raises(ConfigError, match=r"combiner\.leak\[1\]=-0\.2 is invalid"):
        GradDrop(leak=[0.0, -0.2])
    with pytest.raises(ConfigError, match=r"combiner\.leak=\[0\.0, 1\.0\] has 2 values; give one number or one per task \(3"):
        ready(GradDrop(leak=[0.0, 1.0]), 3)
    with pytest.raises(ConfigError, match=r"combiner\.seed="):
        GradDrop(seed=-3)


# ===================================================================================================== Aligned-MTL
@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl_aligned_system_is_orthogonal_with_equal_norms(mode):
    grads = random_grads(4, 40, seed=6, scales=[1.0, 10.0, 0.1, 3.0])
    gram = grads @ grads.T
    balance, sigma2 = AlignedMTL(scale_mode=mode).balance_matrix(gram)
    aligned = balance @ grads
    torch.testing.assert_close(aligned @ aligned.T, sigma2 * torch.eye(4, dtype=F64))
    eig = torch.linalg.eigvalsh(gram)  # ascending
    expected = {"min": eig[0], "median": eig[1], "rmse": eig.mean()}[mode]  # torch.median: lower middle value
    torch.testing.assert_close(sigma2, expected)
    agg = ready(AlignedMTL(scale_mode=mode), 4).aggregate(grads, losses_for(4))
    torch.testing.assert_close(agg.direction, aligned.sum(0))  # sum convention


def test_aligned_mtl_rank_deficient_system_is_aligned_on_its_span():
    base = random_grads(2, 30, seed=7)
    grads = torch.stack([base[0], base[1], base[0] + base[1]])  # rank 2
    balance, sigma2 = AlignedMTL().balance_matrix(grads @ grads.T)
    aligned_gram = balance @ grads @ grads.T @ balance
    projector = aligned_gram / sigma2
    torch.testing.assert_close(projector @ projector, projector)  # σ² × a projector ...
    assert float(torch.trace(projector)) == pytest.approx(2.0)  # ... of rank 2
    nonzero = torch.linalg.eigvalsh(grads @ grads.T)[1:]
    torch.testing.assert_close(sigma2, nonzero[0])  # smallest non-zero eigenvalue
    assert bool(torch.isfinite(ready(AlignedMTL()).aggregate(grads, losses_for(3)).direction).all())


def test_aligned_mtl_hand_case():
    # orthogonal g0 = (1, 0), g1 = (0, 3): eigenvalues 9 and 1, B = σ diag(1, 1/3).
    # min (and median, the lower middle of two): σ = 1 -> α = (1, 1/3), update (1, 1);  rmse: σ = √5 -> α = √5 (1, 1/3)
    grads = t([1.0, 0.0], [0.0, 3.0])
    for mode, sigma in (("min", 1.0), ("median", 1.0), ("rmse", math.sqrt(5.0))):
        comb = ready(AlignedMTL(scale_mode=mode, scale_heads=True), 2)
        agg = comb.aggregate(grads, losses_for(2))
        torch.testing.assert_close(agg.weights, sigma * t(1.0, 1.0 / 3.0))
        torch.testing.assert_close(agg.direction, sigma * t(1.0, 1.0))


def test_aligned_mtl_behaviour_under_per_task_rescaling():
    # orthogonal task gradients: the aligned system is σ × the unit gradients, so rescaling a task that is not
    # the smallest leaves the update unchanged, and rescaling the smallest only changes its length; EW changes.
    q, _ = torch.linalg.qr(torch.randn(30, 3, generator=torch.Generator().manual_seed(8), dtype=F64))
    grads = q.T * t(1.0, 2.0, 3.0).unsqueeze(1)
    comb = ready(AlignedMTL())
    base = comb.aggregate(grads, losses_for(3)).direction
    torch.testing.assert_close(base, q.T.sum(0))
    torch.testing.assert_close(comb.aggregate(grads * t(1.0, 10.0, 0.7).unsqueeze(1), losses_for(3)).direction, base)
    torch.testing.assert_close(comb.aggregate(grads * t(0.5, 1.0, 1.0).unsqueeze(1), losses_for(3)).direction, 0.5 * base)
    ew_before, ew_after = grads.sum(0), (grads * t(1.0, 10.0, 0.7).unsqueeze(1)).sum(0)
    assert cosine(ew_before, ew_after) < 0.9
    # correlated task gradients: the Procrustes factor depends on the magnitudes -> not invariant (unlike DiBS-MTL)
    correlated = random_grads(3, 30, seed=9) + 1.0
    a = comb.aggregate(correlated, losses_for(3)).direction
    b = comb.aggregate(correlated * t(1.0, 10.0, 0.7).unsqueeze(1), losses_for(3)).direction
    assert cosine(a, b) < 1 - 1e-4


def test_aligned_mtl_heads_zero_gradients_and_config_errors():
    grads = random_grads(3, 20, seed=10)
    weights = ready(AlignedMTL()).weights_from_gramian(grads @ grads.T, losses_for(3))
    assert torch.equal(ready(AlignedMTL()).aggregate(grads, losses_for(3)).weights, torch.ones(3, dtype=F64))  # official default
    torch.testing.assert_close(ready(AlignedMTL(scale_heads=True)).aggregate(grads, losses_for(3)).weights, weights)
    torch.testing.assert_close(ready(AlignedMTL(grad_source="last_shared")).aggregate(grads, losses_for(3)).weights, weights)
    zero = ready(AlignedMTL()).aggregate(torch.zeros(3, 20, dtype=F64), losses_for(3))
    assert torch.equal(zero.direction, torch.zeros(20, dtype=F64))
    assert torch.equal(ready(AlignedMTL()).weights_from_gramian(torch.zeros(3, 3, dtype=F64), losses_for(3)), torch.ones(3, dtype=F64))
    g = random_grads(1, 20)
    torch.testing.assert_close(ready(AlignedMTL(), 1).aggregate(g, losses_for(1)).direction, g[0])
    w32 = AlignedMTL().weights_from_gramian((grads @ grads.T).float(), losses_for(3))
    assert w32.dtype == torch.float32
    with pytest.raises(ConfigError, match=r"combiner\.scale_mode='max' is invalid; choose one of \['min', 'median', 'rmse'\]"):
        AlignedMTL(scale_mode="max")
    with pytest.raises(ConfigError, match=r"combiner\.scale_heads='yes' is invalid; valid: true or false"):
        AlignedMTL(scale_heads="yes")


# ===================================================================================================== DiBS-MTL
def test_dibs_one_step_closed_form_is_the_sum_of_unit_gradients():
    grads = random_grads(3, 40, seed=11, scales=[1.0, 50.0, 0.02])
    norms = grads.norm(dim=1)
    comb = ready(DiBSMTL(radius=1e-3, eta=1e-2))
    agg = comb.aggregate(grads, losses_for(3))
    torch.testing.assert_close(agg.weights, 1e-5 / norms)  # official v2 constants: w_i = 1e-5 / ‖g_i‖
    torch.testing.assert_close(agg.direction, 1e-5 * (grads / norms.unsqueeze(1)).sum(0))


@pytest.mark.parametrize("source", ["params", "last_shared", "representation"])
@pytest.mark.parametrize("factory", [DiBSMTL, lambda **kw: DiBSMTLMulti(eta=0.2, steps=5, **kw)], ids=["1-step", "5-step"])
def test_dibs_update_is_invariant_to_monotone_transforms_of_the_task_losses(source, factory):
    reference = step_grads(factory(grad_source=source))
    for transforms in (SCALINGS, MONOTONE):
        torch.testing.assert_close(step_grads(factory(grad_source=source), transforms), reference, rtol=1e-9, atol=1e-15)


def test_equal_weighting_is_not_invariant_to_loss_scaling():
    assert cosine(step_grads(EqualWeighting()), step_grads(EqualWeighting(), SCALINGS)) < 0.99


def test_dibs_invariance_to_per_task_gradient_rescaling_on_the_gramian():
    grads = conflicting_grads(d=30, cos=-0.8, ratio=3.0)
    grads = torch.cat([grads, random_grads(1, 30, seed=12)])
    scales = t(1e3, 1e-3, 7.0)
    for comb in (ready(DiBSMTL()), ready(DiBSMTLMulti())):
        base = comb.aggregate(grads, losses_for(3))
        scaled = comb.aggregate(grads * scales.unsqueeze(1), losses_for(3))
        torch.testing.assert_close(scaled.direction, base.direction)
        torch.testing.assert_close(scaled.weights * scales, base.weights)  # w_i -> w_i / c_i


def test_dibs_multi_step_hand_case():
    # g1 = (1, 0), g2 = (2, 0), g3 = (0, 3): unit gradients e1, e1, e2; η = 0.2, T = 2 (x = δ / r):
    #   t = 0: e = (1, 1, 1);  x1 = -0.2 (2, 1) = (-0.4, -0.2), ‖x1‖ = 0.447 < 1
    #   t = 1: e1 = e2 = ‖(0.6, -0.2)‖ = √0.4,  e3 = ‖(-0.4, 0.8)‖ = √0.8
    #   w_i = η r (1 + e_i^1) / n_i = η r (1 + √0.4, (1 + √0.4) / 2, (1 + √0.8) / 3)
    grads = t([1.0, 0.0], [2.0, 0.0], [0.0, 3.0])
    comb = ready(DiBSMTLMulti(radius=1e-3, eta=0.2, steps=2))
    expected = 0.2e-3 * t(1 + math.sqrt(0.4), (1 + math.sqrt(0.4)) / 2, (1 + math.sqrt(0.8)) / 3)
    torch.testing.assert_close(comb.weights_from_gramian(grads @ grads.T, losses_for(3)), expected)
    # the task that disagrees with the consensus (g3) gains weight relative to the 1-step weights η r / n_i
    one_step = ready(DiBSMTL(radius=1e-3, eta=0.2)).weights_from_gramian(grads @ grads.T, losses_for(3))
    ratio = expected / one_step
    assert float(ratio[2]) > float(ratio[0]) == pytest.approx(float(ratio[1]))


def test_dibs_multi_step_differs_from_one_step_only_when_the_inner_step_is_large():
    grads = torch.cat([conflicting_grads(d=50, cos=-0.7, ratio=4.0), random_grads(2, 50, seed=13)])
    gram, losses = grads @ grads.T, losses_for(4)

    def direction(weights: torch.Tensor) -> torch.Tensor:
        d = weights @ grads
        return d / d.norm()

    one = direction(ready(DiBSMTL(eta=0.2), 4).weights_from_gramian(gram, losses))
    multi = direction(ready(DiBSMTLMulti(eta=0.2, steps=5), 4).weights_from_gramian(gram, losses))
    assert float((one - multi).norm()) > 1e-2
    tiny = 1e-7  # the inner loop barely moves: every e_i^t = 1 + O(η), so w_multi = T · w_1step (1 + O(η))
    w_one = ready(DiBSMTL(eta=tiny), 4).weights_from_gramian(gram, losses)
    w_multi = ready(DiBSMTLMulti(eta=tiny, steps=5), 4).weights_from_gramian(gram, losses)
    torch.testing.assert_close(w_multi / 5, w_one, rtol=1e-6, atol=0)


def test_dibs_multi_step_stops_when_leaving_the_trust_region():
    # two aligned tasks (u1 = u2 = u, n = (1, 2)): x_{t+1} = x_t - 2η e^t u and e^{t+1} = 1 - ‖x_{t+1}‖.
    #   η = 0.3: ‖x‖ = 0.6, 0.84, 0.936, 0.9744 < 1 -> e = 1, 0.4, 0.16, 0.064, 0.0256, Σ = 1.6496
    #   η = 0.6: ‖x1‖ = 1.2 > 1 -> stop after the first step, Σ e = 1 (without the stop it would be 1 + 0.2 + ...)
    grads = t([1.0, 0.0], [2.0, 0.0])
    for eta, total in ((0.3, 1.6496), (0.6, 1.0)):
        weights = ready(DiBSMTLMulti(radius=1.0, eta=eta, steps=5), 2).weights_from_gramian(grads @ grads.T, losses_for(2))
        torch.testing.assert_close(weights, eta * total * t(1.0, 0.5))


def test_dibs_max_norm_clips_the_direction_like_clip_grad_norm():
    grads = random_grads(3, 20, seed=14)
    unclipped = ready(DiBSMTL(radius=1.0, eta=1.0, max_norm=0.0)).aggregate(grads, losses_for(3))
    clipped = ready(DiBSMTL(radius=1.0, eta=1.0, max_norm=0.5)).aggregate(grads, losses_for(3))
    param = torch.nn.Parameter(torch.zeros(20, dtype=F64))
    param.grad = unclipped.direction.clone()
    torch.nn.utils.clip_grad_norm_([param], 0.5)  # what the official code does after the backward
    torch.testing.assert_close(clipped.direction, param.grad)
    assert float(clipped.direction.norm()) == pytest.approx(0.5, rel=1e-5)
    torch.testing.assert_close(clipped.weights, unclipped.weights)  # heads are not clipped
    default = ready(DiBSMTL()).aggregate(grads, losses_for(3))  # |update| ≤ K·1e-5: the default clip never acts
    torch.testing.assert_close(default.direction, default.weights @ grads)


def test_dibs_zero_gradients_edge_cases_and_config_errors():
    grads = random_grads(3, 10, seed=15)
    grads[1] = 0.0
    for comb in (ready(DiBSMTL()), ready(DiBSMTLMulti())):
        weights = comb.aggregate(grads, losses_for(3)).weights
        assert bool(torch.isfinite(weights).all()) and float(weights[1]) == 0.0
    w = ready(DiBSMTL()).aggregate(grads, losses_for(3)).weights
    torch.testing.assert_close(w[[0, 2]], 1e-5 / grads[[0, 2]].norm(dim=1))
    zero = ready(DiBSMTLMulti()).aggregate(torch.zeros(3, 10, dtype=F64), losses_for(3))
    assert torch.equal(zero.weights, torch.zeros(3, dtype=F64)) and torch.equal(zero.direction, torch.zeros(10, dtype=F64))
    # K = 1, η = 0.2: x_{t+1} = x_t - η e^t u and e^{t+1} = 1 - ‖x_{t+1}‖ = 0.8 e^t (‖x‖ stays below 1),
    # so Σ_{t<5} e^t = (1 - 0.8⁵) / 0.2 = 3.3616
    g = random_grads(1, 10)
    torch.testing.assert_close(ready(DiBSMTLMulti(), 1).aggregate(g, losses_for(1)).direction, 3.3616 * 0.2e-3 * g[0] / g[0].norm())
    w32 = ready(DiBSMTL()).aggregate(random_grads(3, 10, dtype=torch.float32), losses_for(3))
    assert w32.weights.dtype == torch.float32 and w32.direction.dtype == torch.float32
    assert {DiBSMTL(grad_source=s).grad_source for s in ("params", "last_shared", "representation")} == {
        "params", "last_shared", "representation"}
    for kwargs, pattern in (
        ({"radius": 0.0}, r"combiner\.radius=0\.0 is invalid; valid: radius > 0"),
        ({"radius": "lr"}, r"combiner\.radius='lr' is invalid"),
        ({"eta": -1.0}, r"combiner\.eta=-1\.0 is invalid; valid: eta > 0"),
        ({"max_norm": -1.0}, r"combiner\.max_norm=-1\.0 is invalid; valid: max_norm >= 0"),
    ):
        with pytest.raises(ConfigError, match=pattern):
            DiBSMTL(**kwargs)
    for steps in (0, 2.5):
        with pytest.raises(ConfigError, match=r"combiner\.steps=.* is invalid; valid: an integer >= 1"):
            DiBSMTLMulti(steps=steps)


# ===================================================================================================== DB-MTL
def test_db_mtl_hand_case_and_equal_contribution_norms():
    # L = (1, 1) so h = ∇log L = G (up to ε = 1e-8); β = 0.9, first step: ĝ = 0.1 G = [(0.2, 0), (0, 0.1)],
    # norms (0.2, 0.1) -> scales (1, 2) -> update (0.2, 0.2); head weights 1 / (L + ε)
    comb = ready(DBMTL(), 2)
    agg = comb.aggregate(t([2.0, 0.0], [0.0, 1.0]), t(1.0, 1.0))
    torch.testing.assert_close(agg.direction, t(0.2, 0.2))
    torch.testing.assert_close(agg.weights, t(1.0, 1.0))
    contributions = balance_to_max_norm(random_grads(4, 30, seed=16, scales=[1.0, 100.0, 0.01, 3.0]))
    norms = contributions.norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), float(norms.max()), dtype=F64))


def test_db_mtl_first_update_is_invariant_to_positive_loss_scaling():
    grads, losses = random_grads(3, 40, seed=17), losses_for(3)
    scales = t(100.0, 0.01, 3.0)  # L_k -> c_k L_k scales g_k by c_k; g_k / L_k is unchanged
    base = ready(DBMTL()).aggregate(grads, losses)
    scaled = ready(DBMTL()).aggregate(grads * scales.unsqueeze(1), losses * scales)
    # exact up to the guard ε = 1e-8 in log(L + ε): relative error ≤ ε / min(c L) ≈ 2e-6 here
    torch.testing.assert_close(scaled.direction, base.direction, rtol=1e-5, atol=0)
    torch.testing.assert_close(scaled.weights * scales, base.weights, rtol=1e-5, atol=0)  # heads: ∇ log L unchanged
    # the same through the engine, heads included; EW is not invariant (see above)
    torch.testing.assert_close(step_grads(DBMTL(), SCALINGS), step_grads(DBMTL()), rtol=1e-5, atol=1e-12)


def test_db_mtl_heads_receive_the_gradient_of_their_log_loss():
    model = tiny_model(TASKS3)
    comb = DBMTL()
    comb.setup(list(TASKS3))
    x, y = tiny_batch()
    out = model(x)
    losses = {task: torch.nn.functional.mse_loss(out[task], y[task]) for task in TASKS3}
    expected = [torch.autograd.grad(torch.log(losses[task] + 1e-8), model.task_parameters(task), retain_graph=True) for task in TASKS3]
    GradientEngine(model, comb, TASKS3).backward(losses, 0)
    for task, grads in zip(TASKS3, expected):
        for p, g in zip(model.task_parameters(task), grads):
            torch.testing.assert_close(p.grad, g)


def test_db_mtl_moving_average_schedule_and_state_round_trip():
    h1, h2 = random_grads(2, 6, seed=18), random_grads(2, 6, seed=19)
    ones = torch.ones(2, dtype=F64)
    comb = ready(DBMTL(beta=0.9, beta_sigma=1.0), 2)
    comb.aggregate(h1, ones)
    comb.aggregate(h2, ones)
    # β_1 = 0.9, β_2 = 0.9 / 2: ĝ_2 = 0.45 · (0.1 h1) + 0.55 h2 (losses 1, so h = g up to ε)
    torch.testing.assert_close(comb.ema, 0.45 * 0.1 * h1 + 0.55 * h2, rtol=1e-7, atol=0)
    assert comb.step == 2
    fresh = restored(comb, lambda: DBMTL(beta=0.9, beta_sigma=1.0), 2)
    torch.testing.assert_close(fresh.aggregate(h1, ones).direction, comb.aggregate(h1, ones).direction, rtol=0, atol=0)
    before_first_call = restored(ready(DBMTL(), 2), DBMTL, 2)  # an empty state loads too
    assert before_first_call.ema is None and before_first_call.step == 0


def test_db_mtl_edge_cases_and_config_errors():
    zero = ready(DBMTL()).aggregate(torch.zeros(3, 5, dtype=F64), torch.zeros(3, dtype=F64))
    assert torch.equal(zero.direction, torch.zeros(5, dtype=F64))
    g = random_grads(1, 5)
    torch.testing.assert_close(ready(DBMTL(), 1).aggregate(g, t(2.0)).direction, 0.1 * g[0] / 2.0, rtol=1e-7, atol=0)
    with pytest.raises(ConfigError, match=r"needs non-negative task losses .* task 't1' has loss -0\.5"):
        ready(DBMTL()).aggregate(random_grads(3, 5), t(1.0, -0.5, 1.0))
    for source in ("representation", "last_shared"):
        with pytest.raises(ConfigError, match=rf"does not support grad_source='{source}'; supported: \['params'\]"):
            DBMTL(grad_source=source)
    with pytest.raises(ConfigError, match=r"combiner\.beta=1\.0 is invalid; valid: beta >= 0 and beta < 1"):
        DBMTL(beta=1.0)
    with pytest.raises(ConfigError, match=r"combiner\.beta_sigma=-1\.0 is invalid; valid: beta_sigma >= 0"):
        DBMTL(beta_sigma=-1.0)


# ===================================================================================================== GradNorm
def test_gradnorm_loss_gradient_hand_case():
    # ‖g‖ = (2, 1.5), w = (1, 1): G = (2, 1.5), Ḡ = 1.75.  L(0) = (2, 1) (first call), L = (2, 0.5):
    # L̃ = (1, 0.5), r = (4/3, 2/3).
    #   α = 0:   targets 1.75 -> G - T = (0.25, -0.25) -> ∂L_grad/∂w = (+2, -1.5)
    #   α = 1.5: targets 1.75 r^1.5 = (2.694, 0.953) -> G - T = (-0.69, 0.55) -> ∂L_grad/∂w = (-2, +1.5)
    grads = t([0.0, 2.0], [1.5, 0.0])
    for alpha, expected in ((0.0, (2.0, -1.5)), (1.5, (-2.0, 1.5))):
        comb = ready(GradNorm(alpha=alpha), 2)
        comb.aggregate(grads, t(2.0, 1.0))  # records L(0); r = 1, G - T = (0.25, -0.25)
        torch.testing.assert_close(comb.task_weights.grad, torch.tensor([2.0, -1.5]))
        comb.task_weights.grad = None
        agg = comb.aggregate(grads, t(2.0, 0.5))
        torch.testing.assert_close(comb.task_weights.grad, torch.tensor(expected))
        torch.testing.assert_close(agg.direction, grads.sum(0))  # w = 1: Σ_k w_k g_k
        # the same gradient by autograd of the GradNorm loss with the target detached
        w = torch.ones(2, dtype=F64, requires_grad=True)
        norms = grads.norm(dim=1)
        ratios = t(2.0, 0.5) / t(2.0, 1.0)
        target = ((w * norms).mean() * (ratios / ratios.mean()) ** alpha).detach()
        (auto,) = torch.autograd.grad((w * norms - target).abs().sum(), w)
        torch.testing.assert_close(comb.task_weights.grad, auto.float())


def test_gradnorm_slower_task_gains_weight_and_weights_sum_to_k():
    comb = ready(GradNorm(alpha=1.5))
    opt = torch.optim.SGD([comb.task_weights], lr=0.1)
    grads = torch.eye(3, dtype=F64)  # equal gradient norms
    comb.aggregate(grads, t(1.0, 1.0, 1.0))
    opt.zero_grad()
    comb.aggregate(grads, t(0.9, 0.5, 0.5))  # task 0 trains slower (larger loss ratio)
    opt.step()
    comb.after_step(None)
    w = comb.task_weights.detach()
    assert float(w[0]) > 1.0 > float(w[1]) and float(w[1]) == pytest.approx(float(w[2]))
    assert float(w.sum()) == pytest.approx(3.0)


def test_gradnorm_trains_through_the_engine_keeping_the_weight_sum_and_applies_weights():
    comb = GradNorm(alpha=1.5)
    engine_update(comb, steps=6, lr=0.05)
    w = comb.task_weights.detach()
    assert float(w.sum()) == pytest.approx(3.0, abs=1e-6)
    assert float((w - 1.0).abs().max()) > 0.05, "the weights should move away from 1"
    # the model update is Σ_k w_k ∇L_k (last_shared: one weighted backward over the whole model)
    model = tiny_model(TASKS3)
    engine = GradientEngine(model, comb, TASKS3)
    x, y = tiny_batch(seed=5)
    out = model(x)
    losses = {task: torch.nn.functional.mse_loss(out[task], y[task]) for task in TASKS3}
    weighted = sum(float(wk) * losses[task] for wk, task in zip(w, TASKS3))
    expected = torch.autograd.grad(weighted, list(model.parameters()), retain_graph=True)
    comb.task_weights.grad = None
    engine.backward(losses, 0)
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)


def test_gradnorm_state_round_trip():
    comb = GradNorm(alpha=1.0)
    engine_update(comb, steps=3, lr=0.05)
    state = comb.state_dict()
    assert set(state) == {"task_weights", "initial_losses", "has_initial_losses"}
    fresh = restored(comb, lambda: GradNorm(alpha=1.0), 3)
    grads, losses = random_grads(3, 12, seed=20), losses_for(3)
    comb.task_weights.grad = None  # the optimizer would have zeroed it before the next step
    a, b = comb.aggregate(grads, losses), fresh.aggregate(grads, losses)
    torch.testing.assert_close(a.direction, b.direction, rtol=0, atol=0)
    torch.testing.assert_close(comb.task_weights.grad, fresh.task_weights.grad, rtol=0, atol=0)
    torch.testing.assert_close(fresh.initial_losses, comb.initial_losses, rtol=0, atol=0)


def test_gradnorm_renormalisation_guard_optimizer_group_and_config_errors():
    comb = ready(GradNorm())
    with torch.no_grad():
        comb.task_weights.copy_(torch.tensor([-1.0, 2.0, 2.0]))
    comb.after_step(None)
    torch.testing.assert_close(comb.task_weights.detach(), torch.tensor([0.0, 1.5, 1.5]))
    with torch.no_grad():
        comb.task_weights.fill_(-1.0)
    comb.after_step(None)
    torch.testing.assert_close(comb.task_weights.detach(), torch.ones(3))
    zero = ready(GradNorm())
    zero.aggregate(torch.zeros(3, 4, dtype=F64), torch.zeros(3, dtype=F64))
    assert torch.equal(zero.task_weights.grad, torch.zeros(3))
    assert GradNorm().grad_source == "last_shared" and GradNorm(grad_source="params").grad_source == "params"
    assert ready(GradNorm()).optimizer_overrides() == {"weight_decay": 0.0}
    model = tiny_model(TASKS3)
    groups = param_groups(model, ready(GradNorm(lr=0.025)))
    combiner_group = next(g for g in groups if g["name"] == "combiner")
    assert combiner_group["lr"] == 0.025 and combiner_group["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="does not support grad_source='representation'"):
        GradNorm(grad_source="representation")
    with pytest.raises(ConfigError, match=r"combiner\.alpha=-1\.0 is invalid; valid: alpha >= 0"):
        GradNorm(alpha=-1.0)
    with pytest.raises(ConfigError, match=r"combiner\.lr=0\.0 is invalid; valid: lr > 0"):
        GradNorm(lr=0.0)
