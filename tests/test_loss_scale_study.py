"""The loss-scale study (experiment=loss_scale, loss_scale_quick; Elich et al. GCPR 2024 Sec. 3.1): its grids, its
method arms, the transform each level applies, its claims' wiring, and the claim kind that counts diverged runs
(mtl_bench/report/claims/invariance_failures.py)."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_bench.config.validate import validate_config
from mtl_bench.loss_transforms import build_transforms
from mtl_bench.report.build import ReportOptions, build_report
from mtl_bench.report.claims import CLAIM_KINDS
from mtl_bench.report.claims.invariance_failures import InvarianceWithFailures
from mtl_bench.report.claims.quantities import Context
from mtl_bench.report.runs import ReportError, Run
from tests.conftest import CONFIG_DIR
from tests.test_sweeps import compose_with_hydra

ARMS = {  # method -> (optimizer class, combiner class): Adam, SGD, AdaTask with EW; Adam with UW-O and DiBS-MTL
    "adam_ew": ("torch.optim.Adam", "mtl_bench.combiners.ew.EqualWeighting"),
    "sgd_momentum_ew": ("torch.optim.SGD", "mtl_bench.combiners.ew.EqualWeighting"),
    "adatask_adam_ew": ("mtl_bench.optimizers.AdaTaskAdam", "mtl_bench.combiners.ew.EqualWeighting"),
    "adam_uw_o": ("torch.optim.Adam", "mtl_bench.combiners.uw_o.OptimalUncertaintyWeighting"),
    "adam_dibs_mtl": ("torch.optim.Adam", "mtl_bench.combiners.dibs_mtl.DiBSMTL"),
}
FACTORS = (1.0, 1.000001, 10.0, 100.0, 1e3, 1e4)  # the reference, the rounding control, Elich et al.'s x10 ... x1e4
CONTROL = 1.000001  # x(1 + 1e-6): perturbs float32 roundings only
EXPONENTS = (2.0, 4.0)
KINDS = CLAIM_KINDS


def grid(preset: str) -> tuple[DictConfig, list[dict[str, str]]]:
    """The preset's config and its jobs as the basic sweeper makes them, each as ``{key: value}``."""
    cfg = compose_with_hydra([f"experiment={preset}"])
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return cfg, [dict(o.split("=", 1) for o in job) for batch in jobs for job in batch]


def job_config(preset: str, job: dict[str, str]):
    cfg = compose_with_hydra([f"experiment={preset}", *(f"{k}={v}" for k, v in job.items())])
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def level(spec) -> tuple[str, float]:
    """``("scale", c)`` / ``("power", p)`` of a transform given as a config node or as the grid's text."""
    if isinstance(spec, str):
        kind, _, value = re.fullmatch(r"\{kind:(scale|power),(factor|exponent):([0-9.e+]+)\}", spec).groups()
        return kind, float(value)
    return spec.kind, float(spec.factor if spec.kind == "scale" else spec.exponent)


# ------------------------------------------------------------------------------------------------ grid and arms


@pytest.mark.parametrize("preset,seeds", [("loss_scale_quick", 3), ("loss_scale", 5)])
def test_grid_is_every_method_x_level_x_seed(preset, seeds):
    cfg, jobs = grid(preset)
    cells = [(j["loss_scale_arm"], level(j["loss_transforms.t1"]), j["seed"]) for j in jobs]
    levels = [("scale", f) for f in FACTORS] + [("power", p) for p in EXPONENTS]
    assert sorted(cells) == sorted(itertools.product(ARMS, levels, [str(s) for s in range(seeds)]))
    assert len(cells) == len(set(cells)) == 5 * 8 * seeds
    assert sorted(p.stem for p in (Path(CONFIG_DIR) / "loss_scale_arm").glob("*.yaml")) == sorted(ARMS)
    lrs = cfg.loss_scale_lr  # every arm has its rate in this preset
    assert set(lrs) == set(ARMS) and all(lr > 0 for lr in lrs.values())


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_each_arm_is_its_optimizer_and_combiner_at_the_presets_learning_rate(arm):
    cfg = job_config("loss_scale_quick", {"loss_scale_arm": arm, "loss_transforms.t1": "{kind:scale,factor:10.0}"})
    validate_config(cfg)
    assert (cfg.optimizer._target_, cfg.combiner._target_) == ARMS[arm]
    assert cfg.optimizer.lr == cfg.loss_scale_lr[arm] > 0
    if arm == "sgd_momentum_ew":
        assert cfg.optimizer.momentum == 0.9


