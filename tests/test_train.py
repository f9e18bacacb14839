"""End-to-end runs in-process on the tiny synthetic config: outputs, learning, STL, determinism,
selection rules, checkpoints, NaN handling and W&B robustness."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import yaml

from mtl_bench.checkpoint import load_checkpoint
from mtl_bench.errors import ConfigError, NonFiniteLossError
from mtl_bench.train import build_and_train


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mtl_run_writes_config_metrics_and_summary_and_learns(make_cfg, tmp_path):
    cfg = make_cfg("trainer.epochs=4")
    summary = build_and_train(cfg)
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config_resolved.yaml").read_text())["trainer"]["epochs"] == 4
    records = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert all(f"train/{t}/loss" in r and f"train/weight/{t}" in r for r in steps for t in ("t0", "t1"))
    assert not any("train/regularizer" in r for r in steps)  # only a model with its own regularization term logs it
    assert all(f"val/{t}/{m}" in r for r in epochs for t in ("t0", "t1") for m in ("mse", "mae", "r2", "loss"))
    # global steps strictly increase: 256 samples / batch 32 = 8 steps per epoch, logged every 2
    assert [r["global_step"] for r in steps] == list(range(2, 33, 2))
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "completed" and on_disk["tasks"] == ["t0", "t1"]
    assert on_disk["selection"]["rule"] == "best" and on_disk["selection"]["metric"] == "val/loss"
    assert on_disk["metric_directions"]["t0/r2"] is True and on_disk["metric_directions"]["t1/mse"] is False
    for key in ("val/t0/mse", "test/t0/mse", "test/t1/r2"):
        assert key in on_disk["selected"]
    assert epochs[-1]["val/loss"] < epochs[0]["val/loss"]  # it actually trains
    # the selected epoch has the lowest val/loss of all evaluations
    best = min(epochs, key=lambda r: r["val/loss"])
    assert on_disk["selection"]["selected_epoch"] == best["epoch"]
    assert on_disk["selected"]["val/loss"] == pytest.approx(best["val/loss"])


def test_stl_run_trains_only_the_chosen_task(make_cfg, tmp_path):
    summary = build_and_train(make_cfg("mode=stl", "mode.task=t1"))
    assert summary["mode"] == "stl" and summary["tasks"] == ["t1"]
    assert set(summary["parameters"]) == {"shared", "head/t1"}
    assert not any(k.startswith(("test/t0", "val/t0")) for k in summary["selected"])
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not any(k.startswith("heads.t0") for k in state["model"])


def test_same_seed_same_result_other_seed_other_result(make_cfg, tmp_path):
    a = build_and_train(make_cfg("seed=3"), output_dir=tmp_path / "a")
    b = build_and_train(make_cfg("seed=3"), output_dir=tmp_path / "b")
    c = build_and_train(make_cfg("seed=4"), output_dir=tmp_path / "c")
    assert a["selected"] == b["selected"]
    assert a["selected"]["test/t0/mse"] != c["selected"]["test/t0/mse"]


def test_last_k_rule_reports_the_mean_of_the_last_k_test_evaluations(make_cfg, tmp_path):
    summary = build_and_train(make_cfg("trainer.epochs=4", "trainer.selection.rule=last_k", "trainer.selection.k=3"))
    epochs = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    expected = sum(r["test/t1/mse"] for r in epochs[-3:]) / 3
    assert summary["selected"]["test/t1/mse"] == pytest.approx(expected)
    assert summary["selection"] == {"rule": "last_k", "k": 3, "epochs": [2, 3, 4]}


def test_checkpoints_load_weights_only_and_restore_the_model(make_cfg, tmp_path):
    from hydra.utils import instantiate

    from mtl_bench.metrics.regression import RegressionMetrics
    from mtl_bench.models.mtl_model import build_model
    from mtl_bench.build import head_factories

    cfg = make_cfg("trainer.selection.rule=last")
    summary = build_and_train(cfg)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 16 and ckpt["task_names"] == ["t0", "t1"]
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "combiner", "rng", "data_generator", "selector", "config"}
    assert ckpt["optimizer"]["state"]  # Adam moments are saved
    # a fresh model loaded from the checkpoint reproduces the run's final test metrics
    bench = instantiate(cfg.dataset)
    model = build_model(instantiate(cfg.backbone), head_factories(cfg.heads, ["t0", "t1"], ["t0", "t1"]),
                        bench.tasks, bench.input_shape)
    model.load_state_dict(ckpt["model"])
    test = bench.splits["test"]
    with torch.no_grad():
        out = model(test.inputs)
    for t in ("t0", "t1"):
        m = RegressionMetrics()
        m.update(out[t], test.targets[t])
        assert m.compute()["mse"] == pytest.approx(summary["final"][f"test/{t}/mse"], rel=1e-6)


def test_nan_loss_stops_naming_step_and_task_and_keeps_last_good_checkpoint(make_cfg, tmp_path, monkeypatch):
    import mtl_bench.data.base as data_base  # (the class whose select_tasks every benchmark uses)

    real = data_base.Benchmark.select_tasks

    def poisoned(self, names):
        tasks = real(self, names)
        calls = {"n": 0}
        base = tasks["t1"].loss

        def loss(pred, target):
            if torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] == 11:  # 8 steps per epoch: the 3rd step of epoch 2
                    return base(pred, target) * float("nan")
            return base(pred, target)

        tasks["t1"] = dataclasses.replace(tasks["t1"], loss=loss)
        return tasks

    monkeypatch.setattr(data_base.Benchmark, "select_tasks", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        build_and_train(make_cfg("trainer.epochs=3"))
    err = info.value
    assert (err.step, err.epoch, err.task) == (11, 2, "t1")
    assert "task 't1' at global step 11 (epoch 2)" in str(err) and "last good checkpoint kept" in str(err)
    run = tmp_path / "run"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["failed_task"] == "t1" and summary["failed_step"] == 11
    assert read_jsonl(run / "metrics.jsonl")[-1]["type"] == "error"


def test_loss_outside_the_combiners_domain_is_reported_at_the_step(make_cfg, monkeypatch):
    """Log/inverse-loss combiners declare a lower bound; the trainer's per-step check enforces it."""
    import mtl_bench.data.base as data_base  # (the class whose select_tasks every benchmark uses)
    from mtl_bench.errors import ConfigError

    real = data_base.Benchmark.select_tasks

    def shifted(self, names):
        tasks = real(self, names)
        base = tasks["t0"].loss
        tasks["t0"] = dataclasses.replace(tasks["t0"], loss=lambda p, t: base(p, t) - 1e3)  # always negative
        return tasks

    monkeypatch.setattr(data_base.Benchmark, "select_tasks", shifted)
    with pytest.raises(ConfigError, match=r"combiner 'uw_o' is defined for task losses >= 0 only.*task 't0' has loss -.* at global step 1"):
        build_and_train(make_cfg("combiner=uw_o"))


