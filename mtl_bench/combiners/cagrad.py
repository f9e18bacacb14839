"""CAGrad: the direction near the mean gradient that maximises the worst task improvement (Liu et al. 2021)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from mtl_bench.combiners._grad_utils import check_choice, check_real
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import dual_cone_weights, eigen_rtol, gramian_to_numpy, min_norm_weights

RESCALES = (0, 1, 2)
REDUCTIONS = ("mean", "sum")
# (0 ∈ hull) is decided at this min-norm distance, relative to the root-mean-square gradient norm.
STATIONARY_RTOL = 1e-7


def cagrad_weights(m: np.ndarray, c: float, rtol: float = 1e-12) -> np.ndarray:
    """Weights ω of the CAGrad direction d = Gᵀω before rescaling, for the Gramian ``m`` and radius factor c.

    Primal: maximise min_i ⟨g_i, d⟩ over the ball ‖d − g0‖ ≤ r, with g0 = Gᵀp the mean gradient (p = 1/K)
    and r = c‖g0‖.  Dual (the paper's): w* = argmin_{w ∈ Δ} F(w) = g_wᵀg0 + r‖g_w‖, and
    d = g0 + (r/‖g_w*‖) g_w*, i.e. ω = p + (r/‖g_w*‖) w*.

    Exact solution: F(w) = min_{μ>0} D(w, μ) with D(w, μ) = g_wᵀg0 + ‖g_w‖²/(2μ) + μr²/2, jointly convex.
    For fixed μ, argmin_w D = argmin_{w ∈ Δ} ‖g_w + μ g0‖², the min-norm point of the hull of the shifted
    gradients g_i + μ g0 (an exact NNLS solve, :func:`min_norm_weights`), so g_w(μ) = proj_H(−μ g0) with
    H = conv{g_i}.  D*(μ) = min_w D is convex, with derivative ½(r² − ‖g_w(μ)‖²/μ²), so
    ψ(μ) = μ r − ‖g_w(μ)‖ is continuous and non-decreasing; its root μ* (Brent's method, bracketed by
    ψ(0) = −dist(0, H) and ψ(max‖g_i‖/r) ≥ 0) gives w* = w(μ*), with r/‖g_w*‖ = 1/μ*.

    Boundary case: if 0 ∈ H (Pareto-stationary gradients) the optimal worst-case value is ≤ 0; when the dual
    cone {d : G d ≥ 0} meets the ball it is exactly 0, ψ ≥ 0 for all μ > 0 and the limit μ → 0 gives
    d = proj_{dual cone}(g0) (Moreau decomposition), an optimal point, returned as its weights
    (:func:`dual_cone_weights` with u = p).  This is where the official code returns ≈ g0 (its
    ‖g_w‖ + 1e-8 guard) even when g0 itself conflicts with a task.
    """
    k = m.shape[0]
    p = np.full(k, 1.0 / k)
    scale = np.trace(m) / k
    if not scale > 0:
        return p
    mn = m / scale  # the weights are invariant to scaling M
    b = mn @ p
    g0_sq = float(p @ b)
    r = c * np.sqrt(max(g0_sq, 0.0))
    if not r > 0:  # c = 0 or g0 = 0: the ball is {g0}
        return p
    return _dual_weights(mn, p, b, g0_sq, r, rtol)


def _dual_weights(mn: np.ndarray, p: np.ndarray, b: np.ndarray, g0_sq: float, r: float, rtol: float) -> np.ndarray:
    """:func:`cagrad_weights` once the trivial cases are out: ω = p + (r/‖g_w*‖) w* from the root μ* of ψ, or the
    dual-cone projection of g0 in the boundary case (``mn``: the scaled Gramian, ``b = mn p``, ``g0_sq = ‖g0‖²``)."""
    ones = np.ones(mn.shape[0])

    def inner(mu: float) -> tuple[np.ndarray, float]:
        shifted = mn + mu * (np.outer(b, ones) + np.outer(ones, b)) + mu * mu * g0_sq * np.outer(ones, ones)
        w = min_norm_weights(shifted, rtol)
        return w, float(np.sqrt(max(float(w @ mn @ w), 0.0)))

    def psi(mu: float) -> float:
        return mu * r - inner(mu)[1]

    hi = float(np.sqrt(np.diag(mn).max())) / r
    if inner(0.0)[1] > STATIONARY_RTOL:
        lo = 0.0
    else:
        v = dual_cone_weights(mn, p, rtol)
        if float(np.sqrt(max(float((v - p) @ mn @ (v - p)), 0.0))) <= r:
            return v
        bracket = _bracket_below(psi, hi)
        if bracket is None:  # dist(g0, dual cone) = r to rounding: the boundary point is optimal
            return v
        lo, hi = bracket
    from scipy.optimize import brentq  # imported where used (scipy.optimize: start-up cost of every process)

    mu = brentq(psi, lo, hi, xtol=1e-15 * hi, rtol=4 * np.finfo(float).eps)
    w, norm = inner(mu)
    if not norm > 0:
        return p
    return p + (r / norm) * w


def _bracket_below(psi: Callable[[float], float], hi: float) -> tuple[float, float] | None:
    """A bracket (lo, hi) with ψ(lo) < 0, found by dividing μ by 10 from ``hi`` down (at most 40 times; None if ψ
    stays ≥ 0): ψ(μ)/μ → r − dist(g0, dual cone) < 0 as μ → 0."""
    lo = hi
    for _ in range(40):
        hi, lo = lo, lo / 10.0
        if psi(lo) < 0:
            return lo, hi
    return None


@register("cagrad")
class CAGrad(GramianWeighting):
    """Conflict-Averse Gradient descent (CAGrad).

    Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021
    (official code ``Cranial-XIX/CAGrad``).

    The update d maximises the worst task improvement min_i ⟨g_i, d⟩ within the ball ‖d − g0‖ ≤ c‖g0‖
    around the mean gradient g0; by duality d = g0 + (√φ/‖g_w‖) g_w with φ = c²‖g0‖² and
    w = argmin_{w ∈ Δ} g_wᵀg0 + √φ‖g_w‖.  d is a linear combination of the gradients, with weights
    1/K + (√φ/‖g_w‖) w_k.  The inner problem is solved exactly (to rounding) from the Gramian with NNLS
    solves and a monotone one-dimensional root search (:func:`cagrad_weights`), not with SLSQP as in the
    official code; c = 0 gives the mean gradient exactly.  ``c`` must lie in [0, 1), the range of the
    paper's convergence theorem.

    Scale convention: ``reduction: mean`` (default; the paper's d, as LibMTL and TorchJD) or ``sum``
    (d times K, as the official NYUv2/Cityscapes code and Nash-MTL's copy of it do "to match the sum
    loss"), then ``rescale``: 0 none, 1 divide by 1 + c² (default, as in the official image-to-image
    experiments and LibMTL), 2 divide by 1 + c.  Heads receive their task gradient times the weight.

    Defaults: c = 0.5, the official argparse default (the published run scripts use 0.4 for NYUv2 and 0.4
    and 0.6 for Cityscapes; Nash-MTL and FAMO use 0.4).  Gradient sources: ``params`` (default),
    ``last_shared``, ``representation``.  Degenerate input: all-zero gradients or g0 = 0 give the mean
    weights; Pareto-stationary gradients whose dual cone meets the ball give the projection of g0 onto
    that cone (an optimal point; see :func:`cagrad_weights`).  K = 1 gives d = (1 + c) g before
    rescaling.  The K×K solves run in float64 on the host (one device sync per step).

    Deviations from the official code: exact inner solve instead of SLSQP from the uniform start, no 1e-8
    guards in ‖g0‖ and ‖g_w‖, and the boundary case above (official: ≈ g0).  No gradient clipping
    (Nash-MTL's copy clips the shared gradient to norm 1; use ``trainer.grad_clip_norm``).
    """

    scale = "mean"

    def __init__(self, c: float = 0.5, rescale: int = 1, reduction: str = "mean", grad_source: str | None = None):
        super().__init__(grad_source)
        self.c = check_real("c", c, low=0.0, high=1.0, high_open=True)
        check_choice("rescale", rescale, RESCALES)
        self.rescale = int(rescale)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        w = cagrad_weights(m, self.c, eigen_rtol(gramian.dtype))
        if self.reduction == "sum":
            w = w * m.shape[0]
        w = w / (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.reduction, "c": self.c, "rescale": self.rescale}
