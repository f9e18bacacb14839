"""ConFIG: the update with equal positive cosine to every task gradient (Liu, Chu, Thuerey 2024)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import eigen_rtol, gramian_to_numpy, psd_factor
from mtl_bench.combiners.upgrad import _check_pref_vector
from mtl_bench.errors import ConfigError


def config_weights(m: np.ndarray, pref: np.ndarray, rtol: float) -> np.ndarray:
    """ConFIG's weights w (update = wᵀG) from the Gramian ``m``: a = D (D M D)⁺ p with D = diag(1/‖g_i‖) (0 for a zero
    gradient), then w = a · (1ᵀ M a) / (aᵀ M a); zeros when the unit direction is undefined (aᵀ M a = 0)."""
    norms = np.sqrt(np.clip(np.diag(m), 0.0, None))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    cosines = inv[:, None] * m * inv[None, :]
    _, values, vectors = psd_factor(cosines, rtol)
    a = inv * (vectors @ ((vectors.T @ pref) / values))
    sq_norm = float(a @ m @ a)
    if not sq_norm > 0:
        return np.zeros_like(pref)
    return a * (float(np.ones_like(pref) @ m @ a) / sq_norm)


@register("conflictfree")
class ConFIG(GramianWeighting):
    """ConFIG (Conflict-Free Inverse Gradients), registered as ``conflictfree`` (the name of the official package;
    ``config`` would read like a configuration option in Hydra's ``combiner=`` group).

    Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks",
    arXiv:2408.11104, 2024 (ICLR 2025); official code ``tum-pbs/ConFIG`` (``conflictfree/grad_operator.py``);
    TorchJD ``torchjd/aggregation/_config.py``.

    With unit gradients U = [g_i/‖g_i‖] (a zero gradient gives a zero row), Eq. 2 takes the direction
    x = U⁺ p (p = ``pref_vector``, ones by default: the minimum-norm x with u_iᵀx = p_i), its unit vector
    û = x/‖x‖, and the length Σ_i g_iᵀû; the update is (Σ_i g_iᵀû) û.  When U has full row rank every g_i has
    cosine ∝ p_i with the update, all equal and positive for p = 1: the update conflicts with no task.

    Gramian form (ours): U⁺ = Uᵀ(UUᵀ)⁺ and UUᵀ = D M D (D = diag(1/‖g_i‖), M = G Gᵀ), so x = Gᵀa with
    a = D (D M D)⁺ p, and the update is exactly wᵀG with w = a · (1ᵀ M a)/(aᵀ M a) — a Gramian weighting that
    reports w as the task weights and also runs from the last shared layer.  The pseudo-inverse drops the
    eigenvalues of the cosine matrix D M D below ``eigen_rtol(dtype)`` (1e-12 in float64) times the largest.

    Properties (tested): equal positive cosines with every non-zero task gradient (full rank); the update's
    projection on û equals Σ_i g_iᵀû; invariant to permuting the tasks (with p); positively homogeneous in G;
    the update does not change when one gradient is rescaled except through its length term.

    Scale convention: the length is the **sum** of the projections of the task gradients on û (the official
    ``ProjectionLength``); p only sets the direction.  Heads receive their task gradient times w_k.

    Gradient sources: ``params`` (default), ``last_shared``, ``representation``.  All-zero gradients give w = 0.

    Deviations from the official code and TorchJD: the official code solves for x with ``torch.linalg.lstsq``
    (TorchJD: ``torch.linalg.pinv`` of U) and, for K = 2, by default uses a closed form from the orthogonal
    components (the same direction in exact arithmetic); we take the pseudo-inverse of the K×K cosine matrix.
    Its eigenvalues are the squared singular values of U, so our rank cut-off keeps singular values above 1e-6
    of the largest, where TorchJD's keeps those above ~max(K, d)·1e-16: the two agree unless U is within ~1e-6 of
    rank-deficient (then x, and ConFIG itself, is ill-conditioned).  The momentum variant (M-ConFIG) is not
    implemented.
    """

    scale = "sum"

    def __init__(self, pref_vector: list[float] | None = None, grad_source: str | None = None):
        super().__init__(grad_source)
        self.pref_vector = _check_pref_vector(pref_vector)

    def preference(self, num_tasks: int) -> np.ndarray:
        if self.pref_vector is None:
            return np.ones(num_tasks)
        if len(self.pref_vector) != num_tasks:
            raise ConfigError(
                f"combiner.pref_vector has {len(self.pref_vector)} values but there are {num_tasks} tasks; "
                f"give one value per task"
            )
        return np.asarray(self.pref_vector, dtype=np.float64)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.preference(self.num_tasks)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        w = config_weights(m, self.preference(m.shape[0]), eigen_rtol(gramian.dtype))
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pref_vector": self.pref_vector}
