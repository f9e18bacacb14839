"""``python -m mtl_bench.report``: discovery, grouping, mean ± std, Δm, Pareto, failed jobs, outputs.

Most tests build tiny fake job folders with hand-written ``summary.json`` files; one end-to-end test trains a
tiny real multirun in a subprocess and checks the report's numbers against the summaries.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_bench.report import main
from mtl_bench.report.build import ReportOptions, build_report, conflict_stats
from mtl_bench.report.grouping import canonical, default_group_keys, group_runs, lookup
from mtl_bench.report.pareto import against_reference, dominates, pareto_optimal
from mtl_bench.report.runs import ReportError, load_runs
from mtl_bench.report.wandb_io import pull_runs, run_from_wandb

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = {"loss": False, "t0/loss": False, "t0/mse": False, "t0/r2": True, "t1/loss": False, "t1/mse": False, "t1/r2": True}


def write_run(root: Path, name: str, test: dict[str, float], *, seed: int = 0, combiner: str = "ew", optimizer: str = "adam",
              lr: float | None = None, mode: str = "mtl", tasks: tuple[str, ...] = ("t0", "t1"), targets: list[str] | None = None,
              status: str = "completed", val: dict[str, float] | None = None, **extra) -> Path:
    """A fake job folder: ``.hydra/overrides.yaml`` and a ``summary.json`` shaped like the trainer's."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"combiner={combiner}", f"optimizer={optimizer}", f"seed={seed}"]
    if lr is not None:
        overrides.append(f"optimizer.lr={lr}")
    if mode == "stl":
        overrides += ["mode=stl", f"mode.task={tasks[0]}"]
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    selected = {f"test/{k}": v for k, v in test.items()}
    selected.update({f"val/{k}": v for k, v in (val or test).items()})
    selected.update({f"test/{t}/loss": 99.0 for t in tasks})  # task losses: never in the table or Δm by default
    summary = {
        "status": status, "mode": mode, "tasks": list(tasks), "targets": targets or list(tasks), "seed": seed,
        "dataset": {"name": "synthetic"}, "combiner": {"name": combiner},
        "optimizer": {"choice": optimizer, "lr": lr if lr is not None else 1e-3},
        "choices": {"combiner": combiner, "optimizer": optimizer, "mode": mode, "dataset": "synthetic"},
        "hydra": {"overrides": overrides},
        "metric_directions": {k: v for k, v in DIRECTIONS.items() if k.split("/")[0] in (*tasks, "loss")},
        "selection": {"rule": "best", "metric": "val/loss", "mode": "min"},
        **extra,
    }
    if status == "completed":
        summary["selected"] = selected
        summary["final"] = selected
    (job / "summary.json").write_text(json.dumps(summary))
    return job


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_main(*args: str) -> int:
    return main([*map(str, args)])


# --------------------------------------------------------------------------------------------- grouping, mean/std


def test_group_mean_and_sample_std_match_hand_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, (a, b) in enumerate([(1.0, 10.0), (2.0, 20.0), (4.0, 60.0)]):
        write_run(sweep, f"{seed}_ew_s{seed}", {"t0/mse": a, "t0/r2": 0.5, "t1/mse": b, "t1/r2": 0.1}, seed=seed)
    write_run(sweep, "3_pcgrad", {"t0/mse": 3.0, "t0/r2": 0.7, "t1/mse": 5.0, "t1/r2": 0.2}, combiner="pcgrad")
    assert run_main(sweep, "--no-plots") == 0
    rows = {r["group"]: r for r in read_csv(sweep / "report" / "report.csv")}
    ew, pc = rows["combiner=ew"], rows["combiner=pcgrad"]
    assert ew["n"] == "3" and ew["seeds"] == "0;1;2"
    assert float(ew["test/t0/mse/mean"]) == pytest.approx(7 / 3, rel=1e-12)
    assert float(ew["test/t0/mse/std"]) == pytest.approx(math.sqrt(7 / 3), rel=1e-12)  # ddof=1: Σ(x−x̄)² = 14/3, /(n−1)
    assert float(ew["test/t1/mse/mean"]) == pytest.approx(30.0)
    assert float(ew["test/t1/mse/std"]) == pytest.approx(statistics.stdev([10.0, 20.0, 60.0]))
    assert float(ew["test/t0/r2/std"]) == 0.0
    assert pc["n"] == "1" and float(pc["test/t0/mse/mean"]) == 3.0 and pc["test/t0/mse/std"] == ""  # n = 1: no std
    md = (sweep / "report" / "report.md").read_text()
    assert "| combiner=ew | 3 | 0,1,2 | 2.333 ± 1.528 |" in md


