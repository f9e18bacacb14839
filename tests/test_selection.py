"""Model-selection rules."""

from __future__ import annotations

import pytest

from mtl_bench.errors import ConfigError
from mtl_bench.selection import ModelSelector

DIRS = {"val/loss": False, "val/a/r2": True, "val/a/mse": False}


def feed(selector, values, key):
    return [selector.update(e, {key: v, "test/x": 10 * v}) for e, v in enumerate(values, start=1)]


def test_best_follows_the_metric_direction():
    low = ModelSelector("best", "val/loss", "auto", 10, DIRS)
    assert feed(low, [3.0, 2.0, 2.5, 1.0, 1.5], "val/loss") == [True, True, False, True, False]
    assert (low.mode, low.best_epoch, low.best_value) == ("min", 4, 1.0)
    high = ModelSelector("best", "val/a/r2", "auto", 10, DIRS)
    feed(high, [0.1, 0.5, 0.3], "val/a/r2")
    assert (high.mode, high.best_epoch) == ("max", 2)


def test_non_finite_values_are_never_selected():
    sel = ModelSelector("best", "val/loss", "auto", 10, DIRS)
    assert feed(sel, [float("nan"), 2.0, float("inf")], "val/loss") == [False, True, False]


def test_last_k_averages_the_last_k_evaluations():
    sel = ModelSelector("last_k", "val/loss", "auto", 2, DIRS)
    feed(sel, [4.0, 3.0, 1.0], "val/loss")
    assert sel.last_k_average() == {"test/x": 20.0, "val/loss": 2.0}
    assert sel.describe() == {"rule": "last_k", "k": 2, "epochs": [2, 3]}


def test_state_round_trip():
    a = ModelSelector("best", "val/loss", "auto", 3, DIRS)
    feed(a, [3.0, 1.0, 2.0], "val/loss")
    b = ModelSelector("best", "val/loss", "auto", 3, DIRS)
    b.load_state_dict(a.state_dict())
    assert (b.best_value, b.best_epoch, list(b.history)) == (a.best_value, a.best_epoch, list(a.history))


@pytest.mark.parametrize(
    "args,match",
    [
        (("median", "val/loss", "auto", 1), r"rule='median' is invalid; choose one of \['best', 'last', 'last_k'\]"),
        (("best", "val/zzz", "auto", 1), r"not a validation metric.*val/a/r2"),
        (("best", "val/loss", "up", 1), r"mode='up' is invalid"),
        (("last_k", "val/loss", "auto", 0), r"k must be >= 1"),
    ],
)
def test_invalid_rules_are_config_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        ModelSelector(*args, DIRS)
