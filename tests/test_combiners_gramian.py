"""Gramian/QP-based aggregators: MGDA, MGDA-UB, UPGrad, CAGrad, IMTL-G, Nash-MTL, FairGrad, and the exact
K×K solvers they share (``combiners/solvers.py``).

Every method is tested by its defining mathematical property on seeded float64 inputs (optimality or KKT
conditions, invariances, closed forms) and by small cases worked out by hand in the comments.
"""

from __future__ import annotations

import copy
import logging
import math
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from mtl_bench.combiners.cagrad import CAGrad, cagrad_weights
from mtl_bench.combiners.fairgrad import FairGrad
from mtl_bench.combiners.imtl_g import IMTLG
from mtl_bench.combiners.mgda import MGDA
from mtl_bench.combiners.mgda_ub import MGDAUB
from mtl_bench.combiners.nash_mtl import NashMTL
from mtl_bench.combiners.solvers import dual_cone_weights, min_norm_weights, solve_alpha_fair
from mtl_bench.combiners.upgrad import UPGrad
from mtl_bench.engine import GradientEngine
from mtl_bench.errors import ConfigError
from tests.combiner_utils import TASKS3, conflicting_grads, losses_for, random_grads
from tests.helpers import tiny_batch, tiny_model

F64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def weights(comb, grads: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
    """Set the combiner up for len(grads) tasks and return its weights for G = grads."""
    k = grads.shape[0]
    if comb.num_tasks != k:
        comb.setup([f"t{i}" for i in range(k)])
    return comb.weights_from_gramian(grads @ grads.T, losses if losses is not None else losses_for(k))


def direction(comb, grads: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
    k = grads.shape[0]
    if comb.num_tasks != k:
        comb.setup([f"t{i}" for i in range(k)])
    return comb.aggregate(grads, losses if losses is not None else losses_for(k)).direction


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


# Gradient families shared by several tests: (K, d, seed, row scales).
FAMILIES = [(2, 10, 0, None), (3, 50, 1, [1.0, 10.0, 0.1]), (5, 8, 2, None), (4, 3, 3, [2.0, 1.0, 0.5, 3.0]), (6, 20, 4, None)]


def family(k, d, seed, scales) -> torch.Tensor:
    return random_grads(k, d, seed=seed, scales=scales)


# ============================================================================ shared solvers
@pytest.mark.parametrize("k,d,seed,scales", FAMILIES + [(5, 2, 5, None), (1, 4, 6, None)])
def test_min_norm_weights_satisfy_the_kkt_conditions(k, d, seed, scales):
    """min_{w∈Δ} wᵀMw: w ≥ 0, Σw = 1, (Mw)_j ≥ wᵀMw for all j, with equality where w_j > 0."""
    g = family(k, d, seed, scales)
    m = (g @ g.T).numpy()
    w = min_norm_weights(m)
    mw, value = m @ w, float(w @ m @ w)
    tol = 1e-10 * np.trace(m)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-14)
    assert (mw >= value - tol).all()
    assert np.abs(mw[w > 1e-9] - value).max() <= tol


def test_dual_cone_weights_satisfy_the_kkt_conditions_of_the_projection():
    """v = argmin_{v ≥ u} vᵀMv  ⇔  v ≥ u, Mv ≥ 0, (v − u)ᵀMv = 0; and Gᵀv lies in the dual cone."""
    for seed in range(6):
        g = random_grads(4, 5, seed=seed, scales=[1.0, 3.0, 0.3, 1.0])
        m = (g @ g.T).numpy()
        u = np.random.default_rng(seed).random((4, 3))
        v = dual_cone_weights(m, u)
        scale = np.trace(m)
        assert (v >= u).all()
        assert ((m @ v) >= -1e-12 * scale).all()
        assert np.abs(((v - u) * (m @ v)).sum(0)).max() <= 1e-12 * scale * (1 + v.sum())


def test_solve_alpha_fair_returns_none_without_a_solution():
    # g1 = −g2: d = (1, 1) ≥ 0 has Gᵀd = 0 (Pareto stationary), f is unbounded below; a zero row likewise.
    assert solve_alpha_fair((t([[1.0, 0.0], [-1.0, 0.0]]) @ t([[1.0, 0.0], [-1.0, 0.0]]).T).numpy(), 1.0) is None
    assert solve_alpha_fair(np.diag([1.0, 0.0]), 1.0) is None
    assert solve_alpha_fair(np.zeros((2, 2)), 1.0) is None
    # duplicated gradients are singular but solvable: 2α²‖g‖² = 1 → α = 1/√2 for unit g.
    np.testing.assert_allclose(solve_alpha_fair(np.ones((2, 2)), 1.0), [2**-0.5] * 2, rtol=1e-12)


# ============================================================================ MGDA
@pytest.mark.parametrize("k,d,seed,scales", FAMILIES)
def test_mgda_weights_are_the_min_norm_point_kkt(k, d, seed, scales):
    g = family(k, d, seed, scales)
    w = weights(MGDA(), g)
    m = g @ g.T
    mw, value = m @ w, w @ m @ w
    assert w.dtype == F64 and bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-14)
    tol = 1e-10 * float(m.trace())
    assert bool((mw >= value - tol).all())
    assert float((mw[w > 1e-9] - value).abs().max()) <= tol


