"""Helpers shared by the loss-weighting combiners: per-task hyper-parameters given as a list or a mapping,
and the guard of the methods that take logarithms of, or divide by, task losses.

Not a method: the package's auto-import skips modules whose name starts with ``_``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from mtl_bench.errors import ConfigError

# A per-task value as given in a config: one number for every task, a list in task order, or task -> number.
PerTask = Union[float, list[float], dict[str, float]]


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    return float(value)


def parse_per_task(value: Any, key: str, allow_scalar: bool) -> PerTask:
    """Validate the form of a per-task value before the task names are known (constructor time)."""
    if isinstance(value, Mapping):
        return {str(task): _number(v, f"{key}.{task}") for task, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_number(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if allow_scalar:
        return _number(value, key)
    raise ConfigError(f"{key}={value!r} must be a list of numbers in task order or a mapping task -> number")


def resolve_per_task(parsed: PerTask, task_names: Sequence[str], key: str) -> list[float]:
    """One value per task, in ``task_names`` order (``setup`` time); names the offending tasks on mismatch."""
    names = list(task_names)
    if isinstance(parsed, float):
        return [parsed] * len(names)
    if isinstance(parsed, list):
        if len(parsed) != len(names):
            raise ConfigError(
                f"{key} has {len(parsed)} values but there are {len(names)} tasks {names}; "
                f"give one value per task in this order, or a mapping task -> value"
            )
        return list(parsed)
    missing = [t for t in names if t not in parsed]
    unknown = [t for t in parsed if t not in names]
    if missing or unknown:
        raise ConfigError(f"{key} must give a value for exactly the tasks {names}; missing {missing}, unknown {unknown}")
    return [parsed[t] for t in names]


def check_lr(lr: Any) -> float | None:
    """A learning rate for the ``combiner`` parameter group, or ``None`` for the model's."""
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf)):
        raise ConfigError(f"combiner.lr={lr!r} must be a positive number, or null to use the model's learning rate")
    return None if lr is None else float(lr)


def check_positive_eps(eps: float, key: str = "combiner.eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
        raise ConfigError(f"{key}={eps!r} must be a number in (0, 1)")
    return float(eps)


def check_nonnegative_losses(losses: torch.Tensor, method: str, task_names: Sequence[str]) -> None:
    """Raise a one-line error if a task loss is negative (methods built on log L_k or 1/L_k are undefined
    there).  Only for host tensors: on an accelerator the check would cost a device synchronisation, and
    the trainer's per-step loss check enforces ``Combiner.loss_lower_bound`` in the sync it makes anyway."""
    if losses.device.type != "cpu":
        return
    negative = losses.detach() < 0
    if bool(negative.any()):
        k = int(negative.nonzero()[0])
        task = task_names[k] if k < len(task_names) else f"#{k}"
        raise ConfigError(
            f"combiner '{method}' needs non-negative task losses (it uses log L_k or 1/L_k); "
            f"task '{task}' has loss {float(losses[k]):.6g}"
        )


class LearnedLogScale:
    """Mixin: one learnable log-scale ``s_k`` per task (IMTL-L, the hybrid IMTL), created as zeros at setup; a
    repeated setup with the same tasks keeps the learned (or loaded) values.  ``lr``: its own learning rate."""

    def __init__(self, lr: float | None = None, grad_source: str | None = None):
        super().__init__(grad_source)
        self.lr = check_lr(lr)
        self.register_parameter("log_scale", None)

    def setup(self, task_names: list[str]) -> None:
        keep = self.log_scale is not None and list(task_names) == self.task_names
        super().setup(task_names)
        if not keep:
            self.log_scale = nn.Parameter(torch.zeros(self.num_tasks))
