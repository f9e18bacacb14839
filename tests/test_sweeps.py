"""Whole studies as sweeps: the study presets and their grids, the launchers (joblib, SLURM), the Optuna search,
and the output folder of a requeued SLURM job (docs/sweeps.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtl_bench.metrics.delta_m import delta_m, metrics_for_split
from tests.conftest import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(CONFIG_DIR)
# the studies `make quick-studies` runs: the Makefile's STUDIES line is the one list
STUDIES = re.search(r"^STUDIES\s*:=(.*)$", (Path(__file__).resolve().parents[1] / "Makefile").read_text(), re.M).group(1).split()
# Hydra 1.3's automatic schema matching of configs/hydra/launcher/submitit_slurm.yaml (see that file)
DEPRECATED_SCHEMA_MATCH = "ignore:(?s).*is validated against ConfigStore schema with the same name:UserWarning"


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The composed config *with* its ``hydra`` node (what ``--cfg all`` prints); ``${hydra:...}`` resolves."""
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    return cfg


def grid_jobs(cfg: DictConfig, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``hydra.sweeper.params`` (+ command-line sweeps), in launch order."""
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *extra])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtl_bench.train", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), **(env or {})},
    )


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def summaries(sweep: Path) -> list[dict]:
    return [json.loads((d / "summary.json").read_text()) for d in job_dirs(sweep)]


# --------------------------------------------------------------------------------------------- presets and grids


def documented_grid_sizes() -> dict[str, int]:
    """``| `preset` | grid | jobs | ...`` rows of the table in docs/sweeps.md."""
    text = (REPO / "docs" / "sweeps.md").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `(\w+)` \|[^|\n]*\| (\d+) \|", text, re.M)}


def grid_presets() -> list[str]:
    """Every experiment preset whose grid is a sweeper config (configs/hydra/sweeper/<preset>.yaml; ``grid.yaml`` is
    the sweeper they all extend, not a preset)."""
    return sorted(p.stem for p in (CONFIGS / "hydra" / "sweeper").glob("*.yaml") if p.stem != "grid")


def test_every_study_has_a_full_and_a_quick_preset_with_its_own_grid():
    for study in STUDIES:
        for name in (study, f"{study}_quick"):
            assert (CONFIGS / "experiment" / f"{name}.yaml").is_file(), name
            assert name in grid_presets(), f"configs/hydra/sweeper/{name}.yaml missing"


@pytest.mark.parametrize("study", STUDIES)
def test_quick_preset_reuses_the_full_one_with_a_smaller_grid(study):
    quick_yaml = yaml.safe_load((CONFIGS / "experiment" / f"{study}_quick.yaml").read_text())
    assert quick_yaml["defaults"][:2] == [study, {"override /hydra/sweeper": f"{study}_quick"}]
    full = compose_with_hydra([f"experiment={study}"])
    quick = compose_with_hydra([f"experiment={study}_quick"])
    assert quick.experiment_name == f"{study}_quick" and full.experiment_name == study
    assert quick.hydra.mode == full.hydra.mode == RunMode.MULTIRUN
    # outputs/<name>_quick/multiruns/<stamp>: the sweep folder follows experiment_name
    assert quick.hydra.sweep.dir.startswith(f"{quick.paths.output_root}/{study}_quick/multiruns/")
    assert quick.trainer.num_threads == 1
    assert list(quick.tags) == [*full.tags, "quick"]
    n_quick, n_full = len(grid_jobs(quick)), len(grid_jobs(full))
    assert 2 <= n_quick <= n_full  # the same grid with shorter runs, or a smaller one
    seeds = {j for job in grid_jobs(quick) for j in job if j.startswith("seed=")}
    assert len(seeds) >= 3  # intervals over seeds need at least three (issue 14's budget: fewer, shorter runs instead)


@pytest.mark.parametrize("preset", grid_presets())
def test_grid_size_matches_the_docs(preset):
    documented = documented_grid_sizes()
    assert preset in documented, f"docs/sweeps.md has no row for `{preset}`"
    cfg = compose_with_hydra([f"experiment={preset}"])
    assert len(grid_jobs(cfg)) == documented[preset]
    # every job composes (the sweep values exist), e.g. the first and the last
    jobs = grid_jobs(cfg)
    for job in (jobs[0], jobs[-1]):
        job_cfg = compose_with_hydra([f"experiment={preset}", *job])
        OmegaConf.to_container(OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k != "hydra"]), resolve=True)


def test_elich_full_grid_is_the_papers():
    """Elich et al. (seeds-elich-adatask.md §1.3): 3 optimizers x 7 methods x 10 learning rates x 3 seeds."""
    cfg = compose_with_hydra(["experiment=elich_optimizers"])
    params = cfg.hydra.sweeper.params
    assert params["optimizer"].split(",") == ["adam", "sgd_momentum", "signsgd"]
    assert params["combiner"].split(",") == ["ew", "uw", "rlw", "pcgrad", "cagrad", "imtl_g", "aligned_mtl"]
    assert [float(v) for v in params["optimizer.lr"].split(",")] == [0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 5e-4, 1e-4, 5e-5, 1e-5]
    assert cfg.optimizer.weight_decay == 1e-5 and cfg.trainer.selection.metric == "val/delta_m"


def test_elich_quick_grid_runs_its_stl_baselines_first_and_reads_them_from_the_sweep():
    cfg = compose_with_hydra(["experiment=elich_optimizers_quick"])
    jobs = grid_jobs(cfg)
    arms = [job[0].split("=")[1] for job in jobs]
    n_stl = sum(a.startswith("stl_") for a in arms)
    assert n_stl == 72 and all(a.startswith("stl_") for a in arms[:n_stl])  # 2 tasks x 6 lrs x 2 datasets x 3 seeds, first
    assert cfg.hydra.sweeper.max_batch_size == 2 and n_stl % 2 == 0  # parallel launchers: STL batches finish first
    assert list(cfg.delta_m.stl_runs) == [cfg.hydra.sweep.dir] and cfg.delta_m.stl_select == "val_loss"
    grid = {0.0003, 0.001, 0.003, 0.01, 0.03, 0.1}  # every optimizer and the STL baselines: the same six lrs
    lrs: dict[tuple[str, str], set[float]] = {}
    # every arm's file, and one composed job per kind of arm at each end of the grid: the arm's keys win over the presets'
    for arm in sorted(set(arms)):
        spec = yaml.safe_load((CONFIGS / "elich_arm" / f"{arm}.yaml").read_text())
        kind, lr = re.fullmatch(r"(stl_t\d|adam_\w+?|sgd_momentum_\w+?|adatask_adam_\w+?)_lr(.+)", arm).groups()
        sets = {k.split("/")[-1]: v for d in spec["defaults"] for k, v in d.items()}
        said = f"stl_{spec['mode']['task']}" if sets.get("mode") == "stl" else f"{sets['optimizer']}_{sets['combiner']}"
        assert said == kind and float(spec["optimizer"]["lr"]) == float(lr), arm  # the file name says what it sets
        lrs.setdefault(kind, set()).add(float(lr))
    composed = [a for a in sorted(set(arms)) if a.endswith(("_lr3e-4", "_lr1e-1"))]
    assert len(composed) == 2 * 7
    named: dict[tuple[str, str], set[float]] = {}
    for arm in composed:
        job = compose_with_hydra(["experiment=elich_optimizers_quick", f"elich_arm={arm}"])
        choices = job.hydra.runtime.choices
        if arm.startswith("stl_"):
            task, lr = re.fullmatch(r"stl_(t\d)_lr(.+)", arm).groups()
            assert (job.mode.name, job.mode.task, choices.optimizer, job.optimizer.lr) == ("stl", task, "adam", float(lr))
            assert list(job.delta_m.stl_runs) == [] and job.trainer.selection.metric == "val/loss"
            named.setdefault(("stl", task), set()).add(job.optimizer.lr)
        else:  # <optimizer>_<combiner>_lr<lr>: the file name says what the arm sets
            optimizer, combiner, lr = re.fullmatch(r"(adam|sgd_momentum|adatask_adam)_(\w+?)_lr(.+)", arm).groups()
            assert (choices.optimizer, choices.combiner, job.optimizer.lr) == (optimizer, combiner, float(lr))
            assert job.mode.name == "mtl" and job.trainer.selection.metric == "val/delta_m"
            named.setdefault((optimizer, combiner), set()).add(job.optimizer.lr)
        assert job.optimizer.weight_decay == 1e-5 and job.trainer.on_divergence == "record"
    assert sorted(named) == [("adam", "ew"), ("adam", "pcgrad"), ("adatask_adam", "ew"), ("sgd_momentum", "ew"),
                             ("sgd_momentum", "pcgrad"), ("stl", "t0"), ("stl", "t1")]
    assert all(v == {0.0003, 0.1} for v in named.values())
    assert len(lrs) == 7 and all(v == grid for v in lrs.values())


def test_a_preset_grid_gives_way_to_command_line_sweeps_and_to_the_basic_sweeper():
    cfg = compose_with_hydra(["experiment=dibs_transforms"])
    assert len(grid_jobs(cfg, ("combiner=ew", "seed=0"))) == 6  # the five transforms and the rounding control
    plain = compose_with_hydra(["experiment=dibs_transforms", "hydra/sweeper=basic"])
    assert not plain.hydra.sweeper.params


def test_sweep_subdir_is_the_job_number_never_a_cluster_job_id(monkeypatch):
    # Marker values that cannot occur in a timestamped folder name by chance (a numeric id could: CI once
    # found "987" among the microseconds).
    monkeypatch.setenv("SLURM_JOB_ID", "jobid-marker-a")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "jobid-marker-b")
    cfg = compose_with_hydra(["experiment=elich_optimizers_quick"])
    raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert raw["subdir"] == "${hydra.job.num}_${hydra.job.override_dirname}"
    assert "job.id" not in raw["dir"] + raw["subdir"] and "SLURM" not in raw["dir"] + raw["subdir"]
    assert "jobid-marker" not in cfg.hydra.sweep.dir


# ------------------------------------------------------------------------------------------------------ launchers


@pytest.mark.filterwarnings(DEPRECATED_SCHEMA_MATCH)
def test_submitit_slurm_composes_with_our_preset_and_the_plugin_schema():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    ours = yaml.safe_load((CONFIGS / "hydra" / "launcher" / "submitit_slurm.yaml").read_text())
    launcher = compose_with_hydra(["hydra/launcher=submitit_slurm"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    for key in ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "max_num_timeout",
                "signal_delay_s", "array_parallelism", "setup", "additional_parameters"):
        assert OmegaConf.to_container(launcher)[key] == ours[key], key
    assert ours["max_num_timeout"] > 0 and ours["signal_delay_s"] > 0  # requeue after a timeout, signal in time
    assert "export WANDB_MODE=offline" in ours["setup"] and "export HF_HUB_OFFLINE=1" in ours["setup"]
    assert set(OmegaConf.to_container(launcher)) >= {"qos", "constraint", "exclude", "gres"}  # the plugin's other keys
    override = compose_with_hydra(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=long"]).hydra.launcher
    assert override.partition == "long" and override.timeout_min == ours["timeout_min"]
    # validated against the plugin's schema: a misspelled key, or srun_args (not in 1.2.0), fails to compose
    for bad in ("hydra.launcher.partitoin=x", "hydra.launcher.srun_args=[--exclusive]"):
        with pytest.raises(ConfigCompositionException):
            compose_with_hydra(["hydra/launcher=submitit_slurm", bad])


@pytest.mark.filterwarnings(DEPRECATED_SCHEMA_MATCH)
def test_submitit_slurm_preset_reaches_the_sbatch_script(tmp_path, monkeypatch):
    """The plugin turns our preset into submitit parameters and submitit into the sbatch script (submission itself
    is intercepted: no cluster here; a stub `srun` on PATH satisfies submitit's check)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra._internal.callbacks import Callbacks
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    stub = tmp_path / "bin" / "srun"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")

    class Submitted(Exception):
        pass

    captured = {}

    def map_array(self, fn, *iterables):  # noqa: ANN001
        captured.update(executor=self, iterables=iterables)
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            app = GlobalHydra.instance().hydra
            # srun_args is not a field of the 1.2.0 plugin, but appended ("+") it reaches submitit (>= 1.3 knows it)
            master = app.compose_config("train", ["hydra/launcher=submitit_slurm", f"paths.output_root={tmp_path}",
                                                  '+hydra.launcher.srun_args=["--cpu-bind=none"]'],
                                        run_mode=RunMode.MULTIRUN, with_log_configuration=False)
            HydraConfig.instance().set_config(master)
            context = HydraContext(config_loader=app.config_loader, callbacks=Callbacks(master))
            launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=_record_job, config=master)
            with pytest.raises(Submitted):
                launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=4)
    finally:
        GlobalHydra.instance().clear()
    executor = captured["executor"]._executor
    script = executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=720", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=48GB", "#SBATCH --nodes=1", "#SBATCH --open-mode=append",
                 "#SBATCH --signal=USR2@180",  # submitit's requeue signal (SUBMITIT_PREEMPT_SIGNAL), 180 s before the end
                 "export WANDB_MODE=offline", "export HF_HUB_OFFLINE=1"):
        assert line in script.splitlines(), line
    assert "--cpu-bind=none" in next(x for x in script.splitlines() if x.startswith("srun "))
    assert executor.max_num_timeout == 3
    assert list(captured["iterables"][2]) == [4, 5]  # the job numbers: the requeued job keeps its folder <num>_...


