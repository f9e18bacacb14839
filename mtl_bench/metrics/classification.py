"""Multi-class classification (one label per sample): accuracy, pooled over the split.

``update(pred, target)``: ``pred`` N×C logits (or scores), ``target`` N class ids in ``[0, C)``.  The prediction is
the arg-max of the logits (the first of tied maxima, as ``torch.argmax``); accuracy = correct / samples over the
whole split, so it does not depend on the evaluation batch size.  Targets outside ``[0, C)`` are counted and
``compute`` raises a ``DatasetError`` naming the task.
"""

from __future__ import annotations

import math

import torch

from mtl_bench.errors import ConfigError, DatasetError
from mtl_bench.metrics.base import Metric


def check_logits(pred: torch.Tensor, target: torch.Tensor, num_classes: int, task: str) -> None:
    """``pred`` must be N×C logits for the N targets."""
    if pred.dim() != 2 or pred.shape[1] != num_classes or pred.shape[0] != target.reshape(-1).shape[0]:
        raise ConfigError(
            f"classification task '{task}': prediction shape {tuple(pred.shape)} does not fit {target.reshape(-1).shape[0]} "
            f"targets of {num_classes} classes (expected N x {num_classes} logits)"
        )


class ClassificationMetrics(Metric):
    """Accuracy of one multi-class task (see the module docstring)."""

    higher_is_better = {"acc": True}

    def __init__(self, num_classes: int, task: str = "classification"):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"classification task '{task}': num_classes={num_classes!r} must be an integer >= 2")
        self.num_classes = num_classes
        self.task = task
        self.reset()

    def reset(self) -> None:
        self._counts: torch.Tensor | None = None  # int64 [correct, samples, targets outside [0, C)]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        check_logits(pred, target, self.num_classes, self.task)
        target = target.detach().reshape(-1)
        valid = (target >= 0) & (target < self.num_classes)
        correct = (pred.detach().argmax(dim=1) == target) & valid
        stats = torch.stack([correct.sum(), valid.sum(), (~valid).sum()])
        self._counts = stats if self._counts is None else self._counts + stats

    def compute(self) -> dict[str, float]:
        if self._counts is None:
            return {"acc": math.nan}
        correct, n, bad = self._counts.cpu().tolist()
        if bad:
            raise DatasetError(f"classification task '{self.task}': {bad} target(s) outside [0, {self.num_classes})")
        return {"acc": correct / n if n else math.nan}
