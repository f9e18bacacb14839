"""A fixed weight on the auxiliary losses: the simplest auxiliary-task-learning baseline."""

from __future__ import annotations

import math

import torch

from mtl_bench.combiners._grad_utils import AuxiliaryRoles
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError


@register("aux_weight")
class AuxiliaryWeight(AuxiliaryRoles, LossWeighting):
    """Σ_targets L_t + λ Σ_auxiliaries L_a with a constant auxiliary weight λ (``weight``), the fixed-weight
    baseline of auxiliary-task learning (e.g. the λ sweeps in Jiang et al., "ForkMerge: Mitigating Negative
    Transfer in Auxiliary-Task Learning", NeurIPS 2023, and Liu et al.'s Auto-λ, ICLR 2022).  Sweep it with
    ``-m combiner=aux_weight combiner.weight=0,0.1,0.3,1``.  λ = 1 is EW (sum) over all tasks, λ = 0 is STL on the
    targets.

    Scale convention: sum (target weight 1).  The roles come from ``mode=aux``/``forkmerge`` (``set_roles``); used
    outside auxiliary-task learning it is an error.  Stateless.
    """

    scale = "sum"

    def __init__(self, weight: float = 1.0, grad_source: str | None = None):
        super().__init__(grad_source)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (weight >= 0 and math.isfinite(weight)):
            raise ConfigError(f"combiner.weight must be a non-negative number, got {weight!r}")
        self.weight = float(weight)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        is_target = self._target_mask(losses.device)
        return losses.new_full((self.num_tasks,), self.weight).masked_fill_(is_target, 1.0)

    def describe(self) -> dict:
        return {**super().describe(), "weight": self.weight, "targets": self.targets}
