"""Which STL runs are the Δm baselines of a task: ``delta_m.stl_select``.

* ``unique`` (default): every completed STL run; a task must have one run per seed (an lr sweep is an error).
* ``val_loss`` (Elich et al., GCPR 2024: STL baselines trained over an lr grid, the best validation loss per task):
  per dataset and task, the completed STL runs are grouped into **configurations**, runs that differ only in the
  seed.  A configuration is what ``summary.json`` records of the optimizer, scheduler, combiner and loss
  transforms (flattened, e.g. ``optimizer.lr``) plus the run's Hydra overrides minus the seed and sweep-only keys
  (:data:`SWEEP_ONLY`).  Each configuration scores the mean over its seeds of the selected ``val/<task>/loss``
  (lower is better); a configuration is **excluded** (recorded with the reason) when one of its seeds did not
  complete (diverged, failed, still running), lacks a seed that another configuration of the task has, or scores a
  non-finite loss.  The best configuration's runs are the baselines (mean over seeds as with ``unique``).  Ties go
  to the configuration whose fingerprint (canonical JSON of its settings and overrides) sorts first.

A configuration's **label** names the keys in which the task's candidates differ (e.g. ``optimizer.lr=0.003``):
the recorded settings, plus the differing overrides when the settings alone do not tell the candidates apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.utils import flatten_dict

STL_SELECT = ("unique", "val_loss")
CONFIG_BLOCKS = ("optimizer", "scheduler", "combiner", "loss_transforms")
SWEEP_ONLY = ("seed", "logger", "hydra", "wandb", "paths", "trainer.num_threads", "trainer.device", "delta_m")


def check_stl_select(value: Any, name: str = "delta_m.stl_select") -> str:
    return check_choice(name, value, STL_SELECT)


@dataclass
class Candidate:
    """One configuration of a task's STL runs: its runs by seed, val score and why it was excluded (or ``None``)."""

    settings: dict[str, Any]
    overrides: dict[str, str]
    runs: dict[int, tuple[Path, Mapping[str, Any]]] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)
    unfinished: dict[int, str] = field(default_factory=dict)  # seed -> status
    repeats: list[Path] = field(default_factory=list)  # same seed and val loss again: kept for the baselines to judge
    excluded: str | None = None
    label: str = ""

    @property
    def fingerprint(self) -> str:
        return json.dumps([self.settings, self.overrides], sort_keys=True, default=str)

    @property
    def score(self) -> float:
        values = list(self.losses.values())
        return math.fsum(values) / len(values) if values else math.nan

    def record(self) -> dict[str, Any]:
        return {"config": self.label, "val_loss": None if math.isnan(self.score) else self.score,
                "seeds": sorted({*self.runs, *self.unfinished}), "excluded": self.excluded}


def _sweep_only(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SWEEP_ONLY)


