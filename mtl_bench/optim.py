"""Optimizer and LR-scheduler construction with named parameter groups.

Parameter groups are explicit and named (``shared``, ``head/<task>``, ``combiner``) so that per-group
learning rates are logged, task-wise optimizers can tell shared from task-specific parameters, and a
learnable combiner (e.g. uncertainty weighting) is optimised alongside the model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from mtl_bench.combiners.base import Combiner
from mtl_bench.errors import ConfigError, check_choice
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


class PlateauOnMetric:
    """``ReduceLROnPlateau`` stepped on a validation metric after each evaluation (the QM9 protocol of Nash-MTL and
    FAMO: factor 0.7, patience 5, min_lr 1e-5 on validation Δm; LibMTL's ``reduce`` scheduler).  ``monitor`` names a
    key of the evaluation record (``val/delta_m``, ``val/loss``, ``val/<task>/<metric>``); ``mode`` is ``min`` or
    ``max``.  Epoch-end ``step()`` does nothing: the trainer calls :meth:`step_on` with the validation record."""

    def __init__(self, optimizer: torch.optim.Optimizer, monitor: str = "val/loss", mode: str = "min",
                 factor: float = 0.1, patience: int = 10, min_lr: float = 0.0, threshold: float = 1e-4):
        check_choice("scheduler.mode", mode, ("min", "max"))
        self.monitor = str(monitor)
        self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr, threshold=threshold)

    def step(self) -> None:
        pass

    def step_on(self, record: dict[str, float]) -> None:
        if self.monitor not in record:
            keys = sorted(k for k in record if k.startswith("val/"))
            raise ConfigError(f"scheduler.monitor={self.monitor!r} is not a validation metric of this run; choose one of {keys}")
        self.inner.step(float(record[self.monitor]))

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


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
