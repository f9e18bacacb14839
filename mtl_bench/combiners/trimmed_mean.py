"""TrimmedMean: coordinate-wise mean of the task gradients after dropping the t largest and t smallest values
(Yin et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_int
from mtl_bench.combiners.base import Aggregation, GradientAggregator
from mtl_bench.combiners.registry import register
from mtl_bench.errors import NotApplicableError


@register("trimmed_mean")
class TrimmedMean(GradientAggregator):
    """Coordinate-wise trimmed mean, Byzantine-robust aggregation used as a task-gradient combiner.

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018 (TorchJD ``torchjd/aggregation/_trimmed_mean.py``).  A federated-learning rule, not an
    MTL method.

    For every coordinate c of the gradient source, sort the K values g_1c, …, g_Kc, drop the t = ``trim_number``
    largest and the t smallest, and average the K − 2t that remain.  t = 0 is the plain mean; for odd K,
    t = (K − 1)/2 is the coordinate-wise median.  The update is not a linear combination wᵀG with one w for all
    coordinates, so no task weights are reported (``provides_task_weights`` False) and heads receive their own
    gradients unchanged.

    Default: ``trim_number`` = 1 (the paper parameterises by the trimmed fraction β ≥ the Byzantine fraction and
    has no default; one value per side is the smallest non-trivial trim).  Needs K ≥ 2t + 1 tasks (checked at
    setup).

    Scale convention: **mean** of the K − 2t kept values per coordinate (``scale = "mean"``).

    Gradient sources: ``params`` (default) and ``representation``; a per-coordinate rule, so it cannot run from
    last-shared-layer weights.

    Deviations from TorchJD: none (the paper's β is expressed as the integer count t per side, as in TorchJD).
    """

    scale = "mean"

    def __init__(self, trim_number: int = 1, grad_source: str | None = None):
        super().__init__(grad_source)
        self.trim_number = check_int("trim_number", trim_number, low=0)

    def check_num_tasks(self, k: int) -> None:
        if k < 2 * self.trim_number + 1:
            raise NotApplicableError(
                f"combiner '{self.name}' with trim_number={self.trim_number} needs at least 2 * trim_number + 1 = "
                f"{2 * self.trim_number + 1} tasks, got {k}"
            )

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        k, t = grads.shape[0], self.trim_number
        self.check_num_tasks(k)
        kept = torch.sort(grads, dim=0).values[t : k - t]
        return Aggregation(direction=kept.mean(0))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "trim_number": self.trim_number}
