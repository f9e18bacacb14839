"""Report: running and stopped jobs, exploded runs, plain labels, the default loss transform, STL reference rows.

Fake job folders as in ``tests/test_report.py`` (its helpers are reused); each test builds a few of them.
"""

from __future__ import annotations

import fcntl
import json
import math
import statistics
from pathlib import Path

import pytest

import mtl_bench.report.plots as plots
from mtl_bench.report.build import ReportOptions, build_report
from mtl_bench.report.exploded import find_exploded
from mtl_bench.report.runs import load_runs
from mtl_bench.runlock import LOCK_NAME
from tests.test_report import read_csv, run_main, write_run

POINT = {"t0/mse": 1.0, "t0/r2": 0.5, "t1/mse": 2.0, "t1/r2": 0.4}


def patch_summary(job: Path, **fields) -> None:
    summary = json.loads((job / "summary.json").read_text())
    summary.update(fields)
    (job / "summary.json").write_text(json.dumps(summary))


def set_overrides(job: Path, overrides: list[str]) -> None:
    """Overrides as Hydra writes them (``.hydra/overrides.yaml`` and the summary's copy, which the report prefers)."""
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    summary = json.loads((job / "summary.json").read_text())
    summary["hydra"]["overrides"] = overrides
    (job / "summary.json").write_text(json.dumps(summary))


def loss_run(root: Path, name: str, losses: dict[str, float], first: dict[str, float] | None, **kw) -> Path:
    """A completed run whose selected test and val task losses are ``losses`` and whose metrics.jsonl holds one step
    record and the first epoch's validation losses ``first`` (no metrics.jsonl when ``None``)."""
    job = write_run(root, name, {**POINT, **{k.replace("/loss", "/mse"): v for k, v in losses.items()}}, **kw)
    summary = json.loads((job / "summary.json").read_text())
    for split in ("test", "val"):
        summary["selected"].update({f"{split}/{k}": v for k, v in losses.items()})
    summary["final"] = summary["selected"]
    (job / "summary.json").write_text(json.dumps(summary))
    if first is not None:
        records = [{"type": "step", "global_step": 1, "train/t0/loss": 5.0},
                   {"type": "epoch", "epoch": 1, **{f"val/{k}": v for k, v in first.items()}},
                   {"type": "epoch", "epoch": 2, **{f"val/{k}": v / 2 for k, v in first.items()}}]
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return job


# ----------------------------------------------------------------------------------- running and stopped jobs


def test_a_job_whose_folder_a_live_process_owns_is_running_not_failed(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0_ok", POINT)
    live = sweep / "1_live"  # started, no summary yet, its lock held (by this process, through another open file)
    (live / ".hydra").mkdir(parents=True)
    (live / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (live / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "node7", "started": 0}))
    resumed = write_run(sweep, "2_resumed", {}, status="preempted", seed=2, error="stopped by SIGTERM")
    (resumed / LOCK_NAME).write_text(json.dumps({"pid": 4343, "host": "node8", "started": 0}))
    crashed = sweep / "3_crashed"  # no summary, a lock file left behind but nobody holds it: failed
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "gone", "started": 0}))
    with (live / LOCK_NAME).open() as a, (resumed / LOCK_NAME).open() as b:
        fcntl.flock(a.fileno(), fcntl.LOCK_EX)
        fcntl.flock(b.fileno(), fcntl.LOCK_EX)
        assert run_main(sweep, "--no-plots") == 0
    statuses = {Path(r["run"]).name: (r["status"], r["error"]) for r in read_csv(sweep / "report" / "runs.csv")}
    assert statuses["1_live"][0] == "running" and "pid 4242 on node7" in statuses["1_live"][1]
    assert statuses["2_resumed"][0] == "running"  # its old preempted summary is an earlier attempt's
    assert statuses["3_crashed"][0] == "no_summary"
    md = (sweep / "report" / "report.md").read_text()
    running = md.split("## Running jobs (2)")[1].split("##")[0]
    assert "sweep/1_live" in running and "sweep/2_resumed" in running
    failed = md.split("## Failed jobs (1)")[1]
    assert "sweep/3_crashed | no_summary" in failed and "1_live" not in failed
    assert "2 running, 1 failed job(s)" in capsys.readouterr().out


