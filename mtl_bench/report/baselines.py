"""Δm baselines for a report and per-run Δm, built on :mod:`mtl_bench.metrics.delta_m` (nothing re-implemented).

Where the baselines come from, first match wins (the report names the source):

Which STL runs count is the STL selection rule (``delta_m.stl_select``: ``unique`` or ``val_loss``, see
:mod:`mtl_bench.metrics.stl_select`): ``--stl-select`` if given, else the rule the runs recorded (they must agree).

1. ``--stl DIR ...``: STL runs given explicitly (:func:`~mtl_bench.metrics.delta_m.stl_baselines_from_summaries`:
   mean over seeds per task; val compared with val, test with test; each summary read once).  Problems here are
   errors (exit 2).
2. Completed ``mode=stl`` runs among the report's folders (same function, on the summaries already read).  Problems
   switch Δm off with the reason.
3. The baselines the runs themselves used (``summary["delta_m"]["source"]``): their ``delta_m.stl_runs`` folders if
   they still exist, or the published baseline id (test values, used for both splits).  Only if every run
   recorded the same source.
4. Otherwise no Δm; the report says why.

Per run, Δm is computed on the run's **targets** only (every task for MTL, ``mode.targets`` for aux/ForkMerge runs)
over the selected ``<split>/<task>/<metric>`` values except task losses, with the run's recorded metric directions
and the chosen convention.  A group's Δm is the mean ± std of its runs' Δm; since Δm is linear in the metric values
for fixed baselines, the mean equals the Δm of the seed-averaged metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mtl_bench.baselines import load_published
from mtl_bench.errors import ConfigError
from mtl_bench.metrics.delta_m import delta_m, metrics_for_split, read_stl_summaries, stl_baselines_from_summaries
from mtl_bench.metrics.stl_select import check_stl_select
from mtl_bench.report.runs import ReportError, Run


@dataclass
class Baselines:
    """``values[split]["<task>/<metric>"]`` and where they came from."""

    values: dict[str, dict[str, float]]
    description: str
    runs_per_task: dict[str, int] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    per_dataset: dict[str, "Baselines"] = field(default_factory=dict)  # several datasets: each one's own baselines
    chosen: dict[str, str] = field(default_factory=dict)  # stl_select=val_loss: task -> the chosen configuration

    def for_run(self, run: Run) -> "Baselines | None":
        """The baselines of ``run``'s dataset (itself when there is one dataset; ``None`` when its dataset has none)."""
        if not self.per_dataset:
            return self
        return self.per_dataset.get(str(run.dataset))


def _from_stl(paths: Sequence[str | Path], description: str,
              parsed: Mapping[Path, Mapping[str, Any]] | None = None, select: str = "unique") -> Baselines:
    """Val and test baselines of the STL runs in or under ``paths``, each summary read once (the resolved
    ``summary.json`` paths in ``parsed`` not at all: their summaries are already in memory), chosen by the STL
    selection rule ``select`` (``delta_m.stl_select``); the description names the rule and the chosen configurations."""
    per_split = stl_baselines_from_summaries(read_stl_summaries([str(p) for p in paths], parsed), ("val", "test"), select)
    test = per_split["test"]
    return Baselines({s: b.values for s, b in per_split.items()}, f"{description} [{test.describe_selection()}]",
                     test.runs_per_task, test.seeds, test.datasets, chosen=test.chosen)


def stl_select_rule(runs: Sequence[Run], option: str | None) -> tuple[str, str]:
    """The STL selection rule of the report: ``option`` (``--stl-select``) if given, else the ``delta_m.stl_select``
    the runs recorded (``unique`` for runs that recorded none), and a note when they disagree (then ``unique``)."""
    if option is not None:
        try:
            return check_stl_select(option, "--stl-select"), ""
        except ConfigError as e:
            raise ReportError(str(e)) from e
    rules = set()
    for run in runs:
        dm = run.summary.get("delta_m")
        if isinstance(dm, dict) and (dm.get("stl_select") or dm.get("enabled")):
            rules.add(str(dm.get("stl_select") or "unique"))
    if len(rules) > 1:
        return "unique", (f"the runs recorded different STL selection rules (delta_m.stl_select: {sorted(rules)}); "
                          "using unique: pass --stl-select to choose one")
    return (rules.pop() if rules else "unique"), ""


def _check_dataset(baselines: Baselines, runs: Sequence[Run]) -> None:
    used = {r.dataset for r in runs if r.dataset}
    base = set(baselines.datasets.values())
    if base and used and not used <= base:
        raise ConfigError(f"the baselines were trained on {sorted(base)}, the runs on {sorted(used)}")


