"""Combiner interface, EW and the registry ↔ config-file correspondence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class

from mtl_bench.combiners import COMBINERS, LossWeighting
from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.errors import ConfigError
from tests.helpers import SumOfGradients

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "combiner"


def test_every_registered_combiner_has_a_config_and_vice_versa():
    files = {p.stem: yaml.safe_load(p.read_text()) for p in CONFIGS.glob("*.yaml")}
    assert set(files) == set(COMBINERS)
    for name, node in files.items():
        assert get_class(node["_target_"]) is COMBINERS[name], name


@pytest.mark.parametrize("reduction,expected", [("sum", 1.0), ("mean", 0.25)])
def test_equal_weighting_scale_conventions(reduction, expected):
    ew = EqualWeighting(reduction=reduction)
    ew.setup(["a", "b", "c", "d"])
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    total, w = ew.combine(losses)
    torch.testing.assert_close(w, torch.full((4,), expected))
    assert total.item() == pytest.approx(10.0 * expected)
    total.backward()
    torch.testing.assert_close(losses.grad, torch.full((4,), expected))
    assert ew.describe()["reduction"] == reduction


def test_loss_weighting_rejects_gradient_sources_and_names_alternatives():
    with pytest.raises(ConfigError, match=r"does not support grad_source='params'.*loss values only"):
        EqualWeighting(grad_source="params")
    with pytest.raises(ConfigError, match=r"unknown; valid sources are \['params', 'last_shared', 'representation'\]"):
        EqualWeighting(grad_source="bogus")
    with pytest.raises(ConfigError, match=r"reduction must be 'sum' or 'mean'"):
        EqualWeighting(reduction="avg")


def test_aggregator_validates_its_declared_sources():
    assert SumOfGradients().grad_source == "params"
    assert SumOfGradients(grad_source="representation").grad_source == "representation"
    # a direction-only aggregator cannot be applied through last-shared-layer weights
    with pytest.raises(ConfigError, match=r"does not support grad_source='last_shared'; supported: \['params', 'representation'\]"):
        SumOfGradients(grad_source="last_shared")


def test_ew_is_a_loss_weighting_and_needs_no_gradients():
    assert issubclass(COMBINERS["ew"], LossWeighting)
    assert COMBINERS["ew"].needs_grads is False