def test_seeds_are_grouped_together_and_other_differences_kept_apart(tmp_path):
    sweep = tmp_path / "sweep"
    point = {"t0/mse": 1.0, "t0/r2": 0.5, "t1/mse": 2.0, "t1/r2": 0.4}
    i = 0
    for combiner in ("ew", "pcgrad"):
        for lr in ("0.01", "1e-3"):
            for seed in (0, 1):
                write_run(sweep, f"{i}_job", point, seed=seed, combiner=combiner, lr=float(lr))
                i += 1
    runs = load_runs([sweep])
    keys = default_group_keys(runs)
    assert keys == ["combiner", "optimizer.lr"]  # optimizer is constant, the seed is never a key
    groups = group_runs(runs, keys)
    assert [(g.label, len(g.runs), g.seeds) for g in groups] == [
        ("combiner=ew, optimizer.lr=0.01", 2, [0, 1]), ("combiner=ew, optimizer.lr=0.001", 2, [0, 1]),
        ("combiner=pcgrad, optimizer.lr=0.01", 2, [0, 1]), ("combiner=pcgrad, optimizer.lr=0.001", 2, [0, 1]),
    ]
    merged = group_runs(runs, ["combiner"])  # --group-by combiner: the lr values fall together
    assert [len(g.runs) for g in merged] == [4, 4]
    assert run_main(sweep, "--group-by", "combiner", "--no-plots") == 0
    assert [r["n"] for r in read_csv(sweep / "report" / "report.csv")] == ["4", "4"]


def test_values_are_compared_canonically_across_sources(tmp_path):
    assert canonical("1e-2") == canonical(0.01) == "0.01"
    assert canonical("2") == canonical(2.0) == "2" and canonical("True") == "true" and canonical("[t0, t1]") == canonical(["t0", "t1"])
    job = write_run(tmp_path, "0_job", {"t0/mse": 1.0}, tasks=("t0",), lr=None)
    (job / "config_resolved.yaml").write_text("optimizer:\n  lr: 0.01\ntrainer:\n  epochs: 3\n")
    (run,) = load_runs([job])
    assert lookup(run, "optimizer") == "adam"  # override first
    assert lookup(run, "optimizer.lr") == "0.01"  # resolved config before summary.json (which says 1e-3)
    assert lookup(run, "trainer.epochs") == "3" and lookup(run, "no.such.key") is None


# ------------------------------------------------------------------------------------------------------------- Δm


