"""Checkpoint / resume / preemption: a run killed at any step and restarted in the same folder ends
bit-identical to an uninterrupted one; a preemption signal leaves a loadable checkpoint and the requeue exit code."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from mtl_bench.checkpoint import load_checkpoint
from mtl_bench.data.base import ResumableBatchSampler, TensorDictDataset, make_loader
from mtl_bench.errors import ConfigError, PreemptedError
from mtl_bench.train import build_and_train
from mtl_bench.trainer import Trainer
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parents[1]

# every kind of state a resumed run must restore: a random combiner (own generator), a scheduler, Adam moments,
# the AU monitor (moments of its own) and the conflict probe (own sampling generator, per-epoch buffers)
STATEFUL = [
    "combiner=rlw", "scheduler=cosine", "diagnostics.au.enabled=true", "diagnostics.au.every_n_steps=2",
    "diagnostics.conflicts.enabled=true", "diagnostics.conflicts.every_n_steps=3",
    "diagnostics.conflicts.averaged_every_n_steps=3", "trainer.deterministic=true",
]
CLI_TINY = ["logger=none", "trainer.device=cpu", "trainer.epochs=3", "trainer.batch_size=32", "trainer.log_every_n_steps=2",
            "dataset.n_train=256", "dataset.n_val=64", "dataset.n_test=64", "trainer.checkpoint_every_n_steps=3"]
STEPS = 3 * 256 // 32

KILLER = """
import os, runpy, signal
from mtl_bench import trainer as T
step, sig = int(os.environ["KILL_AT_STEP"]), getattr(signal, os.environ["KILL_SIGNAL"])
train_step = T.Trainer.train_step
def killing_step(self, x, targets):
    out = train_step(self, x, targets)
    if self.global_step == step:
        os.kill(os.getpid(), sig)
    return out
T.Trainer.train_step = killing_step
runpy.run_module("mtl_bench.train", run_name="__main__")
"""


def run_cli(args, env_extra=None, script=None, timeout=240):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), **(env_extra or {})}
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-m", "mtl_bench.train"]
    return subprocess.run([*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def records(run: Path) -> list[dict]:
    """metrics.jsonl without wall times, with the run folder's name taken out of paths."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = {k: v for k, v in json.loads(line).items() if k != "time" and not k.startswith("time/")}
        out.append(json.loads(json.dumps(rec).replace(str(run), "<run>")))
    return out


def assert_same_run(a: Path, b: Path) -> None:
    pa, pb = load_checkpoint(a / "checkpoints" / "last.pt")["model"], load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"parameter {k} differs"
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert sb["status"] == "completed"
    for key in ("selected", "final", "selection", "au", "conflicts", "global_steps", "epochs_completed"):
        assert sa.get(key) == sb.get(key), f"summary[{key!r}] differs"
    ra, rb = records(a), records(b)
    assert [r for r in ra if r["type"] != "resume"] == [r for r in rb if r["type"] != "resume"]


