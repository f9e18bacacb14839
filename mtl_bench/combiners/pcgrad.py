"""PCGrad: project each task gradient onto the normal plane of the task gradients it conflicts with."""

from __future__ import annotations

import torch

from mtl_bench.combiners._grad_utils import SeededAggregator
from mtl_bench.combiners.base import Aggregation
from mtl_bench.combiners.registry import register


@register("pcgrad")
class PCGrad(SeededAggregator):
    """Projecting Conflicting Gradients (PCGrad).

    Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.

    For each task i (Algorithm 1): start from g_i' = g_i and visit the other tasks j ≠ i in a random order
    (a fresh permutation per task, from the combiner's own generator); whenever g_i' · g_j < 0 replace
    g_i' ← g_i' − (g_i' · g_j / ‖g_j‖²) g_j (projection onto the normal plane of the *original* g_j).  The
    update is Σ_i g_i'.

    Every g_i' is a linear combination of the original gradients, so the surgery runs on the K×K Gramian
    (coefficients c_i with g_i' = Σ_k c_ik g_k; g_i' · g_j = (c_i G Gᵀ)_j) and the d-dimensional work is a
    single product at the end.  Heads receive their own task gradients unchanged (weights ``None``).

    Scale convention: **sum** of the projected gradients (``scale = "sum"``), as in the official code,
    LibMTL, Nash-MTL and TorchJD; with no conflict the update is Σ_i g_i (EW with weights 1).

    Gradient sources: ``params`` (default, as in the paper) and ``representation``; it is a direction-only
    method, so it cannot run from last-shared-layer weights.  Zero gradients: a zero g_j never conflicts, a
    zero g_i stays zero, so all-zero input gives a zero update (no NaN).

    Deviations from the official code (``tianheyu927/PCGrad``, TensorFlow): the official code projects g_i
    also onto its own g_i (which never conflicts with it unless earlier projections turned it around) and
    uses one task order for all i; its ``tf.random.shuffle(loss)`` result is discarded, so that order is not
    actually random.  We follow the paper's Algorithm 1 (j ≠ i, random order), like LibMTL's per-task
    shuffle.  For K ≤ 2 the order does not matter and all of these agree exactly.
    """

    scale = "sum"

    def coefficients(self, gramian: torch.Tensor) -> torch.Tensor:
        """K×K matrix C with g_i' = Σ_k C[i, k] g_k (float64, CPU); advances the generator."""
        gram = gramian.detach().to(device="cpu", dtype=torch.float64)
        k = gram.shape[0]
        sq_norms = gram.diagonal()
        coeffs = torch.eye(k, dtype=torch.float64)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            for idx in self.permutation(len(others)):
                j = others[idx]
                dot = float(coeffs[i] @ gram[:, j])
                if dot < 0.0:  # implies ‖g_j‖ > 0
                    coeffs[i, j] -= dot / float(sq_norms[j])
        return coeffs

    def projected_gradients(self, grads: torch.Tensor) -> torch.Tensor:
        """The K×d projected gradients g_i' (one draw of the random orders)."""
        return self.coefficients(grads @ grads.T).to(grads) @ grads

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        coeffs = self.coefficients(grads @ grads.T)
        return Aggregation(direction=coeffs.sum(0).to(grads) @ grads)
