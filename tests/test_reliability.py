"""Faults end with one line and lose nothing (issue 13): verified checkpoints, one process per run folder, a sweep
stopped by Ctrl-C / SIGTERM and continued by rerunning it, a full disk, an invalid WANDB_MODE, a failed resume that
no longer reads "completed", and thread defaults taken from the CPUs a process may use."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtl_bench import preemption, runlock
from mtl_bench.checkpoint import _HashingWriter, digest_path, load_checkpoint, previous_path, save_checkpoint
from mtl_bench.config.validate import validate_config
from mtl_bench.data.base import make_loader
from mtl_bench.data.fixtures import damage_celeba_image, write_celeba_fixture
from mtl_bench.errors import CheckpointError, ConfigError, DatasetError, PreemptedError, StorageError
from mtl_bench.loggers.run_logger import RunLogger
from mtl_bench.runlock import RunFolderBusy
from mtl_bench.train import build_and_train
from mtl_bench.trainer import Trainer
from mtl_bench.utils import resolve_num_threads

from tests.test_resume import _signal_at, assert_same_run, run_cli

REPO = Path(__file__).resolve().parents[1]


def flip_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- checkpoint integrity (item 3)
def test_checkpoint_digest_is_the_sha256_of_the_file_in_sha256sum_format(tmp_path):
    path = save_checkpoint({"w": torch.arange(5.0)}, tmp_path / "last.pt")
    line = digest_path(path).read_text()
    assert line == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  last.pt\n"
    assert subprocess.run(["sha256sum", "-c", digest_path(path).name], cwd=tmp_path, capture_output=True).returncode == 0
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(5.0))


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_digest"])
def test_a_damaged_checkpoint_is_refused_with_the_file_and_the_way_out(tmp_path, damage):
    path = save_checkpoint({"w": torch.randn(1000)}, tmp_path / "last.pt")
    if damage == "flip":
        flip_middle(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        digest_path(path).unlink()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "trainer.resume=never" in message and "\n" not in message


def test_a_crash_between_the_two_renames_leaves_a_loadable_checkpoint(tmp_path):
    """New data renamed, new digest still in .sha256.tmp: the loader accepts the matching pending digest."""
    path = save_checkpoint({"w": torch.zeros(3)}, tmp_path / "last.pt")
    old_digest = digest_path(path).read_text()
    save_checkpoint({"w": torch.ones(3)}, path)
    digest_path(path).rename(digest_path(path).with_name("last.pt.sha256.tmp"))
    digest_path(path).write_text(old_digest)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))


def test_keep_previous_keeps_the_replaced_checkpoint_verified(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path, keep_previous=True)
    assert not previous_path(path).exists()  # nothing replaced yet
    save_checkpoint({"step": 2}, path, keep_previous=True)
    assert load_checkpoint(path)["step"] == 2 and load_checkpoint(previous_path(path))["step"] == 1
    flip_middle(path, 8)
    with pytest.raises(CheckpointError, match=r"trainer.resume=.*last\.prev\.pt"):  # the way out names the previous one
        load_checkpoint(path)


def test_a_tampered_last_checkpoint_fails_the_resume_and_the_summary_says_so(make_cfg):
    cfg = make_cfg()
    first = build_and_train(cfg)
    run = Path(cfg.paths.output_dir)
    flip_middle(run / "checkpoints" / "last.pt")
    longer = make_cfg("trainer.epochs=4")
    longer.paths.output_dir = str(run)
    with pytest.raises(CheckpointError, match="last.pt is corrupt"):
        build_and_train(longer)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "last.pt is corrupt" in summary["error"]
    assert "selected" not in summary and summary["previous"]["status"] == "completed"
    assert summary["previous"]["selected"] == first["selected"]  # the earlier results are kept, marked as earlier
    # the previous checkpoint (epoch 1) is the way out, and resuming from it finishes the run
    prev = run / "checkpoints" / "last.prev.pt"
    longer.trainer.resume = str(prev)
    resumed = build_and_train(longer)
    assert resumed["status"] == "completed" and resumed["resumed"][0]["epoch"] == 1


# ---------------------------------------------------------------- one process per run folder (item 4)
HOLDER = textwrap.dedent("""
    import sys, time
    from mtl_bench import runlock
    runlock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def held_folder(tmp_path):
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_second_process_in_a_run_folder_is_refused_and_leaves_it_untouched(make_cfg, held_folder):
    folder, proc = held_folder
    before = snapshot(folder)
    cfg = make_cfg()
    cfg.paths.output_dir = str(folder)
    with pytest.raises(RunFolderBusy, match=rf"in use by pid {proc.pid} on "):
        build_and_train(cfg)
    assert snapshot(folder) == before
    assert runlock.holder(folder)["pid"] == proc.pid


