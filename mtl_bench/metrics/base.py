"""Metric accumulators.

A metric object accumulates sufficient statistics over a whole split (``update`` per batch, on the
device of the predictions, without host syncs) and turns them into numbers once (``compute``).  Every
metric name declares its direction in ``higher_is_better``; Δm, model selection and reports read the
direction from there, never from a hard-coded list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Mapping

import torch


class Metric(ABC):
    higher_is_better: ClassVar[Mapping[str, bool]]

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...
