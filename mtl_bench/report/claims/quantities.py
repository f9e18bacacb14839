"""What a claim can measure on one run, and which runs a claim's side takes (with validation tuning).

**Quantities** (``quantity`` in a claim; ``split`` picks test or val where the quantity has splits):

==============================  ==========================================================================
``delta_m``                     Δm% of the run's targets against the report's STL baselines (lower is better:
                                negative = the MTL model beats its STL baselines; mtl_bench.metrics.delta_m)
``<task>/<metric>``             a selected task metric, e.g. ``t0/mse``, ``seg/miou`` (direction as recorded)
``au/dominated``                AdaTask's dominated fraction of the shared parameters (``summary["au"]``)
``au/rau/<task>``               the task's mean rAU over the shared parameters
``au/layer_max/<layer>``        the largest task share of rAU in one shared layer, when the run recorded it
``conflict/<pair>/<metric>``    Elich et al.'s conflict statistic (``cos``, ``mag_sim``, ``sign_conflict``) of a pair
                                type (``inter_task``, ``inter_sample``, ...), mean over the run
``robustness/delta``            the transfer run's own corruption δ against the STL mean ratios (< 0: MTL better)
``robustness/degradation/<t>``  a transfer run's degradation on task t: mean over t's metrics (directions as
                                recorded) of the mean over corruption × severity cells of ±(corrupted/clean − 1),
                                signed so that > 0 is worse.  δ is linear in it: the MTL run's degradation minus
                                the STL run's of the same seed is that seed's δ_t, so a seed-paired
                                ``difference`` claim gives δ_t with an interval that includes both sides' seed
                                variance
``summary/<dotted.path>``       any number in ``summary.json``
==============================  ==========================================================================

A value that a run does not have is NaN; sides drop such runs and name them.

**A side** (``where``, ``tune``): the completed, non-exploded runs whose values of the ``where`` keys (as
:func:`~mtl_bench.report.grouping.lookup` reads them: overrides, group choices, resolved config) equal the given
value or one of the given values (STL runs only if ``where`` names ``mode``).  ``tune: [optimizer.lr]`` then
chooses, among the values of the tuned keys that the side's runs take, the one with the best mean **validation**
value of ``select_on`` over seeds (default: the claim's quantity; the direction is the quantity's, or
``select_mode: max|min``), and keeps only those runs — the same tuning budget for every arm, decided on validation
and never on test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mtl_bench.report.grouping import canonical, lookup
from mtl_bench.report.runs import ReportError, Run, as_float, dotted


@dataclass
class Context:
    """The report's runs and everything a quantity needs (baselines, exploded runs, robustness δ per run)."""

    report: Any  # mtl_bench.report.build.Report (typed loosely: build imports this package)
    _delta: dict[tuple[str, str], float] = field(default_factory=dict)

    def runs(self) -> list[Run]:
        exploded = self.report.exploded
        return [r for r in self.report.runs if r.completed and str(r.path) not in exploded]

    def higher_is_better(self, quantity: str) -> bool | None:
        if quantity == "delta_m":
            return False
        if quantity.startswith(("au/", "conflict/", "robustness/", "summary/")):
            return False if quantity in ("au/dominated", "robustness/delta") else None
        return self.report.directions.get(quantity)

    def value(self, run: Run, quantity: str, split: str = "test") -> float:
        if quantity == "delta_m":
            return self._delta_m(run, split)
        head, _, rest = quantity.partition("/")
        if head == "au":
            return _au(run, rest)
        if head == "conflict":
            return _conflict(run, rest)
        if head == "robustness" and rest == "delta":
            return self._robust_delta(run)
        if head == "robustness" and rest.startswith("degradation/"):
            return degradation(run, rest.partition("/")[2], self.report.options.include_loss)
        if head == "summary":
            found, value = dotted(run.summary, rest)
            return as_float(value) if found else math.nan
        if quantity.count("/") == 1:
            return run.results(self.report.options.source).get(f"{split}/{quantity}", math.nan)
        raise ReportError(f"unknown claim quantity '{quantity}'; use delta_m, <task>/<metric>, au/dominated, "
                          "au/rau/<task>, conflict/<pair>/<metric>, robustness/delta or summary/<dotted.path>")

    def _delta_m(self, run: Run, split: str) -> float:
        from mtl_bench.report.baselines import run_delta_m

        base = self.report.baselines
        if base is None or run.is_stl:
            return math.nan
        known = self.report.run_delta.get(str(run.path), {})
        if split in known:  # the report computed it already (its table splits)
            return known[split]
        key = (str(run.path), split)
        if key not in self._delta:
            opts = self.report.options
            self._delta[key] = run_delta_m(run, base, split, opts.convention, opts.allow_missing, opts.source)[0]
        return self._delta[key]

    def _robust_delta(self, run: Run) -> float:
        rob = self.report.robustness
        for group in rob.groups if rob is not None else ():
            if str(run.path) in group.per_run:
                return float(group.per_run[str(run.path)])
        return math.nan


def degradation(run: Run, task: str, include_loss: bool = False) -> float:
    """See ``robustness/degradation/<task>`` in the module docstring (NaN without usable transfer results)."""
    from mtl_bench.report.robustness import read_transfer

    result, _ = read_transfer(run)
    if result is None:
        return math.nan
    per_metric = []
    for key, clean in result.clean.items():
        hib = run.directions.get(key)
        if key.partition("/")[0] != task or hib is None or (key.endswith("/loss") and not include_loss):
            continue
        if not (math.isfinite(clean) and clean > 0):
            continue
        ratios = [m[key] / clean - 1.0 for m in result.corrupted.values() if math.isfinite(m.get(key, math.nan))]
        if ratios:
            per_metric.append((-1.0 if hib else 1.0) * math.fsum(ratios) / len(ratios))
    return math.fsum(per_metric) / len(per_metric) if per_metric else math.nan


