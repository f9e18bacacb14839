"""Turning runs into a report: groups, mean ± std, Δm, Pareto counts, AU and conflict summaries (no file output).

Which runs enter the table: completed runs that are not STL runs, grouped by the group keys (the methods), and the
completed STL runs as **reference rows** (``STL <task>``, one per task, :func:`~mtl_bench.report.grouping.stl_groups`):
their metrics are shown like any group's, but they are the Δm baselines (no Δm of their own) and never enter the
Pareto comparison.  Running, stopped (``preempted``/``interrupted``) and failed jobs never enter it; each kind is listed
on its own.  Exploded runs (:mod:`mtl_bench.report.exploded`) stay in their group's row but out of its statistics,
Δm mean, Pareto counts and plots; the row counts them.  Metrics: the selected (``--results final``: final)
``<split>/<task>/<metric>`` values of each run's tasks, task losses excluded unless ``include_loss``; splits ``test``
(and ``val`` when asked).  Transfer runs (``mode: transfer``) enter the table like any run (their results: the
fine-tuned model on the clean split); their corruption results also make the δ of
:mod:`mtl_bench.report.robustness` (``Report.robustness``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mtl_bench.diagnostics.conflicts import PAIR_TYPES as CONFLICT_PAIRS
from mtl_bench.metrics.delta_m import CONVENTIONS
from mtl_bench.report.claims import Verdict, evaluate_claims, study_claims
from mtl_bench.report.curves import Curve, build_curves
from mtl_bench.report.baselines import Baselines, resolve_baselines, resolve_per_dataset, run_delta_m, stl_select_rule
from mtl_bench.report.exploded import DEFAULT_FACTOR, check_factor, find_exploded
from mtl_bench.report.grouping import (Group, Stat, group_runs, lookup, matches, mean_std, merge_directions,
                                       parse_key_values, repeated_seeds, sorted_seeds, stl_groups)
from mtl_bench.report.pareto import against_reference, pareto_optimal
from mtl_bench.report.robustness import Robustness, build_robustness, table_group_keys
from mtl_bench.report.runs import ReportError, Run, metric_records

CONFLICT_METRICS = ("cos", "mag_sim", "sign_conflict")


@dataclass
class ReportOptions:
    group_by: list[str] | None = None  # None: keys that vary across runs, minus the seed
    stl: list[str] | None = None  # explicit STL baseline folders
    convention: str = "per_metric"
    allow_missing: bool = False
    splits: tuple[str, ...] = ("test",)
    source: str = "selected"  # selected | final
    include_loss: bool = False
    pareto_metrics: list[str] | None = None  # "<task>/<metric>" keys; None: every target metric all runs report
    pareto_split: str = "test"
    pareto_ref: str | None = None  # "key=value[,key=value]"
    pareto_within: list[str] | None = None  # compare only runs sharing these keys' values (e.g. combiner)
    scatter: list[str] | None = None  # two "<task>/<metric>" keys; None: first metric of the first two targets
    transfer_group_by: list[str] | None = None  # groups of the MTL-side transfer runs (δ); None: see robustness.py
    explode_factor: float = DEFAULT_FACTOR  # see mtl_bench.report.exploded
    claims: dict[str, Any] | None = None  # claim specs (--claims FILE); None: the study.claims the runs recorded
    stl_select: str | None = None  # unique | val_loss (--stl-select); None: the delta_m.stl_select the runs recorded


@dataclass
class GroupRow:
    group: Group
    stats: dict[str, Stat]  # "<split>/<task>/<metric>" -> Stat (exploded runs left out)
    delta: dict[str, Stat]  # split -> Stat of the runs' Δm (exploded runs left out)
    selection: list[str]
    used: list[Run] = field(default_factory=list)  # the group's runs in its statistics (all but the exploded ones)
    pareto_optimal: int | None = None
    pareto_n: int = 0  # runs of the group in the Pareto comparison
    ref_not_dominated: int | None = None
    ref_dominating: int | None = None

    @property
    def n_exploded(self) -> int:
        return len(self.group.runs) - len(self.used)

    @property
    def exploded_seeds(self) -> list[Any]:
        used = {id(r) for r in self.used}
        return sorted_seeds(r for r in self.group.runs if id(r) not in used)


@dataclass
class Report:
    options: ReportOptions
    runs: list[Run]
    table_runs: list[Run]  # completed non-STL runs (exploded ones included)
    failed: list[Run]  # neither completed, running nor stopped
    stl_runs: list[Run]
    group_keys: list[str]
    rows: list[GroupRow]
    metric_keys: list[str]  # "<split>/<task>/<metric>" columns
    directions: dict[str, bool]  # "<task>/<metric>" -> higher is better
    baselines: Baselines | None
    baseline_reason: str
    run_metrics: dict[str, dict[str, float]]  # run path -> "<split>/<task>/<metric>" -> value (table runs)
    run_delta: dict[str, dict[str, float]]  # run path -> split -> Δm
    pareto_metrics: list[str]
    pareto_flags: dict[str, bool | None]  # run path -> Pareto-optimal in its pool (None: not comparable)
    pareto_ref: dict[str, str] | None
    scatter: list[str] | None
    selection_rules: list[str]
    au: dict[str, dict[str, Any]] = field(default_factory=dict)  # group label -> {"mean_rau": {task: Stat}, "dominated": Stat}
    conflicts: dict[str, dict[str, dict[str, Stat]]] = field(default_factory=dict)  # group -> pair -> metric -> Stat
    notes: list[str] = field(default_factory=list)
    robustness: Robustness | None = None  # corruption transferability δ, when there are transfer runs
    running: list[Run] = field(default_factory=list)  # a live process owns the folder
    stopped: list[Run] = field(default_factory=list)  # preempted / interrupted: resumable
    exploded: dict[str, str] = field(default_factory=dict)  # run path -> why (completed runs only)
    verdicts: list[Verdict] = field(default_factory=list)  # the study's claims, evaluated (mtl_bench.report.claims)
    curves: list[Curve] = field(default_factory=list)  # the study's curves (mtl_bench.report.curves)

    _group_labels: dict[int, str] | None = field(default=None, init=False, repr=False, compare=False)

    def group_of(self, run: Run) -> str:
        """The label of the group ``run`` belongs to ("" for runs outside the table); the first call indexes the rows."""
        if self._group_labels is None:
            self._group_labels = {}
            for row in self.rows:
                for r in row.group.runs:
                    self._group_labels.setdefault(id(r), row.group.label)
        return self._group_labels.get(id(run), "")


def conflict_stats(run: Run) -> dict[str, dict[str, float]]:
    """``{pair_type: {metric: mean}}`` over the whole run: ``summary["conflicts"]["all_epochs"]`` where present,
    else the equal-weight mean over epochs of the ``conflict/<pair>/<metric>/all/mean`` entries of metrics.jsonl."""
    conf = run.summary.get("conflicts")
    out: dict[str, dict[str, float]] = {}
    if isinstance(conf, dict) and isinstance(conf.get("all_epochs"), dict) and conf["all_epochs"]:
        for pair, stats in conf["all_epochs"].items():
            if isinstance(stats, dict):
                vals = {m: stats[m].get("mean") for m in CONFLICT_METRICS if isinstance(stats.get(m), dict)}
                vals = {m: float(v) for m, v in vals.items() if isinstance(v, (int, float))}
                if vals:
                    out[str(pair)] = vals
        return out
    sums: dict[tuple[str, str], list[float]] = {}
    for record in metric_records(run, ("epoch",)):
        for key, value in record.items():
            parts = key.split("/")
            if len(parts) == 5 and parts[0] == "conflict" and parts[3] == "all" and parts[4] == "mean" \
                    and parts[2] in CONFLICT_METRICS and isinstance(value, (int, float)):
                sums.setdefault((parts[1], parts[2]), []).append(float(value))
    for (pair, metric), values in sums.items():
        out.setdefault(pair, {})[metric] = math.fsum(values) / len(values)
    return out


def au_stats(run: Run) -> tuple[dict[str, float], float] | None:
    """``(mean_rau per task, dominated_fraction)`` from ``summary["au"]``, or ``None``."""
    au = run.summary.get("au")
    if not isinstance(au, dict) or not isinstance(au.get("mean_rau"), dict):
        return None
    rau = {str(t): float(v) for t, v in au["mean_rau"].items() if isinstance(v, (int, float))}
    dom = au.get("dominated_fraction")
    return rau, float(dom) if isinstance(dom, (int, float)) else math.nan


def _strip_split(key: str, split: str) -> str:
    return key[len(split) + 1:] if key.startswith(split + "/") else key


def _ordered_metric_keys(runs: Sequence[Run], split: str, include_loss: bool, source: str) -> list[str]:
    keys: list[str] = []
    for run in runs:
        for key in run.task_metrics(split, source, include_loss):
            if key not in keys:
                keys.append(key)
    return keys


def build_report(runs: Sequence[Run], options: ReportOptions) -> Report:
    """Everything the outputs show, computed from ``runs`` (the unfinished ones included) and ``options``."""
    if options.convention not in CONVENTIONS:
        raise ReportError(f"--delta-convention '{options.convention}' is invalid; choose one of {list(CONVENTIONS)}")
    notes: list[str] = []
    completed = [r for r in runs if r.completed]
    table_runs = [r for r in completed if not r.is_stl]
    stl_done = [r for r in completed if r.is_stl]
    exploded = find_exploded(completed, check_factor(options.explode_factor), options.source)
    if stl_done and not table_runs:
        notes.append("every completed run is an STL run: the table shows the STL runs, without Δm")

    group_keys = list(options.group_by) if options.group_by is not None else table_group_keys(table_runs)
    groups = [*stl_groups(stl_done, group_keys), *group_runs(table_runs, group_keys)]
    for g in groups:
        seeds = repeated_seeds(g.runs)
        if seeds:
            notes.append(f"group '{g.label}' holds several runs with the same seed {seeds}: "
                         "they differ in something the group keys do not show (pass --group-by)")

    shown = [*table_runs, *stl_done]
    metric_keys: list[str] = []
    for split in options.splits:
        metric_keys += _ordered_metric_keys(shown, split, options.include_loss, options.source)
    directions = merge_directions(shown, notes)

    stl_used = [r for r in runs if r.is_stl and not (r.completed and str(r.path) in exploded)]  # unfinished: val_loss
    baselines, reason, run_delta = _delta_m(table_runs, stl_used, options, notes)
    run_metrics = {str(r.path): {k: v for split in options.splits for k, v in r.task_metrics(split, options.source,
                                                                                          options.include_loss).items()}
                   for r in shown}
    rows = [_row(g, metric_keys, run_metrics, run_delta if baselines else None, options.splits, exploded, notes)
            for g in groups]
    selection_rules = sorted({r.selection_rule() for r in table_runs or stl_done})
    if len(selection_rules) > 1:
        notes.append(f"model-selection rules differ between runs: {selection_rules} (see the selection column)")

    pareto_metrics, flags, ref, scatter = _pareto([r for r in table_runs if str(r.path) not in exploded], rows,
                                                  directions, options, notes)

    report = Report(options, list(runs), table_runs, [r for r in runs if r.failed], [r for r in runs if r.is_stl],
                    group_keys, rows, metric_keys, directions, baselines, reason, run_metrics, run_delta, pareto_metrics,
                    flags, ref, scatter, selection_rules, notes=notes, running=[r for r in runs if r.running],
                    stopped=[r for r in runs if r.stopped], exploded=exploded)
    _diagnostics(report)
    report.robustness = build_robustness(runs, options.transfer_group_by, options.include_loss)
    specs = options.claims if options.claims is not None else study_claims(completed, notes)
    report.verdicts = evaluate_claims(report, specs)
    report.curves = build_curves(report, study_claims(completed, notes, "curves"))
    return report


def _delta_m(table_runs: list[Run], stl_runs: list[Run], options: ReportOptions,
             notes: list[str]) -> tuple[Baselines | None, str, dict[str, dict[str, float]]]:
    """The baselines (from the non-exploded STL runs; the unfinished ones count for ``stl_select=val_loss``), why
    there are none, and every table run's Δm per split."""
    done = [r for r in stl_runs if r.completed]
    if not table_runs:
        return None, "only STL runs" if done else "no completed run", {}
    select, note = stl_select_rule(table_runs, options.stl_select)
    if note:
        notes.append(f"Δm: {note}")
    several = len({str(r.dataset) for r in [*table_runs, *done]}) > 1
    if several and not options.stl:
        baselines, reason = resolve_per_dataset(stl_runs, table_runs, select)
    else:
        baselines, reason = resolve_baselines(options.stl, stl_runs, table_runs, select)
    run_delta: dict[str, dict[str, float]] = {}
    for run in table_runs if baselines is not None else ():
        for split in options.splits:
            value, note = run_delta_m(run, baselines, split, options.convention, options.allow_missing, options.source)
            run_delta.setdefault(str(run.path), {})[split] = value
            if note:
                notes.append(f"Δm: {note}")
    return baselines, reason, run_delta