def test_preempted_and_interrupted_runs_are_resumable_not_failures(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0_ok", POINT)
    write_run(sweep, "1_pre", {}, status="preempted", seed=1, error="preempted by SIGTERM at step 40; resume from last.pt")
    write_run(sweep, "2_int", {}, status="interrupted", seed=2, error="interrupted by SIGINT at step 7")
    write_run(sweep, "3_div", {}, status="diverged", seed=3, error="non-finite loss nan for task 't1' at global step 9")
    report = build_report(load_runs([sweep]), ReportOptions())
    assert [r.name for r in report.stopped] == ["1_pre", "2_int"] and [r.name for r in report.failed] == ["3_div"]
    assert run_main(sweep, "--no-plots") == 0
    md = (sweep / "report" / "report.md").read_text()
    stopped = md.split("## Stopped jobs, resumable (2)")[1].split("## Failed jobs")[0]
    assert "| sweep/1_pre | preempted | preempted by SIGTERM at step 40; resume from last.pt |" in stopped
    assert "| sweep/2_int | interrupted | interrupted by SIGINT at step 7 |" in stopped
    failed = md.split("## Failed jobs (1)")[1]
    assert "| sweep/3_div | diverged | non-finite loss nan for task 't1' at global step 9 |" in failed
    assert "1_pre" not in failed and "2_int" not in failed


# ------------------------------------------------------------------------------------------------ exploded runs


def _exploding_sweep(root: Path) -> Path:
    """ew seeds 0, 1 healthy (t1 loss 2, 3), seed 2 exploded (t1 loss 4e8); pcgrad seeds 0, 1 healthy; first val
    losses about 10 everywhere (the median scale)."""
    sweep = root / "sweep"
    for seed, t1 in enumerate((2.0, 3.0, 4e8)):
        loss_run(sweep, f"{seed}_ew", {"t0/loss": 1.0, "t1/loss": t1}, {"t0/loss": 9.0, "t1/loss": 10.0 + seed}, seed=seed)
    for seed, t1 in enumerate((2.5, 3.5)):
        loss_run(sweep, f"{3 + seed}_pcgrad", {"t0/loss": 1.0, "t1/loss": t1}, {"t0/loss": 9.0, "t1/loss": 12.0},
                 seed=seed, combiner="pcgrad")
    return sweep


def test_an_exploded_run_is_flagged_and_left_out_of_means_delta_m_and_pareto(tmp_path, capsys):
    sweep = _exploding_sweep(tmp_path)
    stl = tmp_path / "stl"
    write_run(stl, "0_t0", {"t0/mse": 2.0, "t0/r2": 0.5}, mode="stl", tasks=("t0",))
    write_run(stl, "1_t1", {"t1/mse": 4.0, "t1/r2": 0.2}, mode="stl", tasks=("t1",))
    assert run_main(sweep, stl, "--no-plots", "--include-loss") == 0
    rows = {r["group"]: r for r in read_csv(sweep / "report" / "report.csv")}
    ew = rows["combiner=ew"]
    assert (ew["n"], ew["n_exploded"], ew["seeds"]) == ("2", "1", "0;1")
    assert float(ew["test/t1/loss/mean"]) == 2.5 and float(ew["test/t1/loss/std"]) == pytest.approx(math.sqrt(0.5))
    runs = {Path(r["run"]).name: r for r in read_csv(sweep / "report" / "runs.csv")}
    assert runs["2_ew"]["exploded"] == "True" and runs["0_ew"]["exploded"] == "False"
    # scale: median of the first val/t1/loss of the five runs (10, 11, 12, 12, 12) = 12
    assert runs["2_ew"]["exploded_reason"].startswith("test/t1/loss = 4e+08 > 100 × 12 (median first val/t1/loss of 5 run(s))")
    assert float(runs["2_ew"]["test/delta_m"]) > 1e9  # its own Δm is still shown ...
    per_run = [float(runs[n]["test/delta_m"]) for n in ("0_ew", "1_ew")]
    assert float(ew["test/delta_m/mean"]) == pytest.approx(statistics.mean(per_run))  # ... but not averaged
    assert ew["pareto_n"] == "2" and runs["2_ew"]["pareto_optimal"] == ""
    md = (sweep / "report" / "report.md").read_text()
    assert "| combiner=ew | 2 of 3, 1 exploded | 0,1 (exploded: 2) |" in md
    assert "## Exploded runs (1)" in md and "sweep/2_ew [combiner=ew]: test/t1/loss = 4e+08 > 100 × 12" in md
    out = capsys.readouterr().out
    assert "| combiner=ew | 2 of 3, 1 exploded |" in out
    assert "EXPLODED (left out of the means): sweep/2_ew [combiner=ew]: test/t1/loss = 4e+08" in out


def test_explode_factor_option_and_its_check(tmp_path, capsys):
    sweep = _exploding_sweep(tmp_path)
    assert run_main(sweep, "--no-plots", "--explode-factor", "1e9") == 0  # 4e8 < 1e9 × 12: not exploded
    assert [r["n_exploded"] for r in read_csv(sweep / "report" / "report.csv")] == ["0", "0"]
    assert run_main(sweep, "--no-plots", "--explode-factor", "0.5") == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --explode-factor must be a finite number > 1, got 0.5"]


def test_explosion_criterion_cases(tmp_path):
    # a run that did not learn (its loss stays near the first-epoch level) is not exploded, even though the others
    # end 500x lower: the scale is the first evaluation, not the other runs' final losses
    a = tmp_path / "a"
    for seed, t0 in enumerate((0.01, 0.01, 0.012, 5.0)):
        loss_run(a, f"{seed}", {"t0/loss": t0}, {"t0/loss": 2.0}, seed=seed, tasks=("t0",))
    assert find_exploded(load_runs([a])) == {}
    # a run alone in its pool is caught by its own first evaluation when it explodes later
    b = tmp_path / "b"
    job = loss_run(b, "0", {"t0/loss": 300.0}, {"t0/loss": 2.0}, tasks=("t0",))
    assert find_exploded(load_runs([b])) == {str(job): "test/t0/loss = 300 > 100 × 2 (median first val/t0/loss of 1 run(s))"}
    # without metrics.jsonl: the median of the same key over >= 3 runs of the pool; 2 runs are too few to judge
    c = tmp_path / "c"
    jobs = [loss_run(c, f"{i}", {"t0/loss": v}, None, seed=i, tasks=("t0",)) for i, v in enumerate((1.0, 1e5))]
    assert find_exploded(load_runs([c])) == {}
    loss_run(c, "2", {"t0/loss": 1.2}, None, seed=2, tasks=("t0",))
    assert find_exploded(load_runs([c])) == {str(jobs[1]): "test/t0/loss = 1e+05 > 100 × 1.2 (median test/t0/loss of 3 run(s))"}
    # a non-finite target loss is exploded; an auxiliary task's loss is never judged
    d = tmp_path / "d"
    inf = loss_run(d, "0", {"t0/loss": math.inf}, {"t0/loss": 2.0}, tasks=("t0",))
    loss_run(d, "1", {"t0/loss": 1.0, "t1/loss": 1e9}, {"t0/loss": 2.0, "t1/loss": 2.0}, seed=1, targets=["t0"])
    assert find_exploded(load_runs([d])) == {str(inf): "test/t0/loss is not finite (inf)"}


def test_runs_on_differently_scaled_data_are_not_compared(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(3):
        loss_run(sweep, f"{seed}_plain", {"t0/loss": 1.0}, {"t0/loss": 2.0}, seed=seed, tasks=("t0",))
    scaled = loss_run(sweep, "3_scaled", {"t0/loss": 1e4}, {"t0/loss": 2e4}, tasks=("t0",))  # labels x100: MSE x1e4
    set_overrides(scaled, ["combiner=ew", "optimizer=adam", "seed=0", "dataset.label_scales=[100.0]"])
    assert find_exploded(load_runs([sweep])) == {}


# -------------------------------------------------------------------------------------- labels and STL rows


def test_group_labels_are_plain_outside_markdown(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    for i, (source, extra) in enumerate([(r"stl\:seg", "x"), ("mtl", "a|b")]):
        job = write_run(sweep, f"{i}", POINT, seed=0)
        set_overrides(job, ["combiner=ew", f"mode.source={source}", f"+tag_value={extra}", "seed=0"])
    figures = []
    monkeypatch.setattr(plots.Figure, "savefig", lambda fig, path, **kw: figures.append((Path(path).name, fig)))
    assert run_main(sweep) == 0
    labels = [r["group"] for r in read_csv(sweep / "report" / "report.csv")]
    assert labels == ["mode.source=stl:seg, tag_value=x", "mode.source=mtl, tag_value=a|b"]  # CSV: plain
    out = capsys.readouterr().out
    assert "| mode.source=stl:seg, tag_value=x |" in out and "\\:" not in out
    md = (sweep / "report" / "report.md").read_text()
    assert "| mode.source=stl:seg, tag_value=x |" in md and "| mode.source=mtl, tag_value=a\\|b |" in md  # only | escaped
    ticks = [t.get_text() for name, fig in figures if name == "bars_test_t0.png" for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["stl:seg / x", "mtl / a|b"]


def test_the_default_loss_transform_is_labelled_none(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (transform, seed) in enumerate([("none", 0), ("t1_power4", 0), (None, 1)]):
        job = write_run(sweep, f"{i}", POINT, seed=seed)
        summary = json.loads((job / "summary.json").read_text())
        summary["choices"]["loss_transforms"] = transform or "none"  # what the trainer records for the default
        (job / "summary.json").write_text(json.dumps(summary))
        set_overrides(job, ["combiner=ew", f"seed={seed}", *([f"loss_transforms={transform}"] if transform else [])])
    report = build_report(load_runs([sweep]), ReportOptions())
    assert [(r.group.label, len(r.group.runs)) for r in report.rows] == [("loss_transforms=none", 2),
                                                                        ("loss_transforms=t1_power4", 1)]


def test_stl_runs_of_a_sweep_are_reference_rows_and_reference_lines(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"  # like experiment=forkmerge_synthetic_quick: the STL jobs inside the sweep
    write_run(sweep, "0_stl", {"t0/mse": 1.8, "t0/r2": 0.5}, mode="stl", tasks=("t0",), seed=0)
    write_run(sweep, "1_stl", {"t0/mse": 2.2, "t0/r2": 0.5}, mode="stl", tasks=("t0",), seed=1)
    write_run(sweep, "2_ew", {"t0/mse": 1.0, "t0/r2": 0.6, "t1/mse": 5.0}, combiner="ew", mode="aux", targets=["t0"])
    write_run(sweep, "3_gcs", {"t0/mse": 3.0, "t0/r2": 0.4, "t1/mse": 5.0}, combiner="gcs", mode="aux", targets=["t0"])
    figures = {}
    monkeypatch.setattr(plots.Figure, "savefig", lambda fig, path, **kw: figures.setdefault(Path(path).name, fig))
    assert run_main(sweep, "--scatter", "t0/mse,t1/mse") == 0
    rows = {r["group"]: r for r in read_csv(sweep / "report" / "report.csv")}
    assert list(rows) == ["STL t0", "combiner=ew", "combiner=gcs"]
    stl = rows["STL t0"]
    assert (stl["role"], stl["n"], stl["seeds"]) == ("stl_reference", "2", "0;1")
    assert float(stl["test/t0/mse/mean"]) == pytest.approx(2.0) and stl["test/t1/mse/mean"] == ""
    assert stl["test/delta_m/mean"] == "" and stl["pareto_optimal"] == ""
    # Δm keeps the STL runs as baselines: t0/mse (1−2)/2 = −0.5, t0/r2 −(0.6−0.5)/0.5 = −0.2
    assert float(rows["combiner=ew"]["test/delta_m/mean"]) == pytest.approx(100 * (-0.5 - 0.2) / 2)
    # Pareto among the methods only (ew dominates gcs on t0/mse, t0/r2); the STL runs are not in the pool
    assert (rows["combiner=ew"]["pareto_optimal"], rows["combiner=gcs"]["pareto_optimal"]) == ("1", "0")
    md = (sweep / "report" / "report.md").read_text()
    assert "| STL t0 (reference) | 2 | 0,1 | 2 ± 0.2828 | 0.5 ± 0 |  | baseline | - |" in md
    bars = figures["bars_test_t0.png"].axes[0]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["ew", "gcs"]  # methods as bars ...
    (line,) = [ln for ln in bars.get_lines() if ln.get_label() == "STL t0 (reference)"]  # ... the STL mean as a line
    assert list(line.get_ydata()) == pytest.approx([2.0, 2.0])
    scatter = figures["pareto_test_t0_mse_vs_t1_mse.png"].axes[0]
    (vline,) = [ln for ln in scatter.get_lines() if ln.get_label() == "STL t0 (reference)"]  # x = t0/mse: a vertical line
    assert list(vline.get_xdata()) == pytest.approx([2.0, 2.0])
