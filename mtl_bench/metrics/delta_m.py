"""Δm%: the average relative change of a multi-task model against single-task (STL) baselines.

For a metric k with value M_k, baseline B_k and direction hib_k (higher is better), the signed relative change
is r_k = (−1)^{hib_k} (M_k − B_k) / B_k, so **r_k > 0 means worse than the baseline** and Δm is
lower-is-better (negative = the MTL model beats its STL baselines on average).  Two aggregation rules:

* ``per_metric`` (Maninis et al. 2019 as implemented by CAGrad ``nyuv2/plot.py`` / ``cityscapes/plot.py``,
  Nash-MTL ``experiments/nyuv2/utils.py::delta_fn`` and FAMO): Δm = 100/K Σ_k r_k over **all K metrics**.
  On NYUv2 the five normal metrics then carry 5/9 of the weight (Elich et al. point this out).
* ``per_task`` (LibMTL ``LibMTL/utils.py::count_improvement``, "Δp"): average r within each task, then over
  tasks: Δm = 100/T Σ_t (1/M_t) Σ_{k∈t} r_k, so every task weighs 1/T.  LibMTL returns the *improvement*
  (the opposite sign, as a fraction): its Δp equals −Δm/100 of this function.

Keys are ``"<task>/<metric>"`` (the task is everything before the last ``/``).  Every metric of ``metrics``
must have a direction; a metric without a baseline is **reported, never silently dropped**: by default it is
an error, and with ``allow_missing=True`` Δm is computed over the metrics that have one (the missing keys are
listed in the result, and under ``per_task`` a task's average covers only its metrics with a baseline).  A
non-finite metric value makes Δm NaN; a non-finite baseline is an error; a baseline of exactly 0 (e.g. the F1
of an STL model that never predicts a positive) makes the relative change undefined, so that metric is left
out and listed in ``undefined_baselines``.  The denominator is
|B| rather than B: identical for the positive metrics of every standard benchmark, and it keeps the sign
meaningful (positive = worse) for metrics that can be negative, such as R² of a poor baseline.

:func:`stl_baselines_from_runs` turns the ``summary.json`` files of STL runs into baselines (mean over seeds);
:func:`stl_baselines_from_summaries` does so for several splits over summaries read once (:func:`read_stl_summaries`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.metrics.stl_select import check_stl_select, chosen_pairs, select_on_val_loss

CONVENTIONS = ("per_metric", "per_task")
SPLITS = ("val", "test")


@dataclass(frozen=True)
class MetricContribution:
    """One metric's part in Δm.

    ``relative_change`` = (−1)^{hib}(M − B)/B as a fraction (positive = worse than the baseline);
    ``weight`` = 1/K (``per_metric``) or 1/(T·M_t) (``per_task``); ``contribution`` = 100 · weight ·
    relative_change, in percentage points: the contributions of all included metrics sum to Δm.
    """

    value: float
    baseline: float
    higher_is_better: bool
    relative_change: float
    weight: float
    contribution: float


@dataclass(frozen=True)
class DeltaM:
    """Δm in percent (lower is better), how it was aggregated and what went into it."""

    value: float
    convention: str
    contributions: dict[str, MetricContribution]
    included: list[str]
    missing_baselines: list[str]
    undefined_baselines: list[str] = field(default_factory=list)  # baseline exactly 0: relative change undefined

    def task_totals(self) -> dict[str, float]:
        """Δm split by task: the sum of each task's metric contributions (percentage points)."""
        totals: dict[str, float] = {}
        for key, c in self.contributions.items():
            task = split_key(key)[0]
            totals[task] = totals.get(task, 0.0) + c.contribution
        return totals