def _row(g: Group, metric_keys: list[str], run_metrics: dict[str, dict[str, float]],
         run_delta: dict[str, dict[str, float]] | None, splits: Sequence[str], exploded: dict[str, str],
         notes: list[str]) -> GroupRow:
    """One table row: mean ± std over the group's runs that did not explode; Δm only for method groups."""
    used = [r for r in g.runs if str(r.path) not in exploded]
    stats = {k: mean_std(run_metrics[str(r.path)][k] for r in used if k in run_metrics[str(r.path)]) for k in metric_keys}
    stats = {k: s for k, s in stats.items() if s.n}
    for k, s in stats.items():
        if s.n != len(used):
            notes.append(f"group '{g.label}': {k} is reported by {s.n} of its {len(used)} runs")
    delta = ({split: mean_std(run_delta[str(r.path)][split] for r in used) for split in splits}
             if run_delta is not None and not g.reference else {})
    selection = sorted({r.selection_rule() for r in g.runs})
    if len(selection) > 1:
        notes.append(f"group '{g.label}': its runs used different model-selection rules {selection}")
    return GroupRow(g, stats, delta, selection, used)


def _pareto(table_runs: list[Run], rows: list[GroupRow], directions: dict[str, bool], options: ReportOptions,
            notes: list[str]) -> tuple[list[str], dict[str, bool | None], dict[str, str] | None, list[str] | None]:
    """The Pareto metrics, every table run's Pareto-optimality flag (None: not compared), the ``--pareto-ref``
    filter and the scatter plot's two metrics; sets the Pareto counts of the method rows."""
    metrics = _pareto_metrics(table_runs, directions, options)
    hib = [directions[m] for m in metrics]
    flags: dict[str, bool | None] = {str(r.path): None for r in table_runs}
    points = _pareto_points(table_runs, metrics, options, notes) if metrics else {}
    within = _pareto_within(table_runs, options, notes)
    pools: dict[tuple[str | None, ...], list[Run]] = {}
    for run in table_runs:
        if str(run.path) in points:
            pools.setdefault(_pool_key(run, within), []).append(run)
    for pool in pools.values():
        for run, ok in zip(pool, pareto_optimal([points[str(r.path)] for r in pool], hib)):
            flags[str(run.path)] = ok
    ref = _pareto_ref(table_runs, options)
    for row in rows:
        if row.group.reference:  # STL runs: the baselines, not a method
            continue
        eligible = [r for r in row.used if str(r.path) in points]
        row.pareto_n = len(eligible)
        row.pareto_optimal = sum(1 for r in eligible if flags[str(r.path)]) if metrics else None
        if ref is not None and metrics:
            row.ref_not_dominated, row.ref_dominating = _against_ref(eligible, points, pools, within, ref, hib)
    return metrics, flags, ref, _scatter_metrics(table_runs, metrics, directions, options, notes)


