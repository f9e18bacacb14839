"""UW-SO: analytical uncertainty weights normalised by a softmax with a temperature (Kirchdorfer et al., GCPR 2024)."""

from __future__ import annotations

import math

import torch

from mtl_bench.combiners._loss_utils import check_nonnegative_losses, check_positive_eps
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError


def check_temperature(value: object, key: str = "combiner.temperature") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ConfigError(f"{key}={value!r} must be a positive finite number")
    return float(value)


@register("uw_so")
class SoftOptimalUncertaintyWeighting(LossWeighting):
    """UW-SO: Σ_k w_k L_k with w = softmax_k( (1/(sg[L_k] + ε)) / T ), recomputed from the current losses at
    every step (sg: stop-gradient).

    Kirchdorfer, Elich, Kutsche, Stuckenschmidt, Schott, Köhler: "Analytical Uncertainty-Based Loss
    Weighting in Multi-Task Learning", GCPR 2024 (arXiv 2408.07985).  The analytically optimal uncertainty
    weights 1/L_k (UW-O, ``uw_o``) are normalised with a softmax of temperature T; the rule is that of the
    authors' code (``lukaskirchdorfer/MTL4PPM`` ``src/weighting/UW_SO.py``: ``softmax((1/(L+1e-8))/T)``;
    reference note breadth-methods.md, "UW-SO").

    Properties (tested): the weights are positive, sum to one and decrease with the loss (the task with the
    smallest loss gets the largest weight); T → ∞ gives equal weights 1/K, T → 0 all weight on the smallest
    loss.  Not invariant to a common loss scale: multiplying every loss by c > 0 gives the weights of
    temperature c·T (1/(cL)/T = (1/L)/(cT)), so T must be chosen relative to the loss magnitudes (the
    paper tunes T per dataset).

    Scale convention: weights sum to one (``scale = "mean"``; returned for logging).  Stateless.
    Default: ``temperature=1.0``, the default of the authors' code (the paper's T is tuned per dataset);
    ``eps=1e-8`` as in that code.  A negative loss raises a ``ConfigError`` (1/L is no inverse
    uncertainty there).  Deviations: none we know of from the authors' code.
    """

    scale = "mean"

    def __init__(self, temperature: float = 1.0, eps: float = 1e-8, grad_source: str | None = None):
        super().__init__(grad_source)
        self.temperature = check_temperature(temperature)
        self.eps = check_positive_eps(eps)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        check_nonnegative_losses(losses, self.name, self.task_names)
        return torch.softmax((1.0 / (losses.detach() + self.eps)) / self.temperature, dim=0)

    def loss_lower_bound(self) -> float:
        return 0.0

    def describe(self) -> dict:
        return {**super().describe(), "temperature": self.temperature, "eps": self.eps}