def test_each_level_scales_what_the_combiner_sees_of_t1_by_exactly_its_factor():
    """For every transform of the quick grid, the trainer's transform (built from the job's composed config, as
    mtl_bench.train builds it) maps t1's loss L to exactly c·L (scale) or L^p (power) and leaves t0 alone; and the
    curve's x key (loss_transforms.t1.factor) is the factor applied."""
    losses = torch.tensor([0.37, 1.0, 2.5, 8.125], dtype=torch.float32)
    seen = set()
    for text in dict.fromkeys(j["loss_transforms.t1"] for j in grid("loss_scale_quick")[1]):
        cfg = job_config("loss_scale_quick", {"loss_scale_arm": "adam_ew", "loss_transforms.t1": text})
        transforms = build_transforms(cfg.loss_transforms, ["t0", "t1"], ["t0", "t1"])
        assert set(transforms) == {"t1"}  # t0's loss reaches the combiner untouched
        kind, value = level(cfg.loss_transforms.t1)
        out = transforms["t1"](losses)
        if kind == "scale":
            assert torch.equal(out, losses * value) and value == cfg.loss_transforms.t1.factor
            if value == CONTROL:  # float32(1 + 1e-6) = 1 + 2^-20: changes the roundings, not the problem
                assert not torch.equal(out, losses) and torch.allclose(out / losses, torch.ones_like(losses), rtol=0, atol=2e-6)
            else:
                assert torch.equal(out / losses, torch.full_like(losses, value))  # exactly k for these losses
        else:
            assert torch.allclose(out.double(), losses.double() ** value, rtol=1e-6)
        seen.add((kind, value))
    assert seen == {("scale", f) for f in FACTORS} | {("power", p) for p in EXPONENTS}


def test_claims_parse_and_name_only_levels_and_arms_of_the_grid():
    cfg = compose_with_hydra(["experiment=loss_scale_quick"])
    levels = set(re.findall(r"\{[^}]*\}", cfg.hydra.sweeper.params["loss_transforms.t1"]))
    assert len(levels) == 8  # 7 transforms and the rounding control
    claims = OmegaConf.to_container(cfg.study.claims)
    assert len(claims) >= 10
    named = set()
    for cid, spec in claims.items():
        KINDS[spec["kind"]].from_spec(cid, spec)  # parses (fields, margins, expectations)
        if "reference" in spec:
            named.add(spec["reference"])
        for side in (spec.get("a"), spec.get("b")):
            where = (side or {}).get("where", {})
            assert set(where) <= {"loss_scale_arm", "loss_transforms.t1"}, cid
            arms, lvls = ([v] if isinstance(v, str) else v for v in (where.get("loss_scale_arm", []),
                                                                     where.get("loss_transforms.t1", [])))
            assert set(arms) <= set(ARMS), cid
            named.update(lvls)
    assert named and named <= levels
    for curve in cfg.study.curves.values():
        assert curve.x == "loss_transforms.t1.factor" and curve.reference.where["loss_transforms.t1"] in levels


# ------------------------------------------------------------------------ claim kind: invariance_with_failures


def _run(tmp: Path, name: str, seed: int, arm: str, lvl: str, r2: float | None, status: str = "completed") -> Run:
    summary = {"status": status, "seed": seed, "mode": "mtl", "tasks": ["t0", "t1"], "choices": {"loss_scale_arm": arm},
               "metric_directions": {"t1/r2": True}, "dataset": {"name": "synthetic"}}
    if r2 is not None:
        summary["selected"] = {f"{split}/{k}": v for split in ("val", "test")
                               for k, v in {"t1/r2": r2, "t1/loss": 1.0, "t0/loss": 1.0}.items()}
    path = tmp / name
    path.mkdir(parents=True)
    return Run(path, status, summary, [f"loss_transforms.t1={lvl}"])


def _study(tmp: Path, sgd_failure: str = "diverged") -> list[Run]:
    """Per seed s: adam moves by exactly 10 % at both levels; sgd by 50 % at x100 and breaks down at x10."""
    runs = []
    for s in range(3):
        ref = 0.9 - 0.1 * s
        runs += [_run(tmp, f"adam_ref_{s}", s, "adam", "x1", ref), _run(tmp, f"adam_x10_{s}", s, "adam", "x10", 1.1 * ref),
                 _run(tmp, f"adam_x100_{s}", s, "adam", "x100", 0.9 * ref),
                 _run(tmp, f"sgd_ref_{s}", s, "sgd", "x1", ref), _run(tmp, f"sgd_x100_{s}", s, "sgd", "x100", 0.5 * ref),
                 _run(tmp, f"sgd_x10_{s}", s, "sgd", "x10", None if sgd_failure == "diverged" else 0.3,
                      sgd_failure if sgd_failure != "exploded" else "completed")]
    return runs


SPEC = {"quantity": "t1/r2", "axis": "loss_transforms.t1", "reference": "x1", "a": {"where": {"loss_scale_arm": "adam"}},
        "b": {"where": {"loss_scale_arm": "sgd"}}, "expect": "less", "by": "loss_scale_arm"}


