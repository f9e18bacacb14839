"""Optional W&B input and output of the report (the default report reads local files only).

* :func:`pull_runs` (``--wandb ENTITY/PROJECT[:GROUP]``): runs from the W&B API, turned into :class:`Run` records from
  what mtl_bench logs there: the run config (the resolved config plus ``hydra_choices``) and the ``selected/...``
  summary keys.  Directions come from the metric classes' ``higher_is_better`` (W&B does not store them), the
  overrides from the run name (``<job_num>_<override_dirname>``); a run whose W&B state is not ``finished`` is a
  failed job.  Needs network access and ``WANDB_MODE`` not ``offline``/``disabled``; otherwise, or when the API
  fails, a one-line :class:`ReportError`.
* :func:`log_report` (``--log-wandb``): one W&B run (``job_type=report``) with the group table as a ``wandb.Table``,
  also stored as an artifact of type ``report``, and the figures.  The mode is ``WANDB_MODE`` (offline when unset,
  like training runs); with ``WANDB_MODE=disabled`` nothing is imported or written.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Mapping

from mtl_bench.loggers.run_logger import resolve_wandb_mode
from mtl_bench.report.runs import ReportError, Run


def metric_directions() -> dict[str, bool]:
    """Metric name → higher is better, from every :class:`~mtl_bench.metrics.base.Metric` subclass (+ ``loss``)."""
    import mtl_bench.metrics  # noqa: F401  (imports the metric classes)
    from mtl_bench.metrics.base import Metric

    out: dict[str, bool] = {"loss": False}
    pending = list(Metric.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        out.update({str(k): bool(v) for k, v in getattr(cls, "higher_is_better", {}).items()})
    return out


def _overrides_from_name(name: str) -> list[str]:
    dirname = re.sub(r"^\d+_", "", name or "")
    return [item for item in re.split(r",(?=[^,=\[\]]+=)", dirname) if "=" in item]


def run_from_wandb(wrun: Any, directions: Mapping[str, bool] | None = None) -> Run:
    """A :class:`Run` from a ``wandb.apis.public.Run`` (or any object with ``id``, ``name``, ``state``, ``config``,
    ``summary`` and ``path``)."""
    directions = metric_directions() if directions is None else directions
    config = dict(wrun.config or {})
    summary_in = {k: wrun.summary[k] for k in wrun.summary.keys()}
    selected = {k[len("selected/"):]: v for k, v in summary_in.items() if k.startswith("selected/")}
    mode_cfg = config.get("mode") if isinstance(config.get("mode"), dict) else {}
    tasks: list[str] = []
    for key in selected:
        parts = key.split("/")
        if len(parts) == 3 and parts[1] not in tasks:
            tasks.append(parts[1])
    targets = [str(t) for t in mode_cfg.get("targets") or []] or tasks
    selection = (config.get("trainer") or {}).get("selection") or {}
    state = str(getattr(wrun, "state", "unknown"))
    status = "completed" if state == "finished" and selected else state
    summary = {
        "status": status, "mode": mode_cfg.get("name"), "tasks": tasks, "targets": targets, "seed": config.get("seed"),
        "dataset": {"name": (config.get("dataset") or {}).get("name")}, "choices": config.get("hydra_choices") or {},
        "selected": selected, "selection": {k: selection.get(k) for k in ("rule", "metric", "mode", "k")},
        "metric_directions": {k.split("/", 1)[1]: directions[k.split("/")[2]] for k in selected
                              if k.count("/") == 2 and k.split("/")[2] in directions},
    }
    overrides = _overrides_from_name(str(wrun.name))
    error = None if status == "completed" else f"W&B state '{state}'"
    path = Path("wandb") / "/".join(str(p) for p in getattr(wrun, "path", [wrun.id]))
    return Run(path, status, summary, overrides, error, config_data=config)


def pull_runs(spec: str) -> list[Run]:
    """The runs of ``ENTITY/PROJECT`` (optionally only W&B group ``GROUP``: ``ENTITY/PROJECT:GROUP``)."""
    project, _, group = spec.partition(":")
    if project.count("/") != 1 or not all(project.split("/")):
        raise ReportError(f"--wandb '{spec}' is not of the form ENTITY/PROJECT[:GROUP]")
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise ReportError(f"--wandb needs the W&B API, but WANDB_MODE={mode}; unset it and `wandb login` on a networked machine")
    try:
        import wandb

        api = wandb.Api(timeout=30)
        wruns = list(api.runs(project, filters={"group": group} if group else None))
    except Exception as e:  # noqa: BLE001 - any W&B/network failure becomes one clear message, never a traceback
        raise ReportError(f"--wandb {spec}: the W&B API is not reachable or refused the query ({type(e).__name__}: {e})") from e
    if not wruns:
        raise ReportError(f"--wandb {spec}: no runs found")
    directions = metric_directions()
    return [run_from_wandb(r, directions) for r in wruns]


def log_report(report_csv: Path, figures: list[Path], project: str, name: str) -> str:
    """Log ``report.csv`` as a ``wandb.Table`` (and artifact) and the figures; returns what happened, in words."""
    try:
        mode = resolve_wandb_mode(None)
    except ValueError as e:  # an invalid WANDB_MODE: W&B must never break a report whose files are already written
        return f"W&B logging failed ({type(e).__name__}: {e}); the local report is complete"
    if mode == "disabled":
        return "W&B logging skipped (WANDB_MODE=disabled)"
    with report_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    try:
        import wandb

        run = wandb.init(project=project, job_type="report", name=name, mode=mode, dir=str(report_csv.parent),
                         reinit="finish_previous", settings=wandb.Settings(console="off", quiet=True))
        table = wandb.Table(columns=rows[0], data=rows[1:])
        run.log({"report": table, **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
        artifact = wandb.Artifact(f"report-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}", type="report")
        artifact.add(table, "report")
        run.log_artifact(artifact)
        where = f"{run.url or run.dir} ({mode})"
        run.finish()
    except Exception as e:  # noqa: BLE001 - W&B must never break a report whose files are already written
        return f"W&B logging failed ({type(e).__name__}: {e}); the local report is complete"
    return f"logged the report table to W&B: {where}"