def split_key(key: str) -> tuple[str, str]:
    """``"<task>/<metric>"`` → (task, metric); a key without ``/`` is a ``ConfigError``."""
    task, sep, metric = key.rpartition("/")
    if not sep or not task or not metric:
        raise ConfigError(f"metric key '{key}' is not of the form '<task>/<metric>'")
    return task, metric


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def delta_m(
    metrics: Mapping[str, float],
    baselines: Mapping[str, float],
    directions: Mapping[str, bool],
    convention: str = "per_metric",
    allow_missing: bool = False,
) -> DeltaM:
    """Δm% of ``metrics`` against ``baselines`` (see the module docstring for the conventions).

    ``metrics``/``baselines``/``directions`` map ``"<task>/<metric>"`` to the value, the baseline value and
    higher-is-better.  Baseline keys that ``metrics`` does not report are ignored; directions of every
    metric are required.
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"Δm convention '{convention}' is invalid; choose one of {list(CONVENTIONS)}")
    keys = list(metrics)
    if not keys:
        raise ConfigError("Δm needs at least one metric, got none")
    for key in keys:
        split_key(key)
    no_direction = [k for k in keys if k not in directions]
    if no_direction:
        raise ConfigError(f"no higher_is_better direction for metric(s) {no_direction}; directions cover {sorted(directions)}")
    missing = [k for k in keys if k not in baselines]
    not_finite = {k: baselines[k] for k in keys if k in baselines and not _finite(baselines[k])}
    if not_finite:
        raise ConfigError(f"baseline value(s) {not_finite} must be finite numbers")
    # a zero baseline (e.g. the F1 of an STL model that predicts no positive) makes the relative change
    # undefined: such metrics are left out and listed, like missing ones but without needing allow_missing
    undefined = [k for k in keys if k in baselines and baselines[k] == 0]
    included = [k for k in keys if k in baselines and k not in undefined]
    if missing and not allow_missing:
        raise ConfigError(
            f"no baseline for metric(s) {missing}; baselines cover {sorted(baselines)}; "
            f"pass allow_missing=True to compute Δm over the {len(included)} metric(s) that have one"
        )
    if not included:
        raise ConfigError(
            f"none of the metrics {keys} has a usable baseline (missing: {missing}, zero: {undefined}); "
            f"baselines cover {sorted(baselines)}"
        )

    if convention == "per_metric":
        weights = {k: 1.0 / len(included) for k in included}
    else:
        per_task: dict[str, list[str]] = {}
        for k in included:
            per_task.setdefault(split_key(k)[0], []).append(k)
        weights = {k: 1.0 / (len(per_task) * len(ks)) for ks in per_task.values() for k in ks}

    contributions: dict[str, MetricContribution] = {}
    for k in included:
        m, b, hib = float(metrics[k]), float(baselines[k]), bool(directions[k])
        rel = (m - b) / abs(b) * (-1.0 if hib else 1.0)  # |B|: same as B for the usual positive metrics
        contributions[k] = MetricContribution(m, b, hib, rel, weights[k], 100.0 * weights[k] * rel)
    value = math.fsum(c.contribution for c in contributions.values())
    return DeltaM(value=value, convention=convention, contributions=contributions, included=included, missing_baselines=missing,
                  undefined_baselines=undefined)


def metrics_for_split(results: Mapping[str, Any], split: str, exclude: Sequence[str] = ("loss",)) -> dict[str, Any]:
    """``{"<split>/<task>/<metric>": v}`` entries of a results dict as ``{"<task>/<metric>": v}``.

    Aggregate keys such as ``"<split>/loss"`` and the metrics named in ``exclude`` (the task losses by
    default, which are not part of Δm) are left out.
    """
    prefix = f"{split}/"
    out: dict[str, Any] = {}
    for key, value in results.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        task, sep, metric = rest.rpartition("/")
        if sep and task and metric not in exclude:
            out[rest] = value
    return out


@dataclass
class STLBaselines:
    """Baselines read from STL runs: ``values`` (``"<task>/<metric>"`` → mean over seeds) and provenance."""

    values: dict[str, float]
    split: str
    runs_per_task: dict[str, int]
    seeds: dict[str, list[int]]
    datasets: dict[str, str]
    sources: dict[str, list[str]]
    skipped: list[tuple[str, str]]  # (summary.json path, reason)
    select: str = "unique"  # delta_m.stl_select (mtl_bench.metrics.stl_select)
    chosen: dict[str, str] = field(default_factory=dict)  # val_loss: task -> label of the chosen configuration
    candidates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # val_loss: task -> every candidate

    def describe_selection(self) -> str:
        """The selection rule and, under ``val_loss``, the chosen configuration per task, e.g. ``STL selection:
        val_loss (lowest mean val loss per task): t0 → optimizer.lr=0.001; t1 → optimizer.lr=0.01``."""
        if self.select != "val_loss":
            return "STL selection: unique (one STL run per task and seed)"
        chosen = "; ".join(f"{t} → {label}" for t, label in sorted(self.chosen.items()))
        return f"STL selection: val_loss (lowest mean val loss per task): {chosen}"


def _summary_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ConfigError("stl_baselines_from_runs: no path given")
    files: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = [path / "summary.json"] if (path / "summary.json").is_file() else sorted(path.rglob("summary.json"))
            if not found:
                raise ConfigError(
                    f"no summary.json in or under '{path}'; expected a run directory, a summary.json file or a multirun "
                    "directory of job directories"
                )
        else:
            raise ConfigError(f"STL run path '{path}' does not exist")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    return files


def _read_summary(path: Path, parsed: Any = None) -> dict[str, Any]:
    """The summary in ``path`` (``parsed``, when given, stands for the file's parsed content: not read again)."""
    if parsed is None:
        try:
            parsed = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"'{path}' is not valid JSON ({e})") from e
    if not isinstance(parsed, dict):
        raise ConfigError(f"'{path}' must hold a JSON object (a run summary), got {type(parsed).__name__}")
    return parsed


