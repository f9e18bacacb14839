"""Fixed, user-given per-task loss weights (static linear scalarisation)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._loss_utils import PerTask, parse_per_task, resolve_per_task
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError


@register("fixed")
class FixedWeighting(LossWeighting):
    """Static linear scalarisation Σ_k w_k L_k with weights chosen by the user.

    ``weights`` is a list in task order, or a mapping task -> weight (every active task must be named
    and no other), or ``None`` for all ones (then the method is EW with ``reduction=sum``).  Weights
    must be finite numbers (checked at construction), non-negative and not all zero (checked with the
    task names in :meth:`setup`, like the length or the names of the tasks).

    Not a method of one paper: it is the hand-tuned linear-scalarisation baseline every MTL paper starts
    from (e.g. the "uniform/fixed weights" rows of Kendall et al., CVPR 2018), which Xin et al.,
    NeurIPS 2022 ("Do Current Multi-Task Optimization Methods in Deep Learning Even Help?") show to be
    competitive when tuned; for a sweep over the weight simplex see ``ls``.  Scale convention: the weights are used exactly as given (not
    normalised).  Stateless; the weights are configuration, so they are not part of the state dict.
    """

    scale = "as given"

    def __init__(self, weights: Any = None, grad_source: str | None = None):
        super().__init__(grad_source)
        self._given: PerTask | None = None if weights is None else parse_per_task(weights, "combiner.weights", allow_scalar=False)
        self.register_buffer("task_weights", torch.empty(0, dtype=torch.float64), persistent=False)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        values = [1.0] * self.num_tasks if self._given is None else resolve_per_task(self._given, self.task_names, "combiner.weights")
        negative = {t: v for t, v in zip(self.task_names, values) if v < 0}
        if negative:
            raise ConfigError(f"combiner.weights must be non-negative; negative for tasks {negative}")
        if not any(v > 0 for v in values):
            raise ConfigError(f"combiner.weights must have at least one positive weight; got {dict(zip(self.task_names, values))}")
        self.task_weights = torch.tensor(values, dtype=torch.float64, device=self.task_weights.device)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        if self.task_weights.numel() != losses.numel():
            raise RuntimeError(f"combiner 'fixed' was set up for {self.task_weights.numel()} tasks, got {losses.numel()} losses")
        return self.task_weights.to(losses)

    def describe(self) -> dict:
        return {**super().describe(), "weights": dict(zip(self.task_names, self.task_weights.tolist()))}
