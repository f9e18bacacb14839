"""The MMoE synthetic generator: task correlation, label formula, scales, seeding and validation."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtl_bench.data.synthetic import build_synthetic, task_weight_vectors
from mtl_bench.errors import ConfigError


@pytest.mark.parametrize(
    "k,p", [(2, 0.5), (2, -0.7), (2, 1.0), (2, -1.0), (2, 0.0), (3, 0.3), (3, -0.5), (5, 0.9), (5, -0.25)]
)
def test_weight_vectors_have_requested_pairwise_cosine_and_norm(k, p):
    w = task_weight_vectors(k, 20, p, 2.5, torch.Generator().manual_seed(1))
    norms = w.norm(dim=1)
    torch.testing.assert_close(norms, torch.full((k,), 2.5, dtype=torch.float64))
    cos = (w @ w.T) / torch.outer(norms, norms)
    for i, j in itertools.combinations(range(k), 2):
        assert cos[i, j].item() == pytest.approx(p, abs=1e-10)


def test_two_task_construction_is_ma_et_al():
    """For K=2: w1 = c u1 and w2 = c (p u1 + sqrt(1-p^2) u2) with u1 ⟂ u2 unit vectors."""
    p, c = 0.3, 1.7
    w = task_weight_vectors(2, 10, p, c, torch.Generator().manual_seed(0))
    u1 = w[0] / c
    resid = w[1] / c - p * u1
    assert resid.norm().item() == pytest.approx((1 - p * p) ** 0.5, abs=1e-12)
    assert torch.dot(resid, u1).item() == pytest.approx(0.0, abs=1e-12)


def test_labels_follow_the_mmoe_formula_and_scales():
    bench = build_synthetic(num_tasks=2, input_dim=8, num_sin=3, noise_std=0.0, label_scales=[1.0, 4.0],
                            n_train=16, n_val=4, n_test=4, seed=3)
    truth = bench.extras["ground_truth"]
    ds = bench.splits["train"]
    x = ds.inputs.double()
    proj = x @ truth.weights.T
    expected = proj + sum(torch.sin(a * proj + b) for a, b in zip(truth.alpha, truth.beta))
    torch.testing.assert_close(ds.targets["t0"].double().squeeze(1), expected[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ds.targets["t1"].double().squeeze(1), 4.0 * expected[:, 1], rtol=1e-5, atol=1e-5)


def test_label_scale_multiplies_labels_exactly():
    kw = dict(num_tasks=2, input_dim=10, n_train=32, n_val=8, n_test=8, seed=5)
    plain = build_synthetic(**kw)
    scaled = build_synthetic(label_scales=[1.0, 10.0], **kw)
    torch.testing.assert_close(scaled.splits["test"].targets["t1"], 10.0 * plain.splits["test"].targets["t1"])
    torch.testing.assert_close(scaled.splits["test"].targets["t0"], plain.splits["test"].targets["t0"])


def test_data_seed_controls_the_data_and_splits_differ():
    kw = dict(input_dim=10, n_train=32, n_val=32, n_test=32)
    a, b, c = build_synthetic(seed=0, **kw), build_synthetic(seed=0, **kw), build_synthetic(seed=1, **kw)
    assert torch.equal(a.splits["train"].inputs, b.splits["train"].inputs)
    assert not torch.equal(a.splits["train"].inputs, c.splits["train"].inputs)
    assert not torch.equal(a.splits["train"].inputs, a.splits["val"].inputs)


def test_label_correlation_grows_with_task_correlation():
    def label_corr(p: float) -> float:
        b = build_synthetic(correlation=p, input_dim=50, n_train=20000, n_val=1, n_test=1, seed=2, num_sin=10)
        y = torch.cat([b.splits["train"].targets[t] for t in ("t0", "t1")], dim=1).double()
        return torch.corrcoef(y.T)[0, 1].item()

    low, mid, high = label_corr(-0.9), label_corr(0.0), label_corr(0.9)
    assert low < mid < high
    assert abs(mid) < 0.1 and high > 0.5 and low < -0.3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(correlation=1.5), r"correlation must lie in \[-1, 1\]"),
        (dict(num_tasks=3, correlation=-0.6), r"impossible for 3 tasks"),
        (dict(label_scales=[1.0]), r"label_scales has 1 entries"),
        (dict(label_scales=[1.0, -2.0]), r"positive and finite"),
        (dict(num_tasks=0), r"num_tasks must be >= 1"),
        (dict(n_val=0), r"n_val must be >= 1"),
        (dict(input_dim=1), r"input_dim \(1\) must be >= dataset.num_tasks"),
        (dict(task_names=["a", "a"]), r"distinct names"),
    ],
)
def test_invalid_settings_raise_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_synthetic(**{"n_train": 8, "n_val": 4, "n_test": 4, **kwargs})
    assert "\n" not in str(info.value)


def _lstsq_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least-squares weights of y on x and the R² of the fit."""
    w = torch.linalg.lstsq(x, y).solution.squeeze(1)
    resid = y.squeeze(1) - x @ w
    return w, 1.0 - float(resid.var() / y.var())


def test_synthetic_aux_tasks_have_the_relations_they_are_named_for():
    from mtl_bench.data.synthetic_aux import build_synthetic_aux

    bench = build_synthetic_aux(n_train=8, n_val=8, n_test=8192, helpful_correlation=0.8, harmful_scale=5.0)
    test = bench.splits["test"]
    x = test.inputs.double()
    fits = {t: _lstsq_fit(x, test.targets[t].double()) for t in ("target", "helpful", "noise", "harmful")}
    cos = torch.nn.functional.cosine_similarity
    # the target's linear direction (Stein: E[x f(uᵀx)] ∝ u for Gaussian x) vs the helpful factor: cosine ρ
    assert float(cos(fits["helpful"][0], fits["target"][0], dim=0)) == pytest.approx(0.8, abs=0.03)
    assert fits["helpful"][1] > 0.95  # a clean linear latent factor
    assert fits["noise"][1] < 0.03  # independent of x (R² of pure noise on 50 inputs ≈ 50 / 8192)
    assert abs(float(cos(fits["harmful"][0], fits["target"][0], dim=0))) < 0.05  # an orthogonal direction
    ratio = float(test.targets["harmful"].std() / test.targets["target"].std())
    assert ratio == pytest.approx(5.0, rel=0.1)  # the same generator along u_3, scaled
    # splits come from separate streams: resizing validation leaves train and test unchanged
    other = build_synthetic_aux(n_train=8, n_val=64, n_test=8192, helpful_correlation=0.8, harmful_scale=5.0)
    assert torch.equal(other.splits["test"].inputs, test.inputs)
    assert torch.equal(other.splits["train"].targets["target"], bench.splits["train"].targets["target"])