def _delta_setup(root: Path) -> tuple[Path, Path]:
    """STL baselines t0/mse = mean(1.8, 2.2) = 2, t0/r2 = 0.5, t1/mse = 4 (t1/r2 = 0.2); one MTL and one aux run."""
    stl = root / "stl"
    write_run(stl, "0_t0_s0", {"t0/mse": 1.8, "t0/r2": 0.5}, mode="stl", tasks=("t0",), seed=0)
    write_run(stl, "1_t0_s1", {"t0/mse": 2.2, "t0/r2": 0.5}, mode="stl", tasks=("t0",), seed=1)
    write_run(stl, "2_t1_s0", {"t1/mse": 4.0, "t1/r2": 0.2}, mode="stl", tasks=("t1",), seed=0)
    sweep = root / "sweep"
    # r: t0/mse (1−2)/2 = −0.5, t0/r2 −(0.6−0.5)/0.5 = −0.2, t1/mse (5−4)/4 = +0.25, t1/r2 −(0.1−0.2)/0.2 = +0.5
    mtl = {"t0/mse": 1.0, "t0/r2": 0.6, "t1/mse": 5.0, "t1/r2": 0.1}
    write_run(sweep, "0_mtl", mtl, combiner="ew")
    write_run(sweep, "1_aux", mtl, combiner="gcs", mode="aux", targets=["t0"])
    return stl, sweep


@pytest.mark.parametrize("convention, mtl_value, aux_value", [
    ("per_metric", 100 * (-0.5 - 0.2 + 0.25 + 0.5) / 4, 100 * (-0.5 - 0.2) / 2),  # +1.25, −35
    ("per_task", 100 * ((-0.5 - 0.2) / 2 + (0.25 + 0.5) / 2) / 2, 100 * (-0.5 - 0.2) / 2),  # +1.25, −35 (t0 only)
])
def test_delta_m_equals_hand_values_with_stl_runs_found_among_the_dirs(tmp_path, convention, mtl_value, aux_value):
    stl, sweep = _delta_setup(tmp_path)
    assert run_main(sweep, stl, "--delta-convention", convention, "--no-plots") == 0
    runs = {Path(r["run"]).name: r for r in read_csv(sweep / "report" / "runs.csv")}
    assert float(runs["0_mtl"]["test/delta_m"]) == pytest.approx(mtl_value, abs=1e-9)
    assert float(runs["1_aux"]["test/delta_m"]) == pytest.approx(aux_value, abs=1e-9)  # targets only: t1 is ignored
    assert runs["0_t0_s0"]["group"] == "STL t0" and runs["0_t0_s0"]["test/delta_m"] == ""  # a reference, no Δm
    md = (sweep / "report" / "report.md").read_text()
    assert f"convention {convention}" in md and "the 3 completed STL run(s) among the given folders" in md


def test_conventions_differ_when_tasks_have_unequal_metric_counts(tmp_path):
    stl, sweep = _delta_setup(tmp_path)
    mtl = {"t0/mse": 1.0, "t0/r2": 0.6, "t1/mse": 5.0}  # t1 without r2: t0 has 2 metrics, t1 has 1
    write_run(sweep, "2_three", mtl, combiner="mgda")
    (sweep / "0_mtl" / "summary.json").unlink()
    (sweep / "1_aux" / "summary.json").unlink()
    values = {}
    for convention in ("per_metric", "per_task"):
        assert run_main(sweep, "--stl", stl, "--delta-convention", convention, "--no-plots", "--out", tmp_path / convention) == 0
        (row,) = [r for r in read_csv(tmp_path / convention / "report.csv")]
        values[convention] = float(row["test/delta_m/mean"])
        assert "STL runs from --stl" in (tmp_path / convention / "report.md").read_text()
    assert values["per_metric"] == pytest.approx(100 * (-0.5 - 0.2 + 0.25) / 3)  # −15
    assert values["per_task"] == pytest.approx(100 * ((-0.5 - 0.2) / 2 + 0.25) / 2)  # −5


def test_group_delta_m_is_mean_and_std_over_seeds(tmp_path):
    stl, sweep = _delta_setup(tmp_path)
    (sweep / "1_aux" / "summary.json").unlink()
    write_run(sweep, "2_mtl_s1", {"t0/mse": 3.0, "t0/r2": 0.5, "t1/mse": 4.0, "t1/r2": 0.2}, seed=1)  # r = +0.5, 0, 0, 0
    assert run_main(sweep, stl, "--no-plots", "--group-by", "combiner") == 0
    (row,) = [r for r in read_csv(sweep / "report" / "report.csv") if r["group"] == "combiner=ew"]
    per_run = [1.25, 12.5]
    assert float(row["test/delta_m/mean"]) == pytest.approx(statistics.mean(per_run))
    assert float(row["test/delta_m/std"]) == pytest.approx(statistics.stdev(per_run))


