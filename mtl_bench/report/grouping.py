"""Grouping runs by what differs except the seed, and per-group statistics.

**Value of a key for a run** (:func:`lookup`): the run's Hydra override ``key=value`` if it has one, else the Hydra
group choice (``summary["choices"]``, e.g. ``combiner`` or ``experiment``), else the resolved config at the dotted
path (``config_resolved.yaml``, e.g. ``optimizer.lr``), else a scalar at that dotted path of ``summary.json``,
else missing (``None``, shown as ``-``).  Values are compared in a canonical text form (:func:`canonical`), so
``optimizer.lr=1e-2`` typed on one command line and ``0.01`` from a config are the same value.

**Default group keys** (:func:`default_group_keys`): every override key or group choice whose value differs
between the runs, in order of first appearance, except the seed and keys that do not change training
(:data:`EXCLUDED_PREFIXES`: ``hydra``, ``logger``, ``paths``, ``trainer.device``, ...).  Runs with equal values
of all group keys form one group (the seeds of one configuration).

**Statistics** (:func:`mean_std`): mean and sample standard deviation (``ddof=1``) over the group's runs; the
std is ``None`` for a single run.  A non-finite value makes both NaN.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from mtl_bench.report.runs import ReportError, Run, dotted

EXCLUDED_KEYS = frozenset({"seed"})
EXCLUDED_PREFIXES = ("hydra", "logger", "paths", "local", "trainer.device", "trainer.num_workers", "trainer.progress_bar",
                     "experiment_name", "tags", "wandb")
MISSING = "-"


def excluded(key: str) -> bool:
    return key in EXCLUDED_KEYS or any(key == p or key.startswith((p + ".", p + "/")) for p in EXCLUDED_PREFIXES)


def canonical(value: Any) -> str:
    """A comparable text form: numbers as Python floats/ints (``1e-2`` → ``0.01``, ``2.0`` → ``2``), ``true``/``false``,
    ``null`` (for null and ``~``; ``none`` stays a string, as in Hydra), lists as ``[a,b]``; other strings stripped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        f = float(value)
        return str(int(f)) if math.isfinite(f) and f.is_integer() and abs(f) < 1e15 else repr(f)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{canonical(v)}" for k, v in value.items()) + "}"
    text = str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered
    if lowered in ("null", "~"):  # not "none": Hydra and YAML read it as a string, the name of options such as
        return "null"  # loss_transforms=none or scheduler=none
    try:
        return canonical(float(text))
    except ValueError:
        pass
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return "[" + ",".join(canonical(x) for x in inner.split(",")) + "]" if inner else "[]"
    return text


def lookup(run: Run, key: str) -> str | None:
    """The canonical value of ``key`` for ``run`` (see the module docstring for the order), ``None`` if unknown."""
    if key in run.overrides:
        return canonical(run.overrides[key])
    choices = run.summary.get("choices")
    if isinstance(choices, Mapping) and key in choices:
        return canonical(choices[key])
    for source in (run.config(), run.summary):
        found, value = dotted(source, key)
        if found and not isinstance(value, Mapping):
            return canonical(value)
    return None


