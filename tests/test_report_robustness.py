"""Corruption transferability δ (Elich et al., App. A6) in ``mtl_bench.report``: hand numbers on fake transfer runs.

δ_{t,m,c,s} = (−1)^hib · (r̄_MTL − r̄_STL), r = corrupted / clean per run, r̄ = mean over seeds; δ_{t,m} = mean over
cells, δ_t = mean over the task's metrics, group δ = mean over tasks.  δ < 0: the MTL backbone degrades less.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from mtl_bench.report import main
from mtl_bench.report.build import ReportOptions, build_report
from mtl_bench.report.robustness import build_robustness, corruption_order, delta_matrix
from mtl_bench.report.runs import load_runs

DIRECTIONS = {"t0/acc": True, "t0/err": False, "t1/mse": False, "t0/loss": False, "t1/loss": False}


def write_transfer(root: Path, name: str, clean: dict[str, float], corrupted: dict[str, dict[int, dict[str, float]]], *,
                   source_mode: str = "mtl", seed: int = 0, combiner: str = "ew", optimizer: str = "adam", heads: str = "loaded",
                   dataset: str = "synthetic", extra_overrides: tuple[str, ...] = (), with_results: bool = True,
                   backend_version: str = "1", overrides: list[str] | None = None) -> Path:
    """A fake transfer job folder shaped like the trainer's (source path override varies with the seed)."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    tasks = list(dict.fromkeys(k.split("/")[0] for k in clean))
    source_dir = f"/exp/pretrain/{source_mode}_{combiner}_{optimizer}_{'_'.join(tasks)}/seed={seed}"
    overrides = overrides or ["mode=transfer", f"mode.source={source_dir}", f"seed={seed}", *extra_overrides]
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    summary = {
        "status": "completed", "mode": "transfer", "tasks": tasks, "targets": tasks, "seed": seed,
        "dataset": {"name": dataset}, "combiner": {"name": "ew"}, "optimizer": {"choice": "adam"},
        "choices": {"mode": "transfer", "combiner": "ew", "optimizer": "adam", "dataset": dataset},
        "hydra": {"overrides": overrides},
        "metric_directions": {k: v for k, v in DIRECTIONS.items() if k.split("/")[0] in tasks},
        "selection": {"rule": "last"},
        "transfer": {
            "source": {"dir": source_dir, "mode": source_mode, "tasks": tasks, "seed": seed, "combiner": combiner,
                       "optimizer": optimizer, "checkpoint": f"{source_dir}/checkpoints/best.pt"},
            "heads": heads,
            "corruptions": {"backend": "mtl_bench", "version": backend_version, "names": list(corrupted), "severities": [1, 2],
                            "seed": 0, "cache_dir": f"/tmp/cache_{name}", "dataset_fingerprint": "abc"},
            "split": "test",
            "clean": clean,
            "corrupted": {c: {str(s): m for s, m in by_sev.items()} for c, by_sev in corrupted.items()},
        },
    }
    if with_results:
        summary["selected"] = summary["final"] = {f"test/{k}": v for k, v in clean.items()}
    (job / "summary.json").write_text(json.dumps(summary))
    return job


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# Hand numbers (one seed per side).
#   t0/acc (higher is better): MTL clean 0.8, gaussian_noise s1 0.6, s2 0.4 -> r = 0.75, 0.5
#                              STL clean 0.5, s1 0.4, s2 0.2              -> r = 0.8, 0.4
#       raw = −0.05, +0.10; signed (×−1) = +0.05, −0.10; δ_acc = −0.025
#   t0/err (lower is better):  MTL clean 2, s1 3, s2 4 -> r = 1.5, 2.0;  STL clean 1, s1 1.2, s2 2 -> r = 1.2, 2.0
#       signed = raw = +0.3, 0; δ_err = +0.15
#   δ_t0 = (−0.025 + 0.15) / 2 = +0.0625 (mean over metrics; pooling the four cells would give +0.0625 too, so t1 has
#   a different cell count:)
#   t1/mse (lower is better): MTL clean 1, s1 1.1 -> 1.1; STL clean 2, s1 2.4 -> 1.2; δ_t1 = −0.1 (one cell)
#   mean over tasks = (0.0625 − 0.1) / 2 = −0.01875 (pooling all five metric-cells would give +0.03)
MTL_CLEAN = {"t0/acc": 0.8, "t0/err": 2.0, "t1/mse": 1.0, "t0/loss": 5.0, "t1/loss": 5.0}
MTL_CORR = {"gaussian_noise": {1: {"t0/acc": 0.6, "t0/err": 3.0, "t1/mse": 1.1, "t0/loss": 7.0, "t1/loss": 9.0},
                               2: {"t0/acc": 0.4, "t0/err": 4.0, "t0/loss": 8.0}}}
