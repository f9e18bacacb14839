"""The Task abstraction: a name, a loss, a metric accumulator factory and the head's output size.

A ``Task`` is pure description; it owns no parameters.  The model's head for a task is built from
``out_dim`` (and ``kind`` for head families that differ by task type), the loss turns a head output and
a target into **one scalar per task** (kept separate from the other tasks' losses, so per-task gradients
never walk another task's head), and ``metrics()`` returns a fresh accumulator that pools exact
statistics over a whole split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mtl_bench.metrics.base import Metric

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Task:
    name: str
    loss: LossFn
    metrics: Callable[[], Metric]
    out_dim: int
    kind: str = "regression"

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Direction of every metric this task reports (``True``: larger is better)."""
        return dict(self.metrics().higher_is_better)
