"""Optimizer and LR-scheduler construction with named parameter groups.

Parameter groups are explicit and named (``shared``, ``head/<task>``, ``combiner``) so that per-group
learning rates are logged, task-wise optimizers can tell shared from task-specific parameters, and a
learnable combiner (e.g. uncertainty weighting) is optimised alongside the model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from mtl_bench.combiners.base import Combiner
from mtl_bench.errors import ConfigError
from mtl_bench.models.mtl_model import MultiTaskModel


def param_groups(model: MultiTaskModel, combiner: Combiner | None = None) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = [{"params": model.shared_parameters(), "name": "shared"}]
    for task in model.task_names:
        groups.append({"params": model.task_parameters(task), "name": f"head/{task}"})
    if combiner is not None:
        extra = [p for p in combiner.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "name": "combiner", **combiner.optimizer_overrides()})
    return [g for g in groups if g["params"]]


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], model: MultiTaskModel, combiner: Combiner | None = None
) -> torch.optim.Optimizer:
    try:
        return factory(param_groups(model, combiner))
    except (TypeError, ValueError) as e:  # torch validates lr, betas, momentum... with a clear text
        raise ConfigError(f"optimizer: {e}") from e


def build_scheduler(factory: Callable[..., Any] | None, optimizer: torch.optim.Optimizer) -> Any | None:
    """An epoch-level LR scheduler (stepped once per epoch), or ``None`` for a constant LR."""
    if factory is None:
        return None
    try:
        return factory(optimizer)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"scheduler: {e}") from e


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
