"""MGDA-UB: MGDA on the gradients w.r.t. the shared representation (Sener & Koltun 2018)."""

from __future__ import annotations

from mtl_bench.combiners.mgda import MGDA
from mtl_bench.combiners.registry import register


@register("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB: the exact min-norm weights of :class:`~mtl_bench.combiners.mgda.MGDA`, computed from the
    gradients of the task losses with respect to the shared representation Z instead of the shared
    parameters.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (Theorem 1): for
    an encoder θ_sh → Z, ‖Σ_k w_k ∇_θ L_k‖ ≤ ‖∂Z/∂θ‖ · ‖Σ_k w_k ∇_Z L_k‖, so minimising the right-hand
    factor ("upper bound") needs only K head backward passes plus one encoder backward of the aggregated
    cotangent Σ_k w_k ∇_Z L_k (our ``representation`` source, the default here).  ∇_Z L_k is the
    gradient w.r.t. the whole batch's representation tensor, flattened, as in the official code
    (``use_approximation``).  Under the theorem's assumption (∂Z/∂θ of full rank) the solution is Pareto
    stationary or a common descent direction, as for MGDA.

    Scale convention, options (``normalization``, ``weight_scale``), degenerate cases and deviations: as
    MGDA (its defaults: paper, no normalisation, simplex weights; the official sample configuration for
    CelebA uses ``normalization: loss+``).  Other gradient sources may be chosen explicitly; with
    ``params`` this is exactly MGDA.
    """

    default_source = "representation"