def _pareto_metrics(table_runs: list[Run], directions: dict[str, bool], options: ReportOptions) -> list[str]:
    """``--pareto-metrics``, or every task metric all table runs report (``ReportError`` for unknown ones)."""
    split = options.pareto_split
    if options.pareto_metrics:
        metrics = [_strip_split(m, split) for m in options.pareto_metrics]
    else:
        common: list[str] | None = None
        for run in table_runs:
            keys = [_strip_split(k, split) for k in run.task_metrics(split, options.source, options.include_loss, run.targets)]
            common = keys if common is None else [k for k in common if k in keys]
        metrics = common or []
    unknown = [m for m in metrics if m not in directions]
    if unknown:
        raise ReportError(f"Pareto metric(s) {unknown} are not reported by the runs; known: {sorted(directions)}")
    return metrics


def _pareto_points(table_runs: list[Run], metrics: list[str], options: ReportOptions,
                   notes: list[str]) -> dict[str, list[float]]:
    """Each run's vector of Pareto metrics, for the runs that have a finite value of each."""
    points: dict[str, list[float]] = {}
    for run in table_runs:
        res = run.results(options.source)
        vec = [res.get(f"{options.pareto_split}/{m}", math.nan) for m in metrics]
        if all(math.isfinite(v) for v in vec):
            points[str(run.path)] = vec
        else:
            notes.append(f"Pareto: {run.name} lacks a finite value of {metrics} and is left out")
    return points