STL0_CLEAN = {"t0/acc": 0.5, "t0/err": 1.0, "t0/loss": 1.0}
STL0_CORR = {"gaussian_noise": {1: {"t0/acc": 0.4, "t0/err": 1.2, "t0/loss": 1.0}, 2: {"t0/acc": 0.2, "t0/err": 2.0, "t0/loss": 1.0}}}
STL1_CLEAN = {"t1/mse": 2.0}
STL1_CORR = {"gaussian_noise": {1: {"t1/mse": 2.4}, 2: {"t1/mse": 3.0}}}  # s2 has no MTL counterpart for t1


def hand_sweep(root: Path) -> Path:
    write_transfer(root, "0_mtl", MTL_CLEAN, MTL_CORR)
    write_transfer(root, "1_stl_t0", STL0_CLEAN, STL0_CORR, source_mode="stl")
    write_transfer(root, "2_stl_t1", STL1_CLEAN, STL1_CORR, source_mode="stl")
    return root


def test_delta_on_hand_numbers_with_signs_per_metric_task_and_mean(tmp_path):
    rob = build_robustness(load_runs([hand_sweep(tmp_path / "sweep")]))
    assert rob is not None and len(rob.groups) == 1
    g = rob.groups[0]
    t0, t1 = g.task("t0"), g.task("t1")
    acc, err = {m.metric: m for m in t0.metrics}["acc"], {m.metric: m for m in t0.metrics}["err"]
    assert [m.metric for m in t0.metrics] == ["acc", "err"]  # the task loss is not a metric of δ
    cell = acc.cells[("gaussian_noise", 1)]
    assert (cell.ratio_mtl, cell.ratio_stl) == (pytest.approx(0.75), pytest.approx(0.8))
    assert cell.raw == pytest.approx(-0.05) and cell.delta == pytest.approx(0.05)  # higher is better: sign flipped
    assert acc.cells[("gaussian_noise", 2)].delta == pytest.approx(-0.10)
    assert acc.delta.mean == pytest.approx(-0.025, abs=1e-12)
    assert err.cells[("gaussian_noise", 1)].delta == pytest.approx(0.3)  # lower is better: not flipped
    assert err.delta.mean == pytest.approx(0.15)
    assert t0.delta.mean == pytest.approx(0.0625)  # mean over the task's metrics
    assert t1.delta.mean == pytest.approx(-0.1) and len(t1.metrics[0].cells) == 1
    assert g.delta.mean == pytest.approx(-0.01875)  # mean over tasks, not over metrics or cells
    assert g.delta.std is None and acc.delta.std is None  # one MTL run
    assert g.group.label == "transfer.source.combiner=ew, transfer.source.optimizer=adam"