def test_a_killed_owner_leaves_no_stale_lock(make_cfg, held_folder):
    folder, proc = held_folder
    proc.kill()
    proc.wait()
    assert runlock.holder(folder) is None
    cfg = make_cfg()
    cfg.paths.output_dir = str(folder)
    assert build_and_train(cfg)["status"] == "completed"
    assert runlock.holder(folder) is None  # released at the end


def test_the_cli_refuses_a_busy_run_folder_before_hydra_writes_into_it(held_folder):
    folder, proc = held_folder
    out = run_cli(["logger=none", "trainer.epochs=1", f"hydra.run.dir={folder}"], timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line or "Traceback" in line]
    assert len(errors) == 1 and f"run folder {folder} is in use by pid {proc.pid}" in errors[0]
    assert sorted(p.name for p in folder.iterdir()) == [".mtl_bench.lock"]  # no .hydra/, no log, nothing else


# ---------------------------------------------------------------- signals (item 5)
def test_sigint_checkpoints_marks_interrupted_and_resumes_identically(make_cfg, monkeypatch):
    ref, cfg = make_cfg("trainer.epochs=3"), make_cfg("trainer.epochs=3")
    build_and_train(ref)
    run = Path(cfg.paths.output_dir)
    before = signal.getsignal(signal.SIGINT)  # (pytest-xdist workers ignore SIGINT)
    with monkeypatch.context() as m:
        _signal_at(m, 5, signal.SIGINT)
        with pytest.raises(PreemptedError) as err:
            build_and_train(cfg)
    assert err.value.status == "interrupted" and err.value.exit_code == 130 and err.value.step == 5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and not list(run.rglob("*.tmp"))
    assert signal.getsignal(signal.SIGINT) is before  # restored
    assert build_and_train(cfg)["status"] == "completed"
    assert_same_run(Path(ref.paths.output_dir), run)


def test_a_second_sigint_aborts_at_once_and_leaves_no_temporary_file(make_cfg, monkeypatch):
    cfg = make_cfg("trainer.epochs=3")
    run = Path(cfg.paths.output_dir)
    train_step = Trainer.train_step

    def twice(self, x, targets):
        out = train_step(self, x, targets)
        if self.global_step == 10:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", twice)
    with pytest.raises(KeyboardInterrupt):
        build_and_train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "second SIGINT" in summary["error"]
    assert not list(run.rglob("*.tmp")) and load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


SIGNALLER = textwrap.dedent("""
    import os, runpy, signal
    from mtl_bench import trainer as T
    step, seed, sig = int(os.environ["SIGNAL_AT_STEP"]), int(os.environ["SIGNAL_SEED"]), getattr(signal, os.environ["SIGNAL"])
    train_step = T.Trainer.train_step
    def signalling_step(self, x, targets):
        out = train_step(self, x, targets)
        if self.global_step == step and self.run_info["seed"] == seed and not self.resumes:
            os.kill(os.getpid(), sig)
        return out
    T.Trainer.train_step = signalling_step
    runpy.run_module("mtl_bench.train", run_name="__main__")
""")