def _pareto_within(table_runs: list[Run], options: ReportOptions, notes: list[str]) -> list[str]:
    """The keys whose values a run shares with the runs it is compared with: the dataset, then ``--pareto-within``."""
    # runs on different datasets (or dataset variants) are never compared with each other
    within = ["dataset", *[k for k in options.pareto_within or [] if k != "dataset"]]
    if len({lookup(r, "dataset") for r in table_runs}) > 1:
        notes.append("Pareto: runs are compared within their dataset only (the runs use several datasets)")
    return within


def _pool_key(run: Run, within: list[str]) -> tuple[str | None, ...]:
    return tuple(lookup(run, k) for k in within)


def _pareto_ref(table_runs: list[Run], options: ReportOptions) -> dict[str, str] | None:
    """The ``--pareto-ref`` key-value filter (None without it); ``ReportError`` when it matches no run."""
    ref = parse_key_values(options.pareto_ref, "--pareto-ref") if options.pareto_ref else None
    if ref is not None and not any(matches(r, ref) for r in table_runs):
        seen = {k: sorted({str(lookup(r, k)) for r in table_runs}) for k in ref}
        raise ReportError(f"--pareto-ref '{options.pareto_ref}' matches no run; values seen: {seen}")
    return ref


def _against_ref(eligible: list[Run], points: dict[str, list[float]], pools: dict[tuple[str | None, ...], list[Run]],
                 within: list[str], ref: dict[str, str], hib: list[bool]) -> tuple[int, int]:
    """Over ``eligible`` runs: how many no reference run of their pool dominates, and how many dominate one."""
    nd = dom = 0
    for run in eligible:
        refs = [points[str(r.path)] for r in pools[_pool_key(run, within)] if matches(r, ref)]
        a, b = against_reference([points[str(run.path)]], refs, hib)
        nd, dom = nd + a, dom + b
    return nd, dom