def read_stl_summaries(paths: str | Path | Iterable[str | Path],
                       parsed: Mapping[Path, Mapping[str, Any]] | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(summary.json path, summary)`` for each summary in or under ``paths`` (as :func:`stl_baselines_from_runs`
    finds them), each read when reached; a file whose resolved path is in ``parsed`` (already parsed summaries, e.g. a
    report's runs) is not read again.  Errors (``ConfigError``): no path, a missing path or folder without a summary,
    malformed JSON."""
    for path in _summary_files(paths):
        known = parsed.get(path.resolve()) if parsed else None
        yield path, _read_summary(path, known)


def stl_baselines_from_summaries(summaries: Iterable[tuple[Path, Mapping[str, Any]]],
                                 splits: Sequence[str] = ("test",), select: str = "unique") -> dict[str, STLBaselines]:
    """:func:`stl_baselines_from_runs` for each of ``splits`` (in that order) over ``(path, summary)`` pairs such as
    :func:`read_stl_summaries` yields; ``summaries`` is iterated once.  ``select``: which STL runs count
    (``delta_m.stl_select``, :mod:`mtl_bench.metrics.stl_select`): ``unique`` or ``val_loss``."""
    for split in splits:
        check_choice("split", split, SPLITS)
    check_stl_select(select)
    if select == "val_loss":
        return _selected_on_val_loss(list(summaries), splits)
    seen: list[tuple[Path, Mapping[str, Any]]] = []

    def first_pass() -> Iterator[tuple[Path, Mapping[str, Any]]]:
        for pair in summaries:
            seen.append(pair)
            yield pair

    return {split: _stl_baselines(first_pass() if i == 0 else seen, split) for i, split in enumerate(splits)}


def _selected_on_val_loss(pairs: list[tuple[Path, Mapping[str, Any]]], splits: Sequence[str]) -> dict[str, STLBaselines]:
    selection = select_on_val_loss(pairs)
    chosen = chosen_pairs(pairs, selection)
    out = {split: _stl_baselines(chosen, split) for split in splits}
    for b in out.values():
        b.select, b.chosen, b.candidates = "val_loss", dict(selection.chosen), dict(selection.candidates)
    return out


def stl_baselines_from_runs(paths: str | Path | Iterable[str | Path], split: str = "test",
                            select: str = "unique") -> STLBaselines:
    """Average the selected ``split`` metrics of completed STL runs over seeds, per task.

    ``paths``: run directories, ``summary.json`` files and/or multirun directories (searched recursively for
    ``summary.json``).  Summaries whose ``mode`` is not ``"stl"`` and runs whose ``status`` is not
    ``"completed"`` are skipped and listed in ``skipped`` with the reason.  Errors (``ConfigError``): a task
    seen with two different datasets, two runs of one task with the same seed and different results (e.g. an lr
    sweep: pass one run per seed; exact repeats, same seed and same values, count once and are listed in
    ``skipped``), runs of one task reporting different metric sets, a missing or non-finite metric, and malformed
    summaries.  ``select="val_loss"`` chooses one configuration per task on validation loss instead
    (:mod:`mtl_bench.metrics.stl_select`).
    """
    return stl_baselines_from_summaries(read_stl_summaries(paths), (split,), select)[split]


def _repeats(task_runs: Sequence[tuple[Path, int, dict[str, float]]], seed: int, values: Mapping[str, Any]) -> bool:
    """Whether an STL run with this seed and exactly these values is already counted: the same run repeated by a
    study grid (e.g. one STL arm per scenario of an auxiliary-task study, which trains the same target alone)."""
    mine = {k: float(v) for k, v in values.items()}
    return any(s == seed and v == mine for _, s, v in task_runs)


def _stl_baselines(summaries: Iterable[tuple[Path, Mapping[str, Any]]], split: str) -> STLBaselines:
    runs: dict[str, list[tuple[Path, int, dict[str, float]]]] = {}
    datasets: dict[str, tuple[str, Path]] = {}
    skipped: list[tuple[str, str]] = []
    for path, summary in summaries:
        reason = _skip_reason(summary)
        if reason is not None:
            skipped.append((str(path), reason))
            continue
        task, name, seed, values = _stl_run(path, summary, split)
        _check_dataset(datasets, task, name, path)
        datasets[task] = (name, path)
        if _repeats(runs.get(task, []), seed, values):
            skipped.append((str(path), f"the same results as another STL run of task '{task}' with seed {seed} (a repeat)"))
            continue
        _check_compatible(runs.get(task, []), task, seed, values, path)
        runs.setdefault(task, []).append((path, seed, {k: float(v) for k, v in values.items()}))
    return _baselines_of(runs, datasets, skipped, split)


def _skip_reason(summary: Mapping[str, Any]) -> str | None:
    """Why a summary is not an STL baseline run (not STL, not completed), or None."""
    if summary.get("mode") != "stl":
        return f"mode is {summary.get('mode')!r}, not 'stl'"
    if summary.get("status") != "completed":
        return f"status is {summary.get('status')!r}, not 'completed'"
    return None


def _stl_run(path: Path, summary: Mapping[str, Any], split: str) -> tuple[str, str, int, dict[str, Any]]:
    """A completed STL summary's task, dataset name, seed and selected ``split`` metrics of its task (validated)."""
    tasks = summary.get("tasks")
    if not isinstance(tasks, list) or len(tasks) != 1 or not isinstance(tasks[0], str):
        raise ConfigError(f"'{path}': an STL summary must list exactly one task in 'tasks', got {tasks!r}")
    task = tasks[0]
    dataset = summary.get("dataset")
    name = dataset.get("name") if isinstance(dataset, dict) else None
    if not isinstance(name, str):
        raise ConfigError(f"'{path}': missing 'dataset.name'")
    seed = summary.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"'{path}': 'seed' must be an integer, got {seed!r}")
    selected = summary.get("selected")
    if not isinstance(selected, dict):
        raise ConfigError(f"'{path}': missing the 'selected' results of a completed run")
    values = {k: v for k, v in metrics_for_split(selected, split).items() if split_key(k)[0] == task}
    if not values:
        raise ConfigError(f"'{path}': 'selected' has no '{split}/{task}/<metric>' values")
    not_finite = {k: v for k, v in values.items() if not _finite(v)}
    if not_finite:
        raise ConfigError(f"'{path}': selected {split} metric(s) {not_finite} are not finite numbers")
    return task, name, seed, values


def _check_dataset(datasets: Mapping[str, tuple[str, Path]], task: str, name: str, path: Path) -> None:
    """A task's STL runs must all come from one dataset."""
    if task in datasets and datasets[task][0] != name:
        first_name, first_path = datasets[task]
        raise ConfigError(
            f"task '{task}' appears with two datasets: '{first_name}' ({first_path}) and '{name}' ({path}); "
            "pass the STL runs of one dataset"
        )


def _check_compatible(task_runs: Sequence[tuple[Path, int, dict[str, float]]], task: str, seed: int,
                      values: Mapping[str, Any], path: Path) -> None:
    """A new (non-repeat) STL run of ``task`` must have its own seed and report the metrics the others report."""
    for other_path, other_seed, other_values in task_runs:
        if other_seed == seed:
            raise ConfigError(
                f"task '{task}' has two completed STL runs with seed {seed} ({other_path}, {path}); "
                "pass one run per seed (e.g. the chosen learning rate of a sweep), or set "
                "delta_m.stl_select=val_loss to choose one configuration per task on validation loss"
            )
        if set(other_values) != set(values):
            raise ConfigError(
                f"STL runs of task '{task}' report different metrics: {sorted(other_values)} ({other_path}) vs "
                f"{sorted(values)} ({path})"
            )


def _baselines_of(runs: Mapping[str, list[tuple[Path, int, dict[str, float]]]], datasets: Mapping[str, tuple[str, Path]],
                  skipped: list[tuple[str, str]], split: str) -> STLBaselines:
    """The per-task means over the counted runs (``ConfigError`` when there is none)."""
    if not runs:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped)
        raise ConfigError(f"no completed STL run found ({reasons})")
    means = {k: math.fsum(r[2][k] for r in task_runs) / len(task_runs) for task_runs in runs.values() for k in task_runs[0][2]}
    return STLBaselines(
        values=means,
        split=split,
        runs_per_task={t: len(r) for t, r in runs.items()},
        seeds={t: sorted(s for _, s, _ in r) for t, r in runs.items()},
        datasets={t: n for t, (n, _) in datasets.items()},
        sources={t: [str(p) for p, _, _ in r] for t, r in runs.items()},
        skipped=skipped,
    )