def test_report_section_csv_and_heatmap_through_the_cli(tmp_path, capsys):
    sweep = hand_sweep(tmp_path / "sweep")
    assert main([str(sweep)]) == 0
    out = sweep / "report"
    md = (out / "report.md").read_text()
    assert "## Corruption transferability (δ)" in md and "δ < 0: the MTL backbone degrades less" in md
    assert "- **corruptions**: backend mtl_bench, version 1, seed 0; 1 corruption(s) × severities 1, 2; split test; heads loaded" in md
    assert "| transfer.source.combiner=ew, transfer.source.optimizer=adam | 1 | 0 | +0.0625 | -0.1000 | -0.0187 |" in md
    assert "| transfer.source.combiner=ew, transfer.source.optimizer=adam | t0 | acc ↑ | -0.0250 | 2 | 1 (seeds 0) |" in md
    rows = read_csv(out / "robustness.csv")
    assert list(rows[0])[:6] == ["group", "task", "metric", "corruption", "severity", "delta"]
    assert len(rows) == 5  # t0: 2 metrics × 2 severities, t1: 1 metric × 1 severity
    by = {(r["task"], r["metric"], r["severity"]): r for r in rows}
    assert float(by[("t0", "acc", "1")]["delta"]) == pytest.approx(0.05)
    assert float(by[("t0", "acc", "2")]["delta"]) == pytest.approx(-0.10)
    assert float(by[("t0", "err", "1")]["delta"]) == pytest.approx(0.3)
    assert float(by[("t1", "mse", "1")]["delta"]) == pytest.approx(-0.1)
    assert float(by[("t0", "acc", "1")]["ratio_stl"]) == pytest.approx(0.8)
    assert (out / "delta_heatmap_ew_adam.png").is_file()
    assert "corruption transferability δ: 1 MTL group(s)" in capsys.readouterr().out


def test_seed_averaging_of_ratios_and_std_over_mtl_seeds(tmp_path):
    """r̄ is the mean of the per-run ratios (not the ratio of mean values); std over the MTL runs' own δ."""
    root = tmp_path / "sweep"
    cor = "gaussian_noise"
    write_transfer(root, "0_mtl_s0", {"t0/acc": 1.0}, {cor: {1: {"t0/acc": 0.5}}}, seed=0)  # r = 0.5
    write_transfer(root, "1_mtl_s1", {"t0/acc": 4.0}, {cor: {1: {"t0/acc": 1.0}}}, seed=1)  # r = 0.25 (ratio of means 0.3)
    write_transfer(root, "2_stl_s0", {"t0/acc": 2.0}, {cor: {1: {"t0/acc": 1.0}}}, seed=0, source_mode="stl")  # r = 0.5
    write_transfer(root, "3_stl_s1", {"t0/acc": 1.0}, {cor: {1: {"t0/acc": 0.9}}}, seed=1, source_mode="stl")  # r = 0.9
    rob = build_robustness(load_runs([root]))
    (g,) = rob.groups
    assert len(g.group.runs) == 2  # the seeds (and their different source paths) fall together
    m = g.task("t0").metrics[0]
    cell = m.cells[(cor, 1)]
    assert cell.ratio_mtl == pytest.approx(0.375) and cell.ratio_stl == pytest.approx(0.7)
    assert (cell.n_mtl, cell.n_stl) == (2, 2)
    assert m.delta.mean == pytest.approx(0.325)  # −(0.375 − 0.7): higher is better
    assert sorted(m.delta.values) == [pytest.approx(0.2), pytest.approx(0.45)]  # −(0.5 − 0.7), −(0.25 − 0.7)
    assert m.delta.std == pytest.approx(statistics.stdev([0.2, 0.45]))
    assert g.delta.mean == pytest.approx(0.325) and g.delta.std == pytest.approx(statistics.stdev([0.2, 0.45]))


def test_missing_stl_baseline_is_listed_not_an_error(tmp_path):
    root = tmp_path / "sweep"
    write_transfer(root, "0_mtl", MTL_CLEAN, MTL_CORR)
    write_transfer(root, "1_stl_t0", STL0_CLEAN, STL0_CORR, source_mode="stl")
    write_transfer(root, "2_stl_t1_other_data", STL1_CLEAN, STL1_CORR, source_mode="stl", dataset="nyuv2")  # wrong dataset
    write_transfer(root, "3_stl_t1_fresh", STL1_CLEAN, STL1_CORR, source_mode="stl", heads="fresh")  # other heads
    rob = build_robustness(load_runs([root]))
    (g,) = rob.groups
    assert [t.task for t in g.tasks] == ["t0"]
    assert "t1" in g.missing and "synthetic" in g.missing["t1"]
    assert g.delta.mean == pytest.approx(0.0625)  # the mean over tasks covers t0 only
    assert main([str(root), "--no-plots"]) == 0
    md = (root / "report" / "report.md").read_text()
    assert "missing" in md and "**Tasks without δ**" in md and "t1: no completed STL-source transfer run for t1" in md


