"""FairGrad: α-fair task weights, (GGᵀw)_i = w_i^(−1/α) (Ban & Ji 2024)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import gramian_to_numpy, solve_alpha_fair

log = logging.getLogger(__name__)


@register("fairgrad")
class FairGrad(GramianWeighting):
    """FairGrad: the update d = Σ_k w_k g_k maximises the α-fair utility of the tasks' first-order loss
    decreases.

    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024 (official code
    ``OptMN-Lab/fairgrad``).

    Equation solved: positive weights w with (G Gᵀ w)_i = w_i^{−1/α} for every task i (the optimality
    condition of maximising Σ_i u_α(g_iᵀd) over d under a norm constraint, u_α the α-fair utility).  It is
    the minimiser of the strictly convex f(w) = ½wᵀMw − Σ_i h(w_i) with h' = w^{−1/α} (h = log for α = 1),
    found by the damped Newton method of :func:`mtl_bench.combiners.solvers.solve_alpha_fair` to a
    relative residual of 1e-12, warm-started from the previous solution.  The official code instead runs
    ``scipy.optimize.least_squares`` on the residual Mw − w^{−1/α} with w ≥ 0 from w = 1/K (default
    tolerances).  α = 1 is exactly the Nash-MTL equation Mα = 1/α (same weights as ``nash_mtl``, which also
    clips the direction); α → 0 approaches equal weights (the utilitarian sum of loss decreases), α → ∞
    max-min fairness.

    Scale convention (``scale = "alpha_fair"``): the weights are not normalised; ‖d‖² = Σ_i w_i^{1−1/α} and,
    when all gradients are scaled by c, w scales by c^{−2α/(1+α)} and d by c^{(1−α)/(1+α)} (α = 1: ‖d‖ = √K
    at every scale).  The official trainers multiply the update by K ("to match the sum loss") and clip the
    shared gradient to norm 1; LibMTL does neither, nor do we (use ``trainer.grad_clip_norm`` to clip).
    Heads receive their task gradient times w_k.

    Default α = 1.0: the official method's and LibMTL's default (the published CelebA and QM9 run scripts
    use α = 2.0).  Gradient sources: ``params`` (default), ``last_shared``, ``representation``.

    State: the last solution w (persistent buffer, initially all ones), used as warm start and as the
    fallback: if no solution exists (a zero task gradient, Pareto-stationary gradients, all-zero gradients)
    or Newton does not converge, the previous weights are kept and a warning is logged (on the 1st, 10th,
    100th, … failure).  K = 1 gives w = ‖g‖^{−2α/(1+α)}.  Solved in float64 on the host (one device sync per
    step).  Deviations from the official code: the solver (exact vs. least squares with default tolerances),
    the failure fallback (official: whatever least_squares returns), no ×K and no clipping, as stated.
    """

    scale = "alpha_fair"

    def __init__(self, alpha: float = 1.0, grad_source: str | None = None):
        super().__init__(grad_source)
        self.alpha = check_real("alpha", alpha, low=0.0, low_open=True)
        self._failures = 0
        self._next_report = 1
        self.register_buffer("weights", torch.empty(0, dtype=torch.float64))

    def setup(self, task_names: list[str]) -> None:
        keep = list(task_names) == self.task_names and self.weights.numel() == len(task_names)
        super().setup(task_names)
        if not keep:  # repeated setup with the same tasks keeps the state (e.g. after load_state_dict)
            self.weights = torch.ones(self.num_tasks, dtype=torch.float64, device=self.weights.device)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if self.weights.numel() != gramian.shape[0]:
            raise RuntimeError(f"combiner 'fairgrad' was set up for {self.weights.numel()} tasks, got a {gramian.shape[0]}-task Gramian")
        w = solve_alpha_fair(gramian_to_numpy(gramian), self.alpha, start=self.weights.detach().cpu().numpy())
        if w is None:
            self._failures += 1
            if self._failures == self._next_report:
                self._next_report *= 10
                log.warning(
                    "fairgrad: no alpha-fair weights (a zero task gradient, Pareto-stationary gradients, or Newton did not "
                    "converge); keeping the previous weights (%d such steps so far)", self._failures,
                )
        else:
            self.weights = torch.as_tensor(w, dtype=torch.float64).to(self.weights.device)
        return self.weights.to(device=gramian.device, dtype=gramian.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "alpha": self.alpha}
