"""Gradient Vaccine: move each task gradient towards an adaptive (EMA) target cosine with every other task."""

from __future__ import annotations

import math
from typing import Any

import torch

from mtl_bench.combiners._grad_utils import SeededAggregator, check_real
from mtl_bench.combiners.base import Aggregation
from mtl_bench.combiners.registry import register


@register("gradvac")
class GradVac(SeededAggregator):
    """Gradient Vaccine (GradVac).

    Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
    Massively Multilingual Models", ICLR 2021.

    State: a K×K matrix of target cosines φ̂_ij (buffer ``targets``, zeros at the start).  For each task i, visit
    the other tasks j ≠ i in a random order (own generator) and, with g_i' the current (already adjusted)
    gradient of task i and φ_ij = cos(g_i', g_j):

    * if φ_ij < φ̂_ij, add w·g_j to g_i' with
      w = ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)),
      the unique w ≥ 0 that makes cos(g_i' + w g_j, g_j) = φ̂_ij (law of sines in the plane of g_i', g_j);
    * then φ̂_ij ← (1 − β) φ̂_ij + β φ_ij (every visited pair, adjusted or not).

    The update is Σ_i g_i'.  With all targets 0 (the first step) a conflicting pair is projected exactly as in
    PCGrad.  As for PCGrad the computation runs on the Gramian (g_i' = Σ_k c_ik g_k).  Heads receive their own
    gradients unchanged.

    Scale convention: **sum** of the adjusted gradients (``scale = "sum"``), as in LibMTL and TorchJD.

    β: LibMTL and TorchJD default to β = 0.5 (the value verified against both in our anchors note, so that is our
    default); our recollection is that the paper's experiments use β = 1e-2, but we could not check the PDF
    here — set ``beta`` explicitly when reproducing the paper.

    Gradient sources: ``params`` (default) and ``representation``.  Zero gradients: a pair in which g_i' or g_j
    is zero has no cosine; it is skipped (no adjustment, no EMA update), so zero input gives a zero update.
    A target φ̂_ij = 1 cannot be reached by adding a finite multiple of g_j; such a pair is not adjusted (its
    EMA is still updated).

    Deviations: none in the EMA: like the paper's algorithm, TorchJD and LibMTL (``LibMTL/weighting/GradVac.py``
    since commit d2d84fa, "fix a bug in GradVac", 2024-02-15), we update φ̂_ij for every visited pair, adjusted
    or not, with the cosine measured before the pair's adjustment.  LibMTL releases before that commit updated
    it only for the pairs they adjusted (so targets starting at 0 never became positive).  The paper's finer
    granularities (per layer / per matrix; LibMTL ``GradVac_group_type`` 1 and 2) are not offered: the
    aggregator receives one flattened gradient per task without layer boundaries, so this is LibMTL's default
    ``whole_model`` granularity.  LibMTL and TorchJD add ε = 1e-8 to denominators; we skip undefined cosines
    instead, which changes nothing for non-zero gradients beyond that ε.
    """

    scale = "sum"

    def __init__(self, beta: float = 0.5, seed: int = 0, grad_source: str | None = None):
        super().__init__(seed, grad_source)
        self.beta = check_real("beta", beta, low=0.0, high=1.0)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        k = len(task_names)
        self.register_buffer("targets", torch.zeros(k, k, dtype=torch.float64))

    def coefficients(self, gramian: torch.Tensor) -> torch.Tensor:
        """K×K matrix C with g_i' = Σ_k C[i, k] g_k (float64, CPU); updates the targets, advances the generator."""
        gram = gramian.detach().to(device="cpu", dtype=torch.float64)
        targets = self.targets.detach().to(device="cpu", dtype=torch.float64).clone()
        k = gram.shape[0]
        norms = gram.diagonal().clamp(min=0.0).sqrt()
        coeffs = torch.eye(k, dtype=torch.float64)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            for idx in self.permutation(len(others)):
                j = others[idx]
                dots = coeffs[i] @ gram  # g_i' · g_m for every m
                norm_i = math.sqrt(max(float(dots @ coeffs[i]), 0.0))
                norm_j = float(norms[j])
                if norm_i == 0.0 or norm_j == 0.0:
                    continue
                phi = min(max(float(dots[j]) / (norm_i * norm_j), -1.0), 1.0)
                target = float(targets[i, j])
                if phi < target < 1.0:
                    sin_phi, sin_target = math.sqrt(1.0 - phi * phi), math.sqrt(1.0 - target * target)
                    coeffs[i, j] += norm_i * (target * sin_phi - phi * sin_target) / (norm_j * sin_target)
                targets[i, j] = (1.0 - self.beta) * target + self.beta * phi
        self.targets.copy_(targets)
        return coeffs

    def adjusted_gradients(self, grads: torch.Tensor) -> torch.Tensor:
        """The K×d adjusted gradients g_i' (updates the state like a training step)."""
        return self.coefficients(grads @ grads.T).to(grads) @ grads

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        coeffs = self.coefficients(grads @ grads.T)
        return Aggregation(direction=coeffs.sum(0).to(grads) @ grads)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": self.beta}
