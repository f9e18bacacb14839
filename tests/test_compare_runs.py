"""scripts/compare_runs.py: the before/after check of refactorings finds every changed result and nothing else."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "scripts" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def write_run(root: Path, stamp: str, summary: dict, records: list[dict]) -> Path:
    run = root / "study" / "multiruns" / stamp / "0_seed=0"
    run.mkdir(parents=True)
    full = {**summary, "output_dir": str(run), "wall_time_s": float(len(stamp))}
    (run / "summary.json").write_text(json.dumps(full))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


SUMMARY = {"selected": {"val/loss": 0.25, "test/t0/mse": 1.5}, "delta_m": {"stl_runs": []}}
RECORDS = [{"type": "epoch", "time": 0.5, "epoch": 1, "val/loss": 0.25, "time/epoch_s": 0.1}]


def test_timestamps_roots_and_times_are_not_differences(tmp_path):
    write_run(tmp_path / "a", "2026-12-07_22-36-06-489916", SUMMARY, RECORDS)
    later = [{**RECORDS[0], "time": 9.0, "time/epoch_s": 3.0}]
    write_run(tmp_path / "b", "2026-12-08_01-02-03-000001", SUMMARY, later)
    lines, n = compare_runs.compare_trees(tmp_path / "a", tmp_path / "b")
    assert (lines, n) == ([], 1)


def test_the_run_s_surroundings_are_not_results(tmp_path):
    first = {**SUMMARY, "threads": {"intra_op": 2}, "delta_m": {"stl_runs": [], "source": {"skipped": []}}}
    write_run(tmp_path / "a", "2026-12-07_22-36-06-489916", first, RECORDS)
    moved = {**SUMMARY, "threads": {"intra_op": 1}, "delta_m": {"stl_runs": [], "source": {"skipped": [["x", "mtl"]]}}}
    write_run(tmp_path / "b", "2026-12-07_22-36-06-489916", moved, RECORDS)
    assert compare_runs.compare_trees(tmp_path / "a", tmp_path / "b")[0] == []
    lines, _ = compare_runs.compare_trees(tmp_path / "a", tmp_path / "b", ignore=())
    assert len(lines) == 2 and lines[1].endswith("summary.threads.intra_op: 2 -> 1")
    assert compare_runs.compare_trees(tmp_path / "a", tmp_path / "b", ignore=("delta_m",))[0] == [
        "study/multiruns/<time>/0_seed=0: summary.threads.intra_op: 2 -> 1"]


def test_a_changed_result_is_reported_with_its_place(tmp_path):
    write_run(tmp_path / "a", "2026-12-07_22-36-06-489916", SUMMARY, RECORDS)
    changed = {**SUMMARY, "selected": {"val/loss": 0.25, "test/t0/mse": 1.5 + 2**-40}}
    write_run(tmp_path / "b", "2026-12-07_22-36-06-489917", changed, [{**RECORDS[0], "val/loss": 0.26}])
    lines, _ = compare_runs.compare_trees(tmp_path / "a", tmp_path / "b")
    assert len(lines) == 2
    assert lines[0].startswith("study/multiruns/<time>/0_seed=0: summary.selected.test/t0/mse: 1.5 -> ")
    assert "metrics.jsonl[0].val/loss: 0.25 -> 0.26" in lines[1]


def test_missing_runs_records_and_new_keys(tmp_path):
    write_run(tmp_path / "a", "2026-12-07_22-36-06-489916", SUMMARY, RECORDS * 2)
    write_run(tmp_path / "b", "2026-12-07_22-36-06-489916", {**SUMMARY, "extra": 1}, RECORDS)
    lines, _ = compare_runs.compare_trees(tmp_path / "a", tmp_path / "b")
    assert any(line.endswith("summary.extra: only after") for line in lines)
    assert any("has 2 records before, 1 after" in line for line in lines)
    lines, _ = compare_runs.compare_trees(tmp_path / "a", tmp_path / "b", allow_new=True)
    assert not any("only after" in line for line in lines)
    (tmp_path / "a" / "other" / "runs" / "x").mkdir(parents=True)
    (tmp_path / "a" / "other" / "runs" / "x" / "summary.json").write_text("{}")
    assert "other/runs/x: only before" in compare_runs.compare_trees(tmp_path / "a", tmp_path / "b")[0]


def test_main_exit_status(tmp_path, capsys):
    write_run(tmp_path / "a", "2026-12-07_22-36-06-489916", SUMMARY, RECORDS)
    write_run(tmp_path / "b", "2026-12-07_22-36-06-489916", SUMMARY, RECORDS)
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "1 run(s) compared, 0 difference(s)" in capsys.readouterr().out
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
