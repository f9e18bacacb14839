"""GCS: use an auxiliary gradient only where it points the same way as the target gradient."""

from __future__ import annotations

import torch

from mtl_bench.combiners._grad_utils import AuxiliaryRoles, cosine_with_target
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import check_choice


@register("gcs")
class GradientCosineSimilarity(AuxiliaryRoles, GramianWeighting):
    """Gradient cosine similarity (GCS) for auxiliary losses (Du, Czarnecki, Jayakumar, Farajtabar, Pascanu,
    Lakshminarayanan, "Adapting Auxiliary Losses Using Gradient Similarity", arXiv 1812.02224, 2018/2020).

    With g_T the (summed) gradient of the target losses, the update is g_T + Σ_aux w_a g_a where
    ``mode="unweighted"`` (the paper's main rule): w_a = 1 if cos(g_a, g_T) > 0 else 0;
    ``mode="weighted"``: w_a = max(0, cos(g_a, g_T)).  The cosines come from the Gramian of the task
    gradients, so every gradient source works (the paper uses the shared parameters: ``params``).

    Scale convention: sum (targets weight 1, heads of dropped auxiliaries get no gradient that step).  Roles
    from ``mode=aux``/``forkmerge``.  Deviation from the ForkMerge/TL-Library implementation: none we know of
    for a single target; with several targets we compare with their summed gradient.  Stateless.
    """

    scale = "sum"

    def __init__(self, mode: str = "unweighted", grad_source: str | None = None):
        super().__init__(grad_source)
        check_choice("combiner.mode", mode, ("unweighted", "weighted"))
        self.mode = mode

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        is_target = self._target_mask(gramian.device)
        cos = cosine_with_target(gramian, is_target.to(gramian.dtype))
        aux_w = (cos > 0).to(gramian.dtype) if self.mode == "unweighted" else cos.clamp_min(0)
        return torch.where(is_target, torch.ones_like(cos), aux_w)

    def describe(self) -> dict:
        return {**super().describe(), "mode": self.mode, "targets": self.targets}