def default_group_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys and group choices whose values differ between ``runs`` (seed and non-training keys excluded)."""
    candidates: list[str] = []
    for run in runs:
        choices = run.summary.get("choices")
        for key in [*run.overrides, *(choices if isinstance(choices, Mapping) else {})]:
            if not excluded(key) and key not in candidates:
                candidates.append(key)
    return [k for k in candidates if len({lookup(r, k) for r in runs}) > 1]


def parse_key_values(spec: str, what: str) -> dict[str, str]:
    """``"optimizer=adam,combiner=ew"`` → ``{"optimizer": "adam", "combiner": "ew"}`` (values canonical)."""
    out: dict[str, str] = {}
    for item in spec.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip():
            raise ReportError(f"{what}: '{item.strip()}' is not of the form key=value (in '{spec}')")
        out[key.strip()] = canonical(value)
    return out


def matches(run: Run, wanted: Mapping[str, str]) -> bool:
    return all(lookup(run, k) == v for k, v in wanted.items())


@dataclass
class Stat:
    """Mean and sample std (ddof=1; ``None`` for n=1) of ``values``."""

    mean: float
    std: float | None
    n: int
    values: list[float] = field(default_factory=list)


def mean_std(values: Iterable[float]) -> Stat:
    vals = [float(v) for v in values]
    if not vals:
        return Stat(math.nan, None, 0, [])
    if not all(math.isfinite(v) for v in vals):
        return Stat(math.nan, math.nan if len(vals) > 1 else None, len(vals), vals)
    mean = math.fsum(vals) / len(vals)
    return Stat(mean, statistics.stdev(vals) if len(vals) > 1 else None, len(vals), vals)


@dataclass
class Group:
    """Runs that share every group-key value (``values``); ``label`` is ``k=v, k=v`` (``all runs`` without keys).
    A ``reference`` group holds STL runs (``STL t0``): shown as the reference, never a method in Δm or Pareto."""

    label: str
    values: dict[str, str]
    runs: list[Run]
    reference: bool = False

    @property
    def short(self) -> str:
        """The values only (``ew / adam / 0.001``), for plot axes; a reference group's label."""
        return self.label if self.reference else " / ".join(self.values.values()) or self.label

    @property
    def seeds(self) -> list[Any]:
        return sorted_seeds(self.runs)


def sorted_seeds(runs: Iterable[Run]) -> list[Any]:
    """The runs' seeds, integers first in numeric order."""
    return sorted((r.seed for r in runs), key=lambda s: (0, s, "") if isinstance(s, int) else (1, 0, str(s)))


def repeated_seeds(runs: Iterable[Run]) -> list[str]:
    """The runs' seeds as sorted text when two runs share one (they differ in something unseen), else ``[]``."""
    seeds = [str(r.seed) for r in runs]
    return sorted(seeds) if len(set(seeds)) < len(seeds) else []


def merge_directions(runs: Iterable[Run], notes: list[str]) -> dict[str, bool]:
    """``"<task>/<metric>"`` → higher is better over the runs' recorded directions, the first one seen winning; a
    disagreement is noted in ``notes``."""
    directions: dict[str, bool] = {}
    for run in runs:
        for key, hib in run.directions.items():
            if key in directions and directions[key] != hib:
                notes.append(f"runs disagree on the direction of {key}; using the first one seen")
            directions.setdefault(key, hib)
    return directions


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Partition ``runs`` by their values of ``keys``; groups in order of their first run."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        vals = tuple(lookup(run, k) or MISSING for k in keys)
        if vals not in groups:
            label = ", ".join(f"{k}={v}" for k, v in zip(keys, vals)) or "all runs"
            groups[vals] = Group(label, dict(zip(keys, vals)), [])
        groups[vals].runs.append(run)
    return list(groups.values())


def _common(runs: Sequence[Run], key: str) -> str:
    values = {lookup(r, key) or MISSING for r in runs}
    return values.pop() if len(values) == 1 else MISSING


def stl_groups(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """STL runs as reference groups: one per task (``STL t0``), split further by what differs between that task's runs
    (seed excluded; ``STL t0 (optimizer.lr=0.01)``); ``values`` are the values of ``keys`` the group's runs share
    (``-`` where they differ or lack one)."""
    by_task: dict[str, list[Run]] = {}
    for run in runs:
        by_task.setdefault("+".join(run.tasks) or MISSING, []).append(run)
    groups = []
    for task, task_runs in by_task.items():
        extra = default_group_keys(task_runs)
        for g in group_runs(task_runs, extra):
            label = f"STL {task}" + (f" ({g.label})" if extra else "")
            groups.append(Group(label, {k: _common(g.runs, k) for k in keys}, g.runs, reference=True))
    return groups
