"""Corruption transferability δ of MTL against STL backbones (Elich et al., App. A6) from ``mode: transfer`` runs.

**Input.**  A transfer run fine-tunes a pre-trained backbone (``summary["transfer"]["source"]``: its run folder,
``mode`` ``mtl`` or ``stl``, tasks, seed, combiner, optimizer) and evaluates it on the clean split
(``transfer.clean``: ``{"<task>/<metric>": value}``) and on every corruption × severity
(``transfer.corrupted[<corruption>][<severity>]``).  Runs whose source mode is ``stl`` are the **STL side** (one
task each); every other completed transfer run is on the **MTL side**.

**Definition.**  For a task metric M with recorded direction (``metric_directions``), each run gives the ratios
r_{c,s} = M_{c,s} / M_clean (corrupted over clean, the run's own clean value).  Per side the ratios are averaged
over its runs (the seeds), then

    δ_{t,m,c,s} = (−1)^{hib(m)} · (r̄^{MTL}_{c,s} − r̄^{STL}_{c,s})         (hib = higher is better: 1, else 0)

so **δ < 0 means the MTL backbone degrades less** than the STL backbone, whatever the metric's direction.
δ_{t,m} is the mean of δ_{t,m,c,s} over the corruption × severity cells both sides evaluated; a task's δ_t is the
mean of its metrics' δ_{t,m} (each metric weighted equally); a group's δ is the mean of its tasks' δ_t.  δ is linear
in the ratios, so it equals the mean of seed-paired differences when the seeds pair up.  The std shown is the sample
std (ddof = 1) over the MTL runs of each run's own δ against the STL mean ratios (r_i − r̄^{STL}, same averaging);
none for a single run.  The heatmap cell (c, s) of a group is the mean over its tasks of the task's mean over
metrics of δ_{t,m,c,s}.

**Left out, never fatal** (named in the report): metrics without a recorded direction, metrics the STL runs do not
report, metrics with a clean value that is 0, negative or not finite in any run (the ratio is then undefined or
sign-inverted), non-finite corrupted values (that cell of that run), task losses (unless ``include_loss``).  A task
with no STL-source transfer run is **missing** (listed), and the group's mean runs over the remaining tasks.

**Groups (MTL side).**  By ``group_by`` (``--transfer-group-by``), else by the source's combiner and optimizer
(always shown) plus every summary field of :data:`SUMMARY_KEYS` and every override or group choice that splits the
MTL-side runs further, except the seed and keys whose value is the path of the run's source (its folder or
checkpoint: they change with the source seed).  A key determined by the ones before (a transfer run's ``combiner``
override is its source's combiner) is not added.  :func:`table_group_keys` applies the same rule to the main table.

**STL baselines of a group's task t**: completed STL-source transfer runs whose tasks are ``[t]`` and whose
dataset, ``transfer.heads`` and ``transfer.split`` equal the group's (where recorded).  For every other group key
(except the source combiner, mode and tasks, which mean nothing for an STL backbone) whose value differs among
those candidates, only the candidates with the group's value are kept; remaining differences are averaged over
and noted.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mtl_bench.report.grouping import Group, Stat, default_group_keys, group_runs, lookup, merge_directions, repeated_seeds
from mtl_bench.report.claims.stats import Interval, t_interval
from mtl_bench.report.runs import Run, as_float

Cell = tuple[str, int]  # (corruption, severity)

SUMMARY_KEYS = ("transfer.source.mode", "transfer.source.tasks", "transfer.source.combiner", "transfer.source.optimizer",
                "transfer.heads", "transfer.split")
ALWAYS_KEYS = ("transfer.source.combiner", "transfer.source.optimizer")  # the identity of an MTL backbone: always in the label
STL_FREE_KEYS = frozenset({"transfer.source.mode", "transfer.source.tasks", "transfer.source.combiner"})


def corruption_order(names: Iterable[str]) -> list[str]:
    """``names`` in the standard order (:data:`mtl_bench.corruptions.ops.ALL`: the ImageNet-C families noise, blur,
    weather, digital, then the extra ones), unknown names last, alphabetically."""
    from mtl_bench.corruptions.ops import ALL

    names = set(names)
    return [c for c in ALL if c in names] + sorted(names - set(ALL))


# ------------------------------------------------------------------------------------------------ reading runs


@dataclass
class TransferResult:
    """The ``transfer`` block of one completed transfer run."""

    run: Run
    source: dict[str, Any]
    clean: dict[str, float]
    corrupted: dict[Cell, dict[str, float]]
    heads: str | None
    split: str | None
    backend: str  # the ``corruptions`` provenance as text

    @property
    def source_mode(self) -> str | None:
        mode = self.source.get("mode")
        return str(mode) if mode is not None else None

    @property
    def is_stl(self) -> bool:
        return self.source_mode == "stl"

    @property
    def tasks(self) -> list[str]:
        """Tasks with clean metrics, in the run's task order."""
        have = list(dict.fromkeys(k.rpartition("/")[0] for k in self.clean if "/" in k))
        return [t for t in self.run.tasks if t in have] + [t for t in have if t not in self.run.tasks]