def test_joblib_local_preset():
    launcher = compose_with_hydra(["hydra/launcher=joblib_local"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert 1 <= launcher.n_jobs <= 2 and launcher.prefer == "processes"


class RecordTorchThreads(Callback):
    """Hydra callback (runs in the job's process): writes the job's torch thread count and pid."""

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:  # noqa: ANN001
        import torch

        out = Path(config.hydra.runtime.output_dir) / "threads.json"
        out.write_text(json.dumps({"threads": torch.get_num_threads(), "pid": os.getpid()}))


def test_joblib_launcher_runs_two_jobs_in_worker_processes_with_dataloader_workers(tmp_path):
    """Two jobs under hydra/launcher=joblib_local (loky processes), each with a forked DataLoader worker."""
    from joblib import cpu_count

    sweep = tmp_path / "sweep"
    r = cli("-m", "hydra/launcher=joblib_local", "seed=0,1", "trainer.num_workers=1", "trainer.epochs=1",
            "trainer.max_steps_per_epoch=2", "trainer.device=cpu", "dataset.n_train=256", "dataset.n_val=64",
            "dataset.n_test=64", "logger=none", f"hydra.sweep.dir={sweep}",
            "+hydra.callbacks.threads._target_=tests.test_sweeps.RecordTorchThreads")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in r.stdout + r.stderr
    runs = summaries(sweep)
    assert [(s["status"], s["seed"]) for s in runs] == [("completed", 0), ("completed", 1)]
    threads = [json.loads((d / "threads.json").read_text()) for d in job_dirs(sweep)]
    assert all(t["pid"] != os.getpid() for t in threads)
    # loky caps each worker at cpu_count // n_jobs intra-op threads: the jobs do not oversubscribe the cores
    assert all(t["threads"] <= max(1, cpu_count() // 2) for t in threads)


def _record_job(cfg: DictConfig) -> dict:
    """Task function of the requeue test: where Hydra put the job, and the cluster job id it saw."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return {"output_dir": hc.runtime.output_dir, "job_id": hc.job.id, "sweep_dir": hc.sweep.dir}


@pytest.mark.filterwarnings(DEPRECATED_SCHEMA_MATCH)
def test_requeued_slurm_job_finds_its_output_folder_again(tmp_path, monkeypatch):
    """hydra-submitit-launcher pickles itself with the master config, whose `${now:}` is already resolved and
    cached (the sweeper reads hydra.sweep.dir before launching); on a timeout or preemption submitit calls the
    launcher's checkpoint(), which resubmits the same callable with the same arguments, and the requeued job composes
    its config again from that pickled master config: same sweep folder and `<job_num>_<overrides>` subfolder, although
    the clock moved on and the job runs under another SLURM job id.  The real plugin and submitit code paths run
    here in-process, with a SLURM environment faked by variables."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra._internal.callbacks import Callbacks
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext, RunMode
    from submitit.core.job_environment import _checkpoint
    from submitit.core.utils import DelayedSubmission

    # 11-digit ids: a shorter number could occur by chance among the sweep folder's microseconds.
    slurm_env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "71828182842", "SLURM_ARRAY_JOB_ID": "71828182840",
                 "SLURM_ARRAY_TASK_ID": "3", "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
                 "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    pickled = tmp_path / "71828182840_3_submitted.pkl"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            app = GlobalHydra.instance().hydra
            task = ["experiment=elich_optimizers_quick", f"paths.output_root={tmp_path}"]  # the command line's
            master = app.compose_config("train", [*task, "hydra/launcher=submitit_slurm", "hydra/job_logging=none",
                                                  "hydra/hydra_logging=none"],
                                        run_mode=RunMode.MULTIRUN, with_log_configuration=False)
            HydraConfig.instance().set_config(master)
            context = HydraContext(config_loader=app.config_loader, callbacks=Callbacks(master))
            launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=_record_job, config=master)
            assert type(launcher).__name__ == "SlurmLauncher"
            sweep_dir = str(master.hydra.sweep.dir)  # resolved (and cached) before submission, as the sweeper does
            overrides = ["elich_arm=adam_ew_lr1e-2", "seed=1", *task]  # one job of the grid, as the sweeper lists it
            args = (overrides, "hydra.sweep.dir", 7, "job_id_for_7", Singleton.get_state())
            delayed = DelayedSubmission(launcher, *args)  # what executor.map_array pickles for one array task
            delayed.set_timeout(720, 3)
            delayed.dump(pickled)
            time.sleep(0.01)  # the sweep folder has microseconds: a re-resolved ${now:} would differ
            job = DelayedSubmission.load(pickled)  # on the compute node
            first = job.result().return_value
            assert _checkpoint(job, pickled, countdown=2) == ""  # submitit's USR2 handler: checkpoint, then requeue
            monkeypatch.setenv("SLURM_JOB_ID", "31415926535")
            monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
            time.sleep(0.01)
            second = DelayedSubmission.load(pickled).result().return_value  # the requeued job
    finally:
        GlobalHydra.instance().clear()
    expected = Path(sweep_dir) / "7_elich_arm=adam_ew_lr1e-2,experiment=elich_optimizers_quick,seed=1"
    assert Path(first["output_dir"]) == Path(second["output_dir"]) == expected
    assert first["sweep_dir"] == second["sweep_dir"] == sweep_dir
    assert sweep_dir.startswith(f"{tmp_path}/elich_optimizers_quick/multiruns/")
    assert first["job_id"] == "71828182840_3"  # the cluster id is known to the job ...
    assert not any(i in first["output_dir"] for i in ("71828182840", "71828182842", "31415926535"))  # ... and never names its folder


# --------------------------------------------------------------------------------------------- runs (subprocess)


def test_elich_quick_arms_give_delta_m_against_the_stl_runs_of_the_same_sweep(tmp_path):
    # both data arms in one sweep folder: each MTL run reads the STL runs of its own dataset only
    sweep = tmp_path / "elich"
    r = cli("-m", "experiment=elich_optimizers_quick", "elich_arm=stl_t0_lr1e-2,stl_t1_lr1e-2,adam_ew_lr1e-2", "seed=0",
            "dataset=synthetic,synthetic_imbalanced", "hydra/launcher=basic",
            "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "dataset.n_train=256", "dataset.n_val=64",
            "dataset.n_test=64", "logger=none", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = summaries(sweep)
    stl = {(s["dataset"]["name"], s["tasks"][0]): s for s in runs if s["mode"] == "stl"}
    mtl = {s["dataset"]["name"]: s for s in runs if s["mode"] == "mtl"}
    assert sorted(stl) == [(d, t) for d in ("synthetic", "synthetic_imbalanced") for t in ("t0", "t1")]
    assert not any(s["delta_m"]["enabled"] for s in stl.values())
    for name, run in mtl.items():
        assert (run["optimizer"]["choice"], run["optimizer"]["lr"]) == ("adam", 0.01)
        dm = run["delta_m"]
        assert dm["enabled"] and "selection_fallback" not in dm
        assert dm["source"]["paths"] == [str(sweep)] and dm["source"]["runs_per_task"] == {"t0": 1, "t1": 1}
        assert dm["stl_select"] == "val_loss" and dm["source"]["chosen"] == {"t0": "the only configuration",
                                                                             "t1": "the only configuration"}
        assert "val/delta_m" in run["selected"] and "test/delta_m" in run["selected"]
        # the baselines are this dataset's STL runs: Δm recomputed from them equals the run's own
        mine = metrics_for_split(run["selected"], "test")
        mine = {k: v for k, v in mine.items() if not k.endswith("/loss") and k.split("/")[0] in ("t0", "t1")}
        base = {k: stl[(name, k.split("/")[0])]["selected"][f"test/{k}"] for k in mine}
        expected = delta_m(mine, base, run["metric_directions"], "per_metric", False).value
        assert run["selected"]["test/delta_m"] == pytest.approx(expected, rel=1e-9)
    assert mtl["synthetic"]["selected"]["test/delta_m"] != mtl["synthetic_imbalanced"]["selected"]["test/delta_m"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_optuna_lr_search_replaces_the_preset_grid():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_with_hydra(["experiment=elich_optimizers", "hparams_search=lr_optuna", "combiner=uw"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert dict(sweeper.params) == {"optimizer.lr": "tag(log, interval(1e-5, 1e-1))"}  # the grid is gone
    assert cfg.optimized_metric == "val/loss" and sweeper.study_name == "elich_optimizers_lr"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0


@pytest.mark.slow
def test_optuna_lr_search_runs_trials_and_writes_the_best_lr(tmp_path):
    """(slow: ~10 s) A 3-trial study on the tiny benchmark; the job returns summary["selected"]["val/loss"]."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    r = cli("hparams_search=lr_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
            "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "dataset.n_train=256", "dataset.n_val=64",
            "dataset.n_test=64", "logger=none", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert 1e-5 <= results["best_params"]["optimizer.lr"] <= 1e-1
    assert results["best_value"] == min(s["selected"]["val/loss"] for s in summaries(sweep))


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_quick_preset_runs_to_completion(study, tmp_path):
    """(slow: minutes each) `python -m mtl_bench.train experiment=<study>_quick`: every job completes, or diverges where
    the study records divergence as a result (trainer.on_divergence=record: a too-large learning rate or loss scale)."""
    sweep = tmp_path / study
    r = cli(f"experiment={study}_quick", "logger=none", f"hydra.sweep.dir={sweep}", f"paths.output_root={tmp_path / 'out'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = summaries(sweep)
    assert len(runs) == documented_grid_sizes()[f"{study}_quick"]
    recorded = compose_with_hydra([f"experiment={study}_quick"]).trainer.on_divergence == "record"
    assert all(s["status"] == "completed" or (recorded and s["status"] == "diverged") for s in runs)
