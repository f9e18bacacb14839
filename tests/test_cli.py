"""The command line as users run it (subprocesses): multiruns, STL sweeps, W&B offline runs, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "trainer.epochs=1", "trainer.max_steps_per_epoch=3"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtl_bench.train", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").exists())


def test_seed_multirun_gives_one_dir_summary_and_wandb_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli("-m", "seed=0,1", *SMOKE, f"hydra.sweep.dir={sweep}", env={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr
    dirs = jobs(sweep)
    assert [d.name for d in dirs] == [
        "0_experiment=smoke,seed=0,trainer.epochs=1,trainer.max_steps_per_epoch=3",
        "1_experiment=smoke,seed=1,trainer.epochs=1,trainer.max_steps_per_epoch=3",
    ]
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    assert [s["seed"] for s in summaries] == [0, 1]
    ids = set()
    for d, s in zip(dirs, summaries):
        offline = list((d / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
        assert s["wandb"]["group"] == f"smoke/{sweep.name}" and s["wandb"]["job_type"] == "mtl"
        assert s["wandb"]["name"].startswith(d.name.split("_")[0] + "_experiment=smoke")
        ids.add(s["wandb"]["id"])
    assert len(ids) == 2  # never two jobs in one W&B run


def test_stl_multirun_over_tasks_yields_one_baseline_per_task(tmp_path):
    sweep = tmp_path / "stl"
    # "+experiment=" (the appending spelling many Hydra projects document) selects the preset too
    smoke = ["+experiment=smoke" if a == "experiment=smoke" else a for a in SMOKE]
    r = cli("-m", "mode=stl", "mode.task=t0,t1", *smoke, "logger=none", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    summaries = [json.loads((d / "summary.json").read_text()) for d in jobs(sweep)]
    assert [(s["mode"], s["tasks"]) for s in summaries] == [("stl", ["t0"]), ("stl", ["t1"])]


def test_unknown_optimizer_exits_nonzero_and_lists_the_choices(tmp_path):
    r = cli("optimizer=nonexistent", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Could not find 'optimizer/nonexistent'" in out
    listed = out.split("Available options in 'optimizer':")[1].split("Config search path")[0].split()
    assert listed == sorted(p.stem for p in (REPO / "configs" / "optimizer").glob("*.yaml"))


def test_invalid_value_is_one_line_without_traceback(tmp_path):
    r = cli("dataset.correlation=1.5", "logger=none", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    out = r.stdout + r.stderr
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith("dataset.correlation must lie in [-1, 1], got 1.5")
    assert "Traceback" not in out
    assert not (tmp_path / "metrics.jsonl").exists()  # failed before training started


def test_diverging_run_names_step_and_task_and_exits_nonzero(tmp_path):
    r = cli(*SMOKE, "optimizer=sgd", "optimizer.lr=1e8", "logger=none", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 1
    assert "non-finite loss" in r.stdout + r.stderr and "at global step 2 (epoch 1)" in r.stdout + r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["failed_step"] == 2 and summary["failed_task"] in ("t0", "t1")


def test_a_failing_job_does_not_lose_the_other_jobs(tmp_path):
    sweep = tmp_path / "mixed"
    r = cli("-m", "optimizer.lr=-1,0.001", *SMOKE, "logger=none", f"hydra.sweep.dir={sweep}")
    assert r.returncode != 0
    assert "optimizer.lr must be positive" in r.stdout + r.stderr
    done = [d for d in jobs(sweep) if (d / "summary.json").exists()]
    assert [d.name.split("_")[0] for d in done] == ["1"]


def test_a_method_undefined_for_the_task_count_is_recorded_and_the_sweep_goes_on(tmp_path):
    """Krum needs ≥ 3 tasks: in a sweep over combiners on 2 tasks its job says so in summary.json and the sweep
    succeeds; run alone, it is the one-line error with exit code 2."""
    sweep = tmp_path / "glob"
    r = cli("-m", "combiner=krum,ew", *SMOKE, "logger=none", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    summaries = [json.loads((d / "summary.json").read_text()) for d in jobs(sweep)]
    assert [s["status"] for s in summaries] == ["not_applicable", "completed"]
    assert "needs at least max(n_byzantine + 3, n_selected) = 3 tasks, got 2" in summaries[0]["error"]
    alone = cli("combiner=krum", *SMOKE, "logger=none", f"hydra.run.dir={tmp_path / 'alone'}")
    assert alone.returncode == 2 and "Traceback" not in alone.stdout + alone.stderr
    assert "got 2" in alone.stdout + alone.stderr


def test_elich_optimizers_small_grid_records_optimizer_lr_and_combiner(tmp_path):
    sweep = tmp_path / "elich"
    r = cli("-m", "+experiment=elich_optimizers", "optimizer=adam,signsgd", "combiner=ew", "optimizer.lr=0.01", "seed=0",
            "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "dataset.n_train=256", "dataset.n_val=64", "dataset.n_test=64",
            "logger=none", f"paths.output_root={tmp_path}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    summaries = [json.loads((d / "summary.json").read_text()) for d in jobs(sweep)]
    got = [(s["optimizer"]["choice"], s["optimizer"]["lr"], s["optimizer"]["weight_decay"], s["combiner"]["name"]) for s in summaries]
    assert got == [("adam", 0.01, 1e-5, "ew"), ("signsgd", 0.01, 1e-5, "ew")]
    # no STL baselines under this output root: Δm is off with a reason and selection falls back to val/loss
    assert all(s["delta_m"]["selection_fallback"] == {"requested": "val/delta_m", "used": "val/loss"} for s in summaries)
