"""Random Loss Weighting (Lin et al., TMLR 2022): fresh random weights on the simplex at every step."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.utils import host_to_device
from mtl_bench.errors import ConfigError

DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


@register("rlw")
class RandomLossWeighting(LossWeighting):
    """Random Loss Weighting (RLW): at every step w = softmax(x) with a fresh draw x ∈ ℝ^K, and the update
    is the gradient of Σ_k w_k L_k.

    Lin, Ye, Zhang, Tsang: "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", TMLR 2022 (arXiv 2111.10603, first titled "A Closer Look at Loss Weighting in
    Multi-Task Learning").

    ``distribution`` (the law of x, i.i.d. over tasks unless stated):

    * ``normal`` (default, the paper's default): x_k ~ N(0, 1);
    * ``uniform``: x_k ~ U(0, 1);
    * ``dirichlet``: x ~ Dir(1, …, 1) (drawn as normalised i.i.d. Exp(1) variables), then the softmax is
      applied to x as in the authors' LibMTL ``RLW`` (so the weights are *not* the Dirichlet draw
      itself; they stay within a factor e of each other).

    The paper's Bernoulli variants are not offered (their weights are not on the simplex and need
    a resampling rule).

    Scale convention: the weights are positive and sum to 1.  Randomness: a private ``torch.Generator``
    seeded with ``seed`` (draws in float64 on the CPU, then cast to the losses' dtype/device), never the
    global RNG; its state is saved in the state dict (``get_extra_state``), so a resumed run continues the
    same weight sequence and the same seed always gives the same sequence.

    Deviations: none in the weights' law from the official code (LibMTL ``RLW``; Nash-MTL/FAMO ``rlw`` use
    the same normal/softmax rule); the random streams differ (they use the global RNG).
    """

    scale = "simplex"

    def __init__(self, distribution: str = "normal", seed: int = 0, grad_source: str | None = None):
        super().__init__(grad_source)
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"combiner.distribution={distribution!r} is unknown; choose one of {list(DISTRIBUTIONS)}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"combiner.seed={seed!r} must be a non-negative integer")
        self.distribution = distribution
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self, k: int) -> torch.Tensor:
        if self.distribution == "normal":
            return torch.randn(k, generator=self.generator, dtype=torch.float64)
        if self.distribution == "uniform":
            return torch.rand(k, generator=self.generator, dtype=torch.float64)
        exponential = torch.empty(k, dtype=torch.float64).exponential_(1.0, generator=self.generator)
        return exponential / exponential.sum()

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return host_to_device(torch.softmax(self._draw(losses.numel()), dim=0), losses)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def describe(self) -> dict:
        return {**super().describe(), "distribution": self.distribution, "seed": self.seed}
