"""PCD: Priority-Constrained Descent, the closest direction to the primary gradient that guarantees every secondary
task a fraction of its own normalised progress (TorchJD's ``PCD``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import eigen_rtol, gramian_to_numpy, psd_factor
from mtl_bench.errors import ConfigError


def _check_tau(value: Any) -> float | list[float]:
    if isinstance(value, Sequence) and not isinstance(value, str):  # a list, also an OmegaConf ListConfig
        ok = len(value) > 0 and all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0
            for v in value
        )
        if not ok:
            raise ConfigError(f"combiner.tau={value!r} is invalid; valid: a number in [0, 1] or a list of K - 1 of them")
        return [float(v) for v in value]
    return check_real("tau", value, low=0.0, high=1.0)


def priority_constrained_weights(n: np.ndarray, taus: np.ndarray, rtol: float = 1e-12) -> np.ndarray | None:
    """Weights ``[1, μ_2, …, μ_K]`` of ``d = g_1 + Σ_j μ_j g_j``, the solution of
    ``min_d ½‖d − g_1‖²  s.t.  g_jᵀd ≥ τ_j ‖g_j‖² (j ≥ 2)``, from the Gramian ``n`` of g_1 … g_K (row 0 primary);
    ``None`` when the constraints cannot all hold.

    Least-distance programming (Lawson & Hanson 1974, ch. 23): with x = d − g_1 the problem is
    ``min ‖x‖ s.t. E x ≥ b``, E the secondary rows and ``b_j = τ_j ‖g_j‖² − g_jᵀg_1``.  Let
    ``u = argmin_{u ≥ 0} ‖Eᵀu‖² + (bᵀu − 1)²`` (one NNLS problem); its residual has squared norm ``ρ = 1 − bᵀu``;
    the constraints are infeasible iff ρ = 0, and otherwise ``x = Eᵀu / ρ``, so μ = u / ρ.  In Gramian space the NNLS
    objective is ``uᵀ(N_s + bbᵀ)u − 2bᵀu + 1`` (N_s the secondary block), solved after factoring
    ``N_s + bbᵀ = AᵀA`` (b lies in its range).  The direction d is unique; μ may not be (dependent gradients).
    """
    k = n.shape[0]
    w = np.zeros(k)
    w[0] = 1.0
    scale = np.trace(n) / k
    if k == 1 or not scale > 0:
        return w
    n = n / scale  # μ is invariant to a common scale of all gradients (b and N_s scale alike)
    ns = n[1:, 1:]
    b = taus * np.diag(ns) - n[1:, 0]  # b_j > 0 iff g_1 itself violates constraint j
    if not (b > 0).any():
        return w
    a, values, vectors = psd_factor(ns + np.outer(b, b), rtol)
    rhs = (vectors.T @ b) / np.sqrt(values)
    from scipy.optimize import nnls  # imported where used (see solvers.py)

    u, _ = nnls(a, rhs)
    rho = 1.0 - float(b @ u)
    if rho <= max(rtol, 1e-9) * max(1.0, float(np.abs(b) @ u)):  # zero residual up to rounding: infeasible
        return None
    w[1:] = u / rho
    return w


@register("pcd")
class PCD(GramianWeighting):
    """Priority-Constrained Descent (PCD): follow the primary task's gradient as closely as possible while every
    secondary task gets at least a fraction τ of the progress of a step along its own normalised gradient.

    Cited by TorchJD 0.18 (``torchjd/aggregation/_pcd.py``) as "Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR 2026 (openreview HT01yGHLEt,
    arXiv id printed as 2606.29521, unverified); reference code DaraVaram/priority-constrained-descent (not read
    here: this module follows TorchJD's documented rule).

    The **first task** in ``task_names`` (row 1 of G) is the primary one; the method is not symmetric.  With
    g̃_i = s_i g_i, s_i = 1/√(v̂_i + ε) and v̂_i the bias-corrected exponential moving average (decay β) of ‖g_i‖²
    over the steps, d̃ = argmin_d ½‖d − g̃_1‖² s.t. g̃_jᵀd ≥ τ_j‖g̃_j‖² for j ≥ 2, solved exactly in Gramian space
    as one non-negative least-squares problem (:func:`priority_constrained_weights`; TorchJD uses Goldfarb–Idnani's
    dual active-set method, the reference code enumerates active sets).  The update is d̃ rescaled to ‖g_1‖:
    weights w = [1, μ] ⊙ s · ‖g_1‖/‖d̃‖, update exactly wᵀG.  Special cases: g_1 = 0 → 0; infeasible
    constraints (needs K ≥ 3, e.g. two opposite secondary gradients) → g_1; d̃ = 0 up to rounding → 0.

    Properties (tested): every constraint holds at the optimum with complementary slackness (μ_j ≥ 0, and μ_j = 0
    where the constraint is slack); g_1 is returned when it already satisfies all constraints; ‖update‖ = ‖g_1‖;
    a secondary gradient rescaled by the same positive constant at every step leaves the update unchanged (up to ε).

    Defaults (TorchJD's, the only implementation read): τ = 0.02 (a number, or a list of K − 1 numbers, one per
    secondary task in task order), β = 0.999, ε = 1e-8.

    Scale convention: **primary norm** (``scale = "primary_norm"``): ‖update‖ = ‖g_1‖.  Heads receive their task
    gradient times w_k.

    State across steps: the moving average of the K squared norms (float64) and the step count, kept as the
    module's extra state, so ``state_dict`` / checkpoints restore it; it restarts if the number of tasks changes.

    Gradient sources: ``params`` (default), ``last_shared``, ``representation`` (norms and the moving average are
    then those of the chosen source's gradients).

    Deviations from TorchJD: a different exact solver (same minimiser; infeasibility is declared when the LDP
    residual is below 1e-9 relative, TorchJD uses its own 1e-9 dependence tolerance, so they can disagree on
    constraint sets within rounding of infeasibility); non-finite Gramians raise (the trainer checks finiteness)
    instead of returning NaN.
    """

    scale = "primary_norm"

    def __init__(self, tau: float | list[float] = 0.02, beta: float = 0.999, eps: float = 1e-8,
                 grad_source: str | None = None):
        super().__init__(grad_source)
        self.tau = _check_tau(tau)
        self.beta = check_real("beta", beta, low=0.0, high=1.0, high_open=True)
        self.eps = check_real("eps", eps, low=0.0)
        self.sq_norm_ema: torch.Tensor | None = None
        self.n_steps = 0

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.taus(self.num_tasks)

    def taus(self, k: int) -> np.ndarray:
        if isinstance(self.tau, list):
            if len(self.tau) != k - 1:
                raise ConfigError(
                    f"combiner.tau has {len(self.tau)} values but there are {k - 1} secondary tasks "
                    f"{self.task_names[1:]}; give one value per secondary task in this order"
                )
            return np.asarray(self.tau, dtype=np.float64)
        return np.full(k - 1, self.tau)

    def update_scales(self, sq_norms: np.ndarray) -> np.ndarray:
        """Advance the moving average with this step's squared norms and return s = 1/√(v̂ + ε) (0 where v̂ + ε = 0)."""
        k = sq_norms.shape[0]
        if self.sq_norm_ema is None or self.sq_norm_ema.shape[0] != k:
            self.sq_norm_ema, self.n_steps = torch.zeros(k, dtype=torch.float64), 0
        ema = self.beta * self.sq_norm_ema.numpy() + (1.0 - self.beta) * sq_norms
        self.sq_norm_ema, self.n_steps = torch.from_numpy(ema), self.n_steps + 1
        denom = np.sqrt(ema / (1.0 - self.beta**self.n_steps) + self.eps)
        return np.where(denom > 0, 1.0 / np.where(denom > 0, denom, 1.0), 0.0)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        k = m.shape[0]
        taus = self.taus(k)
        sq_norms = np.clip(np.diag(m), 0.0, None)
        s = self.update_scales(sq_norms)
        w = np.zeros(k)
        if sq_norms[0] > 0:
            n = m * np.outer(s, s)
            mu = priority_constrained_weights(n, taus, eigen_rtol(gramian.dtype))
            if mu is None:
                w[0] = 1.0
            else:
                d_sq = float(mu @ n @ mu)
                magnitude = float(np.abs(mu) @ np.sqrt(np.clip(np.diag(n), 0.0, None))) ** 2
                if d_sq > 10 * torch.finfo(gramian.dtype).eps * magnitude:
                    w = mu * s * math.sqrt(sq_norms[0] / d_sq)
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)

    def get_extra_state(self) -> dict[str, Any]:
        ema = None if self.sq_norm_ema is None else self.sq_norm_ema.clone()
        return {"sq_norm_ema": ema, "n_steps": self.n_steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        ema = state["sq_norm_ema"]
        self.sq_norm_ema = None if ema is None else ema.detach().to(device="cpu", dtype=torch.float64).clone()
        self.n_steps = int(state["n_steps"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tau": self.tau, "beta": self.beta, "eps": self.eps, "primary": self.task_names[:1]}
