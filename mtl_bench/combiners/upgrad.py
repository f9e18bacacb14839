"""UPGrad: average the projections of the task gradients onto the dual cone of all of them (Quinton & Rey 2024)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import dual_cone_weights, eigen_rtol, gramian_to_numpy
from mtl_bench.errors import ConfigError


def check_pref_length(pref_vector: list[float] | None, task_names: list[str]) -> None:
    """A preference vector has one value per task, in the tasks' order."""
    if pref_vector is not None and len(pref_vector) != len(task_names):
        raise ConfigError(
            f"combiner.pref_vector has {len(pref_vector)} values but there are {len(task_names)} tasks "
            f"{task_names}; give one value per task in this order"
        )


def _check_pref_vector(value: Any) -> list[float] | None:
    if value is None:
        return None
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    ok = ok and all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in value)
    if not ok or sum(value) <= 0:
        raise ConfigError(
            f"combiner.pref_vector={value!r} is invalid; valid: null (1/K for every task) or a list of K "
            f"finite numbers >= 0, not all zero"
        )
    return [float(v) for v in value]


@register("upgrad")
class UPGrad(GramianWeighting):
    """Unconflicting Projection of Gradients (UPGrad).

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, 2024 (official
    implementation: TorchJD, ``SimplexLab/TorchJD``, ``UPGrad``).

    Each task gradient g_i is projected onto the dual cone C = {d : G d ≥ 0} of the rows of G (the
    directions that conflict with no task); the update is Σ_i p_i · proj_C(g_i) with the preference
    vector p.  In Gramian space proj_C(g_i) = Gᵀ v_i with v_i = argmin_{v ≥ e_i} vᵀ M v, a small
    non-negative QP solved exactly as an NNLS problem after substituting v = e_i + λ, λ ≥ 0
    (:func:`mtl_bench.combiners.solvers.dual_cone_weights`); the weights are w = Σ_i p_i v_i.

    Properties (tested): the update conflicts with no task (G d ≥ 0); it is the p-weighted combination of
    the gradients when no pair conflicts (M_ij ≥ 0); it is invariant to permuting the tasks (with p), linear
    in p and linear under positive per-task rescaling of the gradients.

    Scale convention: ``pref_vector: null`` (default) is TorchJD's convention p = 1/K, so the update is
    the **mean** gradient when nothing conflicts (its weights grow when something does); a list of K
    non-negative numbers sets p (e.g. all ones for the sum convention).  Heads receive their task gradient
    times w_k.

    Gradient sources: ``params`` (default), ``last_shared``, ``representation``.  All-zero gradients give
    w = p; with a singular Gramian the projections (hence the update) are unique but the weights may not
    be, and one valid choice is returned.  The K small NNLS problems run in float64 on the host (one device
    sync per step).

    Deviations from TorchJD: TorchJD normalises the Gramian by its trace, replaces it by zero when that
    trace is below ``norm_eps`` = 1e-4 (so the update becomes the plain mean for gradients with
    Σ‖g_k‖² < 1e-4) and adds ``reg_eps`` = 1e-4 · I before solving the QPs with a numerical QP solver; we
    solve the unregularised QPs exactly at every gradient scale, so results differ by O(1e-4) relative
    (and fully in the small-gradient regime).
    """

    scale = "mean"

    def __init__(self, pref_vector: list[float] | None = None, grad_source: str | None = None):
        super().__init__(grad_source)
        self.pref_vector = _check_pref_vector(pref_vector)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        check_pref_length(self.pref_vector, self.task_names)

    def preference(self, num_tasks: int) -> np.ndarray:
        if self.pref_vector is None:
            return np.full(num_tasks, 1.0 / num_tasks)
        if len(self.pref_vector) != num_tasks:
            raise ConfigError(f"combiner.pref_vector has {len(self.pref_vector)} values for a Gramian of {num_tasks} tasks")
        return np.asarray(self.pref_vector, dtype=np.float64)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        k = m.shape[0]
        pref = self.preference(k)
        w = dual_cone_weights(m, np.eye(k), eigen_rtol(gramian.dtype)) @ pref
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)

    def describe(self) -> dict[str, Any]:
        scale = "mean" if self.pref_vector is None else "pref_vector"
        return {**super().describe(), "scale": scale, "pref_vector": self.pref_vector}
