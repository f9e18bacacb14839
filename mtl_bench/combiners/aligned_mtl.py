"""Aligned-MTL: replace the task gradients by the closest orthogonal system of equal norms, then sum it."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_bool, check_choice
from mtl_bench.combiners.base import Aggregation, GramianWeighting
from mtl_bench.combiners.registry import register

SCALE_MODES = ("min", "median", "rmse")


@register("aligned_mtl")
class AlignedMTL(GramianWeighting):
    """Aligned-MTL.

    Senushkin, Patakin, Kuznetsov, Konushin, "Independent Component Alignment for Multi-Task Learning",
    CVPR 2023 (official code: ``SamsungLabs/MTL``, ``code/optim/aligned``).

    With G the K×d task-gradient matrix and G Gᵀ = V Λ Vᵀ (eigenvalues λ_1 ≥ … ≥ λ_R > 0 kept, R the numerical
    rank), the balance matrix is B = σ V_R Λ_R^{-1/2} V_Rᵀ and the aligned system Ĝ = B G = σ V_R W_Rᵀ, where W_R
    holds the right singular vectors of G: the rows of Ĝ are the closest (Procrustes) system to G whose
    Gramian is σ² times the projector onto the span, i.e. orthogonal gradients of equal norm σ (σ² I when G has
    full rank).  ``scale_mode`` picks σ² = λ_R (``min``, the default), the median eigenvalue (``median``; the
    lower of the two middle values for an even count, as ``torch.median`` in the official code) or the mean
    eigenvalue (``rmse``).  The update is Σ_k ĝ_k = αᵀ G with weights α = B 1, so the method is a Gramian
    weighting and runs from every gradient source (under ``last_shared`` the α computed on the last shared
    layer weight the task losses of the whole model — an MGDA-style approximation the official code does not
    have; it offers ``params`` and, as Aligned-MTL-UB, ``representation``).

    Scale convention: **sum** of the aligned gradients, preference vector 1 (``scale = "sum"``), as in the
    official code and LibMTL; TorchJD's ``AlignedMTL`` applies B to the preference 1/K, i.e. returns this
    update divided by K.

    What the method claims and what it does not: each task contributes a component of the same norm σ,
    however large its raw gradient — no task dominates the update (condition number one).  For mutually
    orthogonal task gradients, Ĝ is the unit gradients times σ, so rescaling a task's gradient (its loss)
    leaves the update's direction unchanged (and, with ``min``, its norm too unless the rescaled task becomes
    the smallest).  For correlated gradients the Procrustes factor depends on the magnitudes, so the update is
    *not* invariant to per-task rescaling (unlike DiBS-MTL).

    Rank deficiency: eigenvalues ≤ λ_1 · K · ε (ε the machine epsilon of the Gramian's dtype) are treated as
    zero; their eigenvectors are left out of B (pseudo-inverse on the span).  If G = 0 (rank 0) the weights
    fall back to the preference, α = 1, and the update is 0.

    Heads: the official balancer leaves the task-specific (decoder) gradients unscaled by default
    (``scale_decoder_grad=False``); so do we (heads get weight 1) unless ``scale_heads=true``.  Under
    ``last_shared`` the engine applies α by one weighted backward, which necessarily scales the heads too.

    Deviations: the official code and LibMTL compute the rank tolerance with float32's ε whatever the dtype
    (``torch.finfo()``); we use the Gramian's dtype (identical for float32, stricter for float64).  The
    eigendecomposition runs in float64 on the CPU (K×K).
    """

    scale = "sum"
    # Aggregation.weights are the heads' weights (1 unless scale_heads), not the α of the direction αᵀG
    provides_task_weights = False

    def __init__(self, scale_mode: str = "min", scale_heads: bool = False, grad_source: str | None = None):
        super().__init__(grad_source)
        self.scale_mode = check_choice("scale_mode", scale_mode, SCALE_MODES)
        self.scale_heads = check_bool("scale_heads", scale_heads)

    def balance_matrix(self, gramian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B (K×K, float64, CPU) and σ²; B = I and σ² = 0 for a zero Gramian."""
        gram = gramian.detach().to(device="cpu", dtype=torch.float64)
        k = gram.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(gram)
        order = torch.argsort(eigvals, descending=True)
        eigvals, eigvecs = eigvals[order], eigvecs[:, order]
        tol = float(eigvals[0]) * k * torch.finfo(gramian.dtype).eps
        rank = int((eigvals > tol).sum()) if float(eigvals[0]) > 0 else 0
        if rank == 0:
            return torch.eye(k, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        eigvals, eigvecs = eigvals[:rank], eigvecs[:, :rank]
        if self.scale_mode == "min":
            sigma2 = eigvals[-1]
        elif self.scale_mode == "median":
            sigma2 = torch.median(eigvals)
        else:
            sigma2 = eigvals.mean()
        balance = sigma2.sqrt() * (eigvecs / eigvals.sqrt()) @ eigvecs.T
        return balance, sigma2

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        balance, _ = self.balance_matrix(gramian)
        return balance.sum(1).to(device=gramian.device, dtype=gramian.dtype)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        weights = self.weights_from_gramian(grads @ grads.T, losses)
        # under last_shared the engine applies the weights by a weighted backward: they must be α
        weighted_heads = self.scale_heads or self.grad_source == "last_shared"
        head_weights = weights if weighted_heads else torch.ones_like(weights)
        return Aggregation(direction=weights @ grads, weights=head_weights)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale_mode": self.scale_mode, "scale_heads": self.scale_heads}