def _evaluate(runs: list[Run], kind: str, exploded: tuple[str, ...] = (), **extra):
    rep = build_report(runs, ReportOptions(claims={}))
    rep.exploded.update({str(r.path): "test" for r in runs if r.name in exploded})
    claim = KINDS[kind].from_spec("c", {**SPEC, "kind": kind, **extra})
    return claim.evaluate(Context(rep))


def test_a_diverged_run_counts_with_the_declared_value(tmp_path):
    # sgd per seed: x100 moves 0.5, x10 diverged -> R² 0 -> moves 1.0: movement 0.75; adam 0.1: effect -0.65, exactly
    v = _evaluate(_study(tmp_path), "invariance_with_failures", failed_value=0.0)
    assert v.interval.estimate == pytest.approx(-0.65) and v.interval.lo == pytest.approx(-0.65)
    assert v.verdict == "supported" and v.interval.n == 3
    assert any("b: 3 run(s) diverged" in d for d in v.details)
    rows = {(r["loss_scale_arm"], r["loss_transforms.t1"]): r["mean"] for r in v.table}
    assert rows[("sgd", "x10")] == pytest.approx(1.0) and rows[("adam", "x10")] == pytest.approx(0.1)
    # the plain invariance kind leaves the diverged level out: sgd "moves" 0.5 only (the bias this kind removes)
    plain = _evaluate(_study(tmp_path / "plain"), "invariance")
    assert plain.interval.estimate == pytest.approx(-0.4) and ("sgd", "x10") not in {
        (r["loss_scale_arm"], r["loss_transforms.t1"]) for r in plain.table}


def test_exploded_runs_count_and_crashed_runs_do_not(tmp_path):
    exploded = _evaluate(_study(tmp_path / "e", "exploded"), "invariance_with_failures",
                         exploded=("sgd_x10_0", "sgd_x10_1", "sgd_x10_2"), failed_value=0.0)
    assert exploded.interval.estimate == pytest.approx(-0.65)
    crashed = _evaluate(_study(tmp_path / "c", "failed"), "invariance_with_failures", failed_value=0.0)
    assert crashed.interval.estimate == pytest.approx(-0.4)  # a crash says nothing about the method: left out
    assert not any("diverged" in d for d in crashed.details)


@pytest.mark.parametrize("value", [None, math.nan, "zero", True])
def test_failed_value_must_be_a_finite_number(value):
    spec = {**SPEC, "kind": "invariance_with_failures"}
    if value is not None:
        spec["failed_value"] = value
    with pytest.raises(ReportError, match="failed_value"):
        InvarianceWithFailures.from_spec("c", spec)


# ------------------------------------------------------------- why the "invariant" methods still move in the study


def _final_params(make_cfg, *overrides: str) -> torch.Tensor:
    from mtl_bench.checkpoint import load_checkpoint
    from mtl_bench.train import build_and_train

    cfg = make_cfg("experiment=loss_scale_quick", "hydra.mode=RUN", *overrides, "trainer.selection.rule=last", "trainer.epochs=1")
    build_and_train(cfg, output_dir=cfg.paths.output_dir)
    state = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")["model"]
    return torch.cat([v.reshape(-1).double() for v in state.values()])


@pytest.mark.parametrize("arm", ["adam_uw_o", "adam_dibs_mtl"])
def test_scale_free_arms_repeat_bit_for_bit_at_a_power_of_two_and_round_at_ten(arm, make_cfg):
    """UW-O's and DiBS-MTL's updates do not depend on t1's loss scale c in exact arithmetic.  In float32 a factor
    2^10 scales every number involved exactly, so the training run is the same bit for bit, while c = 10 rounds
    (c·L, then 1/(c·L) or the norm of c·g): the run differs in the last bits.  What the study measures for these
    methods at c = 10 ... 1e4 is that rounding grown over training, not an effect of the scale."""
    runs = {c: _final_params(make_cfg, f"loss_scale_arm={arm}", f"loss_transforms.t1={{kind:scale,factor:{c}}}")
            for c in (1.0, 1024.0, 10.0)}
    assert torch.equal(runs[1024.0], runs[1.0])
    assert not torch.equal(runs[10.0], runs[1.0])
    assert float((runs[10.0] - runs[1.0]).norm() / runs[1.0].norm()) < 1e-4


def test_without_runs_the_kind_is_inconclusive_with_a_reason(tmp_path):
    # the property tests/test_claims.py checks for every registered kind
    rep = build_report([_run(tmp_path, "r0", 0, "adam", "x1", 0.9)], ReportOptions(claims={}))
    spec = {**SPEC, "kind": "invariance_with_failures", "failed_value": 0.0, "a": {"where": {"loss_scale_arm": "nope"}}}
    v = InvarianceWithFailures.from_spec("c", spec).evaluate(Context(rep))
    assert v.verdict == "inconclusive" and v.details
