"""Analytically optimal uncertainty weighting, UW-O (Kirchdorfer et al., GCPR 2024)."""

from __future__ import annotations

import torch

from mtl_bench.combiners._loss_utils import check_nonnegative_losses, check_positive_eps
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register


@register("uw_o")
class OptimalUncertaintyWeighting(LossWeighting):
    """UW-O: Σ_k L_k / sg[L_k], the uncertainty-weighting objective with each σ_k at its analytic optimum.

    Kirchdorfer, Elich, Kutsche, Stuckenschmidt, Schott, Köhler: "Analytical Uncertainty-Based Loss
    Weighting in Multi-Task Learning", GCPR 2024 (arXiv 2408.07985).  For the Laplace form
    L_k/σ_k + log σ_k the optimum is σ_k = L_k, so the loss becomes Σ_k L_k/sg[L_k] (+ const) with sg the
    stop-gradient: the weights 1/L_k are recomputed from the current losses at every step instead of
    being learned slowly as in ``uw``.  The paper's proposed method, UW-SO, further normalises these
    weights with a softmax and a temperature; it is not implemented here.

    Property: with per-task loss scales c_k > 0, (c_k L_k)/sg[c_k L_k] has the same gradient as
    L_k/sg[L_k], so the whole update (backbone and heads) is unchanged by any positive loss scaling,
    for every optimizer.  The gradient equals that of Σ_k log L_k, the scale-invariant log-loss baseline
    (``scaleinvls`` of Nash-MTL, Navon et al., ICML 2022): the two give identical updates, so this one
    registry entry serves both names in papers (only the logged objective value would differ).

    Scale convention: effective weights 1/L_k (returned for logging); the objective's value is K.
    Guard: a task loss below ``eps`` is treated as ``eps`` in the weight (weights are capped at 1/eps);
    a negative loss (for which σ_k = L_k is no standard deviation) raises a ``ConfigError`` naming the
    task.  Stateless.  Deviations: the formula follows the paper's Laplace (L1) derivation; we have not
    read an official implementation.  The Gaussian form ½e^{−s}L + ½s gives the same weights times ½,
    which only rescales the learning rate of SGD (and changes nothing with Adam, up to ε).
    """

    scale = "inverse-loss"

    def __init__(self, eps: float = 1e-8, grad_source: str | None = None):
        super().__init__(grad_source)
        self.eps = check_positive_eps(eps)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        check_nonnegative_losses(losses, self.name, self.task_names)
        return 1.0 / losses.detach().clamp(min=self.eps)

    def loss_lower_bound(self) -> float:
        return 0.0

    def describe(self) -> dict:
        return {**super().describe(), "eps": self.eps}
