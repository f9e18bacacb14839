"""Δm% during and after training: which baselines, which convention, per split.

Configured by the top-level ``delta_m`` node (``configs/train.yaml``)::

    delta_m:
      stl_runs: []           # STL run / multirun folders: their summaries give the baselines (mean over seeds)
      published: null        # or an id of mtl_bench/baselines/published.yaml (test-split numbers)
      convention: per_metric # per_metric (Nash-MTL/FAMO) | per_task (LibMTL)
      allow_missing: false   # compute over the metrics that have a baseline, listing the others
      missing_runs: error    # error | warn: STL run folders that do not exist (yet) switch Δm off with a warning
      stl_select: unique     # unique (one STL run per task and seed) | val_loss (per task the configuration with
                             # the lowest mean val loss, mtl_bench.metrics.stl_select)

With STL runs, validation metrics are compared with the STL runs' *validation* metrics and test with test.
Published baselines are test numbers; they are used for both splits and the summary says so.  Without any
baseline Δm is not computed (the summary records why).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mtl_bench.baselines import load_published
from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.metrics.delta_m import (CONVENTIONS, DeltaM, STLBaselines, delta_m, metrics_for_split, read_stl_summaries,
                                       stl_baselines_from_summaries)
from mtl_bench.metrics.stl_select import check_stl_select

log = logging.getLogger(__name__)


@dataclass
class DeltaMSpec:
    convention: str
    baselines: dict[str, dict[str, float]]  # split -> "<task>/<metric>" -> value
    directions: dict[str, bool]  # "<task>/<metric>" -> higher is better
    source: dict[str, Any] = field(default_factory=dict)
    allow_missing: bool = False

    def compute(self, split: str, results: Mapping[str, float]) -> DeltaM:
        metrics = {k: v for k, v in metrics_for_split(results, split).items() if k in self.directions}
        return delta_m(metrics, self.baselines[split], self.directions, self.convention, self.allow_missing)

    def record(self, split: str, results: Mapping[str, float]) -> dict[str, float]:
        """``{split}/delta_m`` and the per-metric contributions ``{split}/delta_m_contrib/<task>/<metric>``."""
        d = self.compute(split, results)
        out = {f"{split}/delta_m": d.value}
        out.update({f"{split}/delta_m_contrib/{k}": c.contribution for k, c in d.contributions.items()})
        return out

    def describe(self, results: Mapping[str, float], splits: Sequence[str] = ("val", "test")) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split in splits:
            if any(k.startswith(f"{split}/") for k in results):
                d = self.compute(split, results)
                out[split] = {"value": d.value, "included": d.included, "missing_baselines": d.missing_baselines,
                              "undefined_baselines": d.undefined_baselines,
                              "task_totals": d.task_totals(),
                              "contributions": {k: asdict(c) for k, c in d.contributions.items()}}
        return out


def _dataset_name(summary: Mapping[str, Any]) -> Any:
    data = summary.get("dataset")
    return data.get("name") if isinstance(data, Mapping) else None


def same_dataset(summaries: Iterable[tuple[Path, Mapping[str, Any]]], dataset: str,
                 other: set[str]) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """The summaries except completed STL runs of another dataset (their dataset names are added to ``other``): a study
    whose arms use different datasets (balanced / imbalanced) keeps every arm's STL runs in one sweep folder."""
    for path, summary in summaries:
        name = _dataset_name(summary)
        if summary.get("mode") == "stl" and isinstance(name, str) and name != dataset:
            other.add(name)
            continue
        yield path, summary


def build_delta_m(cfg: Mapping[str, Any] | None, dataset: str, directions: Mapping[str, bool]) -> tuple[DeltaMSpec | None, dict]:
    """The Δm spec of a run (or ``None`` and the reason) from the ``delta_m`` config node."""
    if not cfg:
        return None, {"enabled": False, "reason": "no delta_m config"}
    convention = cfg.get("convention", "per_metric")
    check_choice("delta_m.convention", convention, CONVENTIONS)
    runs = list(cfg.get("stl_runs") or [])
    published = cfg.get("published")
    if runs and published:
        raise ConfigError("delta_m: give either delta_m.stl_runs or delta_m.published, not both")
    keyed = {k.split("/", 1)[1]: v for k, v in directions.items() if k.startswith("val/") and k.count("/") == 2}
    keyed = {k: v for k, v in keyed.items() if not k.endswith("/loss")}
    missing_runs = cfg.get("missing_runs", "error")
    check_choice("delta_m.missing_runs", missing_runs, ("error", "warn"))
    select = check_stl_select(cfg.get("stl_select", "unique"))
    if runs and missing_runs == "warn":
        absent = [str(p) for p in runs if not Path(str(p)).exists()]
        if absent:
            reason = f"STL runs not found at {absent} (delta_m.missing_runs=warn): run the STL baselines first"
            log.warning("Δm is off: %s", reason)
            return None, {"enabled": False, "reason": reason, "stl_runs": [str(p) for p in runs], "stl_select": select}
    if runs:
        other: set[str] = set()  # STL runs of other datasets in the same folders (e.g. a study's other arm): skipped
        mine = list(same_dataset(read_stl_summaries(runs), dataset, other))
        if other and not any(summary.get("mode") == "stl" for _, summary in mine):
            raise ConfigError(f"delta_m.stl_runs were trained on {sorted(other)}, this run uses dataset '{dataset}'")
        per_split = stl_baselines_from_summaries(mine, ("val", "test"), select)
        datasets = set(per_split["test"].datasets.values())
        if datasets and datasets != {dataset}:
            raise ConfigError(f"delta_m.stl_runs were trained on {sorted(datasets)}, this run uses dataset '{dataset}'")
        source = {"kind": "stl_runs", "paths": [str(p) for p in runs], "runs_per_task": per_split["test"].runs_per_task,
                  "seeds": per_split["test"].seeds, "skipped": per_split["test"].skipped, **_selection(per_split["test"])}
        baselines = {s: b.values for s, b in per_split.items()}
    elif published:
        entry = load_published(published)
        if entry["dataset"] != dataset:
            raise ConfigError(f"delta_m.published='{published}' is a {entry['dataset']} baseline, this run uses dataset '{dataset}'")
        source = {"kind": "published", "id": published, "backbone": entry["backbone"], "protocol": entry["protocol"],
                  "evaluation": entry["evaluation"], "source": entry["source"],
                  "note": "published test-split values, also used for the validation Δm"}
        baselines = {"val": entry["metrics"], "test": entry["metrics"]}
    else:
        return None, {"enabled": False, "reason": "no baselines configured (delta_m.stl_runs or delta_m.published)"}
    spec = DeltaMSpec(convention, baselines, keyed, source, bool(cfg.get("allow_missing", False)))
    info = {"enabled": True, "convention": convention, "source": source, "allow_missing": spec.allow_missing}
    return spec, {**info, "stl_select": select} if runs else info


def _selection(baselines: STLBaselines) -> dict[str, Any]:
    """The STL selection rule and, under ``val_loss``, the chosen configuration and every candidate per task."""
    if baselines.select != "val_loss":
        return {"stl_select": baselines.select}
    return {"stl_select": baselines.select, "chosen": baselines.chosen, "candidates": baselines.candidates}
