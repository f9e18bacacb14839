"""The checkpointed state of a training run: everything a resumed run needs to continue bit-identically — model,
optimizer (and optimizer-wrapper) state, scheduler, combiner, selector (best so far), diagnostics, RNG streams, data
order, W&B run and metrics.jsonl position and, for a mid-epoch checkpoint, the position inside the current epoch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from mtl_bench import __version__
from mtl_bench.checkpoint import rng_state, set_rng_state
from mtl_bench.errors import ConfigError


def partial_epoch(trainer: Any) -> dict[str, Any]:
    """Where a mid-epoch checkpoint is: batches done, running loss sums and the epoch's data-order generator."""
    done, sums, count = trainer.epoch_progress
    return {"epoch": trainer.epoch, "batches_done": done, "sums": sums.detach().cpu(), "count": count,
            "data_generator_epoch_start": trainer.epoch_start_generator}


def capture(trainer: Any, mid_epoch: bool = False) -> dict[str, Any]:
    """The state of ``trainer`` (a :class:`~mtl_bench.trainer.Trainer`) as a checkpoint dict."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "combiner": trainer.combiner.state_dict(),
        "selector": trainer.selector.state_dict(),
        "epoch": trainer.epoch - 1 if mid_epoch else trainer.epoch,  # completed epochs
        "partial_epoch": partial_epoch(trainer) if mid_epoch else None,
        "global_step": trainer.global_step,
        "best_val": dict(trainer.best_val),
        "monitors": {d.key: d.state_dict() for d in trainer.diagnostics},
        "metrics_offset": trainer.logger.position(),
        "wandb_run_id": trainer.logger.wandb_info.get("id"),
        "resumes": list(trainer.resumes),
        "extra": {name: fn() for name, fn in trainer.extra_state.items()},
        "wall_time_s": trainer.wall_time_s,
        "rng": rng_state(),
        "data_generator": trainer.data_generator.get_state(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "task_names": trainer.task_names,
        "mtl_bench_version": __version__,
        "config": trainer.run_info.get("config"),
    }


def _restore_parts(trainer: Any, state: Mapping[str, Any]) -> None:
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.combiner.load_state_dict(state["combiner"])
    trainer.selector.load_state_dict(state["selector"])
    if trainer.scaler is not None and state.get("scaler") is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    saved = state.get("monitors", {})
    for d in trainer.diagnostics:
        if d.key in saved:
            d.load_state_dict(saved[d.key])


def restore(trainer: Any, state: Mapping[str, Any], path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Load ``state`` into ``trainer`` (the global RNG streams included); returns the mid-epoch position (with the
    checkpoint's RNG streams, which the epoch sets again after creating its loader iterator) or ``None``."""
    if list(state["task_names"]) != trainer.task_names:
        raise ConfigError(f"checkpoint {path} was trained on tasks {state['task_names']}, this run has {trainer.task_names}")
    _restore_parts(trainer, state)
    trainer.epoch, trainer.global_step = int(state["epoch"]), int(state["global_step"])
    trainer.best_val = dict(state.get("best_val") or {})
    trainer.data_generator.set_state(state["data_generator"])
    partial = state.get("partial_epoch")
    if partial is not None:
        partial = {**partial, "rng": state["rng"]}
    trainer.loaded_extra = dict(state.get("extra") or {})
    trainer.resumes = [*state.get("resumes", []), {
        "checkpoint": str(path) if path is not None else None, "global_step": trainer.global_step,
        "epoch": trainer.epoch, "mid_epoch": partial is not None, "batches_done": partial["batches_done"] if partial else 0,
    }]
    trainer.last_checkpoint = Path(path) if path is not None else None
    set_rng_state(state["rng"])
    return partial