def test_zero_or_negative_clean_value_leaves_the_metric_out_and_names_it(tmp_path):
    root = tmp_path / "sweep"
    write_transfer(root, "0_mtl", MTL_CLEAN, MTL_CORR)
    write_transfer(root, "1_stl_t0", {**STL0_CLEAN, "t0/acc": 0.0}, STL0_CORR, source_mode="stl")
    write_transfer(root, "2_stl_t1", {"t1/mse": -2.0}, STL1_CORR, source_mode="stl")
    rob = build_robustness(load_runs([root]))
    (g,) = rob.groups
    assert [m.metric for m in g.task("t0").metrics] == ["err"]
    assert g.task("t0").delta.mean == pytest.approx(0.15)  # err only
    reasons = dict(g.left_out)
    assert "clean value 0 in 1_stl_t0" in reasons["t0/acc"]
    assert "< 0" in reasons["t1/mse"] and "t1" in g.missing
    assert g.delta.mean == pytest.approx(0.15)
    assert main([str(root), "--no-plots"]) == 0
    md = (root / "report" / "report.md").read_text()
    assert "**Metrics left out**" in md and "t0/acc: clean value 0 in 1_stl_t0" in md


def test_heatmap_matrix_standard_order_shape_and_values(tmp_path):
    root = tmp_path / "sweep"
    names = ["jpeg_compression", "snow", "gaussian_noise", "defocus_blur"]  # not the standard order on purpose
    assert corruption_order(names + ["my_corruption"]) == ["gaussian_noise", "defocus_blur", "snow", "jpeg_compression", "my_corruption"]
    # MTL: r = 1 − 0.02·(i+1)·s for corruption i; STL: r = 1 − 0.03·(i+1)·s, both t0/err (lower is better) and t1/mse.
    # δ_{t,c,s} = raw = 0.01·(i+1)·s for t0 and 2× that for t1 (MTL: 1 − 0.04·(i+1)·s) -> mean over tasks 0.015·(i+1)·s.
    mtl = {c: {s: {"t0/err": 1 - 0.02 * (i + 1) * s, "t1/mse": 1 - 0.01 * (i + 1) * s} for s in range(1, 6)} for i, c in enumerate(names)}
    stl0 = {c: {s: {"t0/err": 2 * (1 - 0.03 * (i + 1) * s)} for s in range(1, 6)} for i, c in enumerate(names)}
    stl1 = {c: {s: {"t1/mse": 1 - 0.03 * (i + 1) * s} for s in range(1, 6)} for i, c in enumerate(names)}
    del mtl["snow"][5]  # a cell without an MTL value: NaN in the matrix
    write_transfer(root, "0_mtl", {"t0/err": 1.0, "t1/mse": 1.0}, mtl)
    write_transfer(root, "1_stl_t0", {"t0/err": 2.0}, stl0, source_mode="stl")
    write_transfer(root, "2_stl_t1", {"t1/mse": 1.0}, stl1, source_mode="stl")
    rob = build_robustness(load_runs([root]))
    assert rob.corruptions == ["gaussian_noise", "defocus_blur", "snow", "jpeg_compression"] and rob.severities == [1, 2, 3, 4, 5]
    (g,) = rob.groups
    matrix = delta_matrix(g, rob.corruptions, rob.severities)
    assert len(matrix) == 4 and all(len(row) == 5 for row in matrix)
    index = {c: names.index(c) + 1 for c in names}
    for r, c in enumerate(rob.corruptions):
        for k, s in enumerate(rob.severities):
            if (c, s) == ("snow", 5):
                assert math.isnan(matrix[r][k])
            else:
                assert matrix[r][k] == pytest.approx(0.015 * index[c] * s)
    panels = rob.panels(g)  # the mean over tasks and one panel per task (2 tasks)
    assert [title for title, _ in panels] == ["mean over tasks", "t0", "t1"]
    assert panels[1][1][0][0] == pytest.approx(0.03) and panels[2][1][0][0] == pytest.approx(0.06)  # gaussian_noise: i = 3
    report = build_report(load_runs([root]), ReportOptions())
    from mtl_bench.report.plots import delta_heatmaps

    files = delta_heatmaps(report, tmp_path)
    assert [f.name for f in files] == ["delta_heatmap_ew_adam.png"] and files[0].stat().st_size > 0


