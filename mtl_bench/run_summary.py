"""A run's summary: ``summary.json`` (read, written atomically, earlier results kept on failure) and the results table
printed at the end of a run, headed by the selection rule and the diagnostics' lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from mtl_bench.checkpoint import remove_quietly
from mtl_bench.errors import storage_error
from mtl_bench.tasks import Task
from mtl_bench.utils import format_table, to_jsonable

RESULT_KEYS = ("selected", "final", "selection", "delta_m", "epochs_completed", "global_steps")
RESULT_COLUMNS = ["task", "metric", "higher_is_better", "selected_val", "selected_test", "final_test"]


def metric_directions(tasks: Mapping[str, Task], splits: Sequence[str] = ("val", "test"), aux: bool = False) -> dict[str, bool]:
    """``{"<split>/<task>/<metric>": higher_is_better}`` for every logged evaluation key (``<split>/loss`` is
    the sum of the target tasks' losses; ``<split>/aux_loss`` that of the auxiliaries in aux mode)."""
    out: dict[str, bool] = {}
    for split in splits:
        out[f"{split}/loss"] = False
        if aux:
            out[f"{split}/aux_loss"] = False
        for name, task in tasks.items():
            out[f"{split}/{name}/loss"] = False
            for metric, higher in task.higher_is_better.items():
                out[f"{split}/{name}/{metric}"] = higher
    return out


def read_summary(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run folder's ``summary.json`` (``None`` when there is none or it is not a JSON object)."""
    path = Path(output_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def write_summary_file(output_dir: str | os.PathLike, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``summary.json`` atomically.  A summary that is not ``completed`` keeps the results of an earlier
    completed attempt in the same folder under ``previous`` (a failed resume never erases them); a failed write
    removes its temporary file and raises :class:`~mtl_bench.errors.StorageError`."""
    path = Path(output_dir) / "summary.json"
    summary = dict(summary)
    earlier = read_summary(output_dir)
    if summary.get("status") != "completed" and earlier is not None and "selected" not in summary:
        kept = earlier.get("previous") if earlier.get("status") != "completed" else earlier
        if kept:
            summary["previous"] = {k: kept[k] for k in ("status", *RESULT_KEYS) if k in kept}
    summary = to_jsonable(summary)
    tmp = path.with_name("summary.json.tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise storage_error(path, e) from None
    return summary


def selection_text(sel: Mapping[str, Any]) -> str:
    """The selection rule in words: what the "selected" columns hold."""
    if sel["rule"] == "best":
        return f"selected: best {sel['metric']} ({sel['mode']}) at epoch {sel['selected_epoch']}"
    if sel["rule"] == "last_k":
        return f"selected: mean of the last {len(sel['epochs'])} evaluations (epochs {sel['epochs']})"
    return "selected: last epoch"


def results_rows(tasks: Mapping[str, Task], targets: Sequence[str], results: Mapping[str, Any]) -> list[list[Any]]:
    """One row per task and metric (auxiliaries marked): selected val / test and final test values."""
    rows = []
    sel, fin = results["selected"], results["final"]
    aux = any(t not in targets for t in tasks)
    for t, task in tasks.items():
        label = t if t in targets or not aux else f"{t} (aux)"
        for metric, higher in [("loss", False), *task.higher_is_better.items()]:
            rows.append([label, metric, higher, sel.get(f"val/{t}/{metric}"), sel.get(f"test/{t}/{metric}"),
                         fin.get(f"test/{t}/{metric}")])
    return rows


def results_table(rows: Sequence[Sequence[Any]], results: Mapping[str, Any], lines: Sequence[str] = ()) -> str:
    """The per-task results table printed at the end of a run, headed by the selection rule and ``lines`` (the
    diagnostics' summaries)."""
    table = [[t, f"{m} {'↑' if hib else '↓'}", *vals] for t, m, hib, *vals in rows]
    if "delta_m" in results and results["delta_m"].get("selected"):
        table.append(["all", f"Δm% ({results['delta_m']['convention']}) ↓", results["selected"].get("val/delta_m"),
                      results["selected"].get("test/delta_m"), results["final"].get("test/delta_m")])
    head = "\n".join([selection_text(results["selection"]), *lines])
    return head + "\n" + format_table(["task", "metric", "val (selected)", "test (selected)", "test (final)"], table)