# SIGTERM takes the same path in a sweep (status preempted, exit code 75: test_sigterm_checkpoints_exits_and_resumes_...)
@pytest.mark.parametrize("sig, code, status", [("SIGINT", 130, "interrupted")])
def test_a_signal_stops_the_whole_sweep_and_rerunning_it_continues(tmp_path, sig, code, status):
    script = tmp_path / "signaller.py"
    script.write_text(SIGNALLER)
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1,2", "logger=none", "trainer.epochs=2", "trainer.batch_size=64", "dataset.n_train=256",
            "dataset.n_val=64", "dataset.n_test=64", f"hydra.sweep.dir={sweep}"]
    env = {"SIGNAL_AT_STEP": "3", "SIGNAL_SEED": "1", "SIGNAL": sig}
    out = run_cli(args, env, script=script)
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]  # job 2 never started
    first = json.loads((jobs[0] / "summary.json").read_text())
    assert first["status"] == "completed"
    stopped = json.loads((jobs[1] / "summary.json").read_text())
    assert stopped["status"] == status and stopped["global_steps"] == 3
    done_mtime = (jobs[0] / "summary.json").stat().st_mtime_ns

    out = run_cli(args, env, script=script)  # the same sweep into the same folder
    assert out.returncode == 0, out.stderr[-3000:]
    assert "already completed 2 epoch(s) with this config; skipped" in out.stdout + out.stderr
    assert (jobs[0] / "summary.json").stat().st_mtime_ns == done_mtime  # finished job not run again
    resumed = json.loads((jobs[1] / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed"][0]["global_step"] == 3
    third = sorted(p for p in sweep.iterdir() if p.is_dir())[2]
    assert json.loads((third / "summary.json").read_text())["status"] == "completed"


def test_a_stop_signal_is_remembered_by_the_process_only_where_the_entry_point_asked(monkeypatch):
    monkeypatch.setattr(preemption, "_recording", [False])
    monkeypatch.setattr(preemption, "_process_stop", [])
    assert preemption._record(signal.SIGTERM) and preemption.stop_requested() is None  # a notebook: the fit only
    monkeypatch.setattr(preemption, "_recording", [True])
    assert preemption._record(signal.SIGTERM) and preemption.stop_requested() == "SIGTERM"
    assert not preemption._record(signal.SIGTERM)  # the first one is kept
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after a stop was requested: abort
        preemption._record(signal.SIGINT)


# ---------------------------------------------------------------- full disk (item 6)
def no_space(path_part: str, after_calls: int = 0):
    """A _HashingWriter.write that raises ENOSPC for checkpoints whose file name contains ``path_part``."""
    calls = {"n": 0}
    original = _HashingWriter.write

    def write(self, data):
        if path_part in getattr(self.f, "name", ""):
            calls["n"] += 1
            if calls["n"] > after_calls:
                self.error = OSError(errno.ENOSPC, "No space left on device")
                raise self.error
        return original(self, data)

    return write


def test_a_full_disk_names_the_folder_removes_temporaries_and_keeps_the_previous_checkpoint(make_cfg, monkeypatch):
    cfg = make_cfg("trainer.epochs=3")
    run = Path(cfg.paths.output_dir)
    saves = []
    original = Trainer.save_last

    def save_then_fill(self, mid_epoch=False):
        if saves:  # the disk is full from the second last.pt on
            monkeypatch.setattr(_HashingWriter, "write", no_space("last.pt"))
        saves.append(self.epoch)
        original(self, mid_epoch)

    monkeypatch.setattr(Trainer, "save_last", save_then_fill)
    with pytest.raises(StorageError) as err:
        build_and_train(cfg)
    message = str(err.value)
    assert "no space left on the device" in message and str(run / "checkpoints") in message and "\n" not in message
    assert not list(run.rglob("*.tmp"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the previous checkpoint, verified
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "no space left" in summary["error"]


def test_a_full_disk_under_metrics_jsonl_is_a_storage_error(tmp_path, monkeypatch):
    logger = RunLogger(tmp_path, {})

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logger, "_file", Full())
    with pytest.raises(StorageError, match=r"metrics\.jsonl: no space left on the device"):
        logger.log_step({"train/loss": 1.0}, global_step=1, epoch=1)


# ---------------------------------------------------------------- W&B mode (item 7)
def test_an_invalid_wandb_mode_is_rejected_before_the_run_starts(make_cfg, monkeypatch):
    cfg = make_cfg("logger=wandb")
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match=r"WANDB_MODE='bogus' is invalid; choose one of \['online', 'offline', 'disabled', 'dryrun'\]"):
        validate_config(cfg)
    validate_config(make_cfg("logger=none"))  # W&B off: the variable does not matter


# ---------------------------------------------------------------- a finished job is not run again
def test_a_completed_run_is_skipped_unless_asked_to_continue_or_start_over(make_cfg):
    cfg = make_cfg()
    first = build_and_train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = (run / "metrics.jsonl").read_bytes()
    again = build_and_train(cfg)
    assert again == first and (run / "metrics.jsonl").read_bytes() == metrics
    cfg.trainer.epochs = 3  # more epochs: continue from last.pt
    assert build_and_train(cfg)["resumed"][0]["epoch"] == 2
    cfg.trainer.resume = "never"
    assert build_and_train(cfg)["resumed"] == []


# ---------------------------------------------------------------- threads
def test_threads_come_from_the_setting_the_environment_or_the_idle_cpus(monkeypatch):
    from mtl_bench import utils

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.setattr(utils, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(utils, "busy_cpus", lambda cpus, interval_s=0.2: 0.2 if cpus == {0, 3, 5} else 99.0)
    assert resolve_num_threads(None) == (3, "idle CPUs: 3 available, 0.2 busy with other work")
    monkeypatch.setattr(utils, "busy_cpus", lambda cpus, interval_s=0.2: 1.7)  # two cores taken by other work
    assert resolve_num_threads(None)[0] == 1
    monkeypatch.setattr(utils, "busy_cpus", lambda cpus, interval_s=0.2: 3.0)  # all of them: still one thread
    assert resolve_num_threads(None)[0] == 1
    monkeypatch.setattr(utils, "busy_cpus", lambda cpus, interval_s=0.2: 0.0)
    monkeypatch.setattr(utils, "_cgroup_cpu_quota", lambda: 2)  # a container's quota
    assert resolve_num_threads(None)[0] == 2
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert resolve_num_threads(None) == (1, "SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what the joblib launcher's workers get
    assert resolve_num_threads(None) == (2, "OMP_NUM_THREADS")
    assert resolve_num_threads(4) == (4, "trainer.num_threads")


def test_busy_cpus_measures_other_work_from_proc_stat(monkeypatch):
    from mtl_bench import utils

    # cpu0: 50 of 100 jiffies busy; cpu1: idle; cpu2 (not ours): fully busy
    snapshots = iter([
        "cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0\n",
        "cpu  0 0 0 0 0 0 0 0\ncpu0 130 0 20 140 10 0 0 0\ncpu1 0 0 0 300 0 0 0 0\ncpu2 100 0 0 0 0 0 0 0\n",
    ])
    monkeypatch.setattr(utils, "_read", lambda path: next(snapshots))
    monkeypatch.setattr(utils.time, "sleep", lambda s: None)
    assert utils.busy_cpus({0, 1}) == pytest.approx(0.5)  # (30 + 20) / (30 + 20 + 40 + 10) on cpu0, 0 on cpu1


def test_cgroup_quota_is_read_from_cpu_max(monkeypatch):
    from mtl_bench import utils

    files = {"/sys/fs/cgroup/cpu.max": "150000 100000\n"}
    monkeypatch.setattr(utils, "_read", files.get)
    assert utils._cgroup_cpu_quota() == 2  # 1.5 CPUs rounded up
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert utils._cgroup_cpu_quota() is None


def test_the_run_records_its_thread_count(make_cfg):
    summary = build_and_train(make_cfg("trainer.num_threads=1"))
    assert summary["threads"] == {"intra_op": 1, "from": "trainer.num_threads"}


# ---------------------------------------------------------------- data that breaks during training (item 8)
class BreaksAt(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 5:
            raise DatasetError(f"/data/sample_{i}.npy cannot be decoded; expected a float32 .npy array")
        return torch.zeros(2)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_dataset_error_in_a_loader_worker_stays_one_line_naming_the_file(workers):
    loader = make_loader(BreaksAt(), 4, shuffle=False, num_workers=workers)
    with pytest.raises(DatasetError) as err:
        list(loader)
    message = str(err.value)
    assert message.startswith("/data/sample_5.npy cannot be decoded; expected a float32 .npy array") and "\n" not in message
    assert ("worker process 0" in message) == (workers > 0)


def test_an_image_that_fails_to_decode_mid_run_ends_it_with_the_file_named_and_a_summary(make_cfg, tmp_path):
    root = write_celeba_fixture(tmp_path / "data", n=15)
    bad = damage_celeba_image(root, "000002.jpg", "truncated")  # a training image whose header is intact
    cfg = make_cfg("dataset=celeba", f"paths.data_dir={root}", "backbone=test_resnet_pool", "logger=none",
                   "trainer.device=cpu", "trainer.batch_size=3", "trainer.epochs=1", tiny=False)
    with pytest.raises(DatasetError) as err:
        build_and_train(cfg)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "failed" and str(bad) in summary["error"] and summary["epochs_completed"] == 0
