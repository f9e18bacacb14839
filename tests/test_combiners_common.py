"""Properties every registered combiner must have: a config with the paper's defaults, a documented
scale convention, a working training run through the real trainer, a state that round-trips through
``state_dict``, and an update that differs from every other method's on the same random input."""

from __future__ import annotations

import copy
import itertools
import math
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtl_bench.combiners import COMBINERS, LossWeighting
from mtl_bench.engine import GradientEngine
from mtl_bench.errors import ConfigError
from mtl_bench.train import build_and_train
from tests.combiner_utils import TASKS3, engine_update, train_step
from tests.helpers import tiny_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "combiner"
NAMES = sorted(COMBINERS)

# Methods whose *default* configuration coincides with another method by definition (e.g. fixed weights
# of 1 are EW); the identity test gives them a non-default, still valid setting.
DISTINCT = {
    "fixed": {"weights": [1.0, 0.5, 2.0]},
    "ls": {"point": 3},
    "aux_weight": {"weight": 0.3},  # λ = 1 is EW
    "ol_aux": {"beta": 0.5, "update_every": 1},  # weights start at 1 (EW) and adapt from the first step
    "stch": {"warmup_epochs": 0, "normalise": False},  # the warm-up objective Σ log L has UW-O's gradient
}


# auxiliary-task combiners need target/auxiliary roles (mode=aux); in these tests task "a" is the target
AUX = {name for name, cls in COMBINERS.items() if hasattr(cls, "set_roles")}


def make(name: str, **overrides):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, overrides)
    comb = instantiate(cfg)
    if name in AUX:
        comb.set_roles(["a"])
    return comb


def distinct(name: str):
    """The method in a setting where it is not another method by definition: DWA is EW during its first
    two epochs, so it gets two epochs of (different) loss history first."""
    comb = make(name, **DISTINCT.get(name, {}))
    if name == "dwa":
        comb.setup(list(TASKS3))
        comb.on_epoch_end(1, {"a": 1.0, "b": 1.0, "c": 1.0})
        comb.on_epoch_end(2, {"a": 0.5, "b": 0.9, "c": 0.7})
    return comb


@pytest.mark.parametrize("name", NAMES)
def test_method_cites_its_paper_and_states_its_scale(name):
    comb = make(name)
    doc = type(comb).__doc__ or ""
    assert re.search(r"(19|20)\d\d", doc), f"{name}: the docstring must cite the paper (authors, venue, year)"
    assert comb.scale and comb.scale != "n/a", f"{name}: scale convention not stated"
    described = comb.describe()
    assert described["name"] == name and "scale" in described


@pytest.mark.parametrize("name", NAMES)
def test_every_method_trains_the_synthetic_benchmark(name, make_cfg):
    roles = ["mode=aux", "mode.targets=[t0]"] if name in AUX else []
    summary = build_and_train(make_cfg(f"combiner={name}", "trainer.epochs=1", "dataset.num_tasks=3", *roles))
    assert summary["status"] == "completed" and summary["combiner"]["name"] == name
    assert all(math.isfinite(summary["final"][f"test/{t}/mse"]) for t in ("t0", "t1", "t2"))


def test_no_two_methods_give_identical_updates():
    updates = {name: engine_update(distinct(name), steps=2) for name in NAMES}
    for a, b in itertools.combinations(NAMES, 2):
        assert not torch.equal(updates[a], updates[b]), f"{a} and {b} produced bit-identical updates"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_reproduces_the_next_update(name):
    """Run two steps, copy model + combiner state into fresh objects, and compare the third update."""
    model = tiny_model(TASKS3)
    comb = make(name, **DISTINCT.get(name, {}))
    comb.setup(list(TASKS3))
    engine = GradientEngine(model, comb, TASKS3)
    opt = torch.optim.SGD(list(model.parameters()) + [p for p in comb.parameters() if p.requires_grad], lr=1e-2)

    def step(eng, optimizer, seed):
        grads = train_step(eng, optimizer, seed, batch_seed=seed)
        if isinstance(eng.combiner, LossWeighting):  # epoch-level state (DWA) must round-trip too
            eng.combiner.on_epoch_end(seed, {t: float(v) for t, v in zip(TASKS3, range(1, 4))})
        return grads

    for s in range(2):
        step(engine, opt, s)
    model2 = copy.deepcopy(model)
    comb2 = make(name, **DISTINCT.get(name, {}))
    comb2.setup(list(TASKS3))
    comb2.load_state_dict(copy.deepcopy(comb.state_dict()))
    opt2 = torch.optim.SGD(list(model2.parameters()) + [p for p in comb2.parameters() if p.requires_grad], lr=1e-2)
    engine2 = GradientEngine(model2, comb2, TASKS3)
    a = step(engine, opt, 2)
    b = step(engine2, opt2, 2)
    assert torch.equal(a, b), f"{name}: restored state gives a different update"


def test_unsupported_gradient_source_fails_at_start_naming_the_supported_ones(make_cfg):
    with pytest.raises(ConfigError, match=r"combiner 'ew' does not support grad_source='representation'"):
        build_and_train(make_cfg("combiner=ew", "combiner.grad_source=representation"))
