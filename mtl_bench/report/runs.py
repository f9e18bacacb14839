"""Finding job folders and reading them into :class:`Run` records that never raise.

A **job folder** is a directory holding at least one of ``.hydra/``, ``summary.json`` or ``config_resolved.yaml``
(what ``python -m mtl_bench.train`` writes for every single run and every multirun job).  The search descends
into the given folders (a multirun root, an experiment folder holding several multiruns, a run folder) and stops
at the first job folder on each path; ``.hydra``, ``checkpoints``, ``wandb`` and the report's own output folder are
never entered.

A job is **running** while a live process owns its folder (:func:`mtl_bench.runlock.holder`: the flock on
``<folder>/.mtl_bench.lock``), whatever its ``summary.json`` says (a resumed run still carries its earlier summary).
Otherwise it is **completed** when its ``summary.json`` parses, says ``status: completed`` and holds a ``selected``
results dict (a ``mode: transfer`` run may instead hold only its ``transfer`` block: its clean metrics then stand
for the results); **stopped** (resumable) when the summary says ``preempted`` or ``interrupted`` (a signal stopped it
after a checkpoint; rerunning the command resumes it); everything else is a **failed** job with a status naming why
(``no_summary``, ``unreadable_summary``, ``incomplete_summary`` or the summary's own status such as ``diverged``).
Jobs that are not completed carry, where one is known, a message (the holder of the lock for a running job, else the
summary's ``error``, else the last line mentioning an error in ``train.log``).  Reading a job never raises: a broken
job is listed, never fatal.

Override values are read as Hydra wrote them into ``.hydra/overrides.yaml`` and un-escaped (Hydra writes a swept
value ``stl:seg`` as ``stl\\:seg``), so labels, CSV files and plots show the plain value.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from mtl_bench.errors import MTLBenchError
from mtl_bench.runlock import describe_holder, holder

MARKERS = (".hydra", "summary.json", "config_resolved.yaml")
SKIP_DIRS = frozenset({".hydra", "checkpoints", "wandb", "__pycache__", ".git"})
_READ_ERRORS = (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError)  # json.JSONDecodeError is a ValueError
RUNNING = "running"
RESUMABLE = ("preempted", "interrupted")  # stopped by a signal after a checkpoint: rerunning the command resumes them
# characters Hydra escapes with a backslash in unquoted override values (hydra/_internal/grammar/utils.py: _ESC)
_HYDRA_ESCAPED = re.compile(r"\\([\\()\[\]{}:=, \t])")


class ReportError(MTLBenchError):
    """A user mistake (missing folder, no runs, bad option): printed as one line, exit code 2."""


def is_job_dir(path: Path) -> bool:
    """Whether ``path`` holds one of :data:`MARKERS` (``.hydra`` as a folder, the others as files)."""
    return any((path / m).is_dir() if m == ".hydra" else (path / m).is_file() for m in MARKERS)


def _natural_key(path: Path) -> list[Any]:
    """Sort ``2_x`` before ``10_x``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_job_dirs(paths: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Job folders in or under ``paths`` (in the given order, naturally sorted within each path, deduplicated).

    Raises :class:`ReportError` when a path does not exist, is not a folder (a ``summary.json`` file stands for
    its folder) or holds no job folder.
    """
    excluded = {Path(p).resolve() for p in exclude}
    found: list[Path] = []
    seen: set[Path] = set()
    for item in paths:
        path = Path(item).expanduser()
        if not path.exists():
            raise ReportError(f"'{path}' does not exist")
        if path.is_file():
            if path.name != "summary.json":
                raise ReportError(f"'{path}' is a file; pass a run folder, a multirun folder or an experiment folder")
            path = path.parent
        jobs: list[Path] = []
        if is_job_dir(path):
            jobs.append(path)
        else:
            for root, dirnames, _ in os.walk(path):
                here = Path(root)
                if here != path and is_job_dir(here):
                    jobs.append(here)
                    dirnames[:] = []
                    continue
                dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and (here / d).resolve() not in excluded]
        if not jobs:
            raise ReportError(
                f"no runs in '{path}': expected a run folder or folders below it holding summary.json, .hydra/ or "
                "config_resolved.yaml (a multirun folder, or an experiment folder with multiruns/ and runs/)"
            )
        for job in sorted(jobs, key=_natural_key):
            key = job.resolve()
            if key not in seen:
                seen.add(key)
                found.append(job)
    return found


def unescape_override(value: str) -> str:
    """An override value as Hydra means it: ``stl\\:seg`` → ``stl:seg`` (quoted values are left to :func:`canonical`)."""
    return value if value[:1] in ("'", '"') else _HYDRA_ESCAPED.sub(r"\1", value)


def parse_overrides(items: Iterable[Any]) -> dict[str, str]:
    """Hydra override strings → ``{key: value}`` (``+``/``++`` prefixes dropped, ``~key`` deletions kept as ``~``,
    Hydra's backslash escapes removed)."""
    out: dict[str, str] = {}
    for item in items:
        text = str(item).strip()
        if text.startswith("~"):
            out[text[1:].partition("=")[0]] = "~"
            continue
        key, sep, value = text.lstrip("+").partition("=")
        if sep and key:
            out[key.strip()] = unescape_override(value.strip())
    return out


def as_float(value: Any) -> float:
    """``value`` as a float if it is a number (bools are not), else NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _last_error_line(log_file: Path) -> str | None:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "Error" in line or "ERROR" in line:
            return line.strip()[:500]
    return None


@dataclass
class Run:
    """One job folder: its status, ``summary.json`` (``{}`` when missing) and overrides (``overrides``: the parsed
    ``override_list``, see :func:`parse_overrides`)."""

    path: Path
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    override_list: list[str] = field(default_factory=list)
    error: str | None = None
    config_data: dict[str, Any] | None = None  # the resolved config when given (W&B); else read lazily from the folder
    overrides: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.overrides = parse_overrides(self.override_list)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    @property
    def stopped(self) -> bool:
        """Stopped by a signal after a checkpoint (``preempted``/``interrupted``): resumable, not a failure."""
        return self.status in RESUMABLE

    @property
    def failed(self) -> bool:
        return not (self.completed or self.running or self.stopped)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def mode(self) -> str | None:
        mode = self.summary.get("mode")
        return mode if isinstance(mode, str) else None

    @property
    def is_stl(self) -> bool:
        return self.mode == "stl"

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    @property
    def tasks(self) -> list[str]:
        tasks = self.summary.get("tasks")
        return [str(t) for t in tasks] if isinstance(tasks, list) else []

    @property
    def targets(self) -> list[str]:
        """The tasks that count (Δm, Pareto): ``targets`` of aux/ForkMerge runs, else every task."""
        targets = self.summary.get("targets")
        return [str(t) for t in targets] if isinstance(targets, list) and targets else self.tasks

    @property
    def dataset(self) -> str | None:
        dataset = self.summary.get("dataset")
        name = dataset.get("name") if isinstance(dataset, dict) else None
        return name if isinstance(name, str) else None

    @property
    def directions(self) -> dict[str, bool]:
        """``"<task>/<metric>"`` → higher is better, as the run recorded it."""
        d = self.summary.get("metric_directions")
        return {str(k): bool(v) for k, v in d.items() if "/" in str(k)} if isinstance(d, dict) else {}

    @property
    def is_transfer(self) -> bool:
        """A ``mode: transfer`` run (fine-tuned from another run's backbone, evaluated on corruptions)."""
        return self.mode == "transfer" and isinstance(self.summary.get("transfer"), dict)

    def results(self, source: str = "selected") -> dict[str, float]:
        """The summary's ``selected`` (or ``final``) results as floats (NaN for anything not a number); a transfer
        run without them gives its clean metrics (``transfer.clean``) under its split (``transfer.split``, else test)."""
        data = self.summary.get(source)
        if not isinstance(data, dict) and self.is_transfer and isinstance(self.summary["transfer"].get("clean"), dict):
            split = self.summary["transfer"].get("split") or "test"
            data = {f"{split}/{k}": v for k, v in self.summary["transfer"]["clean"].items()}
        return {str(k): as_float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def task_metrics(self, split: str, source: str = "selected", include_loss: bool = False,
                     tasks: Iterable[str] | None = None) -> dict[str, float]:
        """``{"<split>/<task>/<metric>": value}`` for the run's tasks (or ``tasks``); task losses only if asked."""
        wanted = set(self.tasks if tasks is None else tasks)
        out: dict[str, float] = {}
        for key, value in self.results(source).items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == split and parts[1] in wanted and (include_loss or parts[2] != "loss"):
                out[key] = value
        return out

    def selection_rule(self) -> str:
        """``best val/loss (min)``, ``last``, ``last_k (k=10)`` or ``unknown``."""
        sel = self.summary.get("selection")
        if not isinstance(sel, dict) or not sel.get("rule"):
            return "unknown"
        rule = str(sel["rule"])
        if rule == "best":
            return f"best {sel.get('metric')} ({sel.get('mode')})"
        if rule == "last_k":
            return f"last_k (k={sel.get('k')})"
        return rule

    def config(self) -> dict[str, Any]:
        """The resolved config (``config_resolved.yaml``), ``{}`` if absent or unreadable; read once."""
        if self.config_data is None:
            self.config_data = {}
            try:
                data = yaml.safe_load((self.path / "config_resolved.yaml").read_text())
            except _READ_ERRORS:
                data = None
            if isinstance(data, dict):
                self.config_data = data
        return self.config_data


def metric_records(run: Run, types: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records of the given ``types`` (``step``, ``epoch``, ...), in file order; unparsable
    lines are skipped, and a missing or unreadable file yields nothing."""
    wanted = set(types)
    path = run.path / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except OSError:
        return
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") in wanted:
            yield record


def load_run(path: Path) -> Run:
    """Read one job folder into a :class:`Run`; never raises (a broken job becomes a failed :class:`Run`)."""
    run = _read_job(path)
    owner = holder(path)
    if owner is not None:  # a live process trains here: its summary (if any) is an earlier attempt's
        run.status, run.error = RUNNING, f"running: {describe_holder(owner)}"
    return run


def _read_job(path: Path) -> Run:
    override_list: list[str] = []
    try:
        data = yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text())
        if isinstance(data, list):
            override_list = [str(x) for x in data]
    except _READ_ERRORS:
        pass
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        error = _last_error_line(path / "train.log")
        return Run(path, "no_summary", {}, override_list,
                   error or "no summary.json and no live process owns the folder: the job crashed before writing it")
    try:
        summary = json.loads(summary_file.read_text())
    except _READ_ERRORS as e:
        return Run(path, "unreadable_summary", {}, override_list, f"summary.json: {e}")
    if not isinstance(summary, dict):
        return Run(path, "unreadable_summary", {}, override_list,
                   f"summary.json holds a {type(summary).__name__}, not a JSON object")
    hydra = summary.get("hydra")
    if isinstance(hydra, dict) and isinstance(hydra.get("overrides"), list):
        override_list = [str(x) for x in hydra["overrides"]]
    status = summary.get("status")
    error = summary.get("error")
    run = Run(path, status if isinstance(status, str) else "unknown", summary, override_list,
              str(error) if error is not None else None)
    if run.completed and not isinstance(summary.get("selected"), dict) and not run.is_transfer:
        run.status, run.error = "incomplete_summary", "status is completed but the summary has no 'selected' results"
    if not run.completed and run.error is None:
        run.error = _last_error_line(path / "train.log")
    return run


def load_runs(paths: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> list[Run]:
    """:func:`find_job_dirs` + :func:`load_run` for each (errors only for missing/empty folders)."""
    return [load_run(p) for p in find_job_dirs(paths, exclude)]


def dotted(data: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """``(True, value)`` for ``"a.b.c"`` in nested dicts, else ``(False, None)``."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node
