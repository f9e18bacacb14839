"""Distributions of the gradient-conflict statistics (issue 14, Elich et al.'s conflict study): the probe's fixed-bin
histograms pinned on hand-built gradients, the ``losses: objective`` scaling, the report's side-by-side figure and
the ``pooled_difference`` claim kind (STL runs of every task pooled per seed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mtl_bench.data.synthetic import regression_task
from mtl_bench.diagnostics.conflicts import ConflictProbe, histogram, scale_factor
from mtl_bench.errors import ConfigError
from mtl_bench.loss_transforms import make_transform
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.report.build import ReportOptions, build_report
from mtl_bench.report.claims import parse_claims
from mtl_bench.report.claims.pooled import PooledDifference
from mtl_bench.report.claims.quantities import Context
from mtl_bench.report.claims.stats import t_interval
from mtl_bench.report.conflict_plots import collect, conflict_distributions
from mtl_bench.report.runs import ReportError, Run

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- histograms


def test_histogram_bins_edges_and_bookkeeping():
    # 4 bins on [-1, 1]: [-1,-.5) [-.5,0) [0,.5) [.5,1]; -1 -> first, 0 -> third, 1 -> last (closed), 1.5 outside
    h = histogram(np.array([-1.0, -0.5, 0.0, 0.49, 1.0, 1.5, math.nan, math.inf]), "cos", 4)
    assert h == {"range": [-1.0, 1.0], "counts": [1, 1, 2, 1], "n": 6, "outside": 1, "nonfinite": 2}
    assert histogram(np.array([0.0, 0.3, 1.0]), "mag_sim", 2)["counts"] == [2, 1]
    with pytest.raises(KeyError):
        histogram(np.zeros(2), "dot", 4)  # unbounded: no fixed range


# Hand-built gradients: shared w (2 coordinates, zero), parameter-free heads, MSE per sample: the gradient of task t
# on sample i is g_it = -2 y_it x_i.  x_0 = (1, 0), x_1 = (0, 1), x_2 = (1, 1); y_a = (1, 1, -1), y_b = (1, -3, 2).
#   inter-task (per sample): cos = sign(y_a y_b) = +1, -1, -1; mag = 2|y_a||y_b|/(y_a²+y_b²) = 1, 0.6, 0.8;
#     opposite-sign coordinates: 0/2, 1/2 (the other is 0 in both), 2/2
#   inter-sample a: (0,1) cos 0, mag 1; (0,2) cos -1/√2, mag 2(1/√2)/(3/2) = 0.943; (1,2) the same
#   inter-sample b: (0,1) cos 0, mag 0.6; (0,2) +1/√2, r = 1/(2√2): mag 0.629; (1,2) -1/√2, r = 2√2/3: mag 0.998
# 7 bins (no value near an edge): cos edges -1 + 2k/7, mag/sign edges k/7.
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)
Y = {"a": torch.tensor([[1.0], [1.0], [-1.0]], dtype=F64), "b": torch.tensor([[1.0], [-3.0], [2.0]], dtype=F64)}


def linear_probe(per_sample: str, transforms=None, **kw) -> ConflictProbe:
    encoder = nn.Linear(2, 1, bias=False).to(F64)
    nn.init.zeros_(encoder.weight)
    model = MultiTaskModel(encoder, {"a": nn.Identity(), "b": nn.Identity()})
    probe = ConflictProbe(every_n_steps=1, max_samples=3, averaged=False, per_sample=per_sample, histogram_bins=7, **kw)
    probe.bind(model, {t: regression_task(t) for t in ("a", "b")}, model.shared_named_parameters(), transforms=transforms)
    probe.observe_batch(0, X, Y)
    probe.epoch_record(0)
    return probe


@pytest.mark.parametrize("per_sample", ["vmap", "loop"])
def test_histograms_of_hand_built_gradients(per_sample):
    h = linear_probe(per_sample).summary()["histograms"]
    assert set(h) == {"inter_task", "inter_sample"}
    assert h["inter_task"]["cos"]["counts"] == [2, 0, 0, 0, 0, 0, 1]
    assert h["inter_task"]["mag_sim"]["counts"] == [0, 0, 0, 0, 1, 1, 1]  # 0.6, 0.8, 1
    assert h["inter_task"]["sign_conflict"]["counts"] == [1, 0, 0, 1, 0, 0, 1]  # 0, 1/2, 1
    assert h["inter_sample"]["cos"]["counts"] == [0, 3, 0, 2, 0, 1, 0]  # -1/√2 x3, 0 x2, +1/√2
    assert h["inter_sample"]["mag_sim"]["counts"] == [0, 0, 0, 0, 2, 0, 4]  # 0.6, 0.629 | 0.943 x2, 0.998, 1
    assert h["inter_sample"]["cos"]["n"] == 6 and h["inter_task"]["cos"]["range"] == [-1.0, 1.0]


def test_objective_losses_scale_one_task_only_across_tasks():
    # task b's loss x10: its gradients x10, so inter-task magnitudes become 2r/(1+r²) with r = 1/10, 1/30, 1/20
    # (0.198, 0.067, 0.0998: bins 1, 0, 0); angles and all inter-sample statistics are unchanged
    scaled = {"b": make_transform("b", {"kind": "scale", "factor": 10.0})}
    h = linear_probe("vmap", transforms=scaled, losses="objective").summary()
    plain = linear_probe("vmap").summary()["histograms"]
    assert h["histograms"]["inter_task"]["mag_sim"]["counts"] == [2, 1, 0, 0, 0, 0, 0]
    assert h["histograms"]["inter_task"]["cos"] == plain["inter_task"]["cos"]
    assert h["histograms"]["inter_sample"] == plain["inter_sample"]
    mean = h["all_epochs"]["inter_task"]["mag_sim"]["mean"]
    assert mean == pytest.approx((2 * 0.1 / 1.01 + 2 / 30 / (1 + 1 / 900) + 2 / 20 / (1 + 1 / 400)) / 3, rel=1e-12)
    assert h["settings"]["losses"] == "objective" and h["settings"]["loss_scales"] == {"b": 10.0}
    # raw losses ignore the transform
    raw = linear_probe("vmap", transforms=scaled).summary()["histograms"]
    assert raw == plain


def test_objective_losses_refuse_non_scale_transforms():
    assert scale_factor("b", make_transform("b", {"kind": "scale", "factor": 2.5})) == 2.5
    for spec in ({"kind": "power", "exponent": 2.0}, {"kind": "log"}, {"kind": "exp"}):
        with pytest.raises(ConfigError, match="scale transforms"):
            scale_factor("b", make_transform("b", spec))
    with pytest.raises(ConfigError, match="losses"):
        ConflictProbe(losses="scaled")
    with pytest.raises(ConfigError, match="histogram_bins"):
        ConflictProbe(histogram_bins=0)


def test_figures_flag(tmp_path):
    probe = linear_probe("vmap", figures=False)
    assert probe.figures(probe.summary()) == []
    assert probe.summary()["settings"]["figures"] is False
    with pytest.raises(ConfigError, match="figures"):
        ConflictProbe(figures="no")


def test_histograms_survive_a_checkpoint_round_trip():
    probe = linear_probe("vmap", label="toy")
    fresh = ConflictProbe(every_n_steps=1, max_samples=3, averaged=False, histogram_bins=7, label="toy")
    encoder = nn.Linear(2, 1, bias=False).to(F64)
    model = MultiTaskModel(encoder, {"a": nn.Identity(), "b": nn.Identity()})
    fresh.bind(model, {t: regression_task(t) for t in ("a", "b")}, model.shared_named_parameters())
    fresh.load_state_dict(probe.state_dict())
    assert fresh.summary()["histograms"] == probe.summary()["histograms"]
    assert fresh.summary()["settings"]["label"] == "toy"


# ---------------------------------------------------------------------------------------------- fake runs


def hist(counts: list[int], metric: str = "cos") -> dict:
    return {"range": [-1.0, 1.0] if metric == "cos" else [0.0, 1.0], "counts": counts, "n": sum(counts),
            "outside": 0, "nonfinite": 0}


def fake_run(tmp: Path, name: str, seed: int, arm: str, tasks: list[str], stats: dict[str, dict[str, float]],
             label: str = "setting A") -> Run:
    """A completed run of the conflict study: ``stats`` = {pair: {metric: mean}}; histograms: one pair per stat."""
    mode = "stl" if len(tasks) == 1 else "mtl"
    hists = {p: {m: hist([1, 0, 0, 0] if v < 0 else [0, 0, 0, 1], m) for m, v in ms.items()} for p, ms in stats.items()}
    conflicts = {"settings": {"label": label}, "histograms": hists,
                 "all_epochs": {p: {m: {"mean": v} for m, v in ms.items()} for p, ms in stats.items()}}
    summary = {"status": "completed", "seed": seed, "mode": mode, "tasks": tasks,
               "choices": {"conflict_arm": arm, "mode": mode}, "dataset": {"name": "synthetic"},
               "metric_directions": {f"{t}/mse": False for t in tasks},
               "selected": {f"{s}/{t}/mse": 1.0 for t in tasks for s in ("val", "test")}, "conflicts": conflicts}
    path = tmp / name
    path.mkdir()
    (path / "summary.json").write_text(json.dumps(summary))
    return Run(path, "completed", summary, [])


def study_runs(tmp: Path, sub: str = "study") -> list[Run]:
    """3 seeds: MTL inter-task cos 0.1/0.2/0.3; STL t0 inter-sample 0.0/0.1/0.2; STL t1 0.2/0.3/0.2."""
    tmp = tmp / sub
    tmp.mkdir()
    runs = []
    for s, (mtl, t0, t1) in enumerate([(0.1, 0.0, 0.2), (0.2, 0.1, 0.3), (0.3, 0.2, 0.2)]):
        runs.append(fake_run(tmp, f"mtl{s}", s, "mtl", ["t0", "t1"],
                             {"inter_task": {"cos": mtl, "mag_sim": 0.5}, "inter_sample": {"cos": -0.5, "mag_sim": 0.9}}))
        runs.append(fake_run(tmp, f"stl0_{s}", s, "stl_t0", ["t0"], {"inter_sample": {"cos": t0, "mag_sim": 0.8}}))
        runs.append(fake_run(tmp, f"stl1_{s}", s, "stl_t1", ["t1"], {"inter_sample": {"cos": t1, "mag_sim": 0.8}}))
    return runs


POOLED = {"kind": "pooled_difference", "quantity": "conflict/inter_task/cos", "expect": "equal", "margin": 0.2,
          "a": {"where": {"conflict_arm": "mtl"}, "quantity": "conflict/inter_task/cos"},
          "b": {"where": {"conflict_arm": ["stl_t0", "stl_t1"], "mode": "stl"}, "quantity": "conflict/inter_sample/cos"}}


def evaluate(runs: list[Run], spec: dict):
    report = build_report(runs, ReportOptions(claims={}))
    claim = PooledDifference.from_spec("c", spec) if spec["kind"] == "pooled_difference" else parse_claims({"c": spec})[0]
    return claim.evaluate(Context(report))


# ---------------------------------------------------------------------------------------------- pooled_difference


def test_pooled_difference_averages_the_stl_runs_of_a_seed(tmp_path):
    # per seed b = mean(t0, t1) = 0.1, 0.2, 0.2; a - b = 0, 0, 0.1: mean 1/30, paired t interval of those three,
    # 1/30 ± 4.303 · 0.0577/√3 = [-0.110, 0.177]: within ±0.2 (supported), not within ±0.1 (inconclusive)
    runs = study_runs(tmp_path)
    v = evaluate(runs, POOLED)
    ref = t_interval([0.0, 0.0, 0.1])
    assert v.per_seed == pytest.approx({0: 0.0, 1: 0.0, 2: 0.1}, abs=1e-15)
    assert (v.interval.estimate, v.interval.lo, v.interval.hi) == pytest.approx((1 / 30, ref.lo, ref.hi), abs=1e-12)
    assert v.interval.method == "paired t" and v.interval.n == 3
    assert v.verdict == "supported" and evaluate(runs, {**POOLED, "margin": 0.1}).verdict == "inconclusive"
    assert any("2 run(s) pooled per seed" in n for n in v.details)


def test_pooled_difference_equals_difference_with_one_run_per_seed(tmp_path):
    runs = study_runs(tmp_path)
    spec = {**POOLED, "b": {"where": {"conflict_arm": "stl_t0", "mode": "stl"}, "quantity": "conflict/inter_sample/cos"}}
    pooled, plain = evaluate(runs, spec), evaluate(runs, {**spec, "kind": "difference"})
    assert pooled.per_seed == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1}) and pooled.per_seed == plain.per_seed
    assert pooled.interval == plain.interval and pooled.verdict == plain.verdict


def test_difference_refuses_two_stl_runs_per_seed_and_pooled_refuses_tune(tmp_path):
    with pytest.raises(ReportError, match="several runs with seed"):
        evaluate(study_runs(tmp_path), {**POOLED, "kind": "difference"})
    with pytest.raises(ReportError, match="tune"):
        PooledDifference.from_spec("c", {**POOLED, "b": {**POOLED["b"], "tune": ["optimizer.lr"]}})


# ---------------------------------------------------------------------------------------------- the figure


def test_figure_puts_mtl_and_stl_series_of_a_setting_side_by_side(tmp_path):
    runs = study_runs(tmp_path)
    runs.append(fake_run(tmp_path, "other", 0, "mtl_b", ["t0", "t1"], {"inter_task": {"cos": 0.5}}, label="setting B"))
    report = build_report(runs, ReportOptions(claims={}))
    data = collect(report)
    assert list(data) == ["setting A", "setting B"]
    a = data["setting A"]
    assert list(a) == ["MTL: inter-task", "MTL: inter-sample", "STL t0: inter-sample", "STL t1: inter-sample"]
    # histograms pooled over the 3 seeds; means kept per run
    assert a["MTL: inter-task"].counts["cos"].tolist() == [0, 0, 0, 3]
    assert a["MTL: inter-sample"].counts["cos"].tolist() == [3, 0, 0, 0]
    assert a["STL t1: inter-sample"].means["cos"] == pytest.approx([0.2, 0.3, 0.2])
    assert a["STL t0: inter-sample"].runs == 3 and a["STL t0: inter-sample"].means["mag_sim"] == [0.8] * 3
    out = tmp_path / "fig"
    out.mkdir()
    path = conflict_distributions(report, out)
    assert path == out / "conflict_distributions.png" and path.stat().st_size > 10_000


def test_figure_is_skipped_without_histograms(tmp_path):
    run = fake_run(tmp_path, "r", 0, "mtl", ["t0", "t1"], {"inter_task": {"cos": 0.1}})
    del run.summary["conflicts"]["histograms"]
    report = build_report([run], ReportOptions(claims={}))
    assert collect(report) == {} and conflict_distributions(report, tmp_path) is None


# ---------------------------------------------------------------------------------------------- the preset's claims


def test_preset_claims_parse_and_name_existing_arms():
    preset = yaml.safe_load((REPO / "configs" / "experiment" / "elich_conflicts.yaml").read_text())
    arms = {p.stem for p in (REPO / "configs" / "conflict_arm").glob("*.yaml")}
    specs = preset["study"]["claims"]
    for claim_id, spec in specs.items():
        kind = PooledDifference if spec["kind"] == "pooled_difference" else None
        claim = kind.from_spec(claim_id, spec) if kind else parse_claims({claim_id: spec})[0]
        for side in (claim.a, claim.b):
            assert set(side.where.get("conflict_arm", [])) <= arms, claim_id
    sweep = yaml.safe_load((REPO / "configs" / "hydra" / "sweeper" / "elich_conflicts_quick.yaml").read_text())
    assert set(sweep["params"]["conflict_arm"].split(",")) == arms
    assert sweep["params"]["seed"].split(",") == ["0", "1", "2"]
