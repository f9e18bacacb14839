"""Exploded runs: completed runs whose target loss blew up without a NaN (the trainer's NaN stop never fired).

A completed run is **exploded** when, for one of its **target** tasks t and a split s ∈ {test, val}, its reported
(``selected``, or with ``--results final`` the final) loss ``<s>/<t>/loss`` is not finite, or exceeds

    F × scale(t),   F = ``--explode-factor`` (default 100),

where **scale(t)** is the median, over the report's completed runs in the same *loss pool* (same ``dataset`` choice
and same values of every ``dataset.*`` override seen), of each run's **first evaluation** of ``val/<t>/loss`` (the
first record of its ``metrics.jsonl`` holding that key, i.e. the loss after the first epoch).  STL runs of the task
count as pool members too.  When no run of the pool has a first evaluation of that loss (no ``metrics.jsonl``, e.g.
runs read from W&B), scale(t) is instead the median of the same key ``<s>/<t>/loss`` over the pool's completed runs,
used only with at least :data:`MIN_PEERS` of them.

Why this scale: a task loss after one epoch is the loss level every healthy run of the pool starts from and stays
below; a run that merely failed to learn stays near it (within a small factor), while one that diverged ends orders
of magnitude above it.  Comparing with the *final* losses of other runs instead would flag a run that did not learn
whenever the others reach very small losses (a trained cross-entropy can be 100× below an untrained one).  The
median makes the scale robust to a minority of runs that exploded during their first epoch, and each run's own first
evaluation is part of it, so a run alone in its pool is still caught when it explodes after its first epoch.  Losses
(always lower-is-better, positive for every built-in task) are used instead of the metrics, whose ranges differ
(R², mIoU); a pool whose scale is not positive is not checked.

Exploded runs are listed (with the reason) and kept out of every group statistic, Δm mean, Pareto count and plot;
each group says how many of its runs were left out.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Sequence

from mtl_bench.report.grouping import lookup
from mtl_bench.report.runs import ReportError, Run, as_float

DEFAULT_FACTOR = 100.0
MIN_PEERS = 3
SPLITS = ("test", "val")


def check_factor(factor: float) -> float:
    if not (math.isfinite(factor) and factor > 1):
        raise ReportError(f"--explode-factor must be a finite number > 1, got {factor}")
    return float(factor)


def first_val_losses(run: Run, tasks: Sequence[str]) -> dict[str, float]:
    """``{task: first val/<task>/loss in metrics.jsonl}`` for the ``tasks`` found there (``{}`` without the file)."""
    wanted = {f"val/{t}/loss": t for t in tasks}
    found: dict[str, float] = {}
    try:
        with (run.path / "metrics.jsonl").open() as f:
            for line in f:
                if '"val/' not in line:  # step records: skipped without parsing
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    for key in wanted.keys() & record.keys():
                        found.setdefault(wanted[key], as_float(record[key]))
                if len(found) == len(wanted):
                    break
    except (OSError, UnicodeDecodeError):
        return {}
    return found


def _pool_key(run: Run, dataset_keys: Sequence[str]) -> tuple[str | None, ...]:
    return (lookup(run, "dataset") or run.dataset, *(lookup(run, k) for k in dataset_keys))


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def find_exploded(runs: Sequence[Run], factor: float = DEFAULT_FACTOR, source: str = "selected") -> dict[str, str]:
    """``{run path: reason}`` of the exploded ``runs`` (completed ones; see the module docstring)."""
    runs = [r for r in runs if r.completed]
    dataset_keys = sorted({k for r in runs for k in r.overrides if k.startswith("dataset.")})
    pools: dict[tuple[str | None, ...], list[Run]] = {}
    for run in runs:
        pools.setdefault(_pool_key(run, dataset_keys), []).append(run)
    exploded: dict[str, str] = {}
    for pool in pools.values():
        results = [r.results(source) for r in pool]
        tasks = list(dict.fromkeys(t for r in pool for t in r.targets))
        firsts = [first_val_losses(r, [t for t in tasks if t in r.tasks]) for r in pool]
        for task in tasks:
            first = [f[task] for f in firsts if task in f]
            for split in SPLITS:
                key = f"{split}/{task}/loss"
                peers = [res[key] for res in results if key in res]
                if first:
                    scale, what = _median(first), f"median first val/{task}/loss of {len(first)} run(s)"
                elif len(peers) >= MIN_PEERS:
                    scale, what = _median(peers), f"median {key} of {len(peers)} run(s)"
                else:
                    scale, what = math.nan, ""
                for run, res in zip(pool, results):
                    reason = _verdict(res.get(key) if task in run.targets else None, key, factor, scale, what)
                    if reason:
                        exploded.setdefault(str(run.path), reason)
    return exploded


def _verdict(value: float | None, key: str, factor: float, scale: float, what: str) -> str | None:
    """Why ``value`` of ``key`` is exploded, or ``None`` (also when the run lacks it or the scale is unknown)."""
    if value is None:
        return None
    if not math.isfinite(value):
        return f"{key} is not finite ({value})"
    if scale > 0 and value > factor * scale:
        return f"{key} = {value:.4g} > {factor:g} × {scale:.4g} ({what})"
    return None
