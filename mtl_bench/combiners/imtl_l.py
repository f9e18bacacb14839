"""IMTL-L: the loss-balance half of Impartial Multi-Task Learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._loss_utils import LearnedLogScale
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register


@register("imtl_l")
class IMTLLossBalance(LearnedLogScale, LossWeighting):
    """IMTL-L: minimise Σ_k (e^{s_k} L_k − s_k) jointly over the network and learnable log-scales s_k.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang: "Towards Impartial Multi-task Learning", ICLR 2021
    (the loss-balance method; the gradient-balance half, IMTL-G, is a gradient aggregator).

    Defining property: ∂/∂s_k = e^{s_k} L_k − 1, so for fixed losses the stationary point (a minimum, the
    objective is convex in s) has e^{s_k} L_k = 1 for every task: the scaled losses are balanced at 1 and
    the effective weights e^{s_k} tend to 1/L_k.  The objective equals 2·UW evaluated at log-variances
    −s (same optima, twice the gradient), but it is derived without a likelihood and starts from s = 0.

    Scale convention: effective weights ∂objective/∂L_k = e^{s_k} (returned for logging); all 1 at
    initialisation (EW with ``reduction=sum``).  State: the parameter ``log_scale`` (K), zeros, created
    in :meth:`setup` and optimised by the trainer in the ``combiner`` parameter group, with
    ``weight_decay=0`` (the paper does not regularise s) and, with ``lr`` set, its own learning rate.

    Deviations: none we know of from the paper (we know of no official code; LibMTL's ``IMTL`` and
    TorchJD's ``IMTLL`` use the same objective and initialisation).  Here all parameters, shared and task-specific,
    receive the gradient of the scaled losses; the paper's *hybrid* IMTL instead combines the shared
    gradients with IMTL-G.
    """

    scale = "learned"

    def _log_scale(self, losses: torch.Tensor) -> torch.Tensor:
        if self.log_scale is None or self.log_scale.numel() != losses.numel():
            raise RuntimeError(f"combiner 'imtl_l' must be set up for the {losses.numel()} tasks before use")
        return self.log_scale.to(losses.dtype)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.exp(self._log_scale(losses)).detach()

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._log_scale(losses)
        scale = torch.exp(s)
        return (scale * losses - s).sum(), scale.detach()

    def optimizer_overrides(self) -> dict[str, Any]:
        return {"weight_decay": 0.0} if self.lr is None else {"weight_decay": 0.0, "lr": self.lr}

    def describe(self) -> dict:
        return {**super().describe(), "lr": self.lr}