def describe_corruptions(info: Any) -> str:
    """``backend mtl_bench, version 1, numpy 2.1, seed 0`` from a summary's ``transfer.corruptions`` dict: the
    implementation (backend, version, library versions) and the corruption seed; lists and local paths are left out."""
    if not isinstance(info, Mapping) or not info:
        return "unknown"
    head = [f"{k} {info[k]}" for k in ("backend", "version") if k in info]
    rest = [f"{k} {v}" for k, v in info.items() if k not in ("backend", "version", "seed", "cache_dir", "dataset_fingerprint")
            and isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    seed = [f"seed {info['seed']}"] if "seed" in info else []
    return ", ".join(head + rest + seed)


def read_transfer(run: Run) -> tuple[TransferResult | None, str | None]:
    """The run's transfer results, or ``None`` and why they cannot be used."""
    block = run.summary.get("transfer")
    if not isinstance(block, dict):
        return None, "no 'transfer' block in summary.json"
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    clean = block.get("clean")
    corrupted = block.get("corrupted")
    if not isinstance(clean, dict) or not clean:
        return None, "'transfer.clean' is missing or empty"
    if not isinstance(corrupted, dict) or not corrupted:
        return None, "'transfer.corrupted' is missing or empty"
    cells: dict[Cell, dict[str, float]] = {}
    for corruption, by_sev in corrupted.items():
        if not isinstance(by_sev, dict):
            return None, f"'transfer.corrupted.{corruption}' is not a severity → metrics mapping"
        for sev, metrics in by_sev.items():
            try:
                severity = int(str(sev))
            except ValueError:
                return None, f"'transfer.corrupted.{corruption}' has a severity {sev!r} that is not an integer"
            if isinstance(metrics, dict):
                cells[(str(corruption), severity)] = {str(k): as_float(v) for k, v in metrics.items()}
    heads, split = block.get("heads"), block.get("split")
    return TransferResult(run, dict(source), {str(k): as_float(v) for k, v in clean.items()}, cells,
                          str(heads) if heads is not None else None, str(split) if split is not None else None,
                          describe_corruptions(block.get("corruptions"))), None


# ------------------------------------------------------------------------------------------------ grouping


def _path_parts(text: str) -> tuple[str, ...]:
    return tuple(p for p in Path(text.strip().strip("'\"")).expanduser().parts if p not in ("", "."))


def is_source_ref(value: Any, run: Run) -> bool:
    """Whether ``value`` (an override value) names the run's source folder or checkpoint: equal as text, or a path
    (holding a ``/``) of which one is a suffix of the other (a relative override against an absolute recorded path)."""
    block = run.summary.get("transfer")
    source = block.get("source") if isinstance(block, dict) else None
    if not isinstance(source, dict) or value is None:
        return False
    text = str(value).strip().strip("'\"")
    mine = _path_parts(text)
    if not mine:
        return False
    for ref in (source.get("dir"), source.get("checkpoint")):
        if not isinstance(ref, str) or not ref.strip():
            continue
        if text == ref.strip():
            return True
        if "/" not in text:
            continue
        theirs = _path_parts(ref)
        n = min(len(mine), len(theirs))
        if n and mine[-n:] == theirs[-n:]:
            return True
    return False


def _source_keys(runs: Sequence[Run]) -> set[str]:
    return {k for r in runs if r.is_transfer for k, v in r.overrides.items() if is_source_ref(v, r)}


def _varies(runs: Sequence[Run], key: str) -> bool:
    return len({lookup(r, key) for r in runs}) > 1


def _refining(runs: Sequence[Run], keys: list[str], candidates: Iterable[str]) -> list[str]:
    """``keys`` plus each candidate that splits the runs further (a key determined by the ones before adds nothing,
    e.g. the ``combiner`` override of a transfer run, which is its source's combiner)."""
    keys = list(keys)
    for key in candidates:
        if key in keys:
            continue
        before = len({tuple(lookup(r, k) for k in keys) for r in runs})
        if len({tuple(lookup(r, k) for k in [*keys, key]) for r in runs}) > before:
            keys.append(key)
    return keys


def table_group_keys(runs: Sequence[Run]) -> list[str]:
    """Default keys of the main table: :func:`default_group_keys`, and when there are transfer runs, without the keys
    naming their source path (they change with the source seed) and with the :data:`SUMMARY_KEYS` that split the runs
    further (so the seeds of one backbone fall together)."""
    keys = default_group_keys(runs)
    transfer = [r for r in runs if r.is_transfer]
    if not transfer:
        return keys
    drop = _source_keys(transfer)
    return _refining(runs, [k for k in keys if k not in drop], SUMMARY_KEYS)


def transfer_group_keys(runs: Sequence[Run]) -> list[str]:
    """Default keys of the MTL-side groups: the source combiner and optimizer (where recorded), then the other
    :data:`SUMMARY_KEYS` and the varying overrides/choices (seed and source paths excluded) that split the runs further."""
    drop = _source_keys(runs)
    keys = [k for k in ALWAYS_KEYS if any(lookup(r, k) is not None for r in runs)]
    return _refining(runs, keys, [*SUMMARY_KEYS, *(k for k in default_group_keys(runs) if k not in drop)])


# ------------------------------------------------------------------------------------------------ δ


@dataclass
class CellDelta:
    ratio_mtl: float  # mean over the MTL runs of corrupted / clean
    ratio_stl: float
    n_mtl: int
    n_stl: int
    raw: float  # ratio_mtl − ratio_stl
    delta: float  # (−1)^hib · raw: < 0 = MTL degrades less


@dataclass
class MetricDelta:
    task: str
    metric: str
    higher_is_better: bool
    cells: dict[Cell, CellDelta]
    delta: Stat  # mean over cells; std over the MTL runs' own δ
    per_run: dict[str, float]  # MTL run path -> its δ against the STL mean ratios

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else math.nan


def _stat(mean: float, per_run: Mapping[str, float]) -> Stat:
    vals = [v for v in per_run.values() if math.isfinite(v)]
    return Stat(mean, statistics.stdev(vals) if len(vals) > 1 else None, len(vals), vals)


def metric_delta(task: str, metric: str, higher_is_better: bool, mtl: Mapping[str, Mapping[Cell, float]],
                 stl: Sequence[Mapping[Cell, float]]) -> MetricDelta:
    """δ of one metric from per-run ratios: ``mtl`` = {run path: {cell: ratio}}, ``stl`` = [{cell: ratio}, ...]."""
    sign = -1.0 if higher_is_better else 1.0

    def side_mean(maps: Iterable[Mapping[Cell, float]]) -> dict[Cell, tuple[float, int]]:
        pooled: dict[Cell, list[float]] = {}
        for m in maps:
            for cell, r in m.items():
                if math.isfinite(r):
                    pooled.setdefault(cell, []).append(r)
        return {c: (_mean(v), len(v)) for c, v in pooled.items()}

    m_mean, s_mean = side_mean(mtl.values()), side_mean(stl)
    cells = {}
    for cell in m_mean:
        if cell in s_mean:
            (rm, nm), (rs, ns) = m_mean[cell], s_mean[cell]
            cells[cell] = CellDelta(rm, rs, nm, ns, rm - rs, sign * (rm - rs) + 0.0)  # + 0.0: no -0.0
    per_run = {}
    for path, ratios in mtl.items():
        own = [sign * (r - s_mean[c][0]) for c, r in ratios.items() if c in cells and math.isfinite(r)]
        if own:
            per_run[path] = _mean(own)
    return MetricDelta(task, metric, higher_is_better, cells, _stat(_mean(c.delta for c in cells.values()), per_run), per_run)


@dataclass
class TaskDelta:
    task: str
    metrics: list[MetricDelta]
    delta: Stat  # mean over the task's metrics
    per_run: dict[str, float]
    stl_runs: list[Run]


def _combine(parts: Sequence[Any]) -> tuple[Stat, dict[str, float]]:
    """Mean of the parts' δ (equal weights) and each MTL run's mean of its own δ over the parts."""
    per_run: dict[str, list[float]] = {}
    for p in parts:
        for path, v in p.per_run.items():
            per_run.setdefault(path, []).append(v)
    runs = {path: _mean(v) for path, v in per_run.items()}
    return _stat(_mean(p.delta.mean for p in parts), runs), runs


@dataclass
class GroupDelta:
    group: Group  # the MTL-side runs
    tasks: list[TaskDelta]
    delta: Stat  # mean over self.tasks
    per_run: dict[str, float]
    missing: dict[str, str] = field(default_factory=dict)  # task -> why it has no δ
    left_out: list[tuple[str, str]] = field(default_factory=list)  # ("<task>/<metric>", why)
    notes: list[str] = field(default_factory=list)

    def task(self, name: str) -> TaskDelta | None:
        return next((t for t in self.tasks if t.task == name), None)


def cell_delta(group: GroupDelta, cell: Cell, task: str | None = None) -> float:
    """The heatmap value of ``cell``: a task's mean over its metrics of δ_{t,m,c,s}; without ``task`` the mean of
    that over the group's tasks that have the cell (NaN where none has it)."""
    tasks = group.tasks if task is None else [t for t in group.tasks if t.task == task]
    per_task = []
    for t in tasks:
        vals = [m.cells[cell].delta for m in t.metrics if cell in m.cells]
        if vals:
            per_task.append(_mean(vals))
    return _mean(per_task)


def delta_matrix(group: GroupDelta, corruptions: Sequence[str], severities: Sequence[int], task: str | None = None) -> list[list[float]]:
    """Rows = ``corruptions``, columns = ``severities``: :func:`cell_delta` (what the heatmap shows)."""
    return [[cell_delta(group, (c, s), task) for s in severities] for c in corruptions]


@dataclass
class Robustness:
    group_keys: list[str]
    groups: list[GroupDelta]
    corruptions: list[str]  # standard order
    severities: list[int]
    backends: list[str]
    splits: list[str]
    heads: list[str]
    mtl_runs: list[Run]
    stl_runs: list[Run]
    ignored: list[tuple[Run, str]]
    notes: list[str]

    def panels(self, group: GroupDelta, max_tasks: int = 4) -> list[tuple[str, list[list[float]]]]:
        """The heatmap panels of ``group``: the mean over tasks, then one per task when there are 2..``max_tasks``."""
        return [(title, delta_matrix(group, self.corruptions, self.severities, task))
                for title, task in self.panel_tasks(group, max_tasks)]

    def panel_tasks(self, group: GroupDelta, max_tasks: int = 4) -> list[tuple[str, str | None]]:
        tasks = [t.task for t in group.tasks] if 1 < len(group.tasks) <= max_tasks else []
        return [("mean over tasks", None), *((t, t) for t in tasks)]

    def significance(self, group: GroupDelta, task: str | None = None) -> list[list[Interval]]:
        """Rows = corruptions, columns = severities: the 95 % t interval over seeds of the seed-paired cell δ (each
        MTL run against the STL run of the same seed and task), what the heatmap marks as significant."""
        per_seed = paired_cell_deltas(group, task)
        return [[t_interval([v[(c, s)] for v in per_seed.values() if (c, s) in v]) for s in self.severities]
                for c in self.corruptions]


def paired_cell_deltas(group: GroupDelta, task: str | None = None) -> dict[Any, dict[Cell, float]]:
    """``{seed: {cell: δ}}``: per seed, the MTL run's signed ratio minus the same-seed STL run's, per metric, averaged
    over the task's metrics and then over the tasks (``task``: that one only).  Seeds without both sides are left out."""
    per_seed: dict[Any, dict[Cell, list[float]]] = {}
    for t in group.tasks:
        if task is not None and t.task != task:
            continue
        stl_by_seed = {r.seed: read_transfer(r)[0] for r in t.stl_runs}
        for run in group.group.runs:
            mine, theirs = read_transfer(run)[0], stl_by_seed.get(run.seed)
            if mine is None or theirs is None:
                continue
            cells: dict[Cell, list[float]] = {}
            for m in t.metrics:
                sign = -1.0 if m.higher_is_better else 1.0
                a, b = _ratios(mine, m.key), _ratios(theirs, m.key)
                for cell in m.cells:
                    if math.isfinite(a.get(cell, math.nan)) and math.isfinite(b.get(cell, math.nan)):
                        cells.setdefault(cell, []).append(sign * (a[cell] - b[cell]))
            for cell, vals in cells.items():
                per_seed.setdefault(run.seed, {}).setdefault(cell, []).append(_mean(vals))
    return {seed: {c: _mean(v) for c, v in cells.items()} for seed, cells in per_seed.items()}


def _same(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def _group_value(results: Sequence[TransferResult], attr: str) -> str | None:
    vals = {getattr(r, attr) for r in results} - {None}
    return next(iter(vals)) if len(vals) == 1 else None


def _stl_for_task(group: Group, task: str, mtl: Sequence[TransferResult], stl: Sequence[TransferResult],
                  group_keys: Sequence[str], notes: list[str]) -> tuple[list[TransferResult], str | None]:
    datasets = {r.run.dataset for r in mtl} - {None}
    heads, split = _group_value(mtl, "heads"), _group_value(mtl, "split")
    cands = [s for s in stl if s.tasks == [task] and (not datasets or s.run.dataset is None or s.run.dataset in datasets)
             and _same(s.heads, heads) and _same(s.split, split)]
    if not cands:
        where = f" on dataset {', '.join(sorted(datasets))}" if datasets else ""
        extra = "".join(f", {n} {v}" for n, v in (("heads", heads), ("split", split)) if v is not None)
        return [], f"no completed STL-source transfer run for {task}{where}{extra}"
    for key in group_keys:
        if key in STL_FREE_KEYS or len({lookup(s.run, key) for s in cands}) < 2:
            continue
        want = group.values.get(key)
        kept = [s for s in cands if lookup(s.run, key) == want]
        if not kept:
            return [], f"the STL-source transfer runs for {task} differ in {key} but none has {key}={want}"
        cands = kept
    runs = [s.run for s in cands]
    differ = [k for k in transfer_group_keys(runs) if k not in ALWAYS_KEYS and _varies(runs, k)]
    if differ:
        notes.append(f"the STL baseline of {task} averages {len(runs)} runs that differ in {differ}")
    seeds = repeated_seeds(runs)
    if seeds:
        notes.append(f"the STL baseline of {task} holds several runs with the same seed {seeds}")
    return cands, None


def _ratios(result: TransferResult, key: str) -> dict[Cell, float]:
    clean = result.clean[key]
    return {cell: metrics[key] / clean for cell, metrics in result.corrupted.items()
            if key in metrics and math.isfinite(metrics[key])}


def _bad_clean(results: Sequence[TransferResult], key: str) -> str | None:
    for r in results:
        v = r.clean.get(key, math.nan)
        if not math.isfinite(v):
            return f"clean value not finite in {r.run.name}"
        if v == 0:
            return f"clean value 0 in {r.run.name} (ratio undefined)"
        if v < 0:
            return f"clean value {v:g} < 0 in {r.run.name} (ratio sign-inverted)"
    return None


def _group_delta(group: Group, results: dict[str, TransferResult], stl: Sequence[TransferResult], group_keys: Sequence[str],
                 directions: Mapping[str, bool], include_loss: bool) -> GroupDelta:
    mtl = [results[str(r.path)] for r in group.runs]
    notes: list[str] = []
    seeds = repeated_seeds(group.runs)
    if seeds:
        notes.append(f"the group holds several runs with the same seed {seeds} (pass --transfer-group-by)")
    tasks = list(dict.fromkeys(t for r in mtl for t in r.tasks))
    task_deltas: list[TaskDelta] = []
    missing: dict[str, str] = {}
    left_out: list[tuple[str, str]] = []
    for task in tasks:
        baseline, why = _stl_for_task(group, task, mtl, stl, group_keys, notes)
        if why:
            missing[task] = why
            continue
        keys = list(dict.fromkeys(k for r in mtl for k in r.clean if k.rpartition("/")[0] == task))
        metrics: list[MetricDelta] = []
        for key in keys:
            name = key.rpartition("/")[2]
            if name == "loss" and not include_loss:
                continue
            have = [r for r in mtl if key in r.clean]
            reason = None
            if key not in directions:
                reason = "no metric direction recorded"
            elif not all(key in s.clean for s in baseline):
                reason = "not reported by every STL baseline run"
            else:
                reason = _bad_clean([*have, *baseline], key)
            if reason is None:
                m = metric_delta(task, name, directions[key], {str(r.run.path): _ratios(r, key) for r in have},
                                 [_ratios(s, key) for s in baseline])
                if m.cells:
                    metrics.append(m)
                    continue
                reason = "no corruption × severity evaluated on both sides"
            left_out.append((key, reason))
        if not metrics:
            missing[task] = "no metric with a usable δ (see the left-out metrics)"
            continue
        stat, per_run = _combine(metrics)
        task_deltas.append(TaskDelta(task, metrics, stat, per_run, [s.run for s in baseline]))
    stat, per_run = _combine(task_deltas) if task_deltas else (Stat(math.nan, None, 0, []), {})
    return GroupDelta(group, task_deltas, stat, per_run, missing, left_out, notes)


def build_robustness(runs: Sequence[Run], group_by: Sequence[str] | None = None, include_loss: bool = False) -> Robustness | None:
    """δ per MTL group, task and metric from the completed transfer runs among ``runs`` (``None`` if there are none)."""
    transfer = [r for r in runs if r.completed and r.is_transfer]
    if not transfer:
        return None
    results: dict[str, TransferResult] = {}
    ignored: list[tuple[Run, str]] = []
    for run in transfer:
        res, why = read_transfer(run)
        if res is None:
            ignored.append((run, why or "unreadable"))
        else:
            results[str(run.path)] = res
    notes: list[str] = []
    directions = merge_directions((res.run for res in results.values()), notes)
    stl = [r for r in results.values() if r.is_stl]
    mtl_runs = [r.run for r in results.values() if not r.is_stl]
    group_keys = list(group_by) if group_by is not None else transfer_group_keys(mtl_runs)
    groups = [_group_delta(g, results, stl, group_keys, directions, include_loss) for g in group_runs(mtl_runs, group_keys)]
    if not mtl_runs:
        notes.append("no MTL-source transfer run: δ needs one (only STL-source transfer runs were found)")
    used = [results[str(r.path)] for g in groups for r in g.group.runs]
    used += list({id(s): results[str(s.path)] for g in groups for t in g.tasks for s in t.stl_runs}.values())
    cells = {c for g in groups for t in g.tasks for m in t.metrics for c in m.cells}
    backends = sorted({r.backend for r in used})
    if len(backends) > 1:
        notes.append(f"the runs used different corruption implementations {backends}: δ compares them as they are")
    n_cells = {(g.group.label, m.key): len(m.cells) for g in groups for t in g.tasks for m in t.metrics}
    if len(set(n_cells.values())) > 1:
        notes.append("δ averages over different numbers of corruption × severity cells: "
                     + ", ".join(f"{lbl} {key}: {n}" for (lbl, key), n in n_cells.items()))
    return Robustness(group_keys, groups, corruption_order(c for c, _ in cells), sorted({s for _, s in cells}), backends,
                      sorted({r.split for r in used if r.split}), sorted({r.heads for r in used if r.heads}),
                      mtl_runs, [s.run for s in stl], ignored, notes)
