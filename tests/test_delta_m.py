"""Δm conventions on hand numbers, STL baselines read from run summaries, published baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_bench.baselines import _validate_entry, list_published, load_published
from mtl_bench.errors import ConfigError
from mtl_bench.metrics.delta_m import delta_m, metrics_for_split, stl_baselines_from_runs
from mtl_bench.task_library import attribute_task, depth_task, normal_task, segmentation_task

NYU_TASKS = {"seg": segmentation_task(), "depth": depth_task(), "normal": normal_task()}
NYU_DIRECTIONS = {f"{t}/{m}": hib for t, task in NYU_TASKS.items() for m, hib in task.higher_is_better.items()}


def shifted(baselines: dict[str, float], directions: dict[str, bool], change: dict[str, float]) -> dict[str, float]:
    """Values whose signed relative change (positive = worse) is ``change[task]`` for every metric of the task."""
    out = {}
    for key, b in baselines.items():
        r = change[key.split("/")[0]]
        out[key] = b * (1 - r) if directions[key] else b * (1 + r)
    return out


def test_nyuv2_normals_dominate_per_metric_but_not_per_task():
    base = load_published("cagrad_nyuv2_segnet_stl")["metrics"]
    # seg and depth 6 % better on each metric, normals 6 % worse on each of their five metrics
    mtl = shifted(base, NYU_DIRECTIONS, {"seg": -0.06, "depth": -0.06, "normal": 0.06})
    per_metric = delta_m(mtl, base, NYU_DIRECTIONS, "per_metric")
    per_task = delta_m(mtl, base, NYU_DIRECTIONS, "per_task")
    assert per_metric.value == pytest.approx(100 / 9 * (4 * -0.06 + 5 * 0.06))  # +0.667: worse than STL
    assert per_task.value == pytest.approx(100 / 3 * (-0.06 - 0.06 + 0.06))  # -2.0: better than STL
    assert per_metric.task_totals() == pytest.approx({"seg": -100 * 0.12 / 9, "depth": -100 * 0.12 / 9, "normal": 100 * 0.30 / 9})
    assert per_task.task_totals() == pytest.approx({"seg": -2.0, "depth": -2.0, "normal": 2.0})
    c = per_task.contributions["normal/within_30"]
    assert (c.relative_change, c.weight, c.contribution) == pytest.approx((0.06, 1 / 15, 100 * 0.06 / 15))
    assert per_metric.contributions["seg/miou"].weight == pytest.approx(1 / 9)
    assert sum(c.contribution for c in per_metric.contributions.values()) == pytest.approx(per_metric.value)
    assert per_metric.included == list(mtl) and per_metric.missing_baselines == []


def test_sign_convention_positive_means_worse():
    directions = {"a/acc": True, "b/err": False}
    base = {"a/acc": 0.5, "b/err": 2.0}
    assert delta_m({"a/acc": 0.6, "b/err": 2.0}, base, directions).value == pytest.approx(-10.0)  # 20 % better / 2
    assert delta_m({"a/acc": 0.5, "b/err": 3.0}, base, directions).value == pytest.approx(25.0)  # 50 % worse / 2


def test_per_task_is_minus_libmtl_improvement():
    # LibMTL's count_improvement docstring example: base A=[96, 98], B=[0.2]; new A=[93, 99], B=[0.5]; weight A=[1, 0], B=[1]
    libmtl = ((-(96 - 93) / 96 + (98 - 99) / 98) / 2 + (-(0.2 - 0.5) / 0.2)) / 2
    ours = delta_m({"A/m0": 93, "A/m1": 99, "B/m0": 0.5}, {"A/m0": 96, "A/m1": 98, "B/m0": 0.2},
                   {"A/m0": True, "A/m1": False, "B/m0": True}, convention="per_task")
    assert ours.value == pytest.approx(-100 * libmtl)


def test_missing_baselines_are_reported_never_dropped():
    base = load_published("cagrad_nyuv2_segnet_stl")["metrics"]
    partial_base = {k: v for k, v in base.items() if k != "normal/median"}
    mtl = shifted(base, NYU_DIRECTIONS, {"seg": 0.0, "depth": 0.0, "normal": 0.08})
    with pytest.raises(ConfigError, match=r"no baseline for metric\(s\) \['normal/median'\]"):
        delta_m(mtl, partial_base, NYU_DIRECTIONS)
    result = delta_m(mtl, partial_base, NYU_DIRECTIONS, "per_task", allow_missing=True)
    assert result.missing_baselines == ["normal/median"]
    assert "normal/median" not in result.included and len(result.included) == 8
    assert result.contributions["normal/mean"].weight == pytest.approx(1 / 12)  # normal averages its 4 remaining metrics
    assert result.value == pytest.approx(100 / 3 * 0.08)


def test_delta_m_argument_errors():
    with pytest.raises(ConfigError, match="convention 'mean'"):
        delta_m({"a/x": 1.0}, {"a/x": 1.0}, {"a/x": True}, convention="mean")
    with pytest.raises(ConfigError, match="direction"):
        delta_m({"a/x": 1.0}, {"a/x": 1.0}, {})
    with pytest.raises(ConfigError, match="must be finite"):
        delta_m({"a/x": 1.0}, {"a/x": float("nan")}, {"a/x": True})
    with pytest.raises(ConfigError, match=r"has a usable baseline \(missing: \[\], zero: \['a/x'\]\)"):
        delta_m({"a/x": 1.0}, {"a/x": 0.0}, {"a/x": True})


def test_zero_baselines_are_left_out_and_listed():
    d = delta_m({"a/f1": 0.5, "a/acc": 0.9}, {"a/f1": 0.0, "a/acc": 0.8}, {"a/f1": True, "a/acc": True})
    assert d.undefined_baselines == ["a/f1"] and d.included == ["a/acc"]
    assert d.value == pytest.approx(-12.5)
    with pytest.raises(ConfigError, match="<task>/<metric>"):
        delta_m({"x": 1.0}, {"x": 1.0}, {"x": True})


def test_metrics_for_split_drops_losses_and_aggregates():
    results = {"test/seg/miou": 0.4, "test/seg/loss": 1.2, "test/loss": 3.0, "val/seg/miou": 0.5, "train/weight/seg": 1.0}
    assert metrics_for_split(results, "test") == {"seg/miou": 0.4}


# ---------------------------------------------------------------- STL summaries


def write_summary(path: Path, task: str, seed: int, values: dict[str, float], *, mode: str = "stl",
                  status: str = "completed", dataset: str = "nyuv2") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    selected = {f"{split}/{task}/{m}": v + (0.5 if split == "val" else 0.0) for split in ("val", "test") for m, v in values.items()}
    selected[f"test/{task}/loss"] = 9.0
    summary = {"mode": mode, "tasks": [task] if mode == "stl" else [task, "other"], "seed": seed, "status": status,
               "dataset": {"name": dataset}, "selected": selected if status == "completed" else {}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path / "summary.json"


def test_stl_baselines_average_seeds_and_skip_with_reasons(tmp_path):
    sweep = tmp_path / "multirun"
    write_summary(sweep / "0_seg_s0", "seg", 0, {"miou": 0.30, "pix_acc": 0.60})
    write_summary(sweep / "1_seg_s1", "seg", 1, {"miou": 0.40, "pix_acc": 0.70})
    write_summary(sweep / "2_depth_s0", "depth", 0, {"abs_err": 0.5, "rel_err": 0.2})
    failed = write_summary(sweep / "3_depth_s1", "depth", 1, {"abs_err": 9.0, "rel_err": 9.0}, status="diverged")
    mtl = write_summary(tmp_path / "mtl_run", "seg", 0, {"miou": 0.9, "pix_acc": 0.9}, mode="mtl")
    single = write_summary(tmp_path / "normal_run", "normal", 3, {"mean": 25.0}).parent

    out = stl_baselines_from_runs([sweep, mtl, single])
    assert out.values == pytest.approx({"seg/miou": 0.35, "seg/pix_acc": 0.65, "depth/abs_err": 0.5,
                                        "depth/rel_err": 0.2, "normal/mean": 25.0})
    assert out.runs_per_task == {"seg": 2, "depth": 1, "normal": 1}
    assert out.seeds == {"seg": [0, 1], "depth": [0], "normal": [3]}
    assert out.datasets == {"seg": "nyuv2", "depth": "nyuv2", "normal": "nyuv2"}
    assert sorted(out.skipped) == sorted([(str(failed), "status is 'diverged', not 'completed'"),
                                          (str(mtl), "mode is 'mtl', not 'stl'")])
    assert stl_baselines_from_runs(sweep, split="val").values["seg/miou"] == pytest.approx(0.85)
    assert stl_baselines_from_runs([single, single / "summary.json"]).runs_per_task == {"normal": 1}  # one run, two paths


def test_stl_baselines_errors(tmp_path):
    write_summary(tmp_path / "a", "depth", 0, {"abs_err": 0.5})
    write_summary(tmp_path / "b", "depth", 1, {"abs_err": 0.01}, dataset="cityscapes")
    with pytest.raises(ConfigError, match="task 'depth' appears with two datasets: 'nyuv2'.*'cityscapes'"):
        stl_baselines_from_runs([tmp_path / "a", tmp_path / "b"])
    write_summary(tmp_path / "c", "depth", 0, {"abs_err": 0.6})
    with pytest.raises(ConfigError, match="two completed STL runs with seed 0"):
        stl_baselines_from_runs([tmp_path / "a", tmp_path / "c"])
    with pytest.raises(ConfigError, match="does not exist"):
        stl_baselines_from_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no summary.json"):
        stl_baselines_from_runs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="split='train'"):
        stl_baselines_from_runs(tmp_path / "a", split="train")


# ---------------------------------------------------------------- published baselines


def test_published_baselines_use_our_metric_keys():
    assert load_published("cagrad_cityscapes7_segnet_stl")["metrics"] == {
        "seg/miou": 0.7401, "seg/pix_acc": 0.9316, "depth/abs_err": 0.0125, "depth/rel_err": 27.77}
    assert set(list_published("nyuv2")) == {"cagrad_nyuv2_segnet_stl", "elich2024_nyuv2_segnet_stl", "elich2024_nyuv2_deeplabv3_stl"}
    for pid in list_published("nyuv2") + list_published("cityscapes"):
        entry = load_published(pid)
        assert set(entry["metrics"]) <= set(NYU_DIRECTIONS), pid
        assert entry["source"]["paper"] and entry["source"]["code"] and entry["protocol"]
        assert delta_m(entry["metrics"], entry["metrics"], NYU_DIRECTIONS).value == 0.0
    celeba = load_published("famo_celeba40_convnet_stl")["metrics"]
    assert len(celeba) == 40
    assert list(celeba)[:2] == ["5_o_Clock_Shadow/f1", "Arched_Eyebrows/f1"] and list(celeba)[-1] == "Young/f1"
    assert celeba["Eyeglasses/f1"] == pytest.approx(0.95694304)
    assert attribute_task("Young").higher_is_better["f1"] is True


def test_published_errors():
    with pytest.raises(ConfigError, match="unknown published baseline 'nyu'; available: .*cagrad_nyuv2_segnet_stl"):
        load_published("nyu")
    copy = load_published("cagrad_nyuv2_segnet_stl")
    copy["metrics"]["seg/miou"] = 1.0
    assert load_published("cagrad_nyuv2_segnet_stl")["metrics"]["seg/miou"] == 0.383
    entry = {"dataset": "x", "backbone": "y", "protocol": "z", "evaluation": "pooled", "source": {"paper": "p", "code": "c"},
             "metrics": {"seg/miou": None}}
    with pytest.raises(ConfigError, match="'seg/miou' = None is not a finite number"):
        _validate_entry("bad", entry)


def test_negative_baseline_keeps_the_sign_meaningful():
    """R² can be negative: an MTL value above a negative higher-is-better baseline is an improvement."""
    d = delta_m({"t/r2": -0.5}, {"t/r2": -1.0}, {"t/r2": True})
    assert d.value == pytest.approx(-50.0)  # (−0.5 − (−1)) / |−1| = +0.5 better → −50 %
