"""Geometric loss strategy (Chennupati et al., CVPR Workshops 2019): the geometric mean of the losses."""

from __future__ import annotations

import torch

from mtl_bench.combiners._loss_utils import check_nonnegative_losses, check_positive_eps
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register


@register("gls")
class GeometricLossStrategy(LossWeighting):
    """Geometric loss strategy (GLS): minimise (Π_k L_k)^{1/K}.

    Chennupati, Sistu, Yogamani, Rawashdeh: "MultiNet++: Multi-Stream Feature Aggregation and Geometric
    Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.

    Property: ∇(Π_k c_k L_k)^{1/K} = (Π_k c_k)^{1/K} ∇(Π_k L_k)^{1/K}, so a positive per-task loss
    scaling changes only the length of the update, not its direction (with Adam, up to ε, not even the
    step); its direction is that of Σ_k ∇L_k / L_k (``uw_o``, i.e. Σ_k log L_k).

    Scale convention: effective weights ∂objective/∂L_k = G/(K·L_k) with G the geometric mean (returned
    for logging); the objective is a loss on the scale of the task losses.  Stateless.

    Deviations from the official code (LibMTL's ``GLS``, which takes ``losses.prod() ** (1/K)``): the
    value is computed as exp(mean_k log L_k), which is the same number but cannot under/overflow for
    many tasks; losses are floored at ``eps`` inside the log (a loss below ``eps`` then contributes no
    gradient instead of NaN); a negative loss raises a ``ConfigError`` naming the task.
    """

    scale = "geometric"

    def __init__(self, eps: float = 1e-8, grad_source: str | None = None):
        super().__init__(grad_source)
        self.eps = check_positive_eps(eps)

    def _geometric_mean(self, losses: torch.Tensor) -> torch.Tensor:
        check_nonnegative_losses(losses, self.name, self.task_names)
        return torch.exp(torch.log(losses.clamp(min=self.eps)).mean())

    def _effective(self, losses: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        detached = losses.detach()
        above = detached >= self.eps
        return torch.where(above, mean.detach() / (losses.numel() * detached.clamp(min=self.eps)), torch.zeros_like(detached))

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self._effective(losses, self._geometric_mean(losses.detach()))

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self._geometric_mean(losses)
        return mean, self._effective(losses, mean)

    def loss_lower_bound(self) -> float:
        return 0.0

    def describe(self) -> dict:
        return {**super().describe(), "eps": self.eps}
