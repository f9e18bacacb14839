"""Small exact K×K solvers shared by the Gramian-based aggregators (MGDA, UPGrad, CAGrad, IMTL-G, Nash-MTL,
FairGrad).

Everything here works on the K×K Gramian ``M = G Gᵀ`` of the task gradients (never on G itself), in
float64 numpy on the host: callers move the Gramian with :func:`gramian_to_numpy` (one device→host sync
per step; K is small, so this costs microseconds next to the K backward passes that produced G).

Exactness: the quadratic programs over the simplex or over a shifted orthant are solved as non-negative
least-squares problems with ``scipy.optimize.nnls`` (Lawson & Hanson's active-set method, which terminates
at the exact optimum up to rounding), after factorising ``M`` (or ``M + 11ᵀ``) as ``AᵀA`` with a symmetric
eigendecomposition restricted to its numerically positive eigenvalues.  The α-fair equation of Nash-MTL
and FairGrad is solved by a damped Newton method on a strictly convex function (see
:func:`solve_alpha_fair`), to a relative residual of ``1e-12``.

Not a method: the package's auto-import skips this module.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Eigenvalues below EIGEN_RTOL · (largest eigenvalue) are treated as zero (rank decisions).  The Gramian of
# float32 gradients carries relative errors ~1e-7, so the cut-off is set per input dtype by the callers.
EIGEN_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def eigen_rtol(dtype: torch.dtype) -> float:
    """Relative eigenvalue cut-off for a Gramian that was computed in ``dtype``."""
    return EIGEN_RTOL.get(dtype, 1e-6)


def gramian_to_numpy(gramian: torch.Tensor) -> np.ndarray:
    """The Gramian as a symmetric float64 host array; non-finite entries raise ``FloatingPointError``."""
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"expected a square K×K Gramian, got shape {tuple(gramian.shape)}")
    m = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(m).all():
        raise FloatingPointError("the Gramian of the task gradients has non-finite entries (NaN/inf gradients)")
    return 0.5 * (m + m.T)


def psd_factor(m: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigen-factor a PSD matrix: returns ``(A, values, vectors)`` with ``AᵀA = m`` restricted to the
    eigenvalues above ``rtol · max eigenvalue`` (``A`` is r×K, r = numerical rank) and the kept
    eigenpairs.  An all-zero matrix gives r = 0."""
    values, vectors = np.linalg.eigh(m)
    top = values[-1] if values.size else 0.0
    keep = values > rtol * top if top > 0 else np.zeros_like(values, dtype=bool)
    values, vectors = values[keep], vectors[:, keep]
    return np.sqrt(values)[:, None] * vectors.T, values, vectors


