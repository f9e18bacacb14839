"""MGDA: the exact minimum-norm point of the convex hull of the task gradients (Sener & Koltun 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtl_bench.combiners._grad_utils import check_choice
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import eigen_rtol, gramian_to_numpy, min_norm_weights
from mtl_bench.errors import ConfigError

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
WEIGHT_SCALES = ("simplex", "num_tasks")


@register("mgda")
class MGDA(GramianWeighting):
    """Multiple-gradient descent: weights w on the simplex minimising ‖Σ_k w_k g_k‖.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (official code
    ``isl-org/MultiObjectiveOptimization``); Désidéri, "Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization", Comptes Rendus Mathématique 2012.

    The update is the min-norm element of conv{g_1, …, g_K}: zero iff the gradients are Pareto-stationary,
    otherwise a direction that decreases every task loss.  Solved **exactly** from the Gramian by one
    non-negative least-squares problem in K variables (least-distance programming; derivation in
    :func:`mtl_bench.combiners.solvers.min_norm_weights`), not by the official Frank-Wolfe iterations.
    The weights satisfy the KKT conditions (M w)_j ≥ wᵀMw for every j, with equality where w_j > 0.

    ``normalization`` rescales each gradient before solving, as the official code's
    ``gradient_normalizers`` (it is *not* in the paper, whose method is ``none``, the default):
    ``l2``: g_k/‖g_k‖; ``loss``: g_k/L_k; ``loss+``: g_k/(L_k‖g_k‖).  The Gramian of the normalised
    gradients is D M D with D = diag(1/n_k).  As in the official code (and Nash-MTL's), the weights found
    for the normalised gradients are applied to the *raw* gradients (the official trainer back-propagates
    Σ_k w_k L_k); LibMTL's parameter-gradient path instead sums the normalised gradients.  A zero gradient
    stays zero under ``l2``/``loss+``; ``loss``/``loss+`` need positive, finite task losses (otherwise a
    ``ConfigError`` names the task).

    Scale convention (``weight_scale``): ``simplex`` (default, the paper): Σ w = 1, the update is a convex
    combination of the gradients; ``num_tasks``: the simplex weights times K (Σ w = K), as the Nash-MTL and
    FAMO code does ("to match the sum loss").  Heads receive their task gradient times w_k.

    Gradient sources: ``params`` (default), ``last_shared`` and ``representation`` (MGDA-UB, registered
    separately as ``mgda_ub``).  Degenerate input: all-zero gradients give uniform weights (1/K, times K
    under ``num_tasks``); when the gradients are affinely dependent the min-norm point is unique but the
    weights may not be, and one valid choice is returned.  K = 1 gives w = 1.  The K×K solve runs in float64
    on the host (one device sync per step); weights come back on the Gramian's device and dtype.

    Deviations from the official code: its solver (projected gradient / Frank-Wolfe, ≤ 250 iterations,
    stopping at a change < 1e-5) is approximate and its two-task rule returns 0.999/0.001 instead of 1/0
    when one gradient dominates; ours is exact.  Otherwise none that we know of.
    """

    scale = "simplex"

    def __init__(self, normalization: str = "none", weight_scale: str = "simplex", grad_source: str | None = None):
        super().__init__(grad_source)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.weight_scale = check_choice("weight_scale", weight_scale, WEIGHT_SCALES)

    def normalizers(self, gramian: np.ndarray, losses: torch.Tensor) -> np.ndarray:
        """n_k of the chosen normalisation (float64); a zero entry marks a zero gradient (kept zero)."""
        norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
        if self.normalization in ("none", "l2"):
            return np.ones_like(norms) if self.normalization == "none" else norms
        loss_values = losses.detach().to(device="cpu", dtype=torch.float64).numpy()
        bad = ~np.isfinite(loss_values) | (loss_values <= 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            task = self.task_names[k] if k < len(self.task_names) else str(k)
            raise ConfigError(
                f"combiner.normalization='{self.normalization}' divides by the task losses and needs them positive; "
                f"task '{task}' has loss {loss_values[k]!r} (use normalization 'none' or 'l2')"
            )
        return loss_values if self.normalization == "loss" else loss_values * norms

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        m = gramian_to_numpy(gramian)
        n = self.normalizers(m, losses)
        inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
        w = min_norm_weights(inv[:, None] * m * inv[None, :], eigen_rtol(gramian.dtype))
        if self.weight_scale == "num_tasks":
            w = w * m.shape[0]
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.weight_scale, "normalization": self.normalization}
