"""Value checks that run before anything is built; each failure is a one-line :class:`ConfigError`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.loggers.run_logger import resolve_wandb_mode
from mtl_bench.modes import mode_class
from mtl_bench.preemption import check_signals

# Config keys (matched as prefixes of flattened keys) that say where a run runs, how fast, how it checkpoints
# and logs — never what it learns: a resumed run may change them (mtl_bench.train) and they are not part of a
# transfer source's identity (mtl_bench.transfer).  "trainer.checkpoint_every" covers its _n_steps/_min siblings.
RUNTIME_KEYS = (
    "trainer.resume", "trainer.device", "trainer.num_workers", "trainer.num_threads", "trainer.progress_bar",
    "trainer.checkpoint_every", "trainer.keep_previous_checkpoint", "trainer.on_divergence", "trainer.preemption",
    "trainer.eval_batch_size", "paths",
    "logger", "tags",
)


def _positive_int(value: Any, key: str, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def validate_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    _positive_int(t.epochs, "trainer.epochs")
    _positive_int(t.batch_size, "trainer.batch_size")
    _positive_int(t.eval_batch_size, "trainer.eval_batch_size", allow_none=True)
    _positive_int(t.eval_every, "trainer.eval_every")
    _positive_int(t.log_every_n_steps, "trainer.log_every_n_steps")
    _positive_int(t.max_steps_per_epoch, "trainer.max_steps_per_epoch", allow_none=True)
    _positive_int(t.num_workers, "trainer.num_workers", minimum=0)
    _positive_int(t.checkpoint_every, "trainer.checkpoint_every", minimum=0)
    _positive_int(t.num_threads, "trainer.num_threads", allow_none=True)
    _positive_int(t.checkpoint_every_n_steps, "trainer.checkpoint_every_n_steps", minimum=0)
    if not t.checkpoint_every_min >= 0:
        raise ConfigError(f"trainer.checkpoint_every_min must be >= 0, got {t.checkpoint_every_min!r}")
    check_signals(list(t.preemption.signals))
    check_choice("trainer.on_divergence", t.get("on_divergence", "fail"), ("fail", "record"))
    if t.grad_clip_norm is not None and not t.grad_clip_norm > 0:
        raise ConfigError(f"trainer.grad_clip_norm must be positive or null, got {t.grad_clip_norm!r}")
    _positive_int(cfg.seed, "seed", minimum=0)
    lr = cfg.optimizer.get("lr") if isinstance(cfg.optimizer, DictConfig) else None
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"optimizer.lr must be positive, got {lr!r}")
    mode_class(cfg.mode)  # an importable Mode class (mode._target_), else the registered modes are named
    if cfg.logger.name != "none":
        resolve_wandb_mode(cfg.logger.get("mode"))  # WANDB_MODE=bogus fails here, not after the run has started
