"""What the studies need beyond the claims: Δm per dataset (balanced and imbalanced arms in one sweep), the seed-
paired corruption degradation, the heatmap's significance marks, and sweeps that survive a diverged learning rate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mtl_bench.config.validate import validate_config
from mtl_bench.errors import ConfigError
from mtl_bench.metrics.delta_tracking import build_delta_m
from mtl_bench.report.build import ReportOptions, build_report
from mtl_bench.report.claims.quantities import Context, degradation
from mtl_bench.report.claims.stats import t_interval
from mtl_bench.report.runs import Run, load_runs
from tests.conftest import compose_cfg
from tests.test_sweeps import cli, summaries

DIRECTIONS = {"t0/mse": False, "t1/mse": False}


def _summary(mode: str, dataset: str, seed: int, tasks: list[str], metrics: dict[str, float]) -> dict:
    return {"status": "completed", "mode": mode, "seed": seed, "tasks": tasks, "dataset": {"name": dataset},
            "choices": {"mode": mode, "dataset": dataset}, "metric_directions": DIRECTIONS,
            "selected": {f"{split}/{k}": v for k, v in metrics.items() for split in ("val", "test")}}


def _write(folder: Path, name: str, summary: dict) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def two_arm_sweep(tmp_path) -> Path:
    # dataset A: STL t0 1.0, t1 2.0; dataset B: STL t0 2.0, t1 4.0 (one seed each); one MTL run per dataset
    sweep = tmp_path / "sweep"
    for ds, (b0, b1) in {"A": (1.0, 2.0), "B": (2.0, 4.0)}.items():
        _write(sweep, f"stl_t0_{ds}", _summary("stl", ds, 0, ["t0"], {"t0/mse": b0}))
        _write(sweep, f"stl_t1_{ds}", _summary("stl", ds, 0, ["t1"], {"t1/mse": b1}))
    _write(sweep, "mtl_A", _summary("mtl", "A", 0, ["t0", "t1"], {"t0/mse": 1.1, "t1/mse": 1.9}))
    _write(sweep, "mtl_B", _summary("mtl", "B", 0, ["t0", "t1"], {"t0/mse": 1.0, "t1/mse": 4.0}))
    return sweep


def test_report_delta_m_per_dataset(two_arm_sweep):
    # per_metric Δm = 100 · mean_k (M_k − B_k)/B_k (both metrics lower-is-better):
    #   A: ((1.1 − 1)/1 + (1.9 − 2)/2) / 2 · 100 = 2.5      B: ((1 − 2)/2 + 0) / 2 · 100 = −25
    report = build_report(load_runs([two_arm_sweep]), ReportOptions(claims={}))
    assert set(report.baselines.per_dataset) == {"A", "B"}
    delta = {Path(p).name: v["test"] for p, v in report.run_delta.items()}
    assert delta["mtl_A"] == pytest.approx(2.5) and delta["mtl_B"] == pytest.approx(-25.0)
    ctx = Context(report)
    mtl_b = next(r for r in report.runs if r.name == "mtl_B")
    assert ctx.value(mtl_b, "delta_m", "val") == pytest.approx(-25.0)


def test_training_reads_only_its_datasets_stl_runs(two_arm_sweep):
    directions = {f"val/{k}": v for k, v in DIRECTIONS.items()}
    spec, info = build_delta_m({"stl_runs": [str(two_arm_sweep)]}, "B", directions)
    assert spec.baselines["test"] == {"t0/mse": 2.0, "t1/mse": 4.0} and info["enabled"]
    with pytest.raises(ConfigError, match=r"trained on \['A', 'B'\], this run uses dataset 'C'"):
        build_delta_m({"stl_runs": [str(two_arm_sweep)]}, "C", directions)


def _transfer_run(tmp: Path, name: str, seed: int, source: str, tasks: list[str], clean: dict, corrupted: dict) -> Run:
    summary = {"status": "completed", "mode": "transfer", "seed": seed, "tasks": tasks, "dataset": {"name": "scenes"},
               "metric_directions": {"seg/miou": True, "depth/abs_err": False},
               "transfer": {"source": {"mode": source.split(":")[0], "tasks": tasks, "seed": seed}, "clean": clean,
                            "corrupted": corrupted, "heads": "conv", "split": "test"}}
    (tmp / name).mkdir()
    return Run(tmp / name, "completed", summary, [f"mode.source={source}", f"seed={seed}"])


def test_degradation_pinned(tmp_path):
    # seg mIoU 0.5 → 0.4 (ratio 0.8, higher is better: degradation +0.2); depth error 1.0 → 1.2 (+0.2) and → 0.9 (−0.1)
    run = _transfer_run(tmp_path, "r", 0, "mtl", ["seg", "depth"], {"seg/miou": 0.5, "depth/abs_err": 1.0},
                        {"gaussian_noise": {"1": {"seg/miou": 0.4, "depth/abs_err": 1.2}},
                         "fog": {"3": {"seg/miou": 0.5, "depth/abs_err": 0.9}}})
    assert degradation(run, "seg") == pytest.approx((0.2 + 0.0) / 2)
    assert degradation(run, "depth") == pytest.approx((0.2 - 0.1) / 2)
    assert math.isnan(degradation(run, "normal"))


def test_heatmap_significance_is_the_seed_paired_interval(tmp_path):
    # seg mIoU clean 0.5 everywhere; under fog-3 the MTL runs keep 0.45 + 0.01·seed, the STL runs 0.40 + 0.02·seed:
    # per-seed δ = −(ratio_mtl − ratio_stl) = −(0.1 − 0.02·seed) → −0.10, −0.08, −0.06
    runs = []
    for s in range(3):
        for source, value in (("mtl", 0.45 + 0.01 * s), ("stl:seg", 0.40 + 0.02 * s)):
            runs.append(_transfer_run(tmp_path, f"{source.replace(':', '_')}_{s}", s, source, ["seg"],
                                      {"seg/miou": 0.5}, {"fog": {"3": {"seg/miou": value}}}))
    report = build_report(runs, ReportOptions(claims={}))
    rob = report.robustness
    (group,) = rob.groups
    (row,) = rob.significance(group)
    expected = t_interval([-0.10, -0.08, -0.06])
    assert row[0].estimate == pytest.approx(expected.estimate) and row[0].hi == pytest.approx(expected.hi)
    assert row[0].hi < 0  # marked: MTL degrades less on every seed, beyond seed noise


def test_sweep_goes_on_past_a_diverged_learning_rate(tmp_path):
    sweep = tmp_path / "lr"
    r = cli("-m", "optimizer=sgd", "optimizer.lr=1e9,1e-3", "trainer.on_divergence=record", "trainer.epochs=1",
            "trainer.max_steps_per_epoch=3", "dataset.n_train=64", "dataset.n_val=32", "dataset.n_test=32", "logger=none",
            "trainer.batch_size=32", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    diverged, ok = summaries(sweep)
    assert diverged["status"] == "diverged" and ok["status"] == "completed"


def test_on_divergence_choices_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.on_divergence.*record"):
        validate_config(compose_cfg(["trainer.on_divergence=ignore"], tmp_path))


def test_repeated_stl_runs_count_once_but_different_ones_are_an_error(tmp_path):
    # an auxiliary-task grid trains the same STL target once per scenario: identical results, one baseline run
    from mtl_bench.metrics.delta_m import stl_baselines_from_runs

    for name in ("a", "b"):
        _write(tmp_path / "rep", name, _summary("stl", "A", 0, ["t0"], {"t0/mse": 1.5}))
    base = stl_baselines_from_runs(tmp_path / "rep")
    assert base.values == {"t0/mse": 1.5} and base.runs_per_task == {"t0": 1} and len(base.skipped) == 1
    _write(tmp_path / "diff", "a", _summary("stl", "A", 0, ["t0"], {"t0/mse": 1.5}))
    _write(tmp_path / "diff", "b", _summary("stl", "A", 0, ["t0"], {"t0/mse": 1.25}))
    with pytest.raises(ConfigError, match="two completed STL runs with seed 0"):
        stl_baselines_from_runs(tmp_path / "diff")
