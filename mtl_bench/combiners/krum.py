"""Krum / Multi-Krum: keep the task gradient(s) closest to their nearest neighbours (Blanchard et al. 2017)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtl_bench.combiners._grad_utils import check_choice, check_int
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import gramian_to_numpy
from mtl_bench.errors import NotApplicableError

DISTANCES = ("squared", "euclidean")


def krum_scores(m: np.ndarray, n_byzantine: int, distance: str = "squared") -> np.ndarray:
    """Krum score of every row: the sum of its distances (squared or not) to its K − f − 2 nearest other rows,
    with ‖g_i − g_j‖² = M_ii + M_jj − 2 M_ij from the Gramian (clipped at 0 against rounding)."""
    diag = np.diag(m)
    sq = np.clip(diag[:, None] + diag[None, :] - 2.0 * m, 0.0, None)
    dist = sq if distance == "squared" else np.sqrt(sq)
    np.fill_diagonal(dist, np.inf)  # a row is not its own neighbour
    n_closest = m.shape[0] - n_byzantine - 2
    return np.sort(dist, axis=1)[:, :n_closest].sum(axis=1)


@register("krum")
class Krum(GramianWeighting):
    """Krum and Multi-Krum, Byzantine-robust aggregation used as a task-gradient combiner.

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017 (TorchJD ``torchjd/aggregation/_krum.py``).  A federated-learning rule, not an MTL
    method: it treats up to f = ``n_byzantine`` task gradients as possibly adversarial.

    Score of task i: s_i = Σ_{j ∈ N_i} ‖g_i − g_j‖², N_i the K − f − 2 tasks closest to i (the paper's
    definition), computed from the Gramian.  Krum keeps the task with the smallest score; Multi-Krum (the
    paper's Section 5, ``n_selected`` = m > 1) keeps the m smallest scores.  The update is the mean of the kept
    gradients: w_k = 1/m for the kept tasks, 0 otherwise, exactly wᵀG.  Ties are broken towards the lower task
    index (a stable sort), so the choice among tied tasks is not permutation-equivariant; with K − f − 2 = 1
    (e.g. K = 3, f = 0) the two mutually nearest gradients always tie.

    Defaults: ``n_byzantine`` = 0, ``n_selected`` = 1 (Krum proper; the paper has no default f: its guarantee
    needs K > 2f + 2), ``distance`` = ``squared`` (the paper).  Needs K ≥ f + 3 tasks (so that every score has at
    least one neighbour) and n_selected ≤ K, checked at setup.

    Scale convention: **mean** of the selected gradients (``scale = "mean"``; one gradient, unscaled, for
    Krum).  Heads receive their task gradient times w_k, so the heads of the tasks not kept get no update on that
    step (TorchJD, which aggregates the shared parameters' Jacobian only, leaves head gradients untouched).

    Gradient sources: ``params`` (default), ``last_shared``, ``representation``.

    Deviation from TorchJD: TorchJD scores with the (unsquared) Euclidean distances; ``distance: euclidean``
    reproduces that, the default follows the paper.  TorchJD's ``torch.topk`` breaks ties in an unspecified
    order.
    """

    scale = "mean"

    def __init__(self, n_byzantine: int = 0, n_selected: int = 1, distance: str = "squared",
                 grad_source: str | None = None):
        super().__init__(grad_source)
        self.n_byzantine = check_int("n_byzantine", n_byzantine, low=0)
        self.n_selected = check_int("n_selected", n_selected, low=1)
        self.distance = check_choice("distance", distance, DISTANCES)

    def check_num_tasks(self, k: int) -> None:
        if k < self.n_byzantine + 3 or k < self.n_selected:
            raise NotApplicableError(
                f"combiner '{self.name}' with n_byzantine={self.n_byzantine}, n_selected={self.n_selected} needs at "
                f"least max(n_byzantine + 3, n_selected) = {max(self.n_byzantine + 3, self.n_selected)} tasks, got {k}"
            )

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        self.check_num_tasks(m.shape[0])
        chosen = np.argsort(krum_scores(m, self.n_byzantine, self.distance), kind="stable")[: self.n_selected]
        w = np.zeros(m.shape[0])
        w[chosen] = 1.0 / self.n_selected
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n_byzantine": self.n_byzantine, "n_selected": self.n_selected,
                "distance": self.distance}
