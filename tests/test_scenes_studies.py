"""The Elich et al. and AdaTask studies on dataset=synthetic_scenes (experiment=elich_optimizers_scenes[_quick],
adatask_dominance_scenes[_quick]): what their verdicts rest on, checked from the composed presets and grids."""

from __future__ import annotations

import functools
import math
import re

import pytest
import yaml

from mtl_bench.models.timm_encoder import TimmEncoder
from tests.test_sweeps import CONFIGS, compose_with_hydra, grid_jobs

ARMS = CONFIGS / "elich_scenes_arm"
SEEDS = {"": 5, "_quick": 3}
STUDIES = ["elich_optimizers_scenes", "adatask_dominance_scenes"]


@functools.cache
def preset(name: str):
    """The composed preset (with its hydra node), composed once per test session (composition is the slow part)."""
    return compose_with_hydra([f"experiment={name}"])


def arm_spec(arm: str) -> tuple[str, str | None, float]:
    """``(mode or optimizer/combiner, STL task, lr)`` read from the arm's file (not from its name)."""
    spec = yaml.safe_load((ARMS / f"{arm}.yaml").read_text())
    choices = {k.split("/")[-1]: v for d in spec["defaults"] for k, v in d.items()}
    lr = float(spec["optimizer"]["lr"])
    if choices.get("mode") == "stl":
        assert choices["optimizer"] == "adam"
        return "stl", spec["mode"]["task"], lr
    return f"{choices['optimizer']}/{choices['combiner']}", None, lr


def assert_half_decade_grid(lrs: list[float]) -> None:
    steps = [math.log10(b / a) for a, b in zip(lrs, lrs[1:])]
    assert len(lrs) >= 5 and all(0.45 <= s <= 0.55 for s in steps), lrs


@pytest.mark.parametrize("suffix", ["", "_quick"])
def test_elich_scenes_grid_same_lrs_for_every_optimizer_and_stl_first(suffix):
    name = f"elich_optimizers_scenes{suffix}"
    cfg = preset(name)
    assert cfg.hydra.runtime.choices.dataset == "synthetic_scenes" and cfg.dataset.name == "synthetic_scenes"
    jobs = grid_jobs(cfg)
    assert {j for job in jobs for j in job if j.startswith("seed=")} == {f"seed={s}" for s in range(SEEDS[suffix])}
    arms = [job[0].removeprefix("elich_scenes_arm=") for job in jobs]
    specs = [arm_spec(a) for a in arms]
    # the STL baselines run first, in whole launch batches (Hydra waits for each batch of max_batch_size jobs, so under
    # a parallel launcher every STL job has finished before an MTL job reads them)
    n_stl = sum(s[0] == "stl" for s in specs)
    assert all(s[0] == "stl" for s in specs[:n_stl]) and n_stl % cfg.hydra.sweeper.max_batch_size == 0
    # every optimizer x method cell and every STL task gets the same learning-rate grid (half-decade steps)
    grids: dict[str, set[float]] = {}
    for kind, task, lr in specs:
        grids.setdefault(task or kind, set()).add(lr)
    quick_leaves_out = {"adatask_adam/ew"} if suffix == "_quick" else set()  # the quick grid's budget (its comment)
    assert set(grids) == {"seg", "depth", "normal", "adam/ew", "adam/pcgrad", "sgd_momentum/ew", "sgd_momentum/pcgrad",
                          "adatask_adam/ew"} - quick_leaves_out
    assert (cfg.study.claims.get("scenes_adatask_vs_adam") is not None) == (suffix == "")
    assert len({tuple(sorted(g)) for g in grids.values()}) == 1, grids
    assert_half_decade_grid(sorted(grids["adam/ew"]))
    # the file name says what the arm sets
    for arm, (kind, task, lr) in zip(arms, specs):
        stem = f"stl_{task}" if kind == "stl" else kind.replace("/", "_")
        assert re.fullmatch(rf"{stem}_lr(.+)", arm) and float(arm.rsplit("_lr", 1)[1]) == lr, arm
    # Δm against this sweep's STL runs, per task the STL lr with the best mean val loss
    assert list(cfg.delta_m.stl_runs) == [cfg.hydra.sweep.dir] and cfg.delta_m.stl_select == "val_loss"
    if suffix == "_quick":  # an arm's keys win over the presets' (the arm comes after both in the defaults)
        stl = compose_with_hydra([f"experiment={name}", *jobs[0]])
        assert (stl.mode.name, stl.trainer.selection.metric, list(stl.delta_m.stl_runs)) == ("stl", "val/loss", [])
        mtl = compose_with_hydra([f"experiment={name}", *jobs[-1]])
        assert mtl.mode.name == "mtl" and mtl.trainer.selection.metric == "val/delta_m"
        assert (mtl.hydra.runtime.choices.optimizer, mtl.optimizer.lr) == ("sgd_momentum", specs[-1][2])
        assert mtl.dataset.name == "synthetic_scenes" and mtl.optimizer.weight_decay == 1e-5
    # every claim tunes the lr on validation Δm
    claims = {k: c for k, c in cfg.study.claims.items() if c is not None}  # a quick preset's null drops a claim
    assert claims and all(c.quantity == "delta_m" and "select_on" not in c for c in claims.values())
    for c in claims.values():
        sides = [c.a, c.b] if c.kind == "difference" else [c]
        assert all(list(s.tune) == ["optimizer.lr"] for s in sides)


def shared_layers(height: int, width: int) -> set[str]:
    encoder = TimmEncoder((3, height, width), model_name="test_resnet", output_stride=8, pretrained_file=None,
                          out_indices=[4], pool=False)
    return {"encoder." + name.rpartition(".")[0] for name, _ in encoder.named_parameters()}


@pytest.mark.parametrize("suffix", ["", "_quick"])
def test_adatask_scenes_same_lrs_and_au_on_three_shared_layers(suffix):
    cfg = preset(f"adatask_dominance_scenes{suffix}")
    assert cfg.hydra.runtime.choices.dataset == "synthetic_scenes" and cfg.hydra.runtime.choices.backbone == "test_resnet"
    jobs = grid_jobs(cfg)
    cells: dict[str, set[float]] = {}
    for job in jobs:
        kv = dict(j.split("=", 1) for j in job)
        cells.setdefault(kv["optimizer"], set()).add(float(kv["optimizer.lr"]))
    assert set(cells) == {"adam", "adatask_adam"} and cells["adam"] == cells["adatask_adam"]
    assert_half_decade_grid(sorted(cells["adam"]))
    assert len({job[-1] for job in jobs}) == SEEDS[suffix]
    assert cfg.diagnostics.au.enabled and cfg.diagnostics.au.decay == 0.99
    # the claims read >= 3 shared layers, each a layer of the shared encoder the runs train
    claims = cfg.study.claims
    quantities = {c.quantity for c in claims.values()} | {c.b.quantity for c in claims.values()
                                                          if not isinstance(c.b, (int, float)) and "quantity" in c.b}
    layers = {q.removeprefix("au/layer_max/") for q in quantities if q.startswith("au/layer_max/")}
    assert len(layers) >= 3 and layers <= shared_layers(cfg.dataset.height, cfg.dataset.width)
    assert {"au/dominated", "au/rau/normal"} <= quantities
    for c in claims.values():  # both optimizers' lr chosen on validation
        assert all(list(s.tune) == ["optimizer.lr"] for s in (c.a, c.b) if not isinstance(s, (int, float)))