def test_wandb_failure_never_stops_training(make_cfg, tmp_path, monkeypatch, caplog):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("W&B server unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.WARNING):
        summary = build_and_train(make_cfg("logger=wandb"))
    assert summary["status"] == "completed" and summary["wandb"] == {}
    assert "W&B disabled for this run" in caplog.text
    assert len([r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]) == 2


def test_wandb_offline_run_is_written_in_the_run_dir(make_cfg, tmp_path, monkeypatch):
    """The one W&B smoke test that starts a real (offline) run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = build_and_train(make_cfg("logger=wandb", "trainer.epochs=1"))
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["id"]
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and str(offline[0]) == summary["wandb"]["dir"]
    assert list(offline[0].glob("run-*.wandb"))
    # a resumed job (more epochs, same folder) continues the same W&B run id on the same step axes
    assert (tmp_path / "run" / "wandb_run_id.txt").read_text().strip() == summary["wandb"]["id"]
    resumed = build_and_train(make_cfg("logger=wandb", "trainer.epochs=2"), output_dir=tmp_path / "run")
    assert resumed["wandb"]["id"] == summary["wandb"]["id"] and resumed["resumed"][0]["epoch"] == 1
    # the continuation is a second offline-run folder of the same id (W&B suffixes "-1" when both start in the same
    # second); `wandb sync` uploads both into the one run
    assert len(list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{summary['wandb']['id']}*"))) == 2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_learns(make_cfg, precision):
    """Autocast (CPU here; the same code path runs on CUDA) with a grad scaler for fp16."""
    fp32 = build_and_train(make_cfg("trainer.epochs=3"))
    mixed = build_and_train(make_cfg("trainer.epochs=3", f"trainer.precision={precision}"))
    assert mixed["status"] == "completed"
    # same run up to rounding: the mixed-precision test loss is within 30 % of fp32's
    assert mixed["final"]["test/loss"] == pytest.approx(fp32["final"]["test/loss"], rel=0.3)


def test_invalid_precision_is_a_config_error(make_cfg):
    from mtl_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.precision='fp8' is invalid; choose one of \['fp32', 'bf16', 'fp16'\]"):
        build_and_train(make_cfg("trainer.precision=fp8"))


def test_delta_m_against_stl_runs_is_computed_selected_on_and_reported(make_cfg, tmp_path):
    from mtl_bench.errors import ConfigError

    stl_dirs = []
    for task in ("t0", "t1"):
        for seed in (0, 1):
            out = tmp_path / f"stl_{task}_{seed}"
            build_and_train(make_cfg("mode=stl", f"mode.task={task}", f"seed={seed}"), output_dir=out)
            stl_dirs.append(str(out))
    summary = build_and_train(make_cfg(f"delta_m.stl_runs=[{','.join(stl_dirs)}]", "trainer.selection.metric=val/delta_m"),
                              output_dir=tmp_path / "mtl")
    # hand recomputation of the per-metric Δm from the summaries (baseline = mean over the two seeds)
    stl = [json.loads((tmp_path / d / "summary.json").read_text()) for d in stl_dirs]
    terms = []
    for t in ("t0", "t1"):
        for metric, hib in (("mse", False), ("mae", False), ("r2", True)):
            key = f"test/{t}/{metric}"
            base = sum(s["selected"][key] for s in stl if s["tasks"] == [t]) / 2
            rel = (summary["selected"][key] - base) / abs(base)
            terms.append(-rel if hib else rel)
    assert summary["selected"]["test/delta_m"] == pytest.approx(100 * sum(terms) / len(terms), rel=1e-9)
    assert summary["delta_m"]["convention"] == "per_metric" and summary["delta_m"]["source"]["runs_per_task"] == {"t0": 2, "t1": 2}
    assert summary["selection"]["metric"] == "val/delta_m" and summary["selection"]["mode"] == "min"
    contrib = summary["delta_m"]["selected"]["test"]["contributions"]
    assert sum(c["contribution"] for c in contrib.values()) == pytest.approx(summary["selected"]["test/delta_m"])
    epochs = [r for r in read_jsonl(tmp_path / "mtl" / "metrics.jsonl") if r["type"] == "epoch"]
    assert all("val/delta_m" in r and "val/delta_m_contrib/t0/mse" in r for r in epochs)
    # a published baseline of another dataset is refused
    with pytest.raises(ConfigError, match=r"is a nyuv2 baseline, this run uses dataset 'synthetic'"):
        build_and_train(make_cfg("delta_m.published=cagrad_nyuv2_segnet_stl"), output_dir=tmp_path / "bad")


def test_without_baselines_delta_m_is_off_and_says_why(make_cfg):
    summary = build_and_train(make_cfg())
    assert summary["delta_m"] == {"enabled": False, "reason": "no baselines configured (delta_m.stl_runs or delta_m.published)"}
    assert "test/delta_m" not in summary["selected"]


def test_conflict_probe_through_the_config_writes_statistics_and_plots(make_cfg, tmp_path):
    summary = build_and_train(make_cfg("diagnostics.conflicts.enabled=true", "diagnostics.conflicts.every_n_steps=2",
                                       "dataset.label_scales=[1.0,10.0]"), output_dir=tmp_path / "r")
    c = summary["conflicts"]["all_epochs"]
    assert c["inter_task"]["mag_sim"]["mean"] < c["inter_sample"]["mag_sim"]["mean"]  # loss x100 on t1
    assert (tmp_path / "r" / "conflicts_epochs.png").exists() and (tmp_path / "r" / "conflicts_layers.png").exists()
    rec = [r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if r["type"] == "epoch"][-1]
    assert "conflict/inter_task/cos/all/mean" in rec and "conflict/inter_sample/mag_sim/encoder.net.0.weight/p97.5" in rec


def test_plateau_scheduler_steps_on_the_monitored_validation_metric(make_cfg, tmp_path):
    """scheduler=plateau: after each evaluation the LR is multiplied by ``factor`` when the monitored metric did not
    improve (mode max on val/loss, patience 0: every epoch whose val/loss is not above the best so far); the next
    epoch's steps log the reduced LR."""
    summary = build_and_train(make_cfg("trainer.epochs=4", "scheduler=plateau", "scheduler.mode=max",
                                       "scheduler.patience=0", "scheduler.factor=0.5", "optimizer.lr=0.01"))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    vals = [r["val/loss"] for r in records if r["type"] == "epoch"]
    lr_of = {r["epoch"]: r["train/lr/shared"] for r in records if r["type"] == "step"}
    expected, lr, best = [], 0.01, None
    for v in vals:  # torch's rule, mode max with relative threshold 1e-4
        expected.append(lr)
        if best is not None and not v > best * (1 + 1e-4):
            lr *= 0.5
        best = v if best is None or v > best * (1 + 1e-4) else best
    assert [lr_of[e] for e in (1, 2, 3, 4)] == pytest.approx(expected, rel=1e-12)
    assert expected[-1] < 0.01  # the loss falls, so the max-mode scheduler did reduce
    assert summary["status"] == "completed"
    with pytest.raises(ConfigError, match=r"scheduler.monitor='val/nope' is not a validation metric .*'val/loss'"):
        build_and_train(make_cfg("scheduler=plateau", "scheduler.monitor=val/nope"))


DSELECT_REG = ["backbone=dselect_k", "backbone.expert.hidden=[8]", "backbone.num_experts=3", "backbone.entropy_reg=0.001"]


def test_a_model_regularizer_is_logged(make_cfg):
    """DSelect-k with E = 3 (the unused-code term) and λ > 0: ``train/regularizer`` in every step record (at least the
    unused-code term's floor of 1 per task, selector and example); its resume is in tests/test_resume.py."""
    from pathlib import Path

    cfg = make_cfg(*DSELECT_REG)
    build_and_train(cfg)
    steps = [r for r in read_jsonl(Path(cfg.paths.output_dir) / "metrics.jsonl") if r["type"] == "step"]
    assert steps and all(r["train/regularizer"] >= 2 * 2 * 32 for r in steps)  # tasks × k × batch, s ≤ 1


def test_a_regularizer_on_shared_parameters_under_a_task_wise_optimizer_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"^the model's regularization term reaches shared parameters \(encoder\.gates\.t0"
                                          r".*task-wise optimizer AdaTaskAdam[^\n]*shared_gates=false\)$"):
        build_and_train(make_cfg(*DSELECT_REG, "backbone.shared_gates=true", "optimizer=adatask_adam"))
    # task-specific gates (the default): AdaTask applies their .grad like its task heads', nothing to refuse
    summary = build_and_train(make_cfg(*DSELECT_REG, "optimizer=adatask_adam", "trainer.epochs=1"))
    assert summary["status"] == "completed"
