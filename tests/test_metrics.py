"""Regression metrics against hand-computed values; pooling is independent of batching."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_bench.metrics.regression import RegressionMetrics


def test_hand_computed_values():
    m = RegressionMetrics()
    m.update(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [3.0], [5.0]]))
    out = m.compute()
    # errors 0, -1, -2: MSE 5/3, MAE 1; SST = 35 - 9^2/3 = 8, R2 = 1 - 5/8
    assert out["mse"] == pytest.approx(5 / 3)
    assert out["mae"] == pytest.approx(1.0)
    assert out["r2"] == pytest.approx(0.375)


def test_pooled_statistics_do_not_depend_on_batching():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(37, 2, generator=g), torch.randn(37, 2, generator=g) * 3 + 1
    whole, parts = RegressionMetrics(), RegressionMetrics()
    whole.update(pred, target)
    for chunk in (slice(0, 5), slice(5, 6), slice(6, 37)):
        parts.update(pred[chunk], target[chunk])
    for key, value in whole.compute().items():
        assert parts.compute()[key] == pytest.approx(value, rel=1e-12)


def test_perfect_prediction_and_empty_split():
    m = RegressionMetrics()
    y = torch.linspace(-1, 1, 9).unsqueeze(1)
    m.update(y.clone(), y)
    assert m.compute() == {"mse": 0.0, "mae": 0.0, "r2": 1.0}
    m.reset()
    assert all(math.isnan(v) for v in m.compute().values())


def test_directions_are_declared_for_every_metric():
    m = RegressionMetrics()
    m.update(torch.zeros(2, 1), torch.ones(2, 1))
    assert set(m.compute()) == set(RegressionMetrics.higher_is_better)
    assert RegressionMetrics.higher_is_better == {"mse": False, "mae": False, "r2": True}
