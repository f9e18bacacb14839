"""DualProj: project the preference-weighted mean of the task gradients onto their dual cone (Quinton & Rey 2024)."""

from __future__ import annotations

import numpy as np
import torch

from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import dual_cone_weights, eigen_rtol, gramian_to_numpy
from mtl_bench.combiners.upgrad import UPGrad


@register("dualproj")
class DualProj(UPGrad):
    """DualProj: one projection of the averaged gradient onto the dual cone of the task gradients.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, 2024 (TorchJD
    ``torchjd/aggregation/_dualproj.py``, projector in ``torchjd/_linalg/_dual_cone.py``); the projection is
    Eq. 11 of Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017.

    The update is proj_C(Σ_i p_i g_i), C = {d : G d ≥ 0} the dual cone of the rows of G (the directions that
    conflict with no task).  By the Lagrangian dual (Quinton & Rey, Prop. 1) proj_C(Gᵀp) = Gᵀw with
    w = argmin_{w ≥ p} wᵀ M w (M = G Gᵀ), solved exactly as one NNLS problem
    (:func:`mtl_bench.combiners.solvers.dual_cone_weights`), so the update is exactly wᵀG with w ≥ p reported
    as the task weights.  UPGrad instead projects each g_i separately and averages the projections.

    Properties (tested): G d ≥ 0 (no conflict); the KKT conditions of the projection (w ≥ p, M w ≥ 0,
    (w − p) ∘ (M w) = 0); the p-weighted combination of the gradients when no pair conflicts; invariant to
    permuting the tasks (with p); positively homogeneous in G.

    Scale convention: ``pref_vector: null`` (default) is p = 1/K (TorchJD's default), so the update is the
    **mean** gradient when nothing conflicts; a list of K non-negative numbers sets p.  Heads receive their
    task gradient times w_k.

    Gradient sources: ``params`` (default), ``last_shared``, ``representation``.  All-zero gradients give
    w = p; with a singular Gramian the projection is unique but w may not be (one valid choice is returned).

    Deviations from TorchJD: TorchJD divides the Gramian by its trace (replacing it by zero when the trace is
    below ``norm_eps`` = 1e-4, so the update is the plain p-combination for Σ‖g_k‖² < 1e-4), adds
    ``reg_eps`` = 1e-4 · I and solves the QP with quadprog; we solve the unregularised problem exactly at every
    gradient scale, so results differ by O(1e-4) relative (and fully in the small-gradient regime).
    """

    scale = "mean"

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        pref = self.preference(m.shape[0])
        w = dual_cone_weights(m, pref, eigen_rtol(gramian.dtype))
        return torch.as_tensor(np.asarray(w), dtype=gramian.dtype, device=gramian.device)