def test_killed_at_a_random_step_and_resumed_is_bit_identical(tmp_path):
    """SIGKILL (no cleanup at all) at a random step; the restart resumes from the last periodic checkpoint."""
    kill_at = random.Random().randrange(1, STEPS)  # a fresh draw each run (the global generator is seeded per test)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert run_cli([*CLI_TINY, *STATEFUL, f"hydra.run.dir={ref}"]).returncode == 0
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    killed = run_cli([*CLI_TINY, *STATEFUL, f"hydra.run.dir={run}"], {"KILL_AT_STEP": str(kill_at), "KILL_SIGNAL": "SIGKILL"}, script)
    assert killed.returncode == -signal.SIGKILL, f"kill at step {kill_at}: {killed.stderr[-2000:]}"
    assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())["status"] != "completed"
    resumed = run_cli([*CLI_TINY, *STATEFUL, f"hydra.run.dir={run}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    # the last checkpoint before the kill, which comes right after step `kill_at` and before that step's own
    # checkpoint: every 3 steps, and at the end of each 8-step epoch (after evaluation)
    last = max(3 * ((kill_at - 1) // 3), 8 * ((kill_at - 1) // 8))
    if last:
        assert summary["resumed"] and summary["resumed"][0]["global_step"] == last, f"kill at {kill_at}"
    else:
        assert summary["resumed"] == [], f"kill at {kill_at}"
    assert_same_run(ref, run)


def _signal_at(monkeypatch, step: int, sig: signal.Signals) -> None:
    train_step = Trainer.train_step

    def signalling_step(self, x, targets):
        out = train_step(self, x, targets)
        if self.global_step == step:
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "train_step", signalling_step)


SIGTERM_RUN = [*STATEFUL, "trainer.epochs=3"]


@pytest.fixture(scope="module")
def sigterm_reference(tmp_path_factory) -> Path:
    """The uninterrupted run the SIGTERM cases resume to: trained once, not once per case."""
    ref = tmp_path_factory.mktemp("sigterm_reference") / "run"
    build_and_train(compose_cfg(SIGTERM_RUN, ref))
    GlobalHydra.instance().clear()
    return ref


@pytest.mark.parametrize("step", [5, 8, 13])  # mid-epoch, at the end of epoch 1 (before evaluation), mid-epoch 2
def test_sigterm_checkpoints_exits_and_resumes_identically(make_cfg, monkeypatch, step, sigterm_reference):
    cfg = make_cfg(*SIGTERM_RUN)
    run = Path(cfg.paths.output_dir)
    with monkeypatch.context() as m:
        _signal_at(m, step, signal.SIGTERM)
        with pytest.raises(PreemptedError) as err:
            build_and_train(cfg)
    assert err.value.exit_code == 75 and err.value.step == step and "SIGTERM" in str(err.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # our handler is gone again
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert not list(run.rglob("*.tmp"))
    assert state["global_step"] == step and state["partial_epoch"]["batches_done"] == (step - 1) % 8 + 1
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    build_and_train(cfg)  # same folder: resumes
    assert_same_run(sigterm_reference, run)


def test_preemption_hands_the_signal_on_after_checkpointing(make_cfg, monkeypatch):
    """submitit installs a USR1 handler that requeues the job: it must run after our checkpoint is on disk."""
    cfg = make_cfg("trainer.epochs=2")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.pt"
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append((signum, last.exists())))
    try:
        _signal_at(monkeypatch, 3, signal.SIGUSR1)
        with pytest.raises(PreemptedError):
            build_and_train(cfg)
        assert calls == [(signal.SIGUSR1, True)]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_external_sigterm_during_training_leaves_a_loadable_checkpoint(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    args = ["logger=none", "trainer.device=cpu", "trainer.epochs=200", "trainer.log_every_n_steps=1", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "mtl_bench.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and '"type": "step"' in metrics.read_text():
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out[-2000:]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["global_step"] >= 1 and state["partial_epoch"] is not None or state["epoch"] >= 1
    assert "SIGTERM received" in out and not list(run.rglob("*.tmp"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["resumable_checkpoint"] == str(run / "checkpoints" / "last.pt")


def test_resuming_with_a_different_config_is_refused(make_cfg):
    cfg = make_cfg("trainer.epochs=1")
    build_and_train(cfg)
    other = make_cfg("trainer.epochs=1", "optimizer.lr=0.05")
    with pytest.raises(ConfigError, match=r"different config \(optimizer.lr: 0.001 -> 0.05\).*trainer.resume=never"):
        build_and_train(other, output_dir=cfg.paths.output_dir)


def test_more_epochs_continue_a_finished_run_and_never_starts_over(make_cfg, tmp_path):
    short = make_cfg("trainer.epochs=1")
    run = Path(short.paths.output_dir)
    first = build_and_train(short)
    again = build_and_train(make_cfg("trainer.epochs=1"), output_dir=run)  # finished: nothing to train
    assert again["global_steps"] == first["global_steps"] and again["final"] == first["final"]
    longer = build_and_train(make_cfg("trainer.epochs=2"), output_dir=run)
    assert longer["global_steps"] == 2 * first["global_steps"] and longer["resumed"][-1]["epoch"] == 1
    epochs = [r["epoch"] for r in records(run) if r["type"] == "epoch"]
    assert epochs == [1, 2]  # the second process's duplicate epoch-1 record was cut from metrics.jsonl
    fresh = build_and_train(make_cfg("trainer.epochs=1", "trainer.resume=never"), output_dir=run)
    assert fresh["resumed"] == [] and [r["epoch"] for r in records(run) if r["type"] == "epoch"] == [1]
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        build_and_train(make_cfg(f"trainer.resume={tmp_path / 'nope.pt'}"))


def test_resumable_batch_sampler_skips_without_changing_the_order():
    ds = TensorDictDataset(torch.arange(20.0).view(20, 1), {"t": torch.arange(20)})
    gen = torch.Generator().manual_seed(3)
    loader = make_loader(ds, 3, shuffle=True, generator=gen, drop_last=True)
    assert isinstance(loader.resumable, ResumableBatchSampler)
    gen.manual_seed(3)
    full = [b[1]["t"].tolist() for b in loader]
    gen.manual_seed(3)
    loader.resumable.skip = 4
    assert [b[1]["t"].tolist() for b in loader] == full[4:]
    assert loader.resumable.skip == 0 and len(full) == 6  # the skip applies to one pass only
    assert make_loader(ds, 3, shuffle=False).resumable is None


def test_forkmerge_resumes_after_its_last_merge(make_cfg, monkeypatch):
    """ForkMerge checkpoints at merge boundaries (branches included): a SIGTERM during the second period stops
    after that period's merge, and the resumed run merges exactly as the uninterrupted one."""
    from tests.test_forkmerge import AUX

    overrides = [*AUX, "trainer.epochs=3", "aux_auxiliaries=[harmful]", "mode=forkmerge", "combiner=ew"]
    ref_cfg, cfg = make_cfg(*overrides), make_cfg(*overrides)
    ref = build_and_train(ref_cfg)
    per_period = ref["global_steps"] // 3  # main's global step sums both branches' steps
    with monkeypatch.context() as m:
        _signal_at(m, per_period // 2 + 2, signal.SIGTERM)  # inside the first branch's second epoch
        with pytest.raises(PreemptedError):
            build_and_train(cfg)
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and set(state["extra"]["forkmerge"]["branches"]) == {"target", "all"}
    resumed = build_and_train(cfg)
    assert resumed["forkmerge"]["merges"] == ref["forkmerge"]["merges"]
    assert resumed["resumed"][0]["epoch"] == 2
    assert_same_run(Path(ref_cfg.paths.output_dir), Path(cfg.paths.output_dir))


@pytest.mark.parametrize("extra", [
    ["combiner=famo"],  # its own logits and their optimizer, post-step losses
    ["combiner=uw"],  # learnable log-variances in the optimizer's combiner group
    ["combiner=gradnorm"],  # learnable weights, initial losses
    ["combiner=nash_mtl"],  # warm-started solver state
    ["combiner=graddrop"],  # its own random generator
    ["combiner=dwa", "optimizer=adatask_adam"],  # loss history; per-task moments of the task-wise optimizer
    ["backbone=dselect_k", "backbone.expert.hidden=[8]", "backbone.num_experts=3",  # a model regularizer's gradient
     "backbone.entropy_reg=0.001"],
])
def test_every_stateful_component_resumes_bit_identically(make_cfg, monkeypatch, extra):
    overrides = [*extra, "trainer.epochs=2"]
    ref_cfg, cfg = make_cfg(*overrides), make_cfg(*overrides)
    build_and_train(ref_cfg)
    with monkeypatch.context() as m:
        _signal_at(m, 5, signal.SIGTERM)
        with pytest.raises(PreemptedError):
            build_and_train(cfg)
    build_and_train(cfg)
    assert_same_run(Path(ref_cfg.paths.output_dir), Path(cfg.paths.output_dir))