def test_groups_by_source_method_and_transfer_only_report_works(tmp_path):
    """Source combiners × seeds (different source paths per seed) -> one group per combiner, here and in the main table;
    a transfer run without selected/final results still counts (its clean metrics stand in)."""
    root = tmp_path / "sweep"
    for combiner, base in (("ew", 0.9), ("pcgrad", 0.7)):
        for seed in (0, 1):
            write_transfer(root, f"{combiner}_{seed}", {"t0/acc": 1.0}, {"fog": {3: {"t0/acc": base + 0.02 * seed}}},
                           combiner=combiner, seed=seed, with_results=(seed == 0))
    write_transfer(root, "stl_0", {"t0/acc": 1.0}, {"fog": {3: {"t0/acc": 0.8}}}, source_mode="stl")
    runs = load_runs([root])
    assert all(r.completed for r in runs)
    rob = build_robustness(runs)
    assert [(g.group.label, len(g.group.runs)) for g in rob.groups] == [
        ("transfer.source.combiner=ew, transfer.source.optimizer=adam", 2),
        ("transfer.source.combiner=pcgrad, transfer.source.optimizer=adam", 2)]
    assert rob.groups[0].delta.mean == pytest.approx(-(0.91 - 0.8))  # higher is better: MTL keeps more -> δ < 0
    assert rob.groups[1].delta.mean == pytest.approx(-(0.71 - 0.8))
    report = build_report(runs, ReportOptions())
    assert "mode.source" not in report.group_keys and "transfer.source.combiner" in report.group_keys
    assert sorted(len(r.group.runs) for r in report.rows) == [1, 2, 2]  # ew, pcgrad, and the STL-source run
    assert main([str(root)]) == 0
    assert {f.name for f in (root / "report").glob("delta_heatmap_*.png")} == {"delta_heatmap_ew_adam.png", "delta_heatmap_pcgrad_adam.png"}
    assert "test/t0/acc ↑" in (root / "report" / "report.md").read_text()  # the main table: the clean metrics


def test_stl_baselines_are_matched_on_settings_they_vary_in(tmp_path):
    root = tmp_path / "sweep"
    for lr, mtl_r in (("0.01", 0.9), ("0.001", 0.6)):
        write_transfer(root, f"mtl_{lr}", {"t0/err": 1.0}, {"fog": {1: {"t0/err": 1 + mtl_r}}}, extra_overrides=(f"optimizer.lr={lr}",))
    write_transfer(root, "stl_a", {"t0/err": 1.0}, {"fog": {1: {"t0/err": 1.5}}}, source_mode="stl", extra_overrides=("optimizer.lr=0.01",))
    write_transfer(root, "stl_b", {"t0/err": 1.0}, {"fog": {1: {"t0/err": 1.1}}}, source_mode="stl", extra_overrides=("optimizer.lr=1e-3",))
    rob = build_robustness(load_runs([root]))
    got = {g.group.values["optimizer.lr"]: g.delta.mean for g in rob.groups}
    assert got == {"0.01": pytest.approx(1.9 - 1.5), "0.001": pytest.approx(1.6 - 1.1)}


