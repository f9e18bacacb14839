"""The helpful scenario of the synthetic auxiliary benchmark (noisy target labels, ``dataset.target_noise_std``;
``dataset=synthetic_aux_noisy_target``) and the ForkMerge study presets built on it.

What makes the helpful auxiliary help (mtl_bench/data/synthetic_aux.py): the target depends on x only through
z = u₁ᵀx and its labels carry noise σ_t; the helpful labels are z + N(0, 0.1²).  Least squares on n Gaussian inputs
in d dimensions misses a direction by sin²θ ≈ σ²(d − 1)/(n − d − 1) / (c² + σ² d/(n − d − 1)) (σ²: the residual
variance of the best linear fit, c: its coefficient), so from the target's own labels it is off by ~10° or more,
from the helpful labels by ~3° — checked here on the data, before any training.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mtl_bench.data.synthetic_aux import AUX_TASKS, build_synthetic_aux
from mtl_bench.errors import ConfigError
from mtl_bench.report.claims import parse_claims
from tests.conftest import CONFIG_DIR

NOISY = dict(num_sin=3, helpful_correlation=1.0, target_noise_std=1.0)  # = configs/dataset/synthetic_aux_noisy_target.yaml


def _labels(bench, split: str, task: str) -> torch.Tensor:
    return bench.splits[split].targets[task].double().squeeze(1)


def test_default_target_noise_is_noise_std_and_other_tasks_never_move():
    kw = dict(n_train=64, n_val=8, n_test=64, seed=3)
    default, same = build_synthetic_aux(**kw), build_synthetic_aux(target_noise_std=0.1, **kw)  # noise_std is 0.1
    noisy = build_synthetic_aux(target_noise_std=2.0, **kw)
    for split in ("train", "val", "test"):
        assert torch.equal(default.splits[split].inputs, noisy.splits[split].inputs)
        for task in AUX_TASKS:
            assert torch.equal(default.splits[split].targets[task], same.splits[split].targets[task])
            if task != "target":  # the noise draw is scaled, not redrawn: every other label stays bit-identical
                assert torch.equal(default.splits[split].targets[task], noisy.splits[split].targets[task])
    assert noisy.info["target_noise_std"] == 2.0 and default.info["target_noise_std"] == 0.1


def test_target_noise_is_additive_independent_of_x_with_the_requested_std():
    kw = dict(n_train=8, n_val=8, n_test=8192, seed=1, num_sin=3)
    clean = _labels(build_synthetic_aux(target_noise_std=0.0, **kw), "test", "target")
    eps1 = _labels(build_synthetic_aux(target_noise_std=1.0, **kw), "test", "target") - clean
    eps2 = _labels(build_synthetic_aux(target_noise_std=2.0, **kw), "test", "target") - clean
    torch.testing.assert_close(eps2, 2.0 * eps1, atol=2e-6, rtol=0)  # labels are float32: the same draw, scaled
    assert float(eps1.std()) == pytest.approx(1.0, abs=0.03)  # sample std of 8192 N(0, 1): s.e. 0.008
    x = build_synthetic_aux(**kw).splits["test"].inputs.double()
    fit = torch.linalg.lstsq(x, eps1.unsqueeze(1)).solution.squeeze(1)
    r2 = 1.0 - float((eps1 - x @ fit).var() / eps1.var())
    assert r2 < 0.02  # independent of x: R² of noise on 50 inputs ≈ 50 / 8192


def _direction_error(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> float:
    """sin² of the angle between u and the least-squares direction of y on x (with an intercept: both centred)."""
    w = torch.linalg.lstsq(x - x.mean(0), (y - y.mean()).unsqueeze(1)).solution.squeeze(1)
    return 1.0 - float(w @ u) ** 2 / float(w @ w)


def _predicted_direction_error(x_big: torch.Tensor, y_big: torch.Tensor, u: torch.Tensor, n: int) -> float:
    """The least-squares formula for n samples, with c and σ² measured on a large sample."""
    d = x_big.shape[1]
    yc = y_big - y_big.mean()
    c = float((x_big @ u) @ yc) / float((x_big @ u) @ (x_big @ u))
    sigma2 = float((yc - c * (x_big @ u)).var())
    k = sigma2 / (n - d - 2)  # d slopes and an intercept
    return k * (d - 1) / (c * c + k * d)


def test_helpful_labels_pin_the_targets_direction_down_far_better_than_its_own_noisy_labels():
    measured, predicted = {"target": [], "helpful": []}, {"target": [], "helpful": []}
    for seed in (0, 1, 2, 4):
        bench = build_synthetic_aux(n_train=256, n_val=8, n_test=8192, seed=seed, **NOISY)
        x, xt = bench.splits["train"].inputs.double(), bench.splits["test"].inputs.double()
        # the true direction u₁: the helpful labels are u₁ᵀx + N(0, 0.01), fitted on 8192 samples (sin² ~ 6e-5)
        u = torch.linalg.lstsq(xt, _labels(bench, "test", "helpful").unsqueeze(1)).solution.squeeze(1)
        u = u / u.norm()
        for task in measured:
            measured[task].append(_direction_error(x, _labels(bench, "train", task), u))
            predicted[task].append(_predicted_direction_error(xt, _labels(bench, "test", task), u, 256))
        own, helped = measured["target"][-1], measured["helpful"][-1]
        assert helped < 0.006 and own > 0.05 and own > 10 * helped  # ≤ 4.5° vs ≥ 13° from 256 labels
    for task in measured:  # one draw's sin² scatters by ~20 % (χ² with 49 dof): compare means over the 4 draws
        assert sum(measured[task]) == pytest.approx(sum(predicted[task]), rel=0.2), task


def test_noise_floor_bounds_what_any_auxiliary_can_give():
    """Best possible target R² = Var g / (Var g + σ_t²): the clean labels g(z) predict the noisy ones exactly that well."""
    kw = dict(n_train=8, n_val=8, n_test=8192, seed=0, **NOISY)
    noisy = _labels(build_synthetic_aux(**kw), "test", "target")
    g = _labels(build_synthetic_aux(**{**kw, "target_noise_std": 0.0}), "test", "target")
    r2_oracle = 1.0 - float(((noisy - g) ** 2).mean() / noisy.var())
    assert r2_oracle == pytest.approx(float(g.var() / (g.var() + 1.0)), abs=0.01)


def test_bad_target_noise_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset.target_noise_std must be >= 0, got -1"):
        build_synthetic_aux(target_noise_std=-1.0)


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_noisy_target_dataset_config_and_the_same_target_for_every_auxiliary_set():
    ds = _compose("dataset=synthetic_aux_noisy_target").dataset
    assert (ds.num_sin, ds.helpful_correlation, ds.target_noise_std, ds.tasks) == (3, 1.0, 1.0, None)
    assert ds.input_dim == 50 and ds.noise_std == 0.1  # inherited from dataset=synthetic_aux
    kw = dict(n_train=32, n_val=8, n_test=8, seed=2, **NOISY)
    helpful = build_synthetic_aux(tasks=["target", "helpful"], **kw)
    harmful = build_synthetic_aux(tasks=["target", "harmful"], **kw)
    assert torch.equal(helpful.splits["train"].targets["target"], harmful.splits["train"].targets["target"])


@pytest.mark.parametrize("preset", ["forkmerge_synthetic", "forkmerge_synthetic_quick"])
def test_study_claims_and_curves_select_methods_and_scenarios_of_the_grid(preset):
    cfg = _compose(f"experiment={preset}")
    params = cfg.hydra.sweeper.params
    methods, scenarios = set(params.aux_method.split(",")), set(params.aux_auxiliaries.split(","))
    seeds = params.seed.split(",")
    assert len(seeds) >= 3 and {"stl", "forkmerge", "pcgrad", "cagrad", "nash_mtl"} <= methods
    assert {"[helpful]", "[harmful]"} <= scenarios
    study = yaml.safe_load(_compose_study_yaml(cfg))
    claims = parse_claims(study["claims"])  # every spec is valid for its kind
    assert {c.claim_id for c in claims} >= {"best_lambda_beats_stl", "forkmerge_beats_stl_helpful",
                                            "forkmerge_matches_stl_harmful", "forkmerge_beats_ew_harmful"}
    sides = [s for spec in study["claims"].values() if spec for s in (spec["a"], spec.get("b")) if isinstance(s, dict)]
    sides += [s for c in study["curves"].values() for s in (c, c["reference"])]
    for side in sides:
        where = side["where"]
        assert where["aux_auxiliaries"] in scenarios
        wanted = where.get("aux_method", [])
        assert set([wanted] if isinstance(wanted, str) else wanted) <= methods
        assert "aux_method" in where or where.get("mode") == "stl"  # STL sides must name mode (report rule)


def _compose_study_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg.study)


@pytest.mark.parametrize("name,weight", [("0p1", 0.1), ("0p3", 0.3), ("1", 1.0), ("3", 3.0)])
def test_lambda_bundles_set_the_weight_their_name_says(name, weight):
    cfg = _compose(f"aux_method=aux_weight_{name}")
    assert cfg.combiner._target_.endswith("AuxiliaryWeight") and cfg.mode.name == "aux"
    assert math.isclose(cfg.combiner.weight, weight)
