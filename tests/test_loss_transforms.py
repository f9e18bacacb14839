"""Per-task loss transforms: values, validation, and what the trainer logs vs what the combiner sees."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtl_bench.errors import ConfigError
from mtl_bench.loss_transforms import build_transforms, make_transform
from mtl_bench.train import build_and_train


def increasing_cube(x):
    return x**3 + x


def decreasing(x):
    return -x


@pytest.mark.parametrize(
    "spec,expected",
    [
        ({"kind": "scale", "factor": 4.0}, 8.0),
        ({"kind": "power", "exponent": 3.0}, 8.0),
        ({"kind": "log", "eps": 1e-8}, math.log(2.0 + 1e-8)),
        ({"kind": "exp", "rate": 0.5}, math.exp(1.0)),
    ],
)
def test_transform_values(spec, expected):
    assert make_transform("t", spec)(torch.tensor(2.0, dtype=torch.float64)).item() == pytest.approx(expected)


def test_custom_transform_is_resolved_and_checked_for_monotonicity():
    fn = make_transform("t", {"kind": "custom", "fn": "x"}, resolve=lambda _: increasing_cube)
    assert fn(torch.tensor(2.0)).item() == 10.0
    with pytest.raises(ConfigError, match="not finite and strictly increasing"):
        make_transform("t", {"kind": "custom", "fn": "x"}, resolve=lambda _: decreasing)


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"kind": "square"}, r"kind='square' is invalid; choose one of \['scale', 'power', 'log', 'exp', 'custom'\]"),
        ({"kind": "scale", "factor": -1}, r"loss_transforms.t.factor must be a positive number, got -1"),
        ({"kind": "scale", "exponent": 2}, r"unknown key\(s\) \['exponent'\] for kind 'scale'"),
        ({"kind": "custom"}, r"kind 'custom' needs fn"),
    ],
)
def test_invalid_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_transform("t", spec, resolve=lambda _: increasing_cube)


def test_unknown_task_names_the_dataset_tasks():
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['t9'\]; the dataset's tasks are \['t0', 't1'\]"):
        build_transforms({"t9": {"kind": "scale", "factor": 2.0}}, ["t0", "t1"], ["t0", "t1"])


def test_trainer_logs_raw_losses_and_the_combiner_sees_transformed_ones(make_cfg, tmp_path):
    summary = build_and_train(make_cfg("+loss_transforms.t1={kind: scale, factor: 100.0}"), output_dir=tmp_path / "r")
    steps = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in steps if r["type"] == "step")
    # EW (sum) objective = L_t0 + 100 L_t1, with the logged per-task losses untransformed
    assert step["train/objective"] == pytest.approx(step["train/t0/loss"] + 100.0 * step["train/t1/loss"], rel=1e-5)
    assert summary["loss_transforms"] == {"t1": {"kind": "scale", "factor": 100.0}}
    with pytest.raises(ConfigError, match="cannot import function 'no.such.module.fn'"):
        build_and_train(make_cfg("+loss_transforms.t0={kind: custom, fn: no.such.module.fn}"), output_dir=tmp_path / "bad")


# ---------------------------------------------------------------------- the wildcard key and loss_transforms=log_all
def test_wildcard_applies_to_every_trained_task_and_explicit_keys_win():
    cfg = {"*": {"kind": "log", "eps": 1e-8}, "t1": {"kind": "scale", "factor": 3.0}, "t2": None}
    fns = build_transforms(cfg, ["t0", "t1", "t2"], ["t0", "t1", "t2", "t3"])
    assert sorted(fns) == ["t0", "t1"]  # t2 exempted by its empty key, t3 not trained
    two = torch.tensor(2.0, dtype=torch.float64)
    assert fns["t0"](two).item() == math.log(2.0 + 1e-8)
    assert fns["t1"](two).item() == 6.0
    with pytest.raises(ConfigError, match=r"loss_transforms\.\*\.eps must be a positive number, got 0"):
        build_transforms({"*": {"kind": "log", "eps": 0}}, ["t0"], ["t0"])


def test_log_all_composes_through_hydra_and_the_trainer_sees_log_losses(make_cfg, tmp_path):
    """``loss_transforms=log_all`` with t1 overridden on the command line: EW(sum) objective = log(L_t0 + 1e-8) +
    2 L_t1 in terms of the logged raw losses; a combiner defined for non-negative losses only refuses a log-loss
    below 0 with its one-line error."""
    cfg = make_cfg("loss_transforms=log_all", "+loss_transforms.t1={kind: scale, factor: 2.0}")
    assert dict(cfg.loss_transforms["*"]) == {"kind": "log", "eps": 1e-8}
    summary = build_and_train(cfg, output_dir=tmp_path / "r")
    steps = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in steps if r["type"] == "step")
    expected = math.log(step["train/t0/loss"] + 1e-8) + 2.0 * step["train/t1/loss"]
    assert step["train/objective"] == pytest.approx(expected, rel=1e-5, abs=1e-6)  # float32 losses
    assert summary["loss_transforms"]["*"] == {"kind": "log", "eps": 1e-8}
    # labels × 0.01: MSE losses < 1, so log(L + 1e-8) < 0 at the first step
    with pytest.raises(ConfigError) as err:
        build_and_train(make_cfg("combiner=uw_o", "loss_transforms=log_all", "dataset.label_scales=[0.01,0.01]"),
                        output_dir=tmp_path / "bad")
    assert "combiner 'uw_o' is defined for task losses >= 0 only" in str(err.value) and "\n" not in str(err.value)