def test_no_transfer_runs_means_no_section(tmp_path):
    root = tmp_path / "sweep"
    job = root / "0_plain"
    (job / ".hydra").mkdir(parents=True)
    (job / "summary.json").write_text(json.dumps({"status": "completed", "mode": "mtl", "tasks": ["t0"], "seed": 0,
                                                  "metric_directions": {"t0/err": False}, "selected": {"test/t0/err": 1.0}}))
    assert build_report(load_runs([root]), ReportOptions()).robustness is None
    assert main([str(root), "--no-plots"]) == 0
    assert "Corruption transferability" not in (root / "report" / "report.md").read_text()
    assert not (root / "report" / "robustness.csv").exists()


def test_source_paths_only_stl_runs_and_unusable_transfer_runs(tmp_path):
    from mtl_bench.report.robustness import is_source_ref

    root = tmp_path / "sweep"
    job = write_transfer(root, "0_stl", STL0_CLEAN, STL0_CORR, source_mode="stl")
    bad = write_transfer(root, "1_bad", MTL_CLEAN, MTL_CORR)
    summary = json.loads((bad / "summary.json").read_text())
    del summary["transfer"]["corrupted"]
    (bad / "summary.json").write_text(json.dumps(summary))
    runs = load_runs([root])
    run = next(r for r in runs if r.path == job)
    assert is_source_ref("pretrain/stl_ew_adam_t0/seed=0", run)  # relative override, absolute recorded dir
    assert is_source_ref("/exp/pretrain/stl_ew_adam_t0/seed=0/checkpoints/best.pt", run)
    assert not is_source_ref("seed=0", run) and not is_source_ref("other/seed=1", run)
    rob = build_robustness(runs)
    assert rob.groups == [] and [(r.name, why) for r, why in rob.ignored] == [("1_bad", "'transfer.corrupted' is missing or empty")]
    assert main([str(root)]) == 0
    out = root / "report"
    md = (out / "report.md").read_text()
    assert "_no MTL-source transfer run: no δ_" in md and "1_bad: 'transfer.corrupted' is missing or empty" in md
    assert read_csv(out / "robustness.csv") == [] and not list(out.glob("delta_heatmap_*.png"))


def test_sweep_like_the_trainer_writes_it(tmp_path):
    """``mode.source=mtl,stl:t0 combiner=ew,pcgrad seed=0,1``: the transfer run's combiner override is its source's
    combiner (not a second group key); the STL-source runs of both combiner values form the t0 baseline."""
    root = tmp_path / "sweep"
    i = 0
    for source in ("mtl", "stl:t0"):
        for combiner in ("ew", "pcgrad"):
            for seed in (0, 1):
                over = ["mode=transfer", f"mode.source={source}", f"combiner={combiner}", f"seed={seed}"]
                if source == "mtl":
                    acc = (0.9 if combiner == "ew" else 0.6) + 0.1 * seed
                    write_transfer(root, f"{i}_job", {"t0/acc": 1.0}, {"fog": {1: {"t0/acc": acc}}}, combiner=combiner, seed=seed,
                                   overrides=over)
                else:  # the same STL backbone whatever the combiner; seed 1 keeps more
                    write_transfer(root, f"{i}_job", {"t0/acc": 2.0}, {"fog": {1: {"t0/acc": 1.0 + 0.2 * seed}}}, source_mode="stl",
                                   combiner=combiner, seed=seed, overrides=over)
                i += 1
    runs = load_runs([root])
    rob = build_robustness(runs)
    assert rob.group_keys == ["transfer.source.combiner", "transfer.source.optimizer"]
    ew, pc = rob.groups
    stl_mean = (0.5 + 0.6) / 2
    assert ew.delta.mean == pytest.approx(-((0.9 + 1.0) / 2 - stl_mean))
    assert pc.delta.mean == pytest.approx(-((0.6 + 0.7) / 2 - stl_mean))
    assert len(ew.tasks[0].stl_runs) == 4
    report = build_report(runs, ReportOptions())
    assert report.group_keys == ["mode.source", "combiner"] and len(report.rows) == 4
