"""TorchJD 0.18.0 as an independent numerical oracle for the aggregators added after the first oracle file
(tests/test_torchjd_oracle.py, whose style and inputs this follows), and property tests of what each method claims.

Inputs are seeded float64 K×d matrices (Gaussian rows, norms over two decades), K ∈ {2, 3, 5, 7}, including K > d.
Stateful methods are compared over a short sequence of steps from the same initial state (a fresh object on both
sides), every step's update direction after mapping the scale conventions, with the tolerance derived per method.

Mapping (TorchJD → ours, scale):
  PCD(τ, β, ε) → pcd(τ, β, ε) (same scale: ‖update‖ = ‖g_1‖);
  GramianWeightedAggregator(CRMOGMWeighting(IMTLGWeighting(), α)) → cr_mogm(weighting=imtl_g, α) (inherited scale);
  ExcessMTL(η, n_warmup_steps=n) → excess_mtl(η, n_warmup_steps=n) (TorchJD's weights sum to 1, ours to K:
  ours = K × TorchJD);
  SDMGradWeighting(λ, lr, momentum, n_iter) given A = G Gᵀ → sdmgrad (single batch: TorchJD's J_1 = J_2 = G; both mean
  scale, update wᵀG).
MoCo has no TorchJD counterpart: it is checked against its recurrence, written out independently in the test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl_bench.combiners import COMBINERS
from mtl_bench.errors import ConfigError

tjd = pytest.importorskip("torchjd.aggregation")

from tests.test_torchjd_oracle import CASES, EPS, grads  # noqa: E402  (the same seeded matrices)


def make(name: str, k: int, **kwargs):
    comb = COMBINERS[name](**kwargs)
    comb.setup([f"t{i}" for i in range(k)])
    return comb


def step(comb, g: torch.Tensor):
    return comb.aggregate(g, torch.ones(g.shape[0], dtype=g.dtype))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


# --- PCD ------------------------------------------------------------------------------------------------------

def _pcd_unit_multipliers(g: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    """At the first step with ε = 0 the normalised gradients are the unit vectors u_i = g_i/‖g_i‖ (the debiased
    moving average is ‖g_i‖²) and w = [1, μ] ⊙ s · c with s_i = 1/‖g_i‖, c > 0: recover [1, μ] = (w ⊙ ‖g‖)/(w_0 ‖g_0‖)."""
    norms = g.norm(dim=1).numpy()
    v = w.numpy() * norms
    return v / v[0]


@pytest.mark.parametrize("k, d, seed", CASES)
@pytest.mark.parametrize("tau", [0.02, 0.5, 1.0])
def test_pcd_matches_torchjd_over_steps(k, d, seed, tau):
    # Both solve the same strictly convex projection exactly (TorchJD: Goldfarb–Idnani active set; ours: one NNLS
    # least-distance problem), so d̃ is unique and they differ by rounding only: the active-set system is solved
    # from Gramian entries with relative error ~K·eps, amplified by at most the condition number κ of the
    # normalised Gramian restricted to the rows with non-zero weight (linearly independent at the solution).
    # Tolerance 1e3·K·eps·κ per step; the moving averages are updated by identical arithmetic on both sides.
    ours, ref = make("pcd", k, tau=tau), tjd.PCD(tau=tau)
    for t in range(4):
        g = grads(k, d, 10 * seed + t)
        agg = step(ours, g)
        support = agg.weights != 0
        units = g / g.norm(dim=1, keepdim=True)
        kappa = float(torch.linalg.cond(units[support] @ units[support].T)) if int(support.sum()) > 1 else 1.0
        assert rel(agg.direction, ref(g)) <= 1e3 * k * EPS * kappa


@pytest.mark.parametrize("k, d, seed", CASES)
@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0])
def test_pcd_satisfies_the_kkt_conditions_and_keeps_the_primary_norm(k, d, seed, tau):
    g = grads(k, d, seed)
    g[1:] -= 0.7 * g[:1] * (g[1:].norm(dim=1, keepdim=True) / g[0].norm())  # push the secondaries against g_1
    agg = step(make("pcd", k, tau=tau, eps=0.0), g)
    assert float(agg.direction.norm()) == pytest.approx(float(g[0].norm()), rel=1e-12)
    mu = _pcd_unit_multipliers(g, agg.weights)
    units = (g / g.norm(dim=1, keepdim=True)).numpy()
    d_tilde = mu @ units
    slack = units[1:] @ d_tilde - tau  # constraint j: u_jᵀ d̃ ≥ τ ‖u_j‖² = τ
    scale = float(np.abs(mu).sum())
    assert (mu[1:] >= 0).all()
    assert (slack >= -1e-10 * scale).all() or k > d  # K > d may be infeasible (then the update is g_1, below)
    if (slack >= -1e-10 * scale).all():
        assert np.abs(mu[1:] * slack).max() <= 1e-10 * scale**2  # complementary slackness
    else:
        assert torch.allclose(agg.direction, g[0], rtol=0, atol=1e-14 * float(g[0].norm()))


def test_pcd_returns_the_primary_gradient_when_it_satisfies_every_constraint():
    g = grads(4, 10, 5).abs()  # positive coordinates: every pair of gradients agrees
    agg = step(make("pcd", 4, tau=0.0), g)
    assert torch.equal(agg.weights, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(agg.direction, g[0], rtol=1e-15, atol=0)


def test_pcd_infeasible_constraints_give_the_primary_gradient_and_zero_primary_gives_zero():
    g = grads(3, 6, 6)
    g[2] = -2.0 * g[1]  # two opposite secondaries: u_2ᵀd ≥ τ and −u_2ᵀd ≥ τ cannot both hold for τ > 0
    agg = step(make("pcd", 3, tau=0.1), g)
    assert torch.equal(agg.weights, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    g[0] = 0.0
    assert torch.count_nonzero(step(make("pcd", 3, tau=0.1), g).direction) == 0


def test_pcd_is_invariant_to_a_constant_rescaling_of_a_secondary_task():
    # τ is a scale-free fraction: with ε = 0 the moving average absorbs any constant factor on a secondary row
    plain, scaled = make("pcd", 3, eps=0.0, tau=0.4), make("pcd", 3, eps=0.0, tau=0.4)
    factor = torch.tensor([[1.0], [1e3], [1e-2]], dtype=torch.float64)
    for t in range(3):
        g = grads(3, 8, 20 + t)
        assert rel(step(scaled, g * factor).direction, step(plain, g).direction) <= 1e-12


def test_pcd_tau_per_secondary_task_is_checked_against_the_tasks():
    assert make("pcd", 3, tau=[0.1, 0.2]).taus(3).tolist() == [0.1, 0.2]
    with pytest.raises(ConfigError, match="one value per secondary task"):
        make("pcd", 4, tau=[0.1, 0.2])
    with pytest.raises(ConfigError, match="combiner.tau"):
        COMBINERS["pcd"](tau=1.5)


# --- CR-MOGM --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, d, seed", [c for c in CASES if c[0] <= c[1]])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_cr_mogm_matches_torchjd_around_imtl_g_over_steps(k, d, seed, alpha):
    # IMTL-G is wrapped on both sides because both compute it exactly on full-rank Gramians (the first oracle file:
    # rounding ≤ 10·cond(M)·K·eps relative).  The moving average is a convex combination of the per-step weights,
    # so it does not amplify their errors: tolerance max_t 10·cond(M_t)·K·eps (relative to the weights), applied
    # to the update through ‖Σ_k Δλ_k g_k‖ ≤ ‖Δλ‖₁ max_k ‖g_k‖.
    ours = make("cr_mogm", k, weighting="imtl_g", alpha=alpha)
    ref = tjd.GramianWeightedAggregator(tjd.CRMOGMWeighting(tjd.IMTLGWeighting(), alpha=alpha))
    worst_cond = 1.0
    for t in range(4):
        g = grads(k, d, 10 * seed + t)
        worst_cond = max(worst_cond, float(torch.linalg.cond(g @ g.T)))
        agg, expected = step(ours, g), ref(g)
        tol = 10 * worst_cond * k * EPS * float(agg.weights.abs().sum()) * float(g.norm(dim=1).max())
        assert float((agg.direction - expected).norm()) <= tol


def test_cr_mogm_is_the_stated_moving_average_of_the_wrapped_weights():
    gs = [grads(3, 10, 30 + t) for t in range(4)]
    inner = make("mgda", 3)
    fresh = [inner.weights_from_gramian(g @ g.T, torch.ones(3, dtype=g.dtype)) for g in gs]
    for alpha in (0.0, 0.3, 1.0):
        comb, expected = make("cr_mogm", 3, alpha=alpha), fresh[0]
        for t, g in enumerate(gs):
            expected = expected if t == 0 else alpha * expected + (1 - alpha) * fresh[t]
            agg = step(comb, g)
            assert torch.allclose(agg.weights, expected, rtol=1e-14, atol=1e-15)
            assert torch.allclose(agg.direction, agg.weights @ g, rtol=1e-13, atol=0)
            assert float(agg.weights.sum()) == pytest.approx(1.0, abs=1e-13)  # MGDA's simplex weights stay on it
        if alpha == 1.0:
            assert torch.allclose(agg.weights, fresh[0], rtol=1e-14, atol=0)  # frozen at the first step's weights


def test_cr_mogm_rejects_what_it_cannot_wrap():
    for bad in ("ew", "aligned_mtl", "cr_mogm", "nope"):
        with pytest.raises(ConfigError, match="combiner.weighting"):
            COMBINERS["cr_mogm"](weighting=bad)
    with pytest.raises(ConfigError, match="combiner.alpha"):
        COMBINERS["cr_mogm"](alpha=1.5)
    comb = make("cr_mogm", 3, weighting="upgrad", weighting_kwargs={"pref_vector": [1.0, 1.0, 1.0]})
    assert comb.describe()["scale"] == "pref_vector"


# --- ExcessMTL ------------------------------------------------------------------------------------------------

def _excess_sequence(k: int, d: int, seed: int, steps: int = 5) -> list[torch.Tensor]:
    """Gradients that shrink at task-dependent rates, as training would make them (so the weights move)."""
    decay = torch.linspace(0.5, 0.95, k, dtype=torch.float64).unsqueeze(1)
    return [grads(k, d, 100 * seed + t) * decay**t for t in range(steps)]


@pytest.mark.parametrize("k, d, seed", CASES)
@pytest.mark.parametrize("eta, warmup", [(1e-2, 1), (1.0, 1), (0.5, 3)])
def test_excess_mtl_matches_torchjd_times_k_over_steps(k, d, seed, eta, warmup):
    # TorchJD's weights sum to 1 and ours to K: ours = K × TorchJD.  The only difference in arithmetic is TorchJD's
    # ratio e/(e⁰ + 1e-7) against ours e/e⁰: per step the log-weights differ by at most η·max_k r_k·1e-7/(e⁰_k+1e-7),
    # so after the steps so far the weights differ by a relative ≤ exp(2Σ) − 1 (softmax is 2-Lipschitz in the
    # sup norm of log-space); plus rounding (1e-13).  Direction: ‖Σ_k Δw_k g_k‖ ≤ max_k |Δw_k| Σ_k ‖g_k‖.
    ours, ref = make("excess_mtl", k, robust_step_size=eta, n_warmup_steps=warmup), tjd.ExcessMTL(eta, warmup)
    drift, sq_sum, risks = 0.0, torch.zeros(k, d, dtype=torch.float64), []
    for t, g in enumerate(_excess_sequence(k, d, seed)):
        agg, expected = step(ours, g), k * ref(g)
        sq_sum += g**2
        risks.append(((g**2) / torch.sqrt(sq_sum + 1e-7)).sum(dim=1))
        if t >= warmup:
            e0 = torch.stack(risks[:warmup]).mean(0)
            drift += eta * float((risks[-1] / e0).max()) * 1e-7 / float(e0.min() + 1e-7)
        tol_w = (np.expm1(2 * drift) + 1e-13) * k
        assert float((agg.direction - expected).norm()) <= tol_w * float(g.norm(dim=1).sum())


def test_excess_mtl_weights_follow_the_closed_form_and_favour_the_slowest_task():
    # K·softmax(η Σ_{t > warm-up} r_t), r_t = e_t/e⁰ computed by hand; task 0's gradient does not shrink, so its
    # excess risk stays highest relative to its baseline and it gains weight
    k, eta = 3, 0.5
    comb = make("excess_mtl", k, robust_step_size=eta, n_warmup_steps=2)
    decay = torch.tensor([[1.0], [0.6], [0.3]], dtype=torch.float64)
    sq_sum, risks, logits = torch.zeros(k, 6, dtype=torch.float64), [], torch.zeros(k, dtype=torch.float64)
    for t in range(5):
        g = grads(k, 6, 40 + t, spread=0.0) * decay**t
        agg = step(comb, g)
        sq_sum += g**2
        risks.append(((g**2) / torch.sqrt(sq_sum + 1e-7)).sum(dim=1))
        if t < 2:
            assert torch.equal(agg.weights, torch.ones(k, dtype=torch.float64))  # warm-up: plain sum
        else:
            logits += eta * risks[-1] / ((risks[0] + risks[1]) / 2)
            assert torch.allclose(agg.weights, k * torch.softmax(logits, 0), rtol=1e-13, atol=0)
        assert float(agg.weights.sum()) == pytest.approx(k, rel=1e-13) and bool((agg.weights > 0).all())
        assert torch.allclose(agg.direction, agg.weights @ g, rtol=1e-14, atol=0)
    assert int(agg.weights.argmax()) == 0 and int(agg.weights.argmin()) == 2


def test_excess_mtl_zero_baseline_task_keeps_a_finite_weight():
    g = grads(3, 5, 50)
    g[1] = 0.0
    comb = make("excess_mtl", 3, robust_step_size=1.0)
    step(comb, g)
    agg = step(comb, grads(3, 5, 51))  # task 1 has a gradient now, but no baseline: r = 0
    assert bool(torch.isfinite(agg.weights).all()) and float(agg.weights.sum()) == pytest.approx(3.0, rel=1e-13)
    with pytest.raises(ConfigError, match="combiner.n_warmup_steps"):
        COMBINERS["excess_mtl"](n_warmup_steps=0)


# --- MoCo (no TorchJD counterpart: property tests only) -------------------------------------------------------

@pytest.mark.parametrize("simplex", ["softmax", "projection"])
def test_moco_follows_its_recurrence_and_keeps_lambda_on_the_simplex(simplex):
    k, d = 3, 7
    beta, bs, gamma, gs, rho = 0.5, 0.5, 2.0, 0.5, 0.1
    comb = make("moco", k, beta=beta, beta_sigma=bs, gamma=gamma, gamma_sigma=gs, rho=rho, simplex=simplex)
    y, lam = torch.zeros(k, d, dtype=torch.float64), torch.full((k,), 1 / k, dtype=torch.float64)
    for t in range(1, 6):
        g, losses = grads(k, d, 60 + t), torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64) / t
        y = y - beta / t**bs * (y - g / (g.norm(dim=1, keepdim=True) + 1e-8) * losses.unsqueeze(1))
        v = lam - gamma / t**gs * ((y @ y.T + rho * torch.eye(k, dtype=torch.float64)) @ lam)
        if simplex == "softmax":
            lam = torch.softmax(v, 0)
        else:  # the simplex projection by its optimality condition: lam = (v − θ)⁺ with Σ lam = 1
            from scipy.optimize import brentq
            theta = brentq(lambda s, v=v: float((v - s).clamp_min(0).sum()) - 1.0, float(v.min()) - 1, float(v.max()))
            lam = (v - theta).clamp_min(0)
        agg = comb.aggregate(g, losses)
        assert agg.weights is None
        assert torch.allclose(agg.direction, lam @ y, rtol=1e-12, atol=1e-15)
        assert float(comb.state["lambda"].sum()) == pytest.approx(1.0, abs=1e-12)
        assert bool((comb.state["lambda"] >= 0).all())


def test_moco_without_tracking_and_invariant_to_gradient_scale():
    k = 3
    losses = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    plain, scaled = make("moco", k, beta=1.0, beta_sigma=0.0), make("moco", k)
    reference = make("moco", k)
    for t in range(3):
        g = grads(k, 9, 70 + t)
        plain.aggregate(g, losses)
        units = g / (g.norm(dim=1, keepdim=True) + 1e-8) * losses.unsqueeze(1)
        assert torch.allclose(plain.state["y"], units, rtol=1e-15, atol=0)  # β_t = 1: Y = Ĝ
        factor = torch.tensor([[1e3], [1.0], [1e-2]], dtype=torch.float64)
        a, b = scaled.aggregate(g * factor, losses).direction, reference.aggregate(g, losses).direction
        assert rel(a, b) <= 1e-7  # only through the 1e-8 added to the norms


# --- SDMGrad (single batch) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k, d, seed", CASES)
@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_sdmgrad_matches_torchjd_given_the_same_batch_gramian_over_steps(k, d, seed, lam):
    # Single-batch mapping: TorchJD's SDMGradWeighting is given A = G Gᵀ (its J_1 = J_2 = G), and the update is wᵀG
    # on both sides.  Same normalisation (s² + 1e-8), same 20 momentum steps and projections from the same warm start;
    # the only difference is how the projection's threshold is summed (running sum against cumsum: a few K·eps per
    # projection).  The projection is non-expansive and, on these inputs, the iterates keep the same support, so
    # the error stays at rounding level: tolerance 100·K·eps on every weight (measured: ≤ 3e-16).
    ours, ref = make("sdmgrad", k, lambda_=lam), tjd.SDMGradWeighting(lambda_=lam)
    for t in range(5):
        g = grads(k, d, 10 * seed + t)
        agg, w_ref = step(ours, g), ref(g @ g.T)
        assert float((agg.weights - w_ref).abs().max()) <= 100 * k * EPS
        assert torch.allclose(agg.direction, agg.weights @ g, rtol=1e-14, atol=0)


def test_sdmgrad_weights_on_the_simplex_scale_free_and_pulled_to_the_preference():
    k, lam = 4, 0.3
    plain, scaled, strong = make("sdmgrad", k, lambda_=lam), make("sdmgrad", k, lambda_=lam), make("sdmgrad", k, lambda_=1e8)
    for t in range(4):
        g = grads(k, 6, 80 + t)
        w = step(plain, g).weights
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)
        assert bool((w >= lam / (k * (1 + lam)) - 1e-15).all())  # w ∈ Δ, so (w + λ/K)/(1 + λ) ≥ λ/(K(1 + λ))
        assert float((step(scaled, 1e3 * g).weights - w).abs().max()) <= 1e-10  # only through the 1e-8
        assert torch.allclose(step(strong, g).weights, torch.full((k,), 1 / k, dtype=torch.float64), atol=1e-7)
    with pytest.raises(ConfigError, match="one value per task"):
        make("sdmgrad", 3, pref_vector=[1.0, 1.0])