def min_norm_weights(m: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Exact minimum-norm point of the convex hull of the gradients: ``w = argmin_{w ∈ Δ} wᵀ M w``.

    Least-distance programming (Lawson & Hanson 1974, ch. 23) turned into one NNLS problem: with
    ``E = [Gᵀ; 1ᵀ]`` and ``f = (0, …, 0, 1)``, let ``u = argmin_{u ≥ 0} ‖E u − f‖²``.  Writing ``u = s·w``
    with ``s = Σu`` and ``w`` on the simplex, ``‖E u − f‖² = s²·wᵀMw + (s − 1)²``; for every fixed s > 0
    this is minimised by the min-norm weights w*, and then over s by ``s = 1/(1 + ρ²)`` with
    ``ρ² = w*ᵀMw*`` (so s > 0 always, u ≠ 0).  Hence ``w* = u/Σu`` (and ``ρ² = 1/Σu − 1``).  In Gramian
    space ``‖E u − f‖² = uᵀ(M + 11ᵀ)u − 2·1ᵀu + 1``; factoring ``M + 11ᵀ = AᵀA`` (positive eigenvalues
    only) and taking ``b = Λ^{-1/2} Vᵀ 1`` (so that ``Aᵀb = 1``; 1 lies in the range of ``M + 11ᵀ``) gives
    the same objective up to a constant as ``‖A u − b‖²``, an NNLS problem in K variables.

    ``M`` is first divided by its mean diagonal (the weights are invariant to scaling M, and this keeps
    ``M`` and ``11ᵀ`` on the same scale).  All-zero gradients (M = 0) give uniform weights 1/K.  When the
    gradients are affinely dependent the min-norm *point* is unique but the weights may not be; NNLS
    returns one valid choice.
    """
    k = m.shape[0]
    scale = np.trace(m) / k
    if not scale > 0:
        return np.full(k, 1.0 / k)
    a, values, vectors = psd_factor(m / scale + np.ones((k, k)), rtol)
    b = (vectors.T @ np.ones(k)) / np.sqrt(values)
    from scipy.optimize import nnls  # imported where used: scipy.optimize costs every process that imports the package

    u, _ = nnls(a, b)
    total = u.sum()
    if not total > 0:  # cannot happen in exact arithmetic (see above); guards against rounding only
        return np.full(k, 1.0 / k)
    return u / total


def dual_cone_weights(m: np.ndarray, u: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Weights ``v`` of the projection of ``x = Σ_i u_i g_i`` onto the dual cone ``{d : G d ≥ 0}``; ``u``
    is a K-vector, or a K×J matrix whose J columns are projected independently (one factorisation).

    The Lagrangian dual of ``min ½‖d − x‖² s.t. G d ≥ 0`` is ``min_{v ≥ u} ½ vᵀ M v`` with ``d = Gᵀv``
    (Quinton & Rey 2024, Prop. 1).  Substituting ``v = u + λ``, λ ≥ 0, and ``M = AᵀA`` (positive
    eigenvalues of M) gives the NNLS problem ``min_{λ ≥ 0} ‖A λ + A u‖²``.  The projection ``Gᵀv`` is
    unique; v itself may not be when M is singular (NNLS returns one minimiser).  When no pair of
    gradients conflicts (M ≥ 0 entrywise) and u ≥ 0, λ = 0 is optimal and NNLS returns exactly ``v = u``.
    """
    v = np.array(u, dtype=np.float64)
    scale = np.trace(m) / m.shape[0]
    if not scale > 0:
        return v
    a, _, _ = psd_factor(m / scale, rtol)
    if a.shape[0] == 0:
        return v
    columns = v.reshape(m.shape[0], -1)
    from scipy.optimize import nnls

    for j in range(columns.shape[1]):
        lam, _ = nnls(a, -(a @ columns[:, j]))
        columns[:, j] += lam
    return columns.reshape(v.shape)


def _fair_utility(w: np.ndarray, alpha: float) -> float:
    """Σ h(w_i) with h' = w^{-1/α}: log for α = 1, w^{1-1/α}/(1-1/α) otherwise (concave for α > 0)."""
    if alpha == 1.0:
        return float(np.log(w).sum())
    power = 1.0 - 1.0 / alpha
    return float((w**power).sum() / power)


def solve_alpha_fair(
    m: np.ndarray,
    alpha: float,
    start: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-12,
) -> np.ndarray | None:
    """Positive weights w with ``(M w)_i = w_i^{-1/α}`` for every task i, or ``None`` if none was found.

    α = 1 is the Nash-MTL bargaining solution ``M w = 1/w`` (Navon et al. 2022); general α > 0 are
    FairGrad's α-fair weights (Ban & Ji 2024).  The equation is the stationarity condition of the strictly
    convex function ``f(w) = ½ wᵀ M w − Σ_i h(w_i)`` on w > 0 (h concave with h'(w) = w^{-1/α}; its
    Hessian ``M + diag(w^{-1/α-1}/α)`` is positive definite), so a solution is unique when it exists.  It
    exists iff no non-zero ``d ≥ 0`` has ``Gᵀd = 0`` (f is then coercive); otherwise, e.g. for
    Pareto-stationary gradients, f is unbounded below along d and ``None`` is returned.

    Method: M is divided by its Frobenius norm ``ν`` (the solution for νM' is ``w'·ν^{-α/(1+α)}``), then
    damped Newton steps on f: a fraction-to-the-boundary cap keeps w > 0 and an Armijo backtracking search
    on f globalises the method (full steps once the Newton decrement is small).  Converged when the scale-free
    residual ``max_i |w_i^{1/α} (M w)_i − 1|`` is ≤ ``tol``; if the iteration stalls (a full Newton step
    no longer reduces the residual: the rounding floor of an ill-conditioned M) or hits ``max_iter``, the
    point is still accepted when that residual is ≤ 1e-6, else ``None``.  ``start`` (a previous
    solution, in the units of ``m``) warm-starts the iteration; the result does not depend on it.
    """
    nu = float(np.linalg.norm(m))
    if not nu > 0 or not np.isfinite(nu):
        return None
    mn = m / nu
    if (np.diag(mn) <= 0).any():  # a zero gradient: e_i is a non-negative null direction, no solution
        return None
    back = nu ** (-alpha / (1.0 + alpha))
    w = _fair_newton(mn, alpha, _fair_start(mn, alpha, start, back), max_iter, tol)
    return None if w is None else w * back


def _fair_start(mn: np.ndarray, alpha: float, start: np.ndarray | None, back: float) -> np.ndarray:
    """The first iterate: ``start`` in the units of ``mn`` when it is a usable positive K-vector, else
    ``diag(mn)^(-α/(1+α))``."""
    k = mn.shape[0]
    if start is not None and start.shape == (k,) and np.isfinite(start).all() and (start > 0).all():
        return start / back
    return np.diag(mn) ** (-alpha / (1.0 + alpha))


def _fair_objective(x: np.ndarray, mn: np.ndarray, alpha: float) -> float:
    return 0.5 * float(x @ mn @ x) - _fair_utility(x, alpha)


def _fair_residual(x: np.ndarray, mn: np.ndarray, alpha: float) -> float:
    return float(np.abs(x ** (1.0 / alpha) * (mn @ x) - 1.0).max())


def _fair_newton(mn: np.ndarray, alpha: float, w: np.ndarray, max_iter: int, tol: float) -> np.ndarray | None:
    """The damped Newton iteration of :func:`solve_alpha_fair` on the scaled Gramian ``mn`` from ``w``: the
    solution in the units of ``mn``, or None."""
    previous = math.inf
    full_step = False
    for _ in range(max_iter):
        current = _fair_residual(w, mn, alpha)
        if current <= tol:
            return w
        if full_step and previous <= current <= 1e-6:  # a full Newton step no longer helps: rounding floor
            break
        previous = current
        moved = _fair_step(mn, alpha, w)
        if moved is None:
            break
        w, full_step = moved
    return w if _fair_residual(w, mn, alpha) <= 1e-6 else None


def _fair_step(mn: np.ndarray, alpha: float, w: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """One Newton step from ``w`` (capped to keep w > 0, Armijo-damped while the decrement is large) and whether it
    was a full step; None when no step can be taken (singular Hessian, no descent, backtracking exhausted)."""
    push = w ** (-1.0 / alpha)
    grad = mn @ w - push
    hess = mn + np.diag(push / (alpha * w))
    try:
        step = -np.linalg.solve(hess, grad)
    except np.linalg.LinAlgError:
        return None
    decrement = -float(grad @ step)
    if not decrement > 0:
        return None
    shrinking = step < 0
    t = min(1.0, 0.99 * float((-w[shrinking] / step[shrinking]).min())) if shrinking.any() else 1.0
    full_step = decrement <= 0.1 and t == 1.0
    if decrement > 0.1:  # damped phase: Armijo backtracking on f
        f0 = _fair_objective(w, mn, alpha)
        while t > 1e-16 and _fair_objective(w + t * step, mn, alpha) > f0 - 1e-4 * t * decrement:
            t *= 0.5
        if t <= 1e-16:
            return None
    return w + t * step, full_step