def _recorded(runs: Sequence[Run], select: str) -> tuple[Baselines | None, str]:
    sources = []
    for run in runs:
        dm = run.summary.get("delta_m")
        if not isinstance(dm, dict) or not dm.get("enabled") or not isinstance(dm.get("source"), dict):
            return None, f"run {run.name} recorded no Δm baselines"
        sources.append(dm["source"])
    if not sources:
        return None, "no runs"
    first = json.dumps({k: sources[0].get(k) for k in ("kind", "paths", "id")}, sort_keys=True)
    if any(json.dumps({k: s.get(k) for k in ("kind", "paths", "id")}, sort_keys=True) != first for s in sources):
        return None, "the runs recorded different Δm baselines"
    source = sources[0]
    if source.get("kind") == "stl_runs":
        paths = [str(p) for p in source.get("paths") or []]
        absent = [p for p in paths if not Path(p).exists()]
        if absent:
            return None, f"the runs' STL baseline folders {absent} no longer exist"
        return _from_stl(paths, f"STL runs the runs were trained against (delta_m.stl_runs={paths})", select=select), ""
    if source.get("kind") == "published":
        entry = load_published(str(source.get("id")))
        desc = f"published baseline '{entry['id']}' ({entry['source'].get('paper')}; test values, also used for val)"
        return Baselines({"val": entry["metrics"], "test": entry["metrics"]}, desc,
                         datasets={t.rpartition("/")[0]: entry["dataset"] for t in entry["metrics"]}), ""
    return None, f"unknown recorded Δm source kind {source.get('kind')!r}"


def resolve_baselines(stl_option: Sequence[str | Path] | None, stl_runs: Sequence[Run], runs: Sequence[Run],
                      select: str = "unique") -> tuple[Baselines | None, str]:
    """The report's baselines (see the module docstring) or ``None`` and the reason.  ``stl_runs``: the STL runs
    among the folders, the unfinished ones included (``val_loss`` excludes their configurations); ``select``: the STL
    selection rule (:func:`stl_select_rule`)."""
    if stl_option:
        try:
            baselines = _from_stl(stl_option, f"STL runs from --stl {' '.join(map(str, stl_option))}", select=select)
            _check_dataset(baselines, runs)
        except ConfigError as e:
            raise ReportError(f"--stl: {e}") from e
        return baselines, ""
    done = [r for r in stl_runs if r.completed]
    reasons = []
    if done:
        try:
            unfinished = [r for r in stl_runs if not r.completed and (r.path / "summary.json").is_file()]
            read = [*done, *unfinished] if select == "val_loss" else done
            files = [r.path / "summary.json" for r in read]
            baselines = _from_stl(files, f"the {len(done)} completed STL run(s) among the given folders",
                                  {f.resolve(): r.summary for f, r in zip(files, read)}, select)
            _check_dataset(baselines, runs)
            return baselines, ""
        except ConfigError as e:
            reasons.append(f"STL runs among the given folders unusable: {e}")
    else:
        reasons.append("no STL runs among the given folders and no --stl")
    try:
        baselines, why = _recorded(runs, select)
    except ConfigError as e:
        baselines, why = None, str(e)
    if baselines is not None:
        return baselines, ""
    reasons.append(f"no common recorded baselines ({why})")
    return None, "; ".join(reasons)


def run_delta_m(run: Run, baselines: Baselines, split: str, convention: str, allow_missing: bool,
                source: str = "selected") -> tuple[float, str | None]:
    """Δm% of ``run`` on its targets against its dataset's baselines (NaN and the reason when it cannot be computed)."""
    own = baselines.for_run(run)
    if own is None:
        return math.nan, f"{run.name}: no STL baselines on its dataset '{run.dataset}'"
    baselines = own
    results = run.results(source)
    targets = set(run.targets)
    metrics = {k: v for k, v in metrics_for_split(results, split).items() if k.rpartition("/")[0] in targets}
    if not metrics:
        return math.nan, f"{run.name}: no selected {split} metrics of its targets {sorted(targets)}"
    try:
        d = delta_m(metrics, baselines.values[split], run.directions, convention, allow_missing)
    except ConfigError as e:
        return math.nan, f"{run.name} ({split}): {e}"
    gaps = [*d.missing_baselines, *d.undefined_baselines]
    return d.value, (f"{run.name} ({split}): Δm leaves out {gaps}" if gaps else None)


def resolve_per_dataset(stl_runs: Sequence[Run], runs: Sequence[Run], select: str = "unique") -> tuple[Baselines | None, str]:
    """Baselines per dataset when the report's runs span several datasets (e.g. a study's balanced and imbalanced
    arms, each with its own STL runs): each dataset's runs are compared with that dataset's STL runs only."""
    per: dict[str, Baselines] = {}
    reasons = []
    for name in sorted({str(r.dataset) for r in runs}):
        mine = [r for r in runs if str(r.dataset) == name]
        baselines, why = resolve_baselines(None, [r for r in stl_runs if str(r.dataset) == name], mine, select)
        if baselines is None:
            reasons.append(f"{name}: {why}")
        else:
            per[name] = baselines
    if not per:
        return None, "; ".join(reasons)
    values = {split: {f"{name}:{k}": v for name, b in per.items() for k, v in b.values.get(split, {}).items()}
              for split in ("val", "test")}
    desc = "per dataset: " + "; ".join(f"{name}: {b.description}" for name, b in per.items())
    if reasons:
        desc += " (no baselines: " + "; ".join(reasons) + ")"
    return Baselines(values, desc, per_dataset=per), ""
