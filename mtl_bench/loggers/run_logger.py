"""Run logging: ``metrics.jsonl`` always, W&B optionally — and W&B can never stop training.

Every record goes to the local JSONL file first (one JSON object per line, flushed at once), then to
W&B.  Any exception raised by W&B (init, log, finish) is logged as a warning and turns the W&B sink off
for the rest of the run; the local files stay complete.

Record types in ``metrics.jsonl``:

* ``{"type": "step", "global_step", "epoch", "time", "train/<task>/loss", "train/objective",
  "train/weight/<task>", "train/lr/<group>", "train/regularizer" (only for a model with its own regularization term,
  lower is better), ...}`` every ``trainer.log_every_n_steps`` steps;
* ``{"type": "epoch", "epoch", "global_step", "time", "train_epoch/<task>/loss", "val/<task>/<metric>",
  "val/loss", "test/...", ...}`` after every evaluation.

W&B step axes: ``train/*`` against ``global_step``; ``train_epoch/*``, ``val/*``, ``test/*`` and
``time/*`` against ``epoch`` (declared with ``define_metric``, never W&B's implicit ``_step``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mtl_bench.errors import ConfigError, storage_error
from mtl_bench.utils import to_jsonable

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")


def resolve_wandb_mode(configured: str | None) -> str:
    """The logger config wins when set; otherwise ``WANDB_MODE``; otherwise offline (no server here).  An invalid
    mode is a :class:`~mtl_bench.errors.ConfigError` (checked before a run starts, :func:`validate_config`): a typo
    must not silently send a run somewhere else than intended."""
    source = "logger.mode" if configured else "WANDB_MODE"
    mode = configured or os.environ.get("WANDB_MODE") or "offline"
    if mode == "dryrun":
        mode = "offline"
    if mode not in WANDB_MODES:
        raise ConfigError(f"{source}={mode!r} is invalid; choose one of {[*WANDB_MODES, 'dryrun']} "
                          f"(or logger=none for no W&B at all)")
    return mode


def default_group(experiment_name: str, sweep_dir: str | os.PathLike | None) -> str:
    """The W&B group of a run that sets no ``logger.group``: ``<experiment_name>/<sweep folder>`` for a job of a
    multirun (``sweep_dir``), else ``<experiment_name>``."""
    return f"{experiment_name}/{Path(sweep_dir).name}" if sweep_dir else str(experiment_name)


@dataclass
class WandbSettings:
    project: str = "mtl_bench"
    entity: str | None = None
    mode: str | None = None
    group: str | None = None
    job_type: str | None = None
    name: str | None = None
    tags: Sequence[str] = ()
    notes: str | None = None
    system_stats: bool = True
    summary_directions: dict[str, bool] = field(default_factory=dict)  # metric key -> higher is better
    # keys / glob patterns logged per epoch beyond the tasks' metrics (the diagnostics' and the mode's) -> direction
    # (True: higher is better, False: lower, None: neither)
    epoch_metrics: dict[str, bool | None] = field(default_factory=dict)
    run_id: str | None = None  # continue this W&B run (a resumed job): same run online, same step axes offline


# logged on the epoch axis by every run (the diagnostics and modes declare their own: WandbSettings.epoch_metrics)
EPOCH_PREFIXES = ("train_epoch", "val", "test", "time", "selected")


class _WandbSink:
    def __init__(self, settings: WandbSettings, config: Mapping[str, Any], run_dir: Path):
        self.run = None
        mode = resolve_wandb_mode(settings.mode)
        if mode == "disabled":
            return
        try:
            import wandb

            self._wandb = wandb
            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                mode=mode,
                group=settings.group,
                job_type=settings.job_type,
                name=settings.name,
                tags=list(settings.tags),
                notes=settings.notes,
                config=dict(config),
                dir=str(run_dir),
                id=settings.run_id,
                resume="allow" if settings.run_id else None,
                reinit="finish_previous",
                settings=wandb.Settings(console="off", quiet=True, x_disable_stats=not settings.system_stats),
            )
            self.run.define_metric("global_step")
            self.run.define_metric("epoch")
            self.run.define_metric("train/*", step_metric="global_step")
            self.run.define_metric("train/regularizer", step_metric="global_step", summary="min")  # lower is better
            self._define_epoch_metrics(settings)
        except Exception as e:  # noqa: BLE001 - W&B failures must never stop training
            log.warning("W&B disabled for this run (init failed: %s: %s); local logs are unaffected", type(e).__name__, e)
            self.run = None

    def _define_epoch_metrics(self, settings: WandbSettings) -> None:
        """Epoch-axis metrics: the evaluation and timing prefixes, every pattern the diagnostics and the mode declare
        (their directions as summaries), the validation metrics with theirs."""
        for prefix in EPOCH_PREFIXES:
            self.run.define_metric(f"{prefix}/*", step_metric="epoch")
        for key, higher in settings.epoch_metrics.items():
            summary = None if higher is None else ("max" if higher else "min")
            self.run.define_metric(key, step_metric="epoch", **({"summary": summary} if summary else {}))
        for key, higher in settings.summary_directions.items():
            self.run.define_metric(key, step_metric="epoch", summary="max" if higher else "min")

    @property
    def active(self) -> bool:
        return self.run is not None

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - W&B failures must never stop training
            log.warning("W&B %s failed (%s: %s); W&B logging is off for the rest of the run", what, type(e).__name__, e)
            self._finish_quietly(1)

    def log(self, record: Mapping[str, Any]) -> None:
        self._guard("log", lambda r: self.run.log(r), dict(record))

    def summary(self, values: Mapping[str, Any]) -> None:
        self._guard("summary", lambda v: self.run.summary.update(v), dict(values))

    def image(self, key: str, path: str | os.PathLike) -> None:
        self._guard("image", lambda: self.run.log({key: self._wandb.Image(str(path))}))

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self._guard("table", lambda: self.run.log({key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])}))

    def info(self) -> dict[str, Any]:
        if self.run is None:
            return {}
        try:
            return {"id": self.run.id, "dir": str(Path(self.run.dir).parent), "mode": self.run.settings.mode,
                    "group": self.run.group, "name": self.run.name, "job_type": self.run.job_type,
                    "project": self.run.project}
        except Exception:  # noqa: BLE001
            return {}

    def _finish_quietly(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B finish failed (%s: %s)", type(e).__name__, e)

    def finish(self, exit_code: int) -> None:
        self._finish_quietly(exit_code)


class RunLogger:
    """Writes ``metrics.jsonl`` in the run directory and mirrors every record to W&B when enabled."""

    def __init__(
        self, run_dir: str | os.PathLike, config: Mapping[str, Any], wandb: WandbSettings | None = None,
        truncate_to: int | None = None, enabled: bool = True,
    ):
        """``truncate_to``: cut ``metrics.jsonl`` to this many bytes first (0 for a fresh start in a reused folder,
        a checkpoint's :meth:`position` when resuming: records logged after that checkpoint are dropped because
        the resumed run logs them again); ``None`` appends.  ``enabled=False`` (torchrun ranks other than 0) writes
        nothing at all."""
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.wandb_info: dict[str, Any] = {}
        self._wandb = None
        self._t0 = time.monotonic()
        if not enabled:
            self._file = None
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._file = open(self.metrics_path, "a", buffering=1, encoding="utf-8")
        if truncate_to is not None:
            self.truncate(truncate_to)
        self._wandb = _WandbSink(wandb, config, self.run_dir) if wandb is not None else None
        self.wandb_info = self._wandb.info() if self._wandb is not None else {}
        if self.wandb_info.get("id"):  # a requeued job finds its W&B run again even before its first checkpoint
            (self.run_dir / "wandb_run_id.txt").write_text(self.wandb_info["id"] + "\n")

    def truncate(self, size: int) -> None:
        """Cut ``metrics.jsonl`` back to ``size`` bytes (records after a checkpoint that a resumed run logs again)."""
        if self._file is None:
            return
        self._file.flush()
        os.truncate(self.metrics_path, min(size, self.metrics_path.stat().st_size))
        self._file.seek(0, os.SEEK_END)

    def position(self) -> int:
        """Byte length of ``metrics.jsonl`` so far (stored in checkpoints)."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    @property
    def wandb_active(self) -> bool:
        return self._wandb is not None and self._wandb.active

    def _write(self, kind: str, record: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        self._append(kind, record)
        if self._wandb is not None:
            self._wandb.log(record)

    def log_step(self, metrics: Mapping[str, Any], *, global_step: int, epoch: int) -> None:
        self._write("step", {"global_step": global_step, "epoch": epoch, **metrics})

    def log_epoch(self, metrics: Mapping[str, Any], *, epoch: int, global_step: int) -> None:
        self._write("epoch", {"epoch": epoch, "global_step": global_step, **metrics})

    def log_event(self, kind: str, payload: Mapping[str, Any]) -> None:
        """A non-metric record (e.g. a merge decision or an error) kept in ``metrics.jsonl`` only."""
        if self._file is None:
            return
        self._append(kind, payload)

    def _append(self, kind: str, record: Mapping[str, Any]) -> None:
        """One line of ``metrics.jsonl``; a failed write (full disk) is a one-line StorageError."""
        line = {"type": kind, "time": round(time.monotonic() - self._t0, 3), **record}
        try:
            self._file.write(json.dumps(to_jsonable(line)) + "\n")
        except OSError as e:
            raise storage_error(self.metrics_path, e) from None

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self._wandb is not None:
            self._wandb.table(key, columns, rows)

    def log_image(self, key: str, path: str | os.PathLike) -> None:
        """A PNG written by a diagnostic; local file always, W&B image when enabled."""
        self.log_event("image", {"key": key, "path": str(path)})
        if self._wandb is not None:
            self._wandb.image(key, path)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary(to_jsonable(dict(values)))

    def finish(self, exit_code: int = 0) -> None:
        if self._wandb is not None:
            self._wandb.finish(exit_code)
        if self._file is not None and not self._file.closed:
            self._file.close()