def configuration(summary: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The recorded settings (flattened :data:`CONFIG_BLOCKS`) and the overrides (minus :data:`SWEEP_ONLY`)."""
    settings: dict[str, Any] = {}
    for block in CONFIG_BLOCKS:
        if block in summary:
            settings.update(flatten_dict(summary[block], f"{block}."))
    hydra = summary.get("hydra")
    items = hydra.get("overrides") if isinstance(hydra, Mapping) else None
    overrides: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if sep and not _sweep_only(key):
            overrides[key] = value
    return settings, overrides


def _identity(path: Path, summary: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """``(dataset, task, seed)`` of an STL summary, ``None`` when it does not record them (e.g. a job never started)."""
    tasks, data, seed = summary.get("tasks"), summary.get("dataset"), summary.get("seed")
    name = data.get("name") if isinstance(data, Mapping) else None
    if not (isinstance(tasks, list) and len(tasks) == 1 and isinstance(name, str) and isinstance(seed, int)):
        return None
    return name, str(tasks[0]), seed


def _val_loss(path: Path, summary: Mapping[str, Any], task: str) -> float:
    selected = summary.get("selected")
    key = f"val/{task}/loss"
    if not isinstance(selected, Mapping) or key not in selected:
        raise ConfigError(f"'{path}': no selected '{key}' to choose the STL configuration on "
                          "(delta_m.stl_select=val_loss); use delta_m.stl_select=unique with one run per seed")
    value = selected[key]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _add(cand: Candidate, path: Path, summary: Mapping[str, Any], task: str, seed: int) -> None:
    if summary.get("status") != "completed":
        cand.unfinished.setdefault(seed, str(summary.get("status")))
        return
    loss = _val_loss(path, summary, task)
    if seed in cand.runs:
        if cand.losses[seed] == loss or (math.isnan(loss) and math.isnan(cand.losses[seed])):
            cand.repeats.append(path)  # the same run again (a repeat): the baselines count it once and list it
            return
        raise ConfigError(f"task '{task}' has two completed STL runs with seed {seed} and the same configuration but "
                          f"different results ({cand.runs[seed][0]}, {path}): they differ in something summary.json "
                          "does not record")
    cand.runs[seed] = (path, summary)
    cand.losses[seed] = loss


def group_candidates(pairs: Iterable[tuple[Path, Mapping[str, Any]]]) -> dict[tuple[str, str], list[Candidate]]:
    """The configurations of the STL runs among ``pairs``, per ``(dataset, task)``."""
    groups: dict[tuple[str, str], dict[str, Candidate]] = {}
    for path, summary in pairs:
        ident = _identity(path, summary) if summary.get("mode") == "stl" else None
        if ident is None:
            continue
        name, task, seed = ident
        settings, overrides = configuration(summary)
        fresh = Candidate(settings, overrides)
        cand = groups.setdefault((name, task), {}).setdefault(fresh.fingerprint, fresh)
        _add(cand, path, summary, task, seed)
    return {key: sorted(found.values(), key=lambda c: c.fingerprint) for key, found in groups.items()}


def _exclude(cands: list[Candidate]) -> None:
    seeds = set().union(*({*c.runs, *c.unfinished} for c in cands))
    for c in cands:
        missing = sorted(seeds - set(c.runs) - set(c.unfinished))
        if c.unfinished:
            c.excluded = "not completed: " + ", ".join(f"seed {s} {st}" for s, st in sorted(c.unfinished.items()))
        elif missing:
            c.excluded = f"no run with seed(s) {missing}"
        elif not math.isfinite(c.score):
            c.excluded = "non-finite val loss"


def _differing(dicts: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d.get(k), default=str) for d in dicts}) > 1]


def _label(cands: list[Candidate]) -> None:
    """``key=value`` of the settings in which the candidates differ, plus the differing overrides when the settings
    alone do not tell them apart (a key a candidate lacks is left out of its label)."""
    settings = _differing([c.settings for c in cands])
    overrides = _differing([c.overrides for c in cands])
    for c in cands:
        c.label = ", ".join(f"{k}={c.settings[k]}" for k in settings if k in c.settings)
    if len({c.label for c in cands}) < len(cands):
        for c in cands:
            extra = ", ".join(f"{k}={c.overrides[k]}" for k in overrides if k in c.overrides)
            c.label = ", ".join(part for part in (c.label, extra) if part)
    for c in cands:
        c.label = c.label or "the only configuration"


@dataclass
class Selection:
    """Per task: the chosen configuration's label and every candidate (``Candidate.record()``)."""

    chosen: dict[str, str] = field(default_factory=dict)
    candidates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    runs: set[Path] = field(default_factory=set)  # the chosen configurations' summary paths


def select_on_val_loss(pairs: list[tuple[Path, Mapping[str, Any]]]) -> Selection:
    """The best configuration per (dataset, task), see the module docstring."""
    out = Selection()
    for (name, task), cands in sorted(group_candidates(pairs).items()):
        _exclude(cands)
        _label(cands)
        usable = [c for c in cands if c.excluded is None]
        if not usable:
            reasons = "; ".join(f"{c.label}: {c.excluded}" for c in cands)
            raise ConfigError(f"task '{task}' on '{name}': every STL configuration is excluded ({reasons})")
        best = min(usable, key=lambda c: c.score)  # min keeps the first of equal scores (fingerprint order)
        out.chosen[task] = best.label
        out.candidates[task] = [c.record() for c in cands]
        out.runs.update([*(p for p, _ in best.runs.values()), *best.repeats])
    return out


def chosen_pairs(pairs: list[tuple[Path, Mapping[str, Any]]], selection: Selection) -> list[tuple[Path, Mapping[str, Any]]]:
    """``pairs`` without the completed STL runs of configurations that were not chosen (the rest is kept, so that the
    baselines list the other summaries as skipped as before)."""
    def keep(path: Path, summary: Mapping[str, Any]) -> bool:
        if summary.get("mode") != "stl" or summary.get("status") != "completed" or path in selection.runs:
            return True
        return _identity(path, summary) is None  # malformed: the baselines name the problem
    return [(p, s) for p, s in pairs if keep(p, s)]
