"""Published single-task baselines (``published.yaml``, versioned package data with provenance).

Each entry gives the dataset, backbone, training/reporting protocol, how the source aggregated its metrics
(``evaluation``: ``per_batch`` = mtan-style per-batch averages, compare with ``paper_compatible=True``;
``pooled`` = exact split-wide statistics, mtl_bench's default), the paper and code it comes from, and the
values in mtl_bench's ``"<task>/<metric>"`` keys, ready to pass as ``baselines`` to
:func:`mtl_bench.metrics.delta_m.delta_m`.  The units are documented at the top of the YAML file (notably:
``depth/rel_err`` is a plain ratio everywhere, also the Cityscapes 27.77).
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml

from mtl_bench.errors import ConfigError, check_choice

DATA_FILE = "published.yaml"
SCHEMA_VERSION = 1
EVALUATIONS = ("per_batch", "pooled")
_REQUIRED = ("dataset", "backbone", "protocol", "evaluation", "source", "metrics")


def _validate_entry(key: str, entry: Any) -> None:
    where = f"{DATA_FILE} entry '{key}'"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(entry).__name__}")
    absent = [k for k in _REQUIRED if k not in entry]
    if absent:
        raise ConfigError(f"{where} lacks field(s) {absent}; every entry needs {list(_REQUIRED)}")
    check_choice(f"{where}: evaluation", entry["evaluation"], EVALUATIONS)
    source = entry["source"]
    if not isinstance(source, dict) or not {"paper", "code"} <= set(source):
        raise ConfigError(f"{where}: 'source' must give 'paper' and 'code'")
    metrics = entry["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ConfigError(f"{where}: 'metrics' must be a non-empty mapping of '<task>/<metric>' to numbers")
    for name, value in metrics.items():
        task, sep, metric = str(name).rpartition("/")
        if not (sep and task and metric):
            raise ConfigError(f"{where}: metric key '{name}' is not of the form '<task>/<metric>'")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: metric '{name}' = {value!r} is not a finite number")


@lru_cache(maxsize=1)
def _load_all() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(files(__name__).joinpath(DATA_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION or not isinstance(data.get("entries"), dict):
        raise ConfigError(f"{DATA_FILE} must hold schema_version: {SCHEMA_VERSION} and an 'entries' mapping")
    for key, entry in data["entries"].items():
        _validate_entry(key, entry)
    return data["entries"]


def list_published(dataset: str | None = None) -> list[str]:
    """Ids of the published baselines, optionally only those of ``dataset`` (e.g. ``"nyuv2"``)."""
    return [k for k, e in _load_all().items() if dataset is None or e["dataset"] == dataset]


def load_published(id: str) -> dict[str, Any]:
    """One published baseline: ``{"id", "dataset", "backbone", "protocol", "evaluation", "source", "notes", "metrics"}``.

    ``metrics`` maps ``"<task>/<metric>"`` to floats.  The returned dict is a copy (safe to modify).
    """
    entries = _load_all()
    if id not in entries:
        raise ConfigError(f"unknown published baseline '{id}'; available: {list(entries)}")
    entry = copy.deepcopy(entries[id])
    entry["metrics"] = {k: float(v) for k, v in entry["metrics"].items()}
    return {"id": id, "notes": "", **entry}