def test_mgda_two_task_closed_form():
    # g1 = (1,0), g2 = (0,2): w1 = (g2 − g1)·g2 / ‖g1 − g2‖² = (4 − 0)/5 = 0.8; point (0.8, 0.4) ⟂ g1 − g2.
    w = weights(MGDA(), t([[1.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(w, t([0.8, 0.2]), rtol=0, atol=1e-13)
    # g2 = 2 g1: the shorter gradient is the min-norm point, w = (1, 0) exactly (official code: 0.999/0.001).
    torch.testing.assert_close(weights(MGDA(), t([[1.0, 0.0], [2.0, 0.0]])), t([1.0, 0.0]), rtol=0, atol=1e-14)
    # general two-task formula, clipped to [0, 1]
    for ratio in (0.3, 1.0, 5.0):
        g = conflicting_grads(cos=-0.6, ratio=ratio)
        g1, g2 = g
        w1 = float(((g2 - g1) @ g2) / (g1 - g2).square().sum())
        torch.testing.assert_close(weights(MGDA(), g), t([w1, 1 - w1]), rtol=0, atol=1e-12)


def test_mgda_returns_zero_when_zero_is_in_the_hull():
    # ½(1,0) + ½(−1,0) = 0 and the third gradient cannot help: w = (½, ½, 0) uniquely, update 0.
    g = t([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(weights(MGDA(), g), t([0.5, 0.5, 0.0]), rtol=0, atol=1e-12)
    assert float(direction(MGDA(), g).norm()) <= 1e-12


def test_mgda_rank_deficient_gramians():
    # A duplicated task leaves the min-norm point unchanged (the split of weight between the copies is free).
    g = conflicting_grads(cos=-0.3, ratio=2.0)
    dup = torch.cat([g, g[:1]])
    torch.testing.assert_close(direction(MGDA(), dup), direction(MGDA(), g), rtol=0, atol=1e-12)
    # K = 5 gradients in 2 dimensions (rank 2): still the KKT point
    many = random_grads(5, 2, seed=7)
    w = weights(MGDA(), many)
    m = many @ many.T
    assert bool((m @ w >= w @ m @ w - 1e-12).all())


def test_mgda_is_not_invariant_to_per_task_gradient_rescaling():
    g = random_grads(3, 20, seed=8)
    c = t([1.0, 10.0, 0.1])
    a, b = direction(MGDA(), g), direction(MGDA(), g * c[:, None])
    assert float(unit(a) @ unit(b)) < 0.95


def test_mgda_gradient_normalizations():
    g = random_grads(3, 20, seed=9, scales=[1.0, 5.0, 0.2])
    losses = t([0.5, 2.0, 4.0])
    norms = g.norm(dim=1)

    def min_norm_of(rows: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(min_norm_weights((rows @ rows.T).numpy()))

    cases = {"l2": norms, "loss": losses, "loss+": losses * norms}
    for name, n in cases.items():
        comb = MGDA(normalization=name)
        w = weights(comb, g, losses)
        torch.testing.assert_close(w, min_norm_of(g / n[:, None]), rtol=0, atol=1e-12)
        # the weights found for the normalised gradients are applied to the raw gradients (official trainer)
        torch.testing.assert_close(direction(comb, g, losses), w @ g, rtol=1e-14, atol=0)
    # l2: the weights depend only on the unit gradients
    torch.testing.assert_close(weights(MGDA(normalization="l2"), g * t([3.0, 0.1, 7.0])[:, None]), weights(MGDA(normalization="l2"), g),
                               rtol=0, atol=1e-12)
    # a zero gradient stays zero (no NaN): 0 is in the hull, all weight on that task
    z = torch.cat([g[:2], torch.zeros(1, 20, dtype=F64)])
    torch.testing.assert_close(weights(MGDA(normalization="l2"), z), t([0.0, 0.0, 1.0]), rtol=0, atol=1e-12)


def test_mgda_weight_scale_num_tasks_multiplies_the_simplex_weights_by_k():
    g = random_grads(4, 10, seed=10)
    torch.testing.assert_close(weights(MGDA(weight_scale="num_tasks"), g), 4 * weights(MGDA(), g), rtol=1e-14, atol=0)
    assert MGDA(weight_scale="num_tasks").describe()["scale"] == "num_tasks"


def test_mgda_config_errors():
    with pytest.raises(ConfigError, match=r"combiner.normalization='norm' is invalid; choose one of \['none', 'l2', 'loss', 'loss\+'\]"):
        MGDA(normalization="norm")
    with pytest.raises(ConfigError, match=r"combiner.weight_scale='sum' is invalid; choose one of \['simplex', 'num_tasks'\]"):
        MGDA(weight_scale="sum")
    g = random_grads(2, 5, seed=11)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ConfigError, match=r"normalization='loss\+' divides by the task losses.*task 't1' has loss"):
            weights(MGDA(normalization="loss+"), g, t([1.0, bad]))


def test_mgda_ub_weights_come_from_the_representation_gradients():
    """The engine runs MGDA-UB on ∇_Z L_k; the encoder then receives ∇_θ Σ_k w_k L_k with those weights."""
    assert MGDAUB().grad_source == "representation"
    model = tiny_model(TASKS3, seed=1)
    comb = MGDAUB()
    comb.setup(list(TASKS3))
    x, y = tiny_batch(tasks=TASKS3, seed=4)
    engine = GradientEngine(model, comb, TASKS3)
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    result = engine.backward({k: torch.nn.functional.mse_loss(out[k], y[k]) for k in TASKS3}, 0, rep=rep, leaves=leaves)
    w = result.weights
    # independent recomputation: representation gradients of a fresh forward pass
    z = model.encode(x).detach().requires_grad_(True)
    out2 = model.decode(z)
    rep_grads = torch.stack([torch.autograd.grad(torch.nn.functional.mse_loss(out2[k], y[k]), z)[0].reshape(-1) for k in TASKS3])
    m = rep_grads @ rep_grads.T
    assert bool((m @ w >= w @ m @ w - 1e-12).all()) and float(w.sum()) == pytest.approx(1.0)  # KKT on ∇_Z
    out3 = model(x)
    objective = sum(w[i] * torch.nn.functional.mse_loss(out3[k], y[k]) for i, k in enumerate(TASKS3))
    expected = torch.autograd.grad(objective, model.shared_parameters())
    for p, e in zip(model.shared_parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-14)


# ============================================================================ UPGrad
@pytest.mark.parametrize("k,d,seed,scales", FAMILIES)
def test_upgrad_update_conflicts_with_no_task(k, d, seed, scales):
    g = family(k, d, seed, scales)
    dvec = direction(UPGrad(), g)
    assert float((g @ dvec).min()) >= -1e-12 * float(g.square().sum())


def test_upgrad_is_the_mean_gradient_when_no_pair_conflicts():
    g = random_grads(4, 30, seed=12).abs()  # non-negative entries: all inner products ≥ 0
    torch.testing.assert_close(weights(UPGrad(), g), torch.full((4,), 0.25, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(weights(UPGrad(pref_vector=[1, 2, 0, 1]), g), t([1.0, 2.0, 0.0, 1.0]), rtol=0, atol=0)


def test_upgrad_two_task_hand_example():
    # g1 = (1,0), g2 = (−1,1); dual cone C = {d : d1 ≥ 0, d2 ≥ d1}.
    # proj_C(g1) = (½,½) = 1·g1 + ½·g2;  proj_C(g2) = (0,1) = 1·g1 + 1·g2.
    # mean: weights (1, ¾), update (¼, ¾).
    g = t([[1.0, 0.0], [-1.0, 1.0]])
    torch.testing.assert_close(weights(UPGrad(), g), t([1.0, 0.75]), rtol=0, atol=1e-13)
    torch.testing.assert_close(direction(UPGrad(), g), t([0.25, 0.75]), rtol=0, atol=1e-13)


def test_upgrad_is_permutation_invariant():
    g = random_grads(5, 12, seed=13, scales=[1.0, 2.0, 0.5, 1.0, 4.0])
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(weights(UPGrad(), g[perm]), weights(UPGrad(), g)[perm], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(direction(UPGrad(), g[perm]), direction(UPGrad(), g), rtol=1e-10, atol=1e-12)


def test_upgrad_is_linear_in_the_preference_vector():
    g = random_grads(3, 6, seed=14, scales=[1.0, 3.0, 0.3])
    p1, p2 = [0.2, 1.0, 0.0], [1.0, 0.5, 2.0]
    combined = [a + 2 * b for a, b in zip(p1, p2)]
    lhs = weights(UPGrad(pref_vector=combined), g)
    rhs = weights(UPGrad(pref_vector=p1), g) + 2 * weights(UPGrad(pref_vector=p2), g)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)


def test_upgrad_is_linear_under_positive_rescaling_of_the_tasks():
    # The dual cone does not change when rows are scaled by c > 0, so proj(c_i g_i) = c_i proj(g_i).
    g = random_grads(4, 7, seed=15)
    c1, c2 = t([1.0, 2.0, 0.5, 3.0]), t([0.1, 1.0, 4.0, 1.0])
    lhs = direction(UPGrad(), (2 * c1 + 3 * c2)[:, None] * g)
    rhs = 2 * direction(UPGrad(), c1[:, None] * g) + 3 * direction(UPGrad(), c2[:, None] * g)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-12)


def test_upgrad_config_errors():
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, math.inf], "abc", [], [True, 1.0]):
        with pytest.raises(ConfigError, match=r"combiner.pref_vector=.* is invalid; valid: null .* or a list of K finite numbers >= 0"):
            UPGrad(pref_vector=bad)
    with pytest.raises(ConfigError, match=r"combiner.pref_vector has 2 values but there are 3 tasks \['a', 'b', 'c'\]"):
        UPGrad(pref_vector=[1.0, 1.0]).setup(["a", "b", "c"])


# ============================================================================ CAGrad
def worst_improvement(grads: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return (grads @ d.T).min(0).values if d.dim() == 2 else (grads @ d).min()


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("k,d,seed", [(2, 2, 0), (3, 2, 1), (3, 3, 2), (4, 3, 3), (1, 2, 4)])
def test_cagrad_maximises_the_worst_improvement_in_the_ball(c, k, d, seed):
    """d* = argmax_{‖d − g0‖ ≤ c‖g0‖} min_i ⟨g_i, d⟩: no point of the ball (dense random sample) is better."""
    g = random_grads(k, d, seed=seed, scales=np.exp(np.random.default_rng(seed).normal(size=k)).tolist())
    d_star = direction(CAGrad(c=c, rescale=0), g)
    g0 = g.mean(0)
    radius = c * float(g0.norm())
    assert float((d_star - g0).norm()) <= radius * (1 + 1e-9)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(20000, d, generator=gen, dtype=F64)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(20000, 1, generator=gen, dtype=F64) ** (1 / d)
    sampled = worst_improvement(g, g0 + radius * u)
    assert float(worst_improvement(g, d_star)) >= float(sampled.max()) - 1e-12 * float(g.square().sum())


def test_cagrad_minimises_its_dual_objective_and_the_ball_constraint_is_active():
    g = random_grads(4, 30, seed=16, scales=[1.0, 4.0, 0.5, 2.0])
    c = 0.5
    m = (g @ g.T).numpy()
    omega = cagrad_weights(m, c)
    p = np.full(4, 0.25)
    w_star = (omega - p) / (omega - p).sum()  # ω = p + λ w*, Σ w* = 1
    r = c * math.sqrt(p @ m @ p)

    def dual(w: np.ndarray) -> float:  # F(w) = g_wᵀ g0 + c‖g0‖ ‖g_w‖
        return float(w @ m @ p + r * math.sqrt(w @ m @ w))

    rng = np.random.default_rng(0)
    others = rng.dirichlet(np.ones(4) * 0.5, size=5000)
    assert dual(w_star) <= min(dual(w) for w in others) + 1e-12
    d = torch.as_tensor(omega) @ g
    assert float((d - g.mean(0)).norm()) == pytest.approx(r, rel=1e-10)


def test_cagrad_with_c_zero_is_the_mean_gradient():
    g = random_grads(3, 10, seed=17, scales=[1.0, 10.0, 0.1])
    torch.testing.assert_close(weights(CAGrad(c=0.0, rescale=0), g), torch.full((3,), 1 / 3, dtype=F64), rtol=0, atol=0)


def test_cagrad_orthogonal_unit_gradients_hand_example():
    # g1 = e1, g2 = e2: g0 = (½,½), F(w) = ½ + c‖g0‖‖g_w‖ is minimised at w = (½,½), g_w = g0, λ = c:
    # d = (1 + c) g0, weights (1 + c)/2; rescale 1 divides by 1 + c², 2 by 1 + c; reduction sum × K.
    g = t([[1.0, 0.0], [0.0, 1.0]])
    c = 0.5
    torch.testing.assert_close(weights(CAGrad(c=c, rescale=0), g), t([0.75, 0.75]), rtol=1e-12, atol=0)
    torch.testing.assert_close(weights(CAGrad(c=c, rescale=1), g), t([0.75, 0.75]) / 1.25, rtol=1e-12, atol=0)
    torch.testing.assert_close(weights(CAGrad(c=c, rescale=2), g), t([0.5, 0.5]), rtol=1e-12, atol=0)
    torch.testing.assert_close(weights(CAGrad(c=c, rescale=1, reduction="sum"), g), t([1.5, 1.5]) / 1.25, rtol=1e-12, atol=0)


def test_cagrad_pareto_stationary_boundary_case():
    # g1 = 0 puts 0 in the hull: the best worst-case improvement is ≤ 0.  Here g0 = (1/6, 1/60) conflicts
    # with g3 (⟨g3, g0⟩ < 0).  c = 0.99: a conflict-free point lies in the ball, optimum exactly 0 (the official
    # code returns ≈ g0, worse); c = 0.5: it does not, the optimum is negative.
    g = t([[0.0, 0.0], [1.0, 0.0], [-0.5, 0.05]])
    assert float((g @ g.mean(0)).min()) < 0
    for c in (0.99, 0.5):
        d_star = direction(CAGrad(c=c, rescale=0), g)
        radius = c * float(g.mean(0).norm())
        assert float((d_star - g.mean(0)).norm()) <= radius * (1 + 1e-9)
        gen = torch.Generator().manual_seed(1)
        u = torch.randn(50000, 2, generator=gen, dtype=F64)
        u = u / u.norm(dim=1, keepdim=True) * torch.rand(50000, 1, generator=gen, dtype=F64).sqrt()
        best = float(worst_improvement(g, g.mean(0) + radius * u).max())
        assert float(worst_improvement(g, d_star)) >= best - 1e-12
    assert float(worst_improvement(g, direction(CAGrad(c=0.99, rescale=0), g))) == pytest.approx(0.0, abs=1e-14)


def test_cagrad_config_errors():
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(ConfigError, match=r"combiner.c=.* is invalid; valid: c >= 0 and c < 1"):
            CAGrad(c=bad)
    for bad in (3, -1, True, "1"):
        with pytest.raises(ConfigError, match=r"combiner.rescale=.* is invalid; choose one of \[0, 1, 2\]"):
            CAGrad(rescale=bad)
    with pytest.raises(ConfigError, match=r"combiner.reduction='avg' is invalid; choose one of \['mean', 'sum'\]"):
        CAGrad(reduction="avg")


# ============================================================================ IMTL-G
@pytest.mark.parametrize("k,d,seed,scales", FAMILIES)
def test_imtl_g_update_has_equal_projections_on_the_unit_gradients(k, d, seed, scales):
    g = family(k, d, seed, scales)
    w = weights(IMTLG(), g)
    proj = (g / g.norm(dim=1, keepdim=True)) @ (w @ g)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(proj, proj.mean().expand(k), rtol=1e-9, atol=1e-12)


def test_imtl_g_matches_the_papers_closed_form():
    # α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ α_{2:K}, D rows g_1 − g_i, U rows u_1 − u_i (i ≥ 2).
    # Includes inputs where 1ᵀM⁻¹s < 0, i.e. equal *negative* projections (a property of the method).
    # cond(G) reaches 2e4 here and the Gramian squares it, hence the 1e-5 tolerance.
    negative_seen = False
    for seed in range(40):
        g = random_grads(4, 5, seed=100 + seed, scales=np.exp(2 * np.random.default_rng(seed).normal(size=4)).tolist())
        u = g / g.norm(dim=1, keepdim=True)
        dmat, umat = g[0] - g[1:], u[0] - u[1:]
        tail = g[0] @ umat.T @ torch.linalg.inv(dmat @ umat.T)
        expected = torch.cat([(1 - tail.sum()).reshape(1), tail])
        w = weights(IMTLG(), g)
        torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-9)
        negative_seen |= bool(float(u[0] @ (w @ g)) < 0)
    assert negative_seen


def test_imtl_g_direction_is_scale_invariant_but_its_magnitude_is_not():
    g = random_grads(3, 15, seed=18)
    scaled = g * t([1.0, 10.0, 0.1])[:, None]
    a, b = direction(IMTLG(), g), direction(IMTLG(), scaled)
    torch.testing.assert_close(unit(a), unit(b), rtol=1e-9, atol=1e-12)
    assert abs(float(a.norm()) / float(b.norm()) - 1) > 0.1


def test_imtl_g_hand_examples_and_singular_gramians():
    # g1 = (1,0), g2 = (0,2): d = (α1, 2α2) with α1 = 2α2, α1 + α2 = 1 → α = (⅔, ⅓), d = (⅔, ⅔).
    torch.testing.assert_close(weights(IMTLG(), t([[1.0, 0.0], [0.0, 2.0]])), t([2 / 3, 1 / 3]), rtol=1e-12, atol=0)
    # duplicated gradients: α = (½, ½)
    g = random_grads(1, 4, seed=19)
    torch.testing.assert_close(weights(IMTLG(), torch.cat([g, g])), t([0.5, 0.5]), rtol=1e-12, atol=0)
    # g2 = −2 g1: Mα = t·s is inconsistent unless t = 0; α ∈ null(M), Σα = 1 → α = (⅔, ⅓) and d = 0
    # (TorchJD's pseudo-inverse would give α = (−1, 2), d = −5 g1, with unequal projections).
    opp = torch.cat([g, -2 * g])
    torch.testing.assert_close(weights(IMTLG(), opp), t([2 / 3, 1 / 3]), rtol=1e-10, atol=1e-12)
    assert float(direction(IMTLG(), opp).norm()) <= 1e-12
    # a zero gradient gets weight 0; the others keep equal projections
    z = torch.cat([random_grads(2, 6, seed=20), torch.zeros(1, 6, dtype=F64)])
    w = weights(IMTLG(), z)
    assert float(w[2]) == 0.0 and float(w.sum()) == pytest.approx(1.0)
    proj = (z[:2] / z[:2].norm(dim=1, keepdim=True)) @ (w @ z)
    assert float(proj[0]) == pytest.approx(float(proj[1]), rel=1e-10)


# ============================================================================ Nash-MTL
def nash(**kwargs) -> NashMTL:
    comb = NashMTL(**kwargs)
    comb.setup(list(TASKS3))
    return comb


@pytest.mark.parametrize("seed", range(4))
def test_nash_mtl_solves_the_bargaining_equation_on_the_raw_gramian(seed):
    """α_i (GGᵀα)_i = 1 with the raw Gramian: the official code normalises GGᵀ by its Frobenius norm ν but
    also puts ν into its constraint, so the normalisation cancels (agreement with ``cccp`` tested below)."""
    g = random_grads(3, 40, seed=seed, scales=[1.0, 10.0, 0.1])
    comb = nash(max_norm=0.0)
    w = weights(comb, g)
    m = g @ g.T
    assert bool((w > 0).all())
    torch.testing.assert_close(w * (m @ w), torch.ones(3, dtype=F64), rtol=1e-9, atol=0)
    # hence ‖d‖² = αᵀMα = K: the unclipped update has norm √K at any gradient scale
    assert float(direction(comb, g).norm()) == pytest.approx(math.sqrt(3), rel=1e-9)


@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_mtl_update_is_invariant_to_per_task_gradient_rescaling(max_norm):
    """g_i → c_i g_i gives α_i → α_i / c_i, so Σ α_i g_i is unchanged (direction and norm, clipped or not)."""
    g = random_grads(3, 25, seed=21)
    c = t([0.01, 1.0, 30.0])
    a, b = nash(max_norm=max_norm), nash(max_norm=max_norm)
    wa, wb = weights(a, g), weights(b, c[:, None] * g)
    torch.testing.assert_close(wb, wa / c, rtol=1e-9, atol=0)
    torch.testing.assert_close(direction(a, g), direction(b, c[:, None] * g), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_nash_mtl_cccp_and_newton_agree_on_full_rank_inputs(seed):
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    g = random_grads(3, 30, seed=30 + seed)
    newton, cccp = weights(nash(), g), weights(nash(solver="cccp"), g)
    torch.testing.assert_close(cccp, newton, rtol=1e-6, atol=0)


def test_nash_mtl_max_norm_rescales_the_direction_not_the_head_weights():
    g = random_grads(3, 10, seed=22, scales=[5.0, 1.0, 2.0])
    for max_norm, expected in ((0.0, math.sqrt(3)), (1.0, 1.0), (0.5, 0.5), (10.0, math.sqrt(3))):
        comb = nash(max_norm=max_norm)
        agg = comb.aggregate(g, losses_for(3))
        assert float(agg.direction.norm()) == pytest.approx(expected, rel=1e-9)
        torch.testing.assert_close(unit(agg.direction), unit(agg.weights @ g), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(agg.weights * ((g @ g.T) @ agg.weights), torch.ones(3, dtype=F64), rtol=1e-9, atol=0)


def test_nash_mtl_update_weights_every_reuses_the_previous_solution():
    g1, g2, g3 = (random_grads(3, 12, seed=s) for s in (23, 24, 25))
    comb = nash(update_weights_every=2, max_norm=0.0)
    w1 = weights(comb, g1)
    w2 = weights(comb, g2)  # step 1: reused
    w3 = weights(comb, g3)  # step 2: recomputed from g3
    torch.testing.assert_close(w2, w1, rtol=0, atol=0)
    torch.testing.assert_close(w3, weights(nash(max_norm=0.0), g3), rtol=1e-9, atol=0)
    assert int(comb.step) == 3


@pytest.mark.parametrize("solver", ["newton", "cccp"])
def test_nash_mtl_state_dict_round_trip(solver):
    if solver == "cccp":
        pytest.importorskip("cvxpy")
        pytest.importorskip("ecos")
    grads = [random_grads(3, 12, seed=s) for s in (26, 27, 28)]
    comb = nash(solver=solver, update_weights_every=2)
    for g in grads[:2]:
        comb.aggregate(g, losses_for(3))
    fresh = nash(solver=solver, update_weights_every=2)
    fresh.load_state_dict(copy.deepcopy(comb.state_dict()))
    assert set(comb.state_dict()) == {"alpha", "step"}
    a, b = comb.aggregate(grads[2], losses_for(3)), fresh.aggregate(grads[2], losses_for(3))
    assert torch.equal(a.weights, b.weights) and torch.equal(a.direction, b.direction)


def test_nash_mtl_keeps_the_previous_weights_when_no_solution_exists(caplog):
    comb = nash(max_norm=0.0)
    stationary = t([[1.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # 2·g1 + g2 = 0: Pareto stationary
    with caplog.at_level(logging.WARNING, logger="mtl_bench.combiners.nash_mtl"):
        torch.testing.assert_close(weights(comb, stationary), torch.ones(3, dtype=F64), rtol=0, atol=0)  # initial α = 1
    assert "no bargaining solution found at step 0" in caplog.text
    good = weights(comb, random_grads(3, 3, seed=29))
    torch.testing.assert_close(weights(comb, stationary), good, rtol=0, atol=0)
    torch.testing.assert_close(weights(comb, torch.zeros(3, 3, dtype=F64)), good, rtol=0, atol=0)


def test_nash_mtl_cccp_without_its_solver_is_a_config_error(monkeypatch):
    for module in ("cvxpy", "ecos"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            with pytest.raises(ConfigError, match=r"solver='cccp' needs cvxpy and ecos .*pip install mtl-bench\[nash\]"):
                NashMTL(solver="cccp")
    NashMTL(solver="newton")  # the default needs neither


def test_nash_mtl_config_errors_and_last_shared_warning(caplog):
    with pytest.raises(ConfigError, match=r"combiner.solver='ecos' is invalid; choose one of \['newton', 'cccp'\]"):
        NashMTL(solver="ecos")
    with pytest.raises(ConfigError, match=r"combiner.update_weights_every=0 is invalid; valid: an integer >= 1"):
        NashMTL(update_weights_every=0)
    with pytest.raises(ConfigError, match=r"combiner.optim_niter=2.5 is invalid; valid: an integer >= 1"):
        NashMTL(optim_niter=2.5)
    with pytest.raises(ConfigError, match=r"combiner.max_norm=-1.0 is invalid; valid: max_norm >= 0"):
        NashMTL(max_norm=-1.0)
    with caplog.at_level(logging.WARNING, logger="mtl_bench.combiners.nash_mtl"):
        NashMTL(grad_source="last_shared")
    assert "max_norm=1 has no effect with grad_source=last_shared" in caplog.text


# ============================================================================ FairGrad
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_weights_solve_the_alpha_fair_equation(alpha):
    g = random_grads(4, 30, seed=31, scales=[1.0, 3.0, 0.2, 1.5])
    w = weights(FairGrad(alpha=alpha), g)
    assert bool((w > 0).all())
    torch.testing.assert_close((g @ g.T) @ w, w ** (-1 / alpha), rtol=1e-9, atol=0)


def test_fairgrad_agrees_with_a_least_squares_solve_as_in_the_official_code():
    g = random_grads(3, 20, seed=32)
    m = (g @ g.T).numpy()
    ref = least_squares(lambda x: m @ x - x ** (-1 / 2.0), np.full(3, 1 / 3), bounds=(0, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    np.testing.assert_allclose(weights(FairGrad(alpha=2.0), g).numpy(), ref, rtol=1e-7)


def test_fairgrad_with_alpha_one_gives_the_nash_mtl_weights():
    # Both solve Mw = 1/w with the raw Gramian (the official Nash-MTL normalisation cancels, see above), so
    # they agree exactly, also with the independent official-procedure (CCCP) solver.
    g = random_grads(3, 20, seed=33, scales=[1.0, 4.0, 0.5])
    torch.testing.assert_close(weights(FairGrad(alpha=1.0), g), weights(nash(), g), rtol=1e-10, atol=0)
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    g = random_grads(3, 20, seed=34)
    torch.testing.assert_close(weights(FairGrad(alpha=1.0), g), weights(nash(solver="cccp"), g), rtol=1e-6, atol=0)


def test_fairgrad_scaling_law():
    # M → c²M: w → w · c^{−2α/(1+α)}
    g = random_grads(3, 20, seed=35)
    for alpha in (0.5, 3.0):
        expected = weights(FairGrad(alpha=alpha), g) * 10 ** (-2 * alpha / (1 + alpha))
        torch.testing.assert_close(weights(FairGrad(alpha=alpha), 10 * g), expected, rtol=1e-9, atol=0)


def test_fairgrad_state_and_fallback(caplog):
    comb = FairGrad(alpha=2.0)
    good = weights(comb, random_grads(3, 10, seed=36))
    zero_task = torch.cat([random_grads(2, 10, seed=37), torch.zeros(1, 10, dtype=F64)])
    with caplog.at_level(logging.WARNING, logger="mtl_bench.combiners.fairgrad"):
        torch.testing.assert_close(weights(comb, zero_task), good, rtol=0, atol=0)
    assert "no alpha-fair weights" in caplog.text
    fresh = FairGrad(alpha=2.0)
    fresh.setup([f"t{i}" for i in range(3)])
    fresh.load_state_dict(copy.deepcopy(comb.state_dict()))
    torch.testing.assert_close(weights(fresh, zero_task), good, rtol=0, atol=0)
    nxt = random_grads(3, 10, seed=38)
    assert torch.equal(weights(fresh, nxt), weights(comb, nxt))


def test_fairgrad_config_errors():
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ConfigError, match=r"combiner.alpha=.* is invalid; valid: alpha > 0"):
            FairGrad(alpha=bad)


# ============================================================================ all methods
ALL = {
    "mgda": MGDA,
    "mgda_ub": MGDAUB,
    "upgrad": UPGrad,
    "cagrad": CAGrad,
    "imtl_g": IMTLG,
    "nash_mtl": NashMTL,
    "fairgrad": FairGrad,
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_single_task_and_all_zero_gradients(name):
    g = random_grads(1, 6, seed=39)
    w = weights(ALL[name](), g)
    # K = 1: MGDA, UPGrad, IMTL-G give 1; CAGrad (1 + c)/(1 + c²); Nash-MTL and FairGrad (α = 1) 1/‖g‖.
    expected = {"cagrad": 1.5 / 1.25, "nash_mtl": 1 / float(g.norm()), "fairgrad": 1 / float(g.norm())}.get(name, 1.0)
    assert float(w) == pytest.approx(expected, rel=1e-10)
    # all-zero gradients (documented outputs): uniform / preference weights; CAGrad the mean weights with its
    # default rescale 1/(1 + c²); Nash-MTL and FairGrad find no solution and keep their initial weights 1.
    zero_weights = {"cagrad": 1 / 3 / 1.25, "nash_mtl": 1.0, "fairgrad": 1.0}.get(name, 1 / 3)
    torch.testing.assert_close(weights(ALL[name](), torch.zeros(3, 5, dtype=F64)), torch.full((3,), zero_weights, dtype=F64))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", sorted(ALL))
def test_weights_follow_the_gramians_device_and_dtype(name, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    g64 = random_grads(3, 16, seed=40)
    reference = weights(ALL[name](), g64)
    g = g64.to(device=device, dtype=torch.float32)
    comb = ALL[name]()
    comb.setup(["t0", "t1", "t2"])
    comb.to(device)
    agg = comb.aggregate(g, losses_for(3).to(device=device, dtype=torch.float32))
    assert agg.weights.dtype == torch.float32 and agg.weights.device.type == device
    assert agg.direction.dtype == torch.float32 and agg.direction.device.type == device
    torch.testing.assert_close(agg.weights.double().cpu(), reference, rtol=2e-4, atol=1e-6)
