"""The study grids' sweeper (hydra_plugins/mtl_bench_sweeper): one legality composition per swept value, all up front."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from hydra_plugins.mtl_bench_sweeper.grid_sweeper import GridSweeper, jobs_with_new_values

ROOT = Path(__file__).resolve().parents[1]


def test_jobs_with_new_values_keeps_the_first_job_of_every_value_in_order():
    jobs = [["a=1", "s=0"], ["a=1", "s=1"], ["a=2", "s=0"], ["a=2", "s=1"], ["a=3", "s=1"]]
    assert jobs_with_new_values(jobs) == [["a=1", "s=0"], ["a=1", "s=1"], ["a=2", "s=0"], ["a=3", "s=1"]]
    assert jobs_with_new_values([]) == []


class _Loader:
    def __init__(self) -> None:
        self.composed: list[list[str]] = []

    def load_sweep_config(self, master_config, sweep_overrides):  # noqa: ARG002 - Hydra's signature
        self.composed.append(sweep_overrides)


def _sweeper(batches):
    # not GridSweeper(...): Hydra's plugin scan (run by any in-process Hydra app of an earlier test) re-executes
    # hydra's basic_sweeper module, after which BasicSweeper.__init__'s super(BasicSweeper, self) no longer matches
    # the BasicSweeper this module's GridSweeper was built on; the state __init__ sets is set here instead
    sweeper = GridSweeper.__new__(GridSweeper)
    sweeper.batch_index, sweeper.max_batch_size = 0, 2
    loader = _Loader()
    sweeper.hydra_context = SimpleNamespace(config_loader=loader)
    sweeper.config = SimpleNamespace()
    sweeper.overrides = batches
    return sweeper, loader


def test_the_first_batch_checks_one_job_per_value_of_the_whole_grid_and_later_batches_none():
    grid = [[f"arm={a}", f"seed={s}"] for a in ("x", "y", "z") for s in (0, 1, 2)]  # 9 jobs, 6 values
    batches = [grid[i:i + 2] for i in range(0, len(grid), 2)]
    sweeper, loader = _sweeper(batches)
    sweeper.validate_batch_is_legal(sweeper.get_job_batch())
    assert loader.composed == [["arm=x", "seed=0"], ["arm=x", "seed=1"], ["arm=x", "seed=2"], ["arm=y", "seed=0"],
                               ["arm=z", "seed=0"]]
    while not sweeper.is_done():
        sweeper.validate_batch_is_legal(sweeper.get_job_batch())
    assert len(loader.composed) == 5  # nothing more after the first batch


def test_hydra_discovers_it_and_every_study_grid_uses_it():
    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert f"{GridSweeper.__module__}.{GridSweeper.__name__}" in found
    grids = sorted((ROOT / "configs" / "hydra" / "sweeper").glob("*.yaml"))
    assert len(grids) > 10
    for path in grids:
        if path.stem != "grid":
            assert "\n  - grid\n" in path.read_text(), path.name


def test_a_bad_value_late_in_the_grid_stops_the_sweep_before_its_first_job(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mtl_bench.train", "experiment=dibs_transforms_quick", "combiner=ew,no_such_combiner",
           "loss_transforms=none", "seed=0", f"hydra.sweep.dir={tmp_path}", "hydra/launcher=basic"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no_such_combiner" in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("summary.json"))  # the ew job, first in the grid, never ran