def _scatter_metrics(table_runs: list[Run], metrics: list[str], directions: dict[str, bool], options: ReportOptions,
                     notes: list[str]) -> list[str] | None:
    """The two metrics of the Pareto scatter plot: ``--scatter``, else the first Pareto metric of the first two tasks."""
    if options.scatter:
        scatter = [_strip_split(m, options.pareto_split) for m in options.scatter]
        if len(scatter) != 2 or any(m not in directions for m in scatter):
            raise ReportError(f"--scatter needs two '<task>/<metric>' keys the runs report, got {options.scatter}; "
                              f"known: {sorted(directions)}")
        return scatter
    first: dict[str, str] = {}
    for m in metrics:
        first.setdefault(m.rpartition("/")[0], m)
    scatter = list(first.values())[:2] if len(first) >= 2 else None
    if scatter is None and table_runs:
        notes.append("no Pareto scatter plot: the Pareto metrics cover fewer than two tasks (choose two with --scatter)")
    return scatter


def _diagnostics(report: Report) -> None:
    for row in report.rows:
        label = row.group.label
        aus = [a for a in (au_stats(r) for r in row.used) if a is not None]
        if aus:
            tasks = [t for t in aus[0][0]]
            report.au[label] = {"mean_rau": {t: mean_std(a[0][t] for a in aus if t in a[0]) for t in tasks},
                                "dominated": mean_std(a[1] for a in aus)}
        confs = [c for c in (conflict_stats(r) for r in row.used) if c]
        if confs:
            pairs = [p for p in CONFLICT_PAIRS if any(p in c for c in confs)] + \
                    sorted({p for c in confs for p in c} - set(CONFLICT_PAIRS))
            report.conflicts[label] = {
                p: {m: mean_std(c[p][m] for c in confs if m in c.get(p, {})) for m in CONFLICT_METRICS
                    if any(m in c.get(p, {}) for c in confs)}
                for p in pairs
            }


def arrowed(name: str, higher_is_better: bool | None) -> str:
    """``name ↑`` / ``name ↓`` by the direction (``name`` when it is unknown)."""
    return name + ("" if higher_is_better is None else (" ↑" if higher_is_better else " ↓"))


def metric_label(key: str, directions: dict[str, bool]) -> str:
    """``test/t0/mse ↓``: a ``<split>/<task>/<metric>`` key and its direction arrow."""
    return arrowed(key, directions.get(key.split("/", 1)[1]) if "/" in key else None)


def relpath(path: Path, bases: Sequence[Path]) -> str:
    """``path`` relative to the parent of the first given folder containing it (``sweep/3_seed=1``), else as is."""
    for base in bases:
        base = base.resolve()
        if path.resolve() == base or base in path.resolve().parents:
            return str(path.resolve().relative_to(base.parent))
    return str(path)
