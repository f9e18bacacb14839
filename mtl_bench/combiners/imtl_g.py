"""IMTL-G: the combination of the task gradients with equal projections on every unit task gradient (Liu et al. 2021)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import eigen_rtol, gramian_to_numpy, psd_factor

log = logging.getLogger(__name__)

# Relative tolerance of the consistency decisions (is s in the range of M; does a sum vanish).
CONSISTENCY_RTOL = 1e-8


def imtl_g_weights(m: np.ndarray, rtol: float = 1e-12) -> np.ndarray | None:
    """α with Σα = 1 and equal projections ⟨Σ_k α_k g_k, g_i/‖g_i‖⟩ for every task with g_i ≠ 0, or ``None``
    when no such α exists.

    With s_i = ‖g_i‖ = √M_ii the conditions read M α = t·s (t the common projection), 1ᵀα = 1.
    Full-rank M: α = M⁻¹s / 1ᵀM⁻¹s (the paper's closed form, rewritten in Gramian space).  Singular M
    (positive eigenvalues only, see :func:`psd_factor`):

    * s in the range of M: α = M⁺s / 1ᵀM⁺s (the pseudo-inverse generalisation of Quinton & Rey 2024, also
      TorchJD's); a zero gradient gets α_i = 0;
    * otherwise M α = t s forces t = 0, i.e. M α = 0: α = P 1 / 1ᵀP1 with P the projector on the null space
      of M (the update is 0, whose projections are all equal);
    * no solution (``None``) if neither denominator is non-zero.
    """
    k = m.shape[0]
    scale = np.trace(m) / k
    if not scale > 0:
        return None
    mn = m / scale
    s = np.sqrt(np.clip(np.diag(mn), 0.0, None))
    _, values, vectors = psd_factor(mn, rtol)
    s_range = vectors @ (vectors.T @ s)
    null_projector = np.eye(k) - vectors @ vectors.T
    if np.linalg.norm(s - s_range) <= CONSISTENCY_RTOL * np.linalg.norm(s):
        v = vectors @ ((vectors.T @ s) / values)
        total = v.sum()
        if abs(total) > CONSISTENCY_RTOL * np.abs(v).sum():
            return v / total
    null_one = null_projector @ np.ones(k)
    total = null_one.sum()
    if total > CONSISTENCY_RTOL * k:
        return null_one / total
    return None


@register("imtl_g")
class IMTLG(GramianWeighting):
    """Impartial Multi-Task Learning, gradient part (IMTL-G).

    Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task Learning", ICLR 2021
    (no official code; the reference implementations are Nash-MTL's ``IMTLG``, LibMTL's ``IMTL`` and
    TorchJD's ``IMTLG``).

    The update d = Σ_k α_k g_k has the same projection on every unit task gradient u_i = g_i/‖g_i‖
    (dᵀu_i equal for all i) and Σ_k α_k = 1.  The paper's closed form α_{2:K} = g_1 Uᵀ(D Uᵀ)⁻¹
    (D, U: rows g_1 − g_i and u_1 − u_i) is, in Gramian space, α = M⁻¹s / 1ᵀM⁻¹s with s_i = ‖g_i‖
    (:func:`imtl_g_weights`, which also defines the singular cases).  Consequences (tested): the direction
    is invariant to per-task rescaling g_i → c_i g_i (c_i > 0), the magnitude is not.  Note that the
    normalisation Σα = 1 does not make the common projection positive: for some inputs 1ᵀM⁻¹s < 0 and d
    has equal *negative* projections, i.e. every loss increases to first order (in our check, 6 % of
    random Gaussian problems with 2–5 tasks, 2–8 dimensions and log-normal gradient norms) — a property of
    the method (the paper's formula gives the same α), reproduced here, not fixed.

    Scale convention: weights sum to one (``scale = "unit_sum"``; they can be negative).  Heads receive
    their task gradient times α_k.  Gradient sources: ``params`` (default), ``last_shared``,
    ``representation``.  Degenerate input: all-zero gradients, or no solution (see
    :func:`imtl_g_weights`), give uniform weights 1/K (a warning is logged in the second case); a zero
    gradient among non-zero ones gets weight 0; linearly dependent gradients are handled exactly as
    described there; K = 1 gives α = 1.  Solved in float64 on the host (one device sync per step).

    Deviations from the official code (Nash-MTL/LibMTL): they invert D Uᵀ and add 1e-8·I when that fails;
    we use the equivalent Gramian form with an explicit treatment of singular Gramians (pseudo-inverse as
    TorchJD when the system is consistent, the null-space solution when it is not).  TorchJD returns zero
    weights when 1ᵀM⁺s ≈ 0; we return the null-space solution or uniform weights.
    """

    scale = "unit_sum"

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        k = m.shape[0]
        alpha = imtl_g_weights(m, eigen_rtol(gramian.dtype))
        if alpha is None:
            if np.trace(m) > 0:
                log.warning("imtl_g: no weights with equal projections sum to one for this Gramian; using uniform weights")
            alpha = np.full(k, 1.0 / k)
        return torch.as_tensor(alpha, dtype=gramian.dtype, device=gramian.device)
