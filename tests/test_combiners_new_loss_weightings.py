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

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def built(name: str, tasks=("a", "b", "c"), **kwargs):
    comb = COMBINERS[name](**kwargs)
    comb.setup(list(tasks))
    return comb


def from_config(name: str):
    return instantiate(yaml.safe_load((CONFIGS / "combiner" / f"{name}.yaml").read_text()))


def toy_losses(theta: torch.Tensor, k: int = 3, seed: int = 0) -> torch.Tensor:
    """K positive coupled losses L_k(θ) = 0.2 + mean((A_k θ − b_k)²)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, 6, theta.numel(), generator=g, dtype=torch.float64)
    b = torch.randn(k, 6, generator=g, dtype=torch.float64)
    return 0.2 + ((a @ theta - b) ** 2).mean(dim=1)


def theta0() -> torch.Tensor:
    return torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


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
