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
