"""Equal weighting (EW), the linear-scalarisation baseline every MTL paper reports."""

from __future__ import annotations

import torch

from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError


@register("ew")
class EqualWeighting(LossWeighting):
    """Equal weighting of task losses (the "uniform scaling" baseline of e.g. Kendall et al., CVPR 2018).

    Scale convention (explicit, because the anchors disagree): ``reduction="sum"`` optimises
    Σ_k L_k (weights 1; LibMTL ``EW``, Nash-MTL/FAMO ``ls``), ``reduction="mean"`` optimises
    (1/K) Σ_k L_k (weights 1/K; TorchJD ``Mean``).  With SGD the two differ by a factor K in the
    effective learning rate; with Adam they are (up to ε) the same update.
    """

    scale = "sum"  # per instance: "sum" or "mean" (see ``reduction``)

    def __init__(self, reduction: str = "sum", grad_source: str | None = None):
        super().__init__(grad_source)
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"combiner.reduction must be 'sum' or 'mean', got '{reduction}'")
        self.reduction = reduction
        self.scale = reduction

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        value = 1.0 if self.reduction == "sum" else 1.0 / losses.numel()
        return torch.full_like(losses, value)

    def describe(self) -> dict:
        return {**super().describe(), "reduction": self.reduction}
