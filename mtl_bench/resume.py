"""Continuing a run in its folder: which checkpoint it resumes from (``trainer.resume``), that the checkpoint belongs
to the same experiment, that a completed run with this config is skipped, and that a failed attempt never leaves an
earlier summary saying ``completed``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtl_bench.checkpoint import load_checkpoint
from mtl_bench.config.schema import TrainerConf
from mtl_bench.config.validate import RUNTIME_KEYS
from mtl_bench.distributed import DistContext
from mtl_bench.errors import CheckpointError, ConfigError, MTLBenchError, StorageError
from mtl_bench.run_summary import RESULT_KEYS, read_summary, write_summary_file
from mtl_bench.utils import flatten_dict

log = logging.getLogger("mtl_bench")


# config keys that may differ between a run and its resumption (where, how fast and how often, not what)
RESUME_MAY_CHANGE = ("trainer.epochs", *RUNTIME_KEYS)


def resume_checkpoint(settings: TrainerConf, output_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint a run continues from: ``trainer.resume=auto`` → ``<output_dir>/checkpoints/last.pt`` when it
    exists (a requeued or restarted job), ``never`` → none, otherwise the given path (which must exist)."""
    if settings.resume == "never":
        return None, None
    path = output_dir / "checkpoints" / "last.pt" if settings.resume == "auto" else Path(settings.resume)
    if not path.is_file():
        if settings.resume != "auto":
            raise ConfigError(f"trainer.resume={settings.resume}: no such checkpoint file (use auto, never or a path to a last.pt)")
        return None, None
    state = load_checkpoint(path)
    if "partial_epoch" not in state:
        raise ConfigError(f"{path} was written by an older mtl_bench without resume information; use trainer.resume=never")
    return state, path


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every flattened key that differs, RESUME_MAY_CHANGE keys aside."""
    a, b = flatten_dict(dict(saved)), flatten_dict(dict(current))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUME_MAY_CHANGE)]


def check_resume_config(saved: Mapping[str, Any] | None, current: Mapping[str, Any], path: Path) -> None:
    """A run resumes only into the same experiment: differing keys (other than RESUME_MAY_CHANGE) are an error."""
    if saved is None:
        return
    differ = config_differences(saved, current)
    if differ:
        shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in differ[:6])
        raise ConfigError(
            f"{path} belongs to a run with a different config ({shown}{', ...' if len(differ) > 6 else ''}); "
            f"resume it unchanged, or start over with trainer.resume=never or in another output folder"
        )


def completed_summary(settings: TrainerConf, output_dir: Path, resolved: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary of a run that already completed in ``output_dir`` with this config and number of epochs, so that
    rerunning a sweep into its folder skips its finished jobs (``trainer.resume=never`` trains them again)."""
    summary = read_summary(output_dir) if settings.resume == "auto" else None
    saved = output_dir / "config_resolved.yaml"
    if summary is None or summary.get("status") != "completed" or summary.get("epochs_completed") != settings.epochs:
        return None
    if not saved.is_file() or config_differences(yaml.safe_load(saved.read_text()) or {}, resolved):
        return None  # a different experiment: resuming it is refused later, with the differing keys named
    return summary


def mark_failed(output_dir: Path, error: MTLBenchError) -> None:
    """An attempt on an existing run failed before training (e.g. its checkpoint is damaged): its summary must not
    keep saying ``completed``; the earlier results move under ``previous``."""
    earlier = read_summary(output_dir)
    if earlier is None:
        return
    kept = {k: v for k, v in earlier.items() if k not in (*RESULT_KEYS, "previous", "error", "status")}
    try:
        write_summary_file(output_dir, {**kept, "status": "failed", "error": str(error)})
    except StorageError as e:
        log.error("summary.json not updated: %s", e)


def load_resume(settings: TrainerConf, output_dir: Path, dist: DistContext, resolved: Mapping[str, Any]
                ) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint this run continues from (checked to belong to the same experiment), if any."""
    try:
        state, path = resume_checkpoint(settings, output_dir)
    except CheckpointError as e:
        if dist.is_main:
            mark_failed(output_dir, e)
        raise
    if state is not None:
        check_resume_config(state.get("config"), resolved, path)
    return state, path


