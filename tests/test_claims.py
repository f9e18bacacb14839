"""The verdict framework (mtl_bench.report.claims): intervals, the verdict rule, and every registered claim kind on
hand-built runs whose effect is known exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from mtl_bench.report.build import ReportOptions, build_report
from mtl_bench.report.claims import CLAIM_KINDS, parse_claims
from mtl_bench.report.claims.stats import Interval, decide, t_interval, welch_interval
from mtl_bench.report.curves import build_curves
from mtl_bench.report.runs import ReportError, Run

# ----------------------------------------------------------------------------------------------------- intervals


def test_t_interval_pinned():
    # values 1, 2, 3: mean 2, s = 1, half-width t·s/√3 with the closed-form Student quantile for 2 degrees of
    # freedom, t_p = (2p − 1) / √(2p(1 − p)), p = 0.975 (≈ 4.3027)
    iv = t_interval([1.0, 2.0, 3.0])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert iv.estimate == 2.0 and iv.n == 3
    assert iv.lo == pytest.approx(2 - half, rel=1e-12) and iv.hi == pytest.approx(2 + half, rel=1e-12)


def test_t_interval_degenerate_cases():
    assert not t_interval([]).finite and t_interval([]).n == 0
    one = t_interval([4.0])
    assert one.estimate == 4.0 and not one.finite
    const = t_interval([0.5, 0.5, 0.5])  # an exactly repeatable effect: zero width
    assert const.lo == const.hi == 0.5


def test_welch_matches_scipy():
    a, b = [1.0, 2.0, 3.5, 2.2], [0.0, 1.0, 1.2, 3.0, 0.4]
    ref = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    iv = welch_interval(a, b)
    assert iv.lo == pytest.approx(ref.low, rel=1e-10) and iv.hi == pytest.approx(ref.high, rel=1e-10)


def test_paired_t_matches_scipy():
    a, b = [1.0, 2.5, 3.1, 0.2], [0.4, 1.0, 2.0, 0.5]
    ref = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    iv = t_interval([x - y for x, y in zip(a, b)])
    assert iv.lo == pytest.approx(ref.low, rel=1e-10) and iv.hi == pytest.approx(ref.high, rel=1e-10)


# ------------------------------------------------------------------------------------------------- verdict rule


def _iv(lo: float, hi: float) -> Interval:
    return Interval((lo + hi) / 2, lo, hi, 3, "paired t")


@pytest.mark.parametrize("lo,hi,expect,margin,verdict", [
    (0.1, 0.5, "greater", 0.0, "supported"),
    (-0.1, 0.5, "greater", 0.0, "inconclusive"),
    (-0.5, 0.0, "greater", 0.0, "not supported"),  # "positive" is contradicted by an interval at or below 0
    (0.1, 0.5, "greater", 0.2, "inconclusive"),
    (0.1, 0.15, "greater", 0.2, "not supported"),
    (-0.5, -0.1, "less", 0.0, "supported"),
    (-0.5, 0.1, "less", 0.0, "inconclusive"),
    (0.0, 0.3, "less", 0.0, "not supported"),
    (-0.05, 0.05, "equal", 0.1, "supported"),
    (-0.05, 0.15, "equal", 0.1, "inconclusive"),
    (0.11, 0.3, "equal", 0.1, "not supported"),
    (-0.3, -0.11, "equal", 0.1, "not supported"),
    (0.0, 0.0, "equal", 0.0, "supported"),
])
def test_decide_table(lo, hi, expect, margin, verdict):
    assert decide(_iv(lo, hi), expect, margin) == verdict


def test_decide_without_interval_is_inconclusive():
    for expect in ("greater", "less", "equal"):
        assert decide(t_interval([1.0]), expect, 0.1) == "inconclusive"


def test_decide_mirror_symmetry():
    # "a greater than b" on an interval is "b less than a" on the negated interval
    for lo, hi in [(0.1, 0.4), (-0.2, 0.3), (-0.6, -0.1), (-0.3, 0.0)]:
        for m in (0.0, 0.15):
            assert decide(_iv(lo, hi), "greater", m) == decide(_iv(-hi, -lo), "less", m)


# -------------------------------------------------------------------------------------------------- fake runs


def _run(tmp: Path, name: str, seed: int, choices: dict, metrics: dict[str, float], extra: dict | None = None) -> Run:
    summary = {"status": "completed", "seed": seed, "mode": choices.get("mode", "mtl"), "tasks": ["t0", "t1"],
               "choices": choices, "metric_directions": {"t0/mse": False, "t1/mse": False},
               "selected": {f"{split}/{k}": v for k, v in metrics.items() for split in ("val", "test")},
               "dataset": {"name": "synthetic"}, **(extra or {})}
    path = tmp / name
    path.mkdir()
    return Run(path, "completed", summary, [])


def _report(runs: list[Run]):
    return build_report(runs, ReportOptions(claims={}))


def test_difference_paired_effect_and_sign(tmp_path):
    # a = b + (0.2, 0.3, 0.25) per seed: paired effect mean 0.25, exactly the t interval of the three differences
    # ([0.126, 0.374]: above 0), although the seeds' common offsets (1, 2, 3) would swamp an unpaired comparison
    runs = []
    for s, d in enumerate([0.2, 0.3, 0.25]):
        base = 1.0 + s  # large between-seed variation that pairing must remove
        runs.append(_run(tmp_path, f"a{s}", s, {"combiner": "x"}, {"t0/mse": base + d, "t1/mse": 1.0}))
        runs.append(_run(tmp_path, f"b{s}", s, {"combiner": "y"}, {"t0/mse": base, "t1/mse": 1.0}))
    rep = _report(runs)
    spec = {"kind": "difference", "quantity": "t0/mse", "a": {"where": {"combiner": "x"}}, "b": {"where": {"combiner": "y"}}}
    (claim,) = parse_claims({"c": spec})
    from mtl_bench.report.claims.quantities import Context

    v = claim.evaluate(Context(rep))
    ref = t_interval([0.2, 0.3, 0.25])
    assert v.interval.estimate == pytest.approx(0.25) and v.interval.lo == pytest.approx(ref.lo)
    assert v.verdict == "supported" and v.interval.method == "paired t"
    swapped = parse_claims({"c": {**spec, "a": spec["b"], "b": spec["a"]}})[0].evaluate(Context(rep))
    assert swapped.interval.estimate == pytest.approx(-0.25) and swapped.verdict == "not supported"


def test_difference_tunes_on_validation_not_test(tmp_path):
    # lr 0.1 is best on val (lower mse) but worst on test: tuning must pick 0.1 and report its test values
    runs = []
    for s in range(3):
        for lr, val, test in ((0.1, 0.5, 3.0), (0.01, 0.9, 1.0)):
            r = _run(tmp_path, f"r{s}_{lr}", s, {"optimizer": "adam"}, {"t0/mse": test, "t1/mse": 1.0})
            r.summary["selected"]["val/t0/mse"] = val
            r.summary.setdefault("optimizer", {})["lr"] = lr
            runs.append(r)
    rep = _report(runs)
    from mtl_bench.report.claims.quantities import Context

    (claim,) = parse_claims({"c": {"kind": "difference", "quantity": "t0/mse", "expect": "greater",
                                   "a": {"where": {"optimizer": "adam"}, "tune": ["optimizer.lr"]}, "b": 2.0}})
    v = claim.evaluate(Context(rep))
    assert v.interval.estimate == pytest.approx(1.0)  # test 3.0 of the val-chosen lr, minus 2.0
    assert any("optimizer.lr = 0.1" in d for d in v.details)


def test_spread_pinned(tmp_path):
    # q(opt, comb) = 10·[opt == sgd] + 1·[comb == pcgrad] + seed noise common to all cells:
    # spread over optimizer = 10, over combiner = 1, effect 9 for every seed
    runs = []
    for s in range(3):
        for opt in ("adam", "sgd"):
            for comb in ("ew", "pcgrad"):
                q = 10.0 * (opt == "sgd") + (comb == "pcgrad") + 0.37 * s
                runs.append(_run(tmp_path, f"{opt}_{comb}_{s}", s, {"optimizer": opt, "combiner": comb}, {"t0/mse": q, "t1/mse": q}))
    rep = _report(runs)
    from mtl_bench.report.claims.quantities import Context

    (claim,) = parse_claims({"c": {"kind": "spread", "quantity": "t0/mse", "axes": ["optimizer", "combiner"]}})
    v = claim.evaluate(Context(rep))
    assert v.interval.estimate == pytest.approx(9.0) and v.interval.lo == pytest.approx(9.0)
    assert v.verdict == "supported" and len(v.table) == 4


def test_invariance_pinned(tmp_path):
    # method m moves by exactly 10 % at level "x2" and 30 % at "x3" (relative): movement 0.2; an invariant method 0
    runs = []
    for s in range(3):
        for method, factors in (("m", {"none": 1.0, "x2": 1.1, "x3": 0.7}), ("inv", {"none": 1.0, "x2": 1.0, "x3": 1.0})):
            for level, f in factors.items():
                q = (2.0 + s) * f
                runs.append(_run(tmp_path, f"{method}_{level}_{s}", s, {"combiner": method, "loss_transforms": level},
                                 {"t0/mse": q, "t1/mse": q}))
    rep = _report(runs)
    from mtl_bench.report.claims.quantities import Context

    base = {"kind": "invariance", "quantity": "t1/mse", "axis": "loss_transforms", "reference": "none", "by": "combiner"}
    moving = parse_claims({"c": {**base, "a": {"where": {"combiner": "m"}}, "expect": "equal", "margin": 0.05}})[0]
    v = moving.evaluate(Context(rep))
    assert v.interval.estimate == pytest.approx(0.2) and v.verdict == "not supported"
    inv = parse_claims({"c": {**base, "a": {"where": {"combiner": "inv"}}, "expect": "equal", "margin": 0.05}})[0]
    assert inv.evaluate(Context(rep)).verdict == "supported"
    vs = parse_claims({"c": {**base, "a": {"where": {"combiner": "inv"}}, "b": {"where": {"combiner": "m"}}, "expect": "less"}})[0]
    w = vs.evaluate(Context(rep))
    assert w.interval.estimate == pytest.approx(-0.2) and w.verdict == "supported"
    rows = {(r["combiner"], r["loss_transforms"]): r["mean"] for r in w.table}
    assert rows[("m", "x2")] == pytest.approx(0.1) and rows[("m", "x3")] == pytest.approx(0.3)


@pytest.mark.parametrize("kind", sorted(CLAIM_KINDS))
def test_every_kind_without_runs_is_inconclusive(kind, tmp_path):
    # shared property: a claim whose runs are absent is evaluated (no exception) and is inconclusive, with a reason
    specs = {"difference": {"a": {"where": {"combiner": "nope"}}, "b": {"where": {"combiner": "none"}}},
             "pooled_difference": {"a": {"where": {"combiner": "nope"}}, "b": {"where": {"combiner": "none"}}},
             "invariance_with_failures": {"axis": "loss_transforms", "reference": "none", "a": {"where": {"combiner": "nope"}},
                                          "failed_value": 1.0},
             "spread": {"axes": ["optimizer", "combiner"], "where": {"combiner": "nope"}},
             "invariance": {"axis": "loss_transforms", "reference": "none", "a": {"where": {"combiner": "nope"}}}}
    assert set(specs) == set(CLAIM_KINDS), "a new claim kind needs its case here"
    rep = _report([_run(tmp_path, "r0", 0, {"combiner": "ew"}, {"t0/mse": 1.0, "t1/mse": 1.0})])
    from mtl_bench.report.claims.quantities import Context

    (claim,) = parse_claims({"c": {"kind": kind, "quantity": "t0/mse", **specs[kind]}})
    v = claim.evaluate(Context(rep))
    assert v.verdict == "inconclusive" and v.details


@pytest.mark.parametrize("spec,match", [
    ({"kind": "bogus", "quantity": "x"}, "valid kinds"),
    ({"kind": "difference", "a": {}}, "'quantity' is required"),
    ({"kind": "difference", "quantity": "t0/mse", "a": {}, "expect": "more"}, "expect must be one of"),
    ({"kind": "difference", "quantity": "t0/mse", "a": {}, "margin": -1}, "margin must be"),
    ({"kind": "difference", "quantity": "t0/mse", "a": {}, "colour": 1}, "unknown field"),
    ({"kind": "spread", "quantity": "t0/mse", "axes": ["optimizer"]}, "axes must be two"),
])
def test_bad_specs_name_the_problem(spec, match):
    with pytest.raises(ReportError, match=match):
        parse_claims({"c": spec})


def test_ambiguous_side_is_an_error(tmp_path):
    runs = [_run(tmp_path, f"r{i}", 0, {"combiner": "ew", "optimizer": o}, {"t0/mse": 1.0, "t1/mse": 1.0})
            for i, o in enumerate(("adam", "sgd"))]
    rep = _report(runs)
    from mtl_bench.report.claims.quantities import Context

    (claim,) = parse_claims({"c": {"kind": "difference", "quantity": "t0/mse", "a": {"where": {"combiner": "ew"}}}})
    with pytest.raises(ReportError, match="several runs with seed 0"):
        claim.evaluate(Context(rep))


def test_curve_points_are_seed_means_with_t_intervals(tmp_path):
    runs = []
    for s in range(3):
        for w in (0.0, 1.0):
            r = _run(tmp_path, f"w{w}_{s}", s, {"combiner": "aux_weight"}, {"t0/mse": w + s, "t1/mse": 0.0})
            r.summary["weight"] = w
            runs.append(r)
    rep = _report(runs)
    (curve,) = build_curves(rep, {"lam": {"x": "weight", "y": "t0/mse"}})
    (points,) = curve.lines.values()
    assert [x for x, _ in points] == [0.0, 1.0]
    assert points[1][1].estimate == pytest.approx(2.0) and points[1][1].lo == pytest.approx(t_interval([1, 2, 3]).lo)
