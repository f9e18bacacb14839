"""delta_m.stl_select: STL baselines chosen per task on validation loss (Elich et al.'s STL lr grid), in training
(build_delta_m) and in the report, on hand-built summaries with values derived by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_bench.errors import ConfigError
from mtl_bench.metrics.delta_m import stl_baselines_from_runs
from mtl_bench.metrics.delta_tracking import build_delta_m
from mtl_bench.report.build import ReportOptions, build_report
from mtl_bench.report.cli import main as report_main
from mtl_bench.report.runs import load_runs

DIRECTIONS = {"t0/mse": False, "t1/mse": False}
VAL_DIRECTIONS = {f"val/{k}": v for k, v in DIRECTIONS.items()}


def stl(folder: Path, task: str, seed: int, lr: float, val: float, test: float, *, dataset: str = "A",
        status: str = "completed", extra: list[str] = ()) -> Path:
    """An STL summary as training writes it (val loss = val mse; the test mse is ``test``)."""
    path = folder / f"stl_{task}_lr{lr}_{dataset}_s{seed}{'_'.join(extra)}"
    summary = {"status": status, "mode": "stl", "seed": seed, "tasks": [task], "dataset": {"name": dataset},
               "optimizer": {"choice": "adam", "lr": lr}, "scheduler": "none", "combiner": {"name": "ew"},
               "loss_transforms": {}, "metric_directions": {"t0/mse": False, "t1/mse": False, "loss": False},
               "choices": {"mode": "stl", "dataset": dataset},
               "hydra": {"overrides": [f"elich_arm=stl_{task}_lr{lr}", f"dataset={dataset}", f"seed={seed}",
                                       "experiment=study", "logger=none", *extra]}}
    if status == "completed":
        summary["selected"] = {f"val/{task}/loss": val, f"val/{task}/mse": val, f"test/{task}/loss": test,
                               f"test/{task}/mse": test}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def mtl(folder: Path, dataset: str, t0: float, t1: float, stl_select: str | None = "val_loss") -> Path:
    path = folder / f"mtl_{dataset}"
    delta = {"enabled": True, "source": {"kind": "stl_runs", "paths": [str(folder)]}}
    if stl_select:
        delta["stl_select"] = stl_select
    summary = {"status": "completed", "mode": "mtl", "seed": 0, "tasks": ["t0", "t1"], "dataset": {"name": dataset},
               "choices": {"mode": "mtl", "dataset": dataset}, "metric_directions": DIRECTIONS, "delta_m": delta,
               "selected": {f"{s}/{k}": v for k, v in {"t0/mse": t0, "t1/mse": t1}.items() for s in ("val", "test")}}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def lr_grid(folder: Path, dataset: str = "A", shift: float = 0.0) -> None:
    """t0: lr 0.001 val (1.0, 1.2, 1.1) mean 1.1, test 0.5 each; lr 0.01 val (0.9, 1.0, 1.1) mean 1.0, test
    (0.8, 0.9, 1.0) mean 0.9 -> val picks 0.01 although 0.001 is better on test.  t1: lr 0.001 val 2.0 each, test
    3.0; lr 0.01 val 4.0, test 1.0 -> val picks 0.001.  ``shift`` is added to every t0 value of lr 0.01."""
    for seed, (v1, v2, t2) in enumerate([(1.0, 0.9, 0.8), (1.2, 1.0, 0.9), (1.1, 1.1, 1.0)]):
        stl(folder, "t0", seed, 0.001, v1, 0.5, dataset=dataset)
        stl(folder, "t0", seed, 0.01, v2 + shift, t2 + shift, dataset=dataset)
        stl(folder, "t1", seed, 0.001, 2.0, 3.0, dataset=dataset)
        stl(folder, "t1", seed, 0.01, 4.0, 1.0, dataset=dataset)


def test_val_loss_picks_the_lowest_mean_val_loss_not_the_best_test(tmp_path):
    lr_grid(tmp_path)
    test = stl_baselines_from_runs(tmp_path, "test", select="val_loss")
    assert test.values == pytest.approx({"t0/mse": 0.9, "t1/mse": 3.0})
    val = stl_baselines_from_runs(tmp_path, "val", select="val_loss")
    assert val.values == pytest.approx({"t0/mse": 1.0, "t1/mse": 2.0})
    assert test.chosen == {"t0": "optimizer.lr=0.01", "t1": "optimizer.lr=0.001"}
    assert test.runs_per_task == {"t0": 3, "t1": 3} and test.seeds == {"t0": [0, 1, 2], "t1": [0, 1, 2]}
    scores = {c["config"]: c["val_loss"] for c in test.candidates["t0"]}
    assert scores == pytest.approx({"optimizer.lr=0.001": 1.1, "optimizer.lr=0.01": 1.0})
    assert all(c["excluded"] is None and c["seeds"] == [0, 1, 2] for c in test.candidates["t0"])
    assert test.describe_selection() == ("STL selection: val_loss (lowest mean val loss per task): "
                                         "t0 → optimizer.lr=0.01; t1 → optimizer.lr=0.001")


def test_a_configuration_with_a_diverged_seed_is_out(tmp_path):
    # t0 lr 0.01: seeds 0, 1 val 0.5 (best mean) but seed 2 diverged -> lr 0.001 (val 1.0, test 0.5, 0.7) is chosen
    stl(tmp_path, "t0", 0, 0.01, 0.5, 0.1)
    stl(tmp_path, "t0", 1, 0.01, 0.5, 0.1)
    stl(tmp_path, "t0", 2, 0.01, 0.0, 0.0, status="diverged")
    for seed, test in enumerate([0.5, 0.7, 0.6]):
        stl(tmp_path, "t0", seed, 0.001, 1.0, test)
    out = stl_baselines_from_runs(tmp_path, "test", select="val_loss")
    assert out.values["t0/mse"] == pytest.approx(0.6) and out.chosen == {"t0": "optimizer.lr=0.001"}
    lr01 = next(c for c in out.candidates["t0"] if c["config"] == "optimizer.lr=0.01")
    assert lr01 == {"config": "optimizer.lr=0.01", "val_loss": pytest.approx(0.5), "seeds": [0, 1, 2],
                    "excluded": "not completed: seed 2 diverged"}
    # every configuration out: a clear error naming them
    stl(tmp_path, "t0", 2, 0.001, 0.0, 0.0, status="failed", extra=["trainer.epochs=2"])
    for seed in (0, 1):
        stl(tmp_path, "t0", seed, 0.001, 1.0, 0.5, extra=["trainer.epochs=2"])
    out = stl_baselines_from_runs(tmp_path, "test", select="val_loss")  # the epochs=2 lr also out: lr 0.001 stays
    assert out.chosen == {"t0": "optimizer.lr=0.001, elich_arm=stl_t0_lr0.001"}
    assert sorted(c["config"] for c in out.candidates["t0"]) == [
        "optimizer.lr=0.001, elich_arm=stl_t0_lr0.001", "optimizer.lr=0.001, elich_arm=stl_t0_lr0.001, trainer.epochs=2",
        "optimizer.lr=0.01, elich_arm=stl_t0_lr0.01"]


def test_a_configuration_missing_a_seed_is_out_and_all_out_is_an_error(tmp_path):
    stl(tmp_path, "t0", 0, 0.01, 0.5, 0.1)  # no seed 1: out although its val loss is lower
    for seed in (0, 1):
        stl(tmp_path, "t0", seed, 0.001, 1.0, 0.4 + seed / 10)
    out = stl_baselines_from_runs(tmp_path, "test", select="val_loss")
    assert out.values["t0/mse"] == pytest.approx(0.45)
    assert {c["config"]: c["excluded"] for c in out.candidates["t0"]} == {
        "optimizer.lr=0.001": None, "optimizer.lr=0.01": "no run with seed(s) [1]"}
    stl(tmp_path, "t0", 2, 0.001, 0.0, 0.0, status="diverged")
    with pytest.raises(ConfigError, match=r"task 't0' on 'A': every STL configuration is excluded \(optimizer.lr=0.001: "
                                          r"not completed: seed 2 diverged; optimizer.lr=0.01: no run with seed"):
        stl_baselines_from_runs(tmp_path, "test", select="val_loss")


def test_unique_still_refuses_a_sweep_and_names_the_option(tmp_path):
    lr_grid(tmp_path)
    with pytest.raises(ConfigError, match=r"two completed STL runs with seed 0 .*delta_m.stl_select=val_loss"):
        stl_baselines_from_runs(tmp_path)
    with pytest.raises(ConfigError, match=r"delta_m.stl_select='best' is invalid; choose one of \['unique', 'val_loss'\]"):
        build_delta_m({"stl_runs": [str(tmp_path)], "stl_select": "best"}, "A", VAL_DIRECTIONS)


def test_no_val_loss_is_a_clear_error(tmp_path):
    path = stl(tmp_path, "t0", 0, 0.01, 0.5, 0.1)
    summary = json.loads((path / "summary.json").read_text())
    del summary["selected"]["val/t0/loss"]
    (path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match=r"no selected 'val/t0/loss' to choose the STL configuration on"):
        stl_baselines_from_runs(tmp_path, select="val_loss")


def test_each_dataset_chooses_its_own_configuration_in_training(tmp_path):
    lr_grid(tmp_path, "A")
    lr_grid(tmp_path, "B", shift=1.0)  # B: t0 lr 0.01 val mean 2.0 > 1.1 -> lr 0.001 (test 0.5)
    spec_a, info_a = build_delta_m({"stl_runs": [str(tmp_path)], "stl_select": "val_loss"}, "A", VAL_DIRECTIONS)
    spec_b, info_b = build_delta_m({"stl_runs": [str(tmp_path)], "stl_select": "val_loss"}, "B", VAL_DIRECTIONS)
    assert spec_a.baselines["test"] == pytest.approx({"t0/mse": 0.9, "t1/mse": 3.0})
    assert spec_b.baselines["test"] == pytest.approx({"t0/mse": 0.5, "t1/mse": 3.0})
    assert info_a["stl_select"] == "val_loss" and info_a["source"]["stl_select"] == "val_loss"
    assert info_a["source"]["chosen"] == {"t0": "optimizer.lr=0.01", "t1": "optimizer.lr=0.001"}
    assert info_b["source"]["chosen"] == {"t0": "optimizer.lr=0.001", "t1": "optimizer.lr=0.001"}
    b_t0 = {c["config"]: c["val_loss"] for c in info_b["source"]["candidates"]["t0"]}
    assert b_t0 == pytest.approx({"optimizer.lr=0.001": 1.1, "optimizer.lr=0.01": 2.0})


def test_report_and_training_give_the_same_baselines(tmp_path, capsys):
    lr_grid(tmp_path, "A")
    lr_grid(tmp_path, "B", shift=1.0)
    mtl(tmp_path, "A", 0.9, 3.3)  # Δm A = 100 · ((0.9 − 0.9)/0.9 + (3.3 − 3)/3) / 2 = 5
    mtl(tmp_path, "B", 0.4, 3.0)  # Δm B = 100 · ((0.4 − 0.5)/0.5 + 0) / 2 = −10
    report = build_report(load_runs([tmp_path]), ReportOptions(claims={}))
    for name in ("A", "B"):
        spec, _ = build_delta_m({"stl_runs": [str(tmp_path)], "stl_select": "val_loss"}, name, VAL_DIRECTIONS)
        mine = report.baselines.per_dataset[name]
        assert mine.values["test"] == pytest.approx(spec.baselines["test"])
        assert mine.values["val"] == pytest.approx(spec.baselines["val"])
    delta = {Path(p).name: v["test"] for p, v in report.run_delta.items()}
    assert delta == pytest.approx({"mtl_A": 5.0, "mtl_B": -10.0})
    assert report.baselines.per_dataset["B"].chosen == {"t0": "optimizer.lr=0.001", "t1": "optimizer.lr=0.001"}

    assert report_main([str(tmp_path), "--no-plots", "--no-claims"]) == 0
    out = capsys.readouterr().out
    assert "A: the 12 completed STL run(s) among the given folders [STL selection: val_loss (lowest mean val loss per " \
           "task): t0 → optimizer.lr=0.01; t1 → optimizer.lr=0.001]" in out
    assert "B: the 12 completed STL run(s) among the given folders [STL selection: val_loss" in out
    # --stl-select overrides the recorded rule: unique refuses the lr sweep, so Δm is off and says why
    assert report_main([str(tmp_path), "--no-plots", "--no-claims", "--stl-select", "unique"]) == 0
    assert "delta_m.stl_select=val_loss" in capsys.readouterr().out


def test_the_report_reads_the_rule_the_runs_recorded_and_notes_disagreement(tmp_path):
    lr_grid(tmp_path, "A")
    mtl(tmp_path, "A", 0.9, 3.3, stl_select="val_loss")
    report = build_report(load_runs([tmp_path]), ReportOptions(claims={}))
    assert report.baselines.chosen == {"t0": "optimizer.lr=0.01", "t1": "optimizer.lr=0.001"}
    other = mtl(tmp_path / "older", "A", 0.9, 3.3, stl_select=None)  # recorded no rule: unique
    report = build_report(load_runs([tmp_path, other]), ReportOptions(claims={}))
    assert report.baselines is None and any("different STL selection rules" in n and "--stl-select" in n
                                            for n in report.notes)
    report = build_report(load_runs([tmp_path, other]), ReportOptions(claims={}, stl_select="val_loss"))
    assert report.baselines.values["test"]["t0/mse"] == pytest.approx(0.9)