def test_without_baselines_the_report_says_why(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0_a", {"t0/mse": 1.0, "t1/mse": 2.0})
    assert run_main(sweep, "--no-plots") == 0
    assert "Δm%**: not computed (no STL runs among the given folders and no --stl" in (sweep / "report" / "report.md").read_text()
    assert "test/delta_m/mean" not in read_csv(sweep / "report" / "report.csv")[0]


# ---------------------------------------------------------------------------------------------------------- Pareto


def test_dominance_on_hand_made_points():
    low = [False, False]
    assert dominates((1, 1), (2, 2), low) and not dominates((2, 2), (1, 1), low)
    assert dominates((1, 2), (2, 2), low)  # equal on one, strictly better on the other
    assert not dominates((1, 1), (1, 1), low)  # a tie dominates neither way
    assert not dominates((1, 2), (2, 1), low) and not dominates((2, 1), (1, 2), low)  # a trade-off
    # direction-aware: metric 0 is higher-is-better (e.g. mIoU), metric 1 lower-is-better (e.g. abs error)
    assert dominates((0.9, 1.0), (0.8, 1.0), [True, False])
    assert not dominates((0.9, 1.0), (0.8, 1.0), [False, False]) and dominates((0.8, 1.0), (0.9, 1.0), [False, False])


def test_pareto_optimal_flags_keep_ties_and_drop_dominated_points():
    points = [(1, 1), (1, 1), (2, 2), (0.5, 3), (0.5, 3.5)]
    assert pareto_optimal(points, [False, False]) == [True, True, False, True, False]
    assert pareto_optimal(points, [True, True]) == [False, False, True, False, True]
    # reference counts: group {(1,1), (3,3)} vs reference {(2,2)}: (1,1) not dominated and dominates; (3,3) neither
    assert against_reference([(1, 1), (3, 3)], [(2, 2)], [False, False]) == (1, 1)
    assert against_reference([(2, 2)], [(2, 2)], [False, False]) == (1, 0)  # a tie with the reference


def test_pareto_columns_of_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    # metrics t0/mse (↓) and t0/r2 (↑); adam runs: A1 (1, 0.9) optimal, A2 (3, 0.5) dominated by A1 and S1
    # sgd runs: S1 (2, 0.95) optimal (a trade-off with A1), S2 = a tie of S1, also optimal
    write_run(sweep, "0_a1", {"t0/mse": 1.0, "t0/r2": 0.9}, tasks=("t0",), optimizer="adam", seed=0)
    write_run(sweep, "1_a2", {"t0/mse": 3.0, "t0/r2": 0.5}, tasks=("t0",), optimizer="adam", seed=1)
    write_run(sweep, "2_s1", {"t0/mse": 2.0, "t0/r2": 0.95}, tasks=("t0",), optimizer="sgd", seed=0)
    write_run(sweep, "3_s2", {"t0/mse": 2.0, "t0/r2": 0.95}, tasks=("t0",), optimizer="sgd", seed=1)
    assert run_main(sweep, "--pareto-ref", "optimizer=adam", "--no-plots") == 0
    rows = {r["group"]: r for r in read_csv(sweep / "report" / "report.csv")}
    adam, sgd = rows["optimizer=adam"], rows["optimizer=sgd"]
    assert (adam["pareto_optimal"], adam["pareto_n"], sgd["pareto_optimal"]) == ("1", "2", "2")
    # vs reference {A1, A2}: A2 is dominated by A1, A1 dominates A2; S1 and S2 dominate A2 and trade off with A1
    assert (adam["ref_not_dominated"], adam["ref_dominating"]) == ("1", "1")
    assert (sgd["ref_not_dominated"], sgd["ref_dominating"]) == ("2", "2")
    flags = {Path(r["run"]).name: r["pareto_optimal"] for r in read_csv(sweep / "report" / "runs.csv")}
    assert flags == {"0_a1": "True", "1_a2": "False", "2_s1": "True", "3_s2": "True"}
    # a single metric, lower is better: only the minimum survives
    assert run_main(sweep, "--pareto-metrics", "t0/mse", "--no-plots", "--out", tmp_path / "one") == 0
    assert [r["pareto_optimal"] for r in read_csv(tmp_path / "one" / "report.csv")] == ["1", "0"]


def test_pareto_within_compares_only_runs_sharing_the_keys(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0", {"t0/mse": 1.0}, tasks=("t0",), combiner="ew", optimizer="adam")
    write_run(sweep, "1", {"t0/mse": 2.0}, tasks=("t0",), combiner="ew", optimizer="sgd")
    write_run(sweep, "2", {"t0/mse": 5.0}, tasks=("t0",), combiner="pcgrad", optimizer="adam")
    write_run(sweep, "3", {"t0/mse": 4.0}, tasks=("t0",), combiner="pcgrad", optimizer="sgd")
    report = build_report(load_runs([sweep]), ReportOptions(group_by=["optimizer"], pareto_within=["combiner"]))
    assert {r.group.label: r.pareto_optimal for r in report.rows} == {"optimizer=adam": 1, "optimizer=sgd": 1}
    report = build_report(load_runs([sweep]), ReportOptions(group_by=["optimizer"]))
    assert {r.group.label: r.pareto_optimal for r in report.rows} == {"optimizer=adam": 1, "optimizer=sgd": 0}


def test_runs_on_different_datasets_are_never_pareto_compared(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0", {"t0/mse": 1.0}, tasks=("t0",), optimizer="adam")
    hard = write_run(sweep, "1", {"t0/mse": 9.0}, tasks=("t0",), optimizer="sgd")  # worse, but on another dataset
    summary = json.loads((hard / "summary.json").read_text())
    summary["choices"]["dataset"] = "synthetic_imbalanced"
    (hard / "summary.json").write_text(json.dumps(summary))
    report = build_report(load_runs([sweep]), ReportOptions(group_by=["optimizer"]))
    assert {r.group.label: r.pareto_optimal for r in report.rows} == {"optimizer=adam": 1, "optimizer=sgd": 1}
    assert any("within their dataset" in n for n in report.notes)


# ----------------------------------------------------------------------------------------- failed jobs and outputs


def test_failed_jobs_are_listed_and_excluded(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0_ok", {"t0/mse": 1.0, "t1/mse": 2.0})
    write_run(sweep, "1_ok", {"t0/mse": 3.0, "t1/mse": 4.0}, seed=1)
    write_run(sweep, "2_div", {}, status="diverged", seed=2, error="non-finite loss inf for task 't0' at global step 2")
    crashed = sweep / "3_crash"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / ".hydra" / "overrides.yaml").write_text("- seed=3\n- combiner=ew\n")
    (crashed / "train.log").write_text("[x][mtl_bench][INFO] - start\n[x][HYDRA][ERROR] - RuntimeError: CUDA out of memory\n")
    broken = write_run(sweep, "4_broken", {"t0/mse": 1.0}, seed=4)
    (broken / "summary.json").write_text("{not json")
    assert run_main(sweep, "--no-plots") == 0
    (row,) = read_csv(sweep / "report" / "report.csv")
    assert row["n"] == "2" and float(row["test/t0/mse/mean"]) == 2.0  # only the completed runs
    md = (sweep / "report" / "report.md").read_text()
    failed = md.split("## Failed jobs (3)")[1]
    assert "| sweep/2_div | diverged | non-finite loss inf for task 't0' at global step 2 |" in failed
    assert "| sweep/3_crash | no_summary | [x][HYDRA][ERROR] - RuntimeError: CUDA out of memory | seed=3 combiner=ew |" in failed
    assert "sweep/4_broken | unreadable_summary | summary.json:" in failed
    statuses = {Path(r["run"]).name: r["status"] for r in read_csv(sweep / "report" / "runs.csv")}
    assert statuses == {"0_ok": "completed", "1_ok": "completed", "2_div": "diverged", "3_crash": "no_summary",
                        "4_broken": "unreadable_summary"}


def test_only_failed_jobs_still_write_a_report_and_exit_1(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0_div", {}, status="diverged", error="boom")
    assert run_main(sweep, "--no-plots") == 1
    assert "## Failed jobs (1)" in (sweep / "report" / "report.md").read_text()
    assert "no completed run" in capsys.readouterr().out


def test_csv_columns_and_markdown_on_stdout(tmp_path, capsys):
    stl, sweep = _delta_setup(tmp_path)
    (sweep / "1_aux" / "summary.json").unlink()
    assert run_main(sweep, stl, "--val", "--pareto-ref", "combiner=ew", "--no-plots") == 0
    with (sweep / "report" / "report.csv").open() as f:
        header = next(csv.reader(f))
    metrics = [f"{s}/{k}" for s in ("test", "val") for k in ("t0/mse", "t0/r2", "t1/mse", "t1/r2")]
    assert header == ["group", "role", "n", "n_exploded", "seeds", "selection", *[f"{m}/{x}" for m in metrics for x in ("mean", "std")],
                      "test/delta_m/mean", "test/delta_m/std", "val/delta_m/mean", "val/delta_m/std",
                      "pareto_optimal", "pareto_n", "ref_not_dominated", "ref_dominating"]
    with (sweep / "report" / "runs.csv").open() as f:
        run_header = next(csv.reader(f))
    assert run_header == ["run", "status", "group", "seed", "selection", "error", "exploded", "exploded_reason", *metrics,
                          "test/delta_m", "val/delta_m", "pareto_optimal"]
    out = capsys.readouterr().out
    assert out.startswith("| group | n | seeds | test/t0/mse ↓ | test/t0/r2 ↑ |")
    assert "Δm% (per_metric): baselines = the 3 completed STL run(s)" in out


def test_selection_rules_that_differ_are_flagged(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0", {"t0/mse": 1.0}, tasks=("t0",), combiner="ew")
    write_run(sweep, "1", {"t0/mse": 1.0}, tasks=("t0",), combiner="uw", selection={"rule": "last_k", "k": 10})
    assert run_main(sweep, "--no-plots") == 0
    md = (sweep / "report" / "report.md").read_text()
    assert "**the runs used different selection rules**" in md
    assert "| selection |" in md and "last_k (k=10)" in md


def test_plots_including_au_and_conflicts(tmp_path):
    sweep = tmp_path / "sweep"
    conflicts = {"all_epochs": {"inter_task": {"cos": {"mean": -0.1}, "mag_sim": {"mean": 0.3}},
                                "inter_sample": {"cos": {"mean": 0.2}, "mag_sim": {"mean": 0.7}}}}
    for seed, rau in enumerate((0.2, 0.4)):
        write_run(sweep, f"{seed}_adam", {"t0/mse": 1.0 + seed, "t1/mse": 2.0}, seed=seed, conflicts=conflicts,
                  au={"mean_rau": {"t0": rau, "t1": 1 - rau}, "dominated_fraction": 0.5 + seed / 10})
    write_run(sweep, "2_sgd", {"t0/mse": 1.5, "t1/mse": 1.0}, optimizer="sgd")
    assert run_main(sweep) == 0
    out = sweep / "report"
    for name in ("bars_test_t0.png", "bars_test_t1.png", "pareto_test_t0_mse_vs_t1_mse.png", "au_heatmap.png", "conflicts.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"({name})" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()
    assert "| optimizer=adam | 0.3 ± 0.1414 | 0.7 ± 0.1414 | 0.55 ± 0.07071 |" in md  # rAU t0, t1, dominated
    assert "| optimizer=adam | inter_task | -0.1 ± 0 | 0.3 ± 0 |" in md


def test_conflict_stats_fall_back_to_metrics_jsonl(tmp_path):
    job = write_run(tmp_path, "0", {"t0/mse": 1.0}, tasks=("t0",))
    records = [{"type": "step", "conflict/inter_task/cos/all/mean": 9.0},
               {"type": "epoch", "conflict/inter_task/cos/all/mean": -0.2, "conflict/inter_task/cos/encoder.0/mean": 5.0},
               {"type": "epoch", "conflict/inter_task/cos/all/mean": 0.4, "conflict/inter_sample/mag_sim/all/mean": 0.8}]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run,) = load_runs([job])
    assert conflict_stats(run) == {"inter_task": {"cos": pytest.approx(0.1)}, "inter_sample": {"mag_sim": 0.8}}


# ------------------------------------------------------------------------------------------------ CLI and W&B


def test_missing_or_empty_dir_exits_2_with_a_message(tmp_path, capsys):
    assert run_main(tmp_path / "nope") == 2
    assert f"error: '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert run_main(tmp_path / "empty") == 2
    assert f"error: no runs in '{tmp_path / 'empty'}'" in capsys.readouterr().err
    write_run(tmp_path / "sweep", "0", {"t0/mse": 1.0}, tasks=("t0",))
    assert run_main(tmp_path / "sweep", tmp_path / "empty") == 2  # every given folder must hold runs
    assert run_main(tmp_path / "sweep", "--pareto-ref", "optimizer=rmsprop") == 2
    assert "matches no run; values seen: {'optimizer': ['adam']}" in capsys.readouterr().err
    assert not (tmp_path / "sweep" / "report").exists()


def test_log_wandb_is_a_noop_when_disabled(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = tmp_path / "sweep"
    write_run(sweep, "0", {"t0/mse": 1.0}, tasks=("t0",))
    assert run_main(sweep, "--log-wandb", "--no-plots") == 0
    assert "W&B logging skipped (WANDB_MODE=disabled)" in capsys.readouterr().out
    assert not (sweep / "report" / "wandb").exists()
    with pytest.raises(ReportError, match="needs the W&B API, but WANDB_MODE=disabled"):
        pull_runs("me/proj")


def test_log_wandb_with_an_invalid_mode_does_not_fail_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "bogus")
    sweep = tmp_path / "sweep"
    write_run(sweep, "0", {"t0/mse": 1.0}, tasks=("t0",))
    assert run_main(sweep, "--log-wandb", "--no-plots") == 0
    out = capsys.readouterr().out
    failure = out.split("W&B logging failed (")[1]  # the mode check's own wording belongs to run_logger
    assert "'bogus' is invalid" in failure.splitlines()[0] and "the local report is complete" in out
    assert (sweep / "report" / "report.md").is_file()


def test_wandb_runs_become_run_records():
    class FakeRun:
        id, name, state, path = "abc", "3_combiner=pcgrad,optimizer.lr=0.01,seed=1", "finished", ["me", "proj", "abc"]
        config = {"seed": 1, "mode": {"name": "mtl"}, "dataset": {"name": "synthetic"}, "optimizer": {"lr": 0.01},
                  "hydra_choices": {"combiner": "pcgrad", "optimizer": "adam"}, "trainer": {"selection": {"rule": "last"}}}
        summary = {"selected/test/t0/mse": 1.5, "selected/test/t0/r2": 0.25, "selected/val/t0/mse": 1.0, "epoch": 3}

    run = run_from_wandb(FakeRun())
    assert run.completed and run.seed == 1 and run.tasks == ["t0"] and run.selection_rule() == "last"
    assert run.task_metrics("test") == {"test/t0/mse": 1.5, "test/t0/r2": 0.25}
    assert run.directions == {"t0/mse": False, "t0/r2": True}  # from the metric classes
    assert lookup(run, "combiner") == "pcgrad" and lookup(run, "optimizer.lr") == "0.01"
    FakeRun.state = "crashed"
    assert run_from_wandb(FakeRun()).status == "crashed"


# ------------------------------------------------------------------------------------------------------ end to end


def test_end_to_end_real_multirun_and_report(tmp_path):
    """One real multirun (1 epoch, tiny data): STL of t0 and two auxiliary-learning methods with target t0, 2 seeds
    each; then ``python -m mtl_bench.report``.  Its numbers must equal the summaries', its Δm a hand computation."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    tiny = ["logger=none", "trainer.device=cpu", "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.batch_size=32",
            "dataset.n_train=96", "dataset.n_val=32", "dataset.n_test=32"]
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "mtl_bench.train", "-m", "aux_method=stl,ew,aux_weight", "seed=0,1", "aux_targets=[t0]",
                        *tiny, f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "mtl_bench.report", str(sweep), "--val", "--scatter", "t0/mse,t1/mse"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = sweep / "report"
    for name in ("report.md", "report.csv", "runs.csv", "bars_test_t0.png", "bars_val_t1.png", "pareto_test_t0_mse_vs_t1_mse.png"):
        assert (out / name).is_file(), name
    assert "baselines = the 2 completed STL run(s) among the given folders" in r.stdout

    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(summaries) == 6 and all(s["status"] == "completed" for s in summaries.values())
    stl = [s for s in summaries.values() if s["mode"] == "stl"]
    baseline = {m: statistics.mean(s["selected"][f"test/t0/{m}"] for s in stl) for m in ("mse", "mae", "r2")}
    runs = {Path(row["run"]).name: row for row in read_csv(out / "runs.csv")}
    assert set(runs) == set(summaries)
    for name, s in summaries.items():
        if s["mode"] == "stl":
            assert runs[name]["group"] == "STL t0"  # the reference row
            continue
        for key in ("test/t0/mse", "test/t1/r2", "val/t1/mae"):
            assert float(runs[name][key]) == s["selected"][key]  # exact: written with full precision
        # Δm (per_metric) on the target t0 only: 100 · mean of (M − B)/|B| over mse, mae, r2 (sign flipped for r2)
        sel = s["selected"]
        rel = [(sel[f"test/t0/{m}"] - baseline[m]) / abs(baseline[m]) * (-1 if m == "r2" else 1) for m in ("mse", "mae", "r2")]
        assert float(runs[name]["test/delta_m"]) == pytest.approx(100 * statistics.mean(rel), rel=1e-9, abs=1e-9)
    reference, *groups = read_csv(out / "report.csv")
    assert (reference["group"], reference["role"], reference["n"]) == ("STL t0", "stl_reference", "2")  # shown, as the reference
    assert float(reference["test/t0/mse/mean"]) == pytest.approx(baseline["mse"], rel=1e-12)
    assert len(groups) == 2 and all(row["role"] == "method" for row in groups)
    for row in groups:
        members = [s for s in summaries.values() if row["group"].startswith(f"aux_method={s['aux_method']},")]
        assert row["n"] == "2" and len(members) == 2 and {s["seed"] for s in members} == {0, 1}
        for key in ("test/t0/mse", "test/t1/mse", "val/t0/r2"):
            values = [s["selected"][key] for s in members]
            assert float(row[f"{key}/mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
            assert float(row[f"{key}/std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert float(row["test/delta_m/mean"]) == pytest.approx(statistics.mean(float(runs[n]["test/delta_m"]) for n, s in summaries.items()
                                                                                if s in members), rel=1e-12)
