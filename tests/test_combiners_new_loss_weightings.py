"""STCH, UW-SO and LibMTL's hybrid IMTL: defining properties, hand-computed cases and the FAMO repository's
LOG-* variants as ``loss_transforms=log_all`` composed with a gradient combiner."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from mtl_bench.combiners import COMBINERS
from mtl_bench.errors import ConfigError
from tests.test_combiners_loss_weighting import theta0, toy_losses

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def built(name: str, tasks=("a", "b", "c"), **kwargs):
    comb = COMBINERS[name](**kwargs)
    comb.setup(list(tasks))
    return comb


def from_config(name: str):
    return instantiate(yaml.safe_load((CONFIGS / "combiner" / f"{name}.yaml").read_text()))




# ====================================================================== UW-SO
def test_uw_so_config_has_the_code_defaults():
    comb = from_config("uw_so")
    assert comb.temperature == 1.0 and comb.eps == 1e-8 and comb.scale == "mean"


def test_uw_so_hand_computed_two_task_case():
    comb = built("uw_so", tasks=("a", "b"), eps=1e-12)
    losses = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    objective, w = comb.combine(losses)
    e = math.e
    expected = torch.tensor([1 / (1 + e), e / (1 + e)], dtype=torch.float64)  # softmax(1/1, 1/0.5)
    torch.testing.assert_close(w, expected, rtol=1e-10, atol=0)
    objective.backward()
    torch.testing.assert_close(losses.grad, expected, rtol=1e-10, atol=0)  # weights are constants (stop-gradient)


def test_uw_so_weights_sum_to_one_and_favour_small_losses():
    losses = torch.tensor([0.3, 2.0, 0.9], dtype=torch.float64)
    for t in (0.1, 1.0, 10.0):
        w = built("uw_so", temperature=t).weights(losses)
        assert torch.all(w > 0) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)
        assert w[0] > w[2] > w[1]
        torch.testing.assert_close(w, torch.softmax(1 / (losses + 1e-8) / t, 0))


def test_uw_so_common_loss_scale_equals_a_temperature_change_and_limits():
    losses = torch.tensor([0.3, 2.0, 0.9], dtype=torch.float64)
    c = 7.0
    torch.testing.assert_close(built("uw_so", temperature=1.5, eps=1e-15).weights(c * losses),
                               built("uw_so", temperature=1.5 * c, eps=1e-15).weights(losses), rtol=1e-12, atol=0)
    torch.testing.assert_close(built("uw_so", temperature=1e6).weights(losses), torch.full((3,), 1 / 3, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(built("uw_so", temperature=1e-3).weights(losses), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_uw_so_rejects_bad_temperature_and_negative_losses():
    for bad in (0.0, -1.0, math.inf, True, "1"):
        with pytest.raises(ConfigError, match="temperature"):
            COMBINERS["uw_so"](temperature=bad)
    with pytest.raises(ConfigError, match="negative"):
        built("uw_so").weights(torch.tensor([0.5, -0.1, 1.0]))
    assert built("uw_so").loss_lower_bound() == 0.0


# ====================================================================== STCH
def stch_active(mu: float = 1.0, tasks=("a", "b", "c"), **kwargs):
    """STCH past its warm-up and nadir epochs (``normalise=False``: z = 1)."""
    return built("stch", tasks=tasks, mu=mu, warmup_epochs=0, normalise=False, **kwargs)


def test_stch_config_has_the_official_defaults():
    comb = from_config("stch")
    assert (comb.mu, comb.warmup_epochs, comb.normalise, comb.eps) == (1.0, 4, True, 1e-20)


def test_stch_hand_computed_two_task_case():
    comb = stch_active(mu=0.5, tasks=("a", "b"))
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64, requires_grad=True)
    objective, w = comb.combine(losses)
    # ℓ = (log 2, −log 2); ℓ/μ = (2 log 2, −2 log 2) → exp = (4, 1/4); p = (16/17, 1/17)
    assert math.isclose(float(objective.detach()), 2 * 0.5 * math.log(4 + 0.25), rel_tol=1e-12)
    p = torch.tensor([16 / 17, 1 / 17], dtype=torch.float64)
    torch.testing.assert_close(comb.softmax_weights(losses), p, rtol=1e-12, atol=0)
    expected = 2 * p / losses.detach()
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=0)
    objective.backward()
    torch.testing.assert_close(losses.grad, expected, rtol=1e-12, atol=0)


def test_stch_weights_are_a_softmax_and_small_mu_gives_the_max():
    losses = torch.tensor([0.3, 2.0, 0.9], dtype=torch.float64)
    ell = torch.log(losses)
    for mu in (0.1, 1.0, 10.0):
        p = stch_active(mu=mu).softmax_weights(losses)
        torch.testing.assert_close(p, torch.softmax(ell / mu, 0), rtol=1e-12, atol=0)
        assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-12)
    for mu in (1e-2, 1e-3, 1e-4):
        comb = stch_active(mu=mu)
        objective, _ = comb.combine(losses)
        assert 0 <= float(objective) / 3 - float(ell.max()) <= mu * math.log(3) + 1e-12
        assert float(comb.softmax_weights(losses)[1]) > 1 - 1e-6


def test_stch_warmup_then_nadir_epoch_then_normalised_objective():
    comb = built("stch", warmup_epochs=2)
    theta = theta0().requires_grad_(True)
    losses = toy_losses(theta)
    for epoch in range(2):  # epochs 0, 1: Σ log L, no nadir statistics
        objective, w = comb.combine(losses)
        torch.testing.assert_close(objective, torch.log(losses + 1e-20).sum())
        torch.testing.assert_close(w, 1 / losses.detach())
        comb.on_epoch_end(epoch + 1, {})
    assert comb.phase() == "nadir" and int(comb.nadir_count) == 0
    batches = [losses.detach(), 2 * losses.detach()]
    for b in batches:
        objective, _ = comb.combine(b)
        torch.testing.assert_close(objective, torch.log(b).sum())
    comb.on_epoch_end(3, {})
    assert comb.phase() == "stch"
    z = (batches[0] + batches[1]) / 2
    objective, w = comb.combine(losses)
    ell = torch.log(losses / z + 1e-20)
    torch.testing.assert_close(objective, 3 * torch.logsumexp(ell, 0))
    torch.testing.assert_close(comb.nadir, z)
    (grad,) = torch.autograd.grad(objective, theta)
    jac = torch.autograd.functional.jacobian(toy_losses, theta.detach())
    torch.testing.assert_close(grad, w @ jac)  # the returned weights are ∂objective/∂L_k


def test_stch_normalisation_makes_it_invariant_to_task_loss_scales():
    """With the nadir from the same losses times c_k, the update equals the unscaled one (log(cL/(cz)) = log(L/z))."""
    grads = []
    for c in ((1.0, 1.0, 1.0), (1e-3, 1.0, 50.0)):
        comb = built("stch", warmup_epochs=0)
        scales = torch.tensor(c, dtype=torch.float64)
        comb.combine(toy_losses(theta0()) * scales * 1.3)
        comb.on_epoch_end(1, {})
        theta = theta0().requires_grad_(True)
        objective, _ = comb.combine(toy_losses(theta) * scales)
        grads.append(torch.autograd.grad(objective, theta)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=0)


def test_stch_state_round_trip_and_bad_config():
    comb = built("stch", warmup_epochs=0)
    comb.combine(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    comb.on_epoch_end(1, {})
    comb.combine(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    other = built("stch", warmup_epochs=0)
    other.load_state_dict(comb.state_dict())
    losses = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(other.combine(losses)[1], comb.combine(losses)[1], rtol=0, atol=0)
    for key, bad in (("mu", 0.0), ("mu", -1.0), ("warmup_epochs", -1), ("warmup_epochs", 1.5), ("normalise", "yes")):
        with pytest.raises(ConfigError, match=key):
            COMBINERS["stch"](**{key: bad})


# ====================================================================== IMTL (LibMTL's hybrid)
def orthogonal_grads(k: int = 3, d: int = 8, norms=(1.0, 1.0, 1.0)) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    return q.T * torch.tensor(norms, dtype=torch.float64).unsqueeze(1)


def imtl_with_scales(s):
    comb = built("imtl")
    comb.double()
    with torch.no_grad():
        comb.log_scale.copy_(torch.tensor(s, dtype=torch.float64))
    return comb


def test_imtl_config_and_declarations():
    comb = from_config("imtl")
    assert comb.lr is None and comb.grad_source == "params" and comb.scale == "unit_sum"
    assert comb.provides_task_weights is False and comb.supported_sources == ("params", "representation")
    assert built("imtl").optimizer_overrides() == {"weight_decay": 0.0}


@pytest.mark.parametrize("s", [(0.0, 0.0, 0.0), (0.7, -1.2, 0.3)])
def test_imtl_equal_norm_orthogonal_gradients_give_the_mean(s):
    """Equal-norm orthogonal g: the scaled gradients stay orthogonal, α̃_k ∝ e^{−s_k}, so the effective weights
    α̃_k e^{s_k} are all equal, 1/Σ_j e^{−s_j} (1/K at s = 0): the direction is the mean gradient times
    K/Σ_j e^{−s_j}; the heads get e^{s}."""
    comb = imtl_with_scales(s)
    grads = orthogonal_grads(norms=(2.0, 2.0, 2.0))
    agg = comb.aggregate(grads, torch.ones(3, dtype=torch.float64))
    factor = 3 / float(torch.exp(-torch.tensor(s, dtype=torch.float64)).sum())
    torch.testing.assert_close(agg.direction, factor * grads.mean(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(agg.weights, torch.exp(torch.tensor(s, dtype=torch.float64)))
    alpha = comb.scaled_weights(grads)
    torch.testing.assert_close(alpha, torch.softmax(-torch.tensor(s, dtype=torch.float64), 0), rtol=1e-10, atol=0)


def test_imtl_equal_projections_on_the_scaled_gradients():
    grads = torch.randn(3, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = grads * torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64).unsqueeze(1)
    s = torch.tensor([0.4, -0.8, 1.5], dtype=torch.float64)
    comb = imtl_with_scales(s.tolist())
    agg = comb.aggregate(grads, torch.ones(3, dtype=torch.float64))
    scaled = grads * torch.exp(s).unsqueeze(1)
    proj = (scaled / scaled.norm(dim=1, keepdim=True)) @ agg.direction
    torch.testing.assert_close(proj, proj.mean().expand(3), rtol=1e-9, atol=0)
    assert math.isclose(float(comb.scaled_weights(grads).sum()), 1.0, rel_tol=1e-12)
    # the closed form of the paper / LibMTL on the scaled gradients gives the same direction
    u = scaled / scaled.norm(dim=1, keepdim=True)
    dmat, umat = scaled[0:1] - scaled[1:], u[0:1] - u[1:]
    a = scaled[0] @ umat.T @ torch.inverse(dmat @ umat.T)
    alpha = torch.cat([(1 - a.sum()).unsqueeze(0), a])
    torch.testing.assert_close(agg.direction, alpha @ scaled, rtol=1e-9, atol=1e-12)


def test_imtl_scale_gradient_is_that_of_the_imtl_l_objective():
    comb = imtl_with_scales([0.2, -0.5, 1.0])
    losses = torch.tensor([0.5, 2.0, 0.1], dtype=torch.float64)
    comb.aggregate(torch.randn(3, 6, dtype=torch.float64), losses)
    s = comb.log_scale.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((torch.exp(s) * losses - s).sum(), s)
    torch.testing.assert_close(comb.log_scale.grad, expected)


def test_imtl_engine_step_matches_a_libmtl_style_reference():
    """One engine step on the tiny model against LibMTL's recipe written out: per-task backward of
    L̃_k = e^{s_k}L_k − s_k, IMTL-G closed form on the shared gradients, heads and s with the summed gradients."""
    from mtl_bench.engine import GradientEngine
    from tests.combiner_utils import TASKS3
    from tests.helpers import tiny_batch, tiny_model

    s0 = torch.tensor([0.3, -0.4, 0.8], dtype=torch.float64)
    model = tiny_model(TASKS3)
    comb = imtl_with_scales(s0.tolist())
    engine = GradientEngine(model, comb, TASKS3)
    x, y = tiny_batch(tasks=TASKS3)
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    engine.backward({t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS3}, 0, rep=rep, leaves=leaves)
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_model = tiny_model(TASKS3)
    s = s0.clone().requires_grad_(True)
    out = ref_model(x)
    scaled = torch.stack([torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS3]) * torch.exp(s) - s
    shared = ref_model.shared_parameters()
    rows = []
    for k in range(3):
        for p in shared:
            p.grad = None
        scaled[k].backward(retain_graph=True)
        rows.append(torch.cat([p.grad.reshape(-1) for p in shared]))
    g = torch.stack(rows)
    u = g / g.norm(dim=1, keepdim=True)
    a = g[0] @ (u[0:1] - u[1:]).T @ torch.inverse((g[0:1] - g[1:]) @ (u[0:1] - u[1:]).T)
    direction = torch.cat([(1 - a.sum()).unsqueeze(0), a]) @ g
    shared_ids = {id(p) for p in shared}
    offset = 0
    for name, p in ref_model.named_parameters():
        if id(p) in shared_ids:
            ref = direction[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
        else:
            ref = p.grad  # heads: the sum of the ∇L̃_k (only L̃_k reaches head k)
        torch.testing.assert_close(ours[name], ref, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(comb.log_scale.grad, s.grad)


# ====================================================================== FAMO repository's LOG-* variants
def log_transformed_step(name: str):
    """One engine step of ``name`` on the tiny model with every task's loss log-transformed (what
    ``+loss_transforms.<task>={kind: log}`` for every task does in the trainer); returns the model, the raw
    losses and the shared rows ∇L_k."""
    from mtl_bench.engine import GradientEngine
    from mtl_bench.loss_transforms import make_transform
    from tests.combiner_utils import TASKS3
    from tests.helpers import tiny_batch, tiny_model

    model = tiny_model(TASKS3)
    comb = built(name)
    comb.double()
    log_t = {t: make_transform(t, {"kind": "log", "eps": 1e-8}) for t in TASKS3}
    x, y = tiny_batch(tasks=TASKS3)
    rep = model.encode(x)
    engine = GradientEngine(model, comb, TASKS3)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    raw = {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS3}
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(raw[t], model.shared_parameters(), retain_graph=True)])
                        for t in TASKS3])
    engine.backward({t: log_t[t](raw[t]) for t in TASKS3}, 0, rep=rep, leaves=leaves)
    shared = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
    losses = torch.stack([raw[t].detach() for t in TASKS3])
    return shared, rows, losses


def test_log_imtl_g_is_imtl_g_composed_with_log_transforms():
    """FAMO's LOG_IMTLG: α = IMTL-G closed form on the rows ∇log L_k = ∇L_k/(L_k + ε); loss Σ α_k log L_k."""
    shared, rows, losses = log_transformed_step("imtl_g")
    g = rows / (losses + 1e-8).unsqueeze(1)
    u = g / g.norm(dim=1, keepdim=True)
    a = g[0] @ (u[0:1] - u[1:]).T @ torch.inverse((g[0:1] - g[1:]) @ (u[0:1] - u[1:]).T)
    torch.testing.assert_close(shared, torch.cat([(1 - a.sum()).unsqueeze(0), a]) @ g, rtol=1e-8, atol=1e-12)


def test_log_mgda_is_mgda_composed_with_log_transforms_up_to_famos_normaliser():
    """FAMO's LOG_MGDA: min-norm weights s on the log-loss gradients, loss Σ s_k log L_k / c with c = Σ s_k/L_k
    (detached): the same direction as ``mgda`` on log-transformed losses, divided by c."""
    from mtl_bench.combiners.mgda import MGDA

    shared, rows, losses = log_transformed_step("mgda")
    g = rows / (losses + 1e-8).unsqueeze(1)
    s = MGDA().weights_from_gramian(g @ g.T, losses)
    assert math.isclose(float(s.sum()), 1.0, rel_tol=1e-9) and bool((s >= 0).all())
    torch.testing.assert_close(shared, s @ g, rtol=1e-8, atol=1e-12)
    c = (s / losses).sum()  # FAMO's update is shared / c: effective weights (s_k/L_k)/c on ∇L_k, summing to one
    torch.testing.assert_close(((s / losses) / c).sum(), torch.tensor(1.0, dtype=torch.float64))