def _au(run: Run, rest: str) -> float:
    au = run.summary.get("au")
    if not isinstance(au, dict):
        return math.nan
    if rest == "dominated":
        return as_float(au.get("dominated_fraction"))
    kind, _, name = rest.partition("/")
    table = au.get({"rau": "mean_rau", "layer_max": "layer_max_share"}.get(kind, ""))
    return as_float(table.get(name)) if isinstance(table, dict) else math.nan


def _conflict(run: Run, rest: str) -> float:
    from mtl_bench.report.build import conflict_stats

    pair, _, metric = rest.partition("/")
    return as_float(conflict_stats(run).get(pair, {}).get(metric))


# ------------------------------------------------------------------------------------------------------- sides


@dataclass
class SideSpec:
    """``where`` (key → value or list of values), ``tune`` keys, and optionally the side's own quantity / split."""

    where: dict[str, list[str]]
    tune: list[str] = field(default_factory=list)
    quantity: str | None = None
    split: str | None = None
    value: float | None = None  # a constant instead of runs (e.g. 0.5 for "more than half")

    @classmethod
    def parse(cls, spec: Any, what: str) -> "SideSpec":
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls({}, value=float(spec))
        if not isinstance(spec, Mapping):
            raise ReportError(f"{what} must be a mapping with 'where' (and optionally 'tune', 'quantity') or a number")
        unknown = set(spec) - {"where", "tune", "quantity", "split", "value"}
        if unknown:
            raise ReportError(f"{what}: unknown field(s) {sorted(unknown)}; valid: where, tune, quantity, split, value")
        where = spec.get("where") or {}
        if not isinstance(where, Mapping):
            raise ReportError(f"{what}.where must map config keys to a value or a list of values")
        parsed = {str(k): [canonical(x) for x in (v if isinstance(v, (list, tuple)) else [v])] for k, v in where.items()}
        tune = spec.get("tune") or []
        value = spec.get("value")
        return cls(parsed, [str(t) for t in (tune if isinstance(tune, (list, tuple)) else [tune])],
                   spec.get("quantity"), spec.get("split"), None if value is None else float(value))

    def describe(self) -> str:
        if self.value is not None:
            return f"{self.value:g}"
        parts = [f"{k}={'|'.join(v)}" for k, v in self.where.items()]
        if self.tune:
            parts.append(f"best {','.join(self.tune)} on val")
        return ", ".join(parts) or "all runs"


def side_runs(ctx: Context, side: SideSpec) -> list[Run]:
    """The completed, non-exploded runs matching ``where``; STL runs only when ``where`` names ``mode`` (an STL
    baseline trained with the same optimizer is not one more run of an MTL arm)."""
    stl_ok = "mode" in side.where
    return [r for r in ctx.runs() if (stl_ok or not r.is_stl) and all(lookup(r, k) in vals for k, vals in side.where.items())]


@dataclass
class Tuned:
    """The runs a tuned side keeps, the chosen values of the tuned keys, and every candidate's validation score."""

    runs: list[Run]
    chosen: tuple[str | None, ...]
    scores: dict[tuple[str | None, ...], tuple[float, int]]  # candidate -> (mean val score, runs)


def tune(ctx: Context, runs: Sequence[Run], keys: Sequence[str], select_on: str, mode: str | None) -> Tuned:
    """Keep the runs of the candidate (values of ``keys``) with the best mean validation ``select_on``."""
    if not keys:
        return Tuned(list(runs), (), {})
    hib = {"max": True, "min": False}.get(mode or "", ctx.higher_is_better(select_on))
    if hib is None:
        raise ReportError(f"tuning on '{select_on}' needs select_mode: max or min (its direction is unknown)")
    candidates: dict[tuple[str | None, ...], list[Run]] = {}
    for run in runs:
        candidates.setdefault(tuple(lookup(run, k) for k in keys), []).append(run)
    scores: dict[tuple[str | None, ...], tuple[float, int]] = {}
    for cand, members in candidates.items():
        vals = [v for v in (ctx.value(r, select_on, "val") for r in members) if math.isfinite(v)]
        scores[cand] = (math.fsum(vals) / len(vals) if vals else math.nan, len(members))
    ranked = [c for c in candidates if math.isfinite(scores[c][0])]
    if not ranked:
        return Tuned([], (), scores)
    best = (max if hib else min)(ranked, key=lambda c: scores[c][0])
    return Tuned(candidates[best], best, scores)


def per_seed(ctx: Context, runs: Sequence[Run], quantity: str, split: str, what: str,
             notes: list[str]) -> dict[Any, float]:
    """``{seed: value}``; several runs with one seed are an error (the side is ambiguous), NaN values are noted."""
    out: dict[Any, float] = {}
    for run in runs:
        value = ctx.value(run, quantity, split)
        if not math.isfinite(value):
            notes.append(f"{what}: {run.name} has no finite {quantity} ({split}); left out")
            continue
        if run.seed in out:
            raise ReportError(f"{what} matches several runs with seed {run.seed} (e.g. {run.name}): "
                              "add keys to its 'where' or 'tune' so that one run per seed remains")
        out[run.seed] = value
    return out


def order_seeds(seeds: Any) -> list[Any]:
    """Seeds sorted, integers first in numeric order."""
    return sorted(set(seeds), key=lambda s: (0, s, "") if isinstance(s, int) else (1, 0, str(s)))
