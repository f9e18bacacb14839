"""Nash-MTL: task weights from the Nash bargaining solution GGᵀα = 1/α (Navon et al. 2022)."""

from __future__ import annotations

import logging
import math
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mtl_bench.combiners._grad_utils import check_choice, check_int, check_real
from mtl_bench.combiners.base import Aggregation, GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import gramian_to_numpy, solve_alpha_fair
from mtl_bench.errors import ConfigError

log = logging.getLogger(__name__)

SOLVERS = ("newton", "cccp")
INSTALL_HINT = "install them with `pip install mtl-bench[nash]`, or use combiner.solver=newton"


def load_cvxpy() -> ModuleType:
    """The ``cvxpy`` module, checked to have the ECOS solver; a ``ConfigError`` with the install hint otherwise."""
    try:
        import cvxpy
        import ecos  # noqa: F401  (ECOS must be importable; cvxpy >= 1.6 no longer installs it)
    except ImportError as e:
        raise ConfigError(f"combiner.solver='cccp' needs cvxpy and ecos ({e}); {INSTALL_HINT}") from e
    if "ECOS" not in cvxpy.installed_solvers():
        raise ConfigError(f"combiner.solver='cccp' needs cvxpy's ECOS solver, which cvxpy does not list as installed; {INSTALL_HINT}")
    return cvxpy


class CCCPProblem:
    """The official sequence of convex programs (Navon et al. 2022, Sec. 3.2; ``methods/weight_methods.py``).

    Iterate t solves, for the normalised Gramian M' = M/ν (ν = ‖M‖_F) and the previous iterate a:
    minimise Σ_i (M'α)_i + ∇φ(a)ᵀα / ν subject to log α_i + log (M'α)_i ≥ −log ν (α ≥ 0), where
    φ(α) = Σ_i log α_i + log (M'α)_i is linearised at a (the concave part of the objective).  This is the
    official program written in DPP form (the constant −∇φ(a)ᵀa/ν of the objective is dropped and the
    coefficients are computed in numpy), so cvxpy compiles it once.  Because ν appears in the constraint,
    the fixed point satisfies α_i (Mα)_i = 1 with the *raw* Gramian M: the normalisation only conditions
    the solver, and α is in raw units.
    """

    def __init__(self, cp: ModuleType, num_tasks: int):
        self.cp = cp
        self.alpha = cp.Variable(num_tasks, nonneg=True)
        self.gramian = cp.Parameter((num_tasks, num_tasks))
        self.linear = cp.Parameter(num_tasks)
        self.threshold = cp.Parameter()
        g_alpha = self.gramian @ self.alpha
        constraints = [cp.log(self.alpha[i]) + cp.log(g_alpha[i]) >= self.threshold for i in range(num_tasks)]
        self.problem = cp.Problem(cp.Minimize(cp.sum(g_alpha) + self.linear @ self.alpha), constraints)

    def solve(self, m: np.ndarray, start: np.ndarray, niter: int) -> tuple[np.ndarray, bool]:
        """The official loop: at most ``niter`` programs from ``start``, ECOS with ``max_iters=100``; stop when
        a solve fails or returns nothing, when ‖M'α_t − 1/(α_t + 1e-10)‖ < 1e-3 or when the new solution moves
        less than 1e-6; the iterate *before* the stopping solve is returned, as in the official code.
        Returns (α, whether any solve produced a solution)."""
        nu = float(np.linalg.norm(m))
        m_norm = m / nu
        self.gramian.value = m_norm
        self.threshold.value = -math.log(nu)
        alpha_t = start.astype(np.float64)
        solved = False
        for _ in range(niter):
            with np.errstate(divide="ignore"):
                linear = (1.0 / alpha_t + m_norm @ (1.0 / (m_norm @ alpha_t))) / nu
            if not np.isfinite(linear).all():
                break
            self.linear.value = linear
            try:
                self.problem.solve(solver=self.cp.ECOS, warm_start=True, max_iters=100)
            except (self.cp.error.SolverError, ValueError) as e:
                log.debug("nash_mtl cccp: ECOS failed: %s", e)
                break
            new = self.alpha.value
            if new is None:
                break
            solved = True
            if np.linalg.norm(m_norm @ alpha_t - 1.0 / (alpha_t + 1e-10)) < 1e-3 or np.linalg.norm(new - alpha_t) < 1e-6:
                break
            alpha_t = np.asarray(new, dtype=np.float64)
        return alpha_t, solved


@register("nash_mtl")
class NashMTL(GramianWeighting):
    """Nash-MTL: the weights are the Nash bargaining solution of the tasks over the update direction.

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, "Multi-Task Learning as a Bargaining
    Game", ICML 2022 (official code ``AvivNavon/nash-mtl``).

    Weights α > 0 solve M α = 1/α (elementwise) with M = G Gᵀ; the update is d = Σ_k α_k g_k.  The
    solution is unique when it exists and exists iff no non-zero α ≥ 0 has Gᵀα = 0 (no Pareto-stationary
    combination).  Solvers (``solver``):

    * ``newton`` (default, ours): damped Newton on the strictly convex f(α) = ½αᵀMα − Σ log α_i
      (:func:`mtl_bench.combiners.solvers.solve_alpha_fair` with α-fairness 1), warm-started from the
      previous α, solved to a relative residual of 1e-12;
    * ``cccp``: the official procedure (:class:`CCCPProblem`, cvxpy + ECOS, ``optim_niter`` = 20 programs,
      warm start from the previous α, the official stopping rules).  cvxpy and ecos are optional
      dependencies (``pip install mtl-bench[nash]``); choosing ``cccp`` without them is a ``ConfigError`` at
      construction, never a silent fallback.

    Scale: the official code divides GGᵀ by its Frobenius norm ν before solving, but ν also enters its
    constraint (α_i ν (M'α)_i ≥ 1), so its target is the raw equation M α = 1/α (verified: on our test
    inputs the official-procedure solver satisfies α_i (Mα)_i = 1 to 1e-7 and agrees with ``newton``).
    Hence ‖d‖² = αᵀMα = Σ_i α_i(Mα)_i = K: the unclipped update has norm √K whatever the gradient scale
    (``scale = "sqrt_k_norm"``), and α_k scales like 1/‖g_k‖.  The direction and its norm are invariant to
    per-task rescaling g_k → c_k g_k (α_k → α_k/c_k).  K = 1 gives α = 1/‖g‖.

    ``max_norm`` (1.0; 0 disables): the official code clips the norm of the shared parameters' gradient to
    ``max_norm`` after the weighted backward; here the returned direction is rescaled to norm ≤ ``max_norm``
    instead (the same operation under ``params``; under ``representation`` it rescales the representation
    cotangent, so the encoder gradient is scaled by the same factor but its norm is not bounded).  With the
    defaults and K ≥ 2 the shared update therefore has norm exactly 1 whenever α solves the equation.  Heads receive their task
    gradient times the unclipped α_k, as in the official code.  Under ``last_shared`` the direction is not
    used (the weights are applied by one weighted backward), so ``max_norm`` has no effect (a warning is
    logged at construction); use ``trainer.grad_clip_norm`` to clip there.

    ``update_weights_every`` (1): α is recomputed on steps 0, n, 2n, … and reused in between (with the
    current gradients), as in the official code.  State (persistent buffers): the previous α (initially
    all ones, as the official code) and the step counter.

    Failure handling: if no solution exists (Pareto-stationary gradients, a zero task gradient, all-zero
    gradients) or the solver does not converge, the previous α is kept and a warning is logged (on the 1st,
    10th, 100th, … failure).  The official code silently keeps the previous α (its bare ``except``).

    Deviations from the official code: ``newton`` is our own exact solver (same solution, tested against
    ``cccp``); the ``cccp`` program is written in DPP form (the same program mathematically, not the same
    iterates on ill-conditioned Gramians, see below); clipping acts on the returned direction as described.
    The K×K solves run in float64 on the host (one device sync per update step).

    Known limitation of the official procedure, and ``cccp`` does not reproduce the official solver there:
    its fixed points need not have every constraint active, and on ill-conditioned Gramians (strongly
    imbalanced gradient norms) it stops at a point that does not solve Mα = 1/α — the official solver and
    ``cccp`` alike, but at *different* points, since ECOS follows a different path through the two
    formulations.  One update from α = 1 on ``random_grads(3, 50, seed, scales)`` of our tests (K = 3, 20
    programs; measured against the official loop re-typed with cvxpy 1.9.3 / ECOS 2.0.14): norms 1 : 2 : 0.5
    (cond(M) ≈ 20) — both solve the equation and agree to 3e-8 (relative); 1 : 10 : 0.1 (cond ≈ 1e4) — they
    agree to 5e-3, and for seed 0 neither solves it (α_3(Mα)_3 ≈ 108 official, 109 ``cccp``; 109 for both
    after 300 programs); 1 : 100 : 0.01 (cond ≈ 1e8) — neither solves it (α_i(Mα)_i up to 7e3 official, 2e3 ``cccp``)
    and the two α differ by 50 % to 300× (relative).  So ``cccp`` reproduces the official weights only where
    the Gramian is well conditioned; ``newton`` always returns the bargaining solution when it exists.
    """

    scale = "sqrt_k_norm"
    provides_task_weights = False  # the direction is αᵀG rescaled to norm ≤ max_norm, not αᵀG

    def __init__(
        self,
        solver: str = "newton",
        update_weights_every: int = 1,
        max_norm: float = 1.0,
        optim_niter: int = 20,
        grad_source: str | None = None,
    ):
        super().__init__(grad_source)
        self.solver = check_choice("solver", solver, SOLVERS)
        self.update_weights_every = check_int("update_weights_every", update_weights_every, low=1)
        self.max_norm = check_real("max_norm", max_norm, low=0.0)
        self.optim_niter = check_int("optim_niter", optim_niter, low=1)
        self._cvxpy = load_cvxpy() if self.solver == "cccp" else None
        self._cccp: CCCPProblem | None = None
        self._failures = 0
        self._next_report = 1
        self.register_buffer("alpha", torch.empty(0, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        if self.grad_source == "last_shared" and self.max_norm > 0:
            log.warning("nash_mtl: max_norm=%g has no effect with grad_source=last_shared (the direction is not used)", self.max_norm)

    def setup(self, task_names: list[str]) -> None:
        keep = list(task_names) == self.task_names and self.alpha.numel() == len(task_names)
        super().setup(task_names)
        if not keep:  # repeated setup with the same tasks keeps the state (e.g. after load_state_dict)
            self.alpha = torch.ones(self.num_tasks, dtype=torch.float64, device=self.alpha.device)
            self.step = torch.zeros((), dtype=torch.long, device=self.step.device)
        self._cccp = None

    def _solve(self, m: np.ndarray, previous: np.ndarray) -> np.ndarray | None:
        if not np.linalg.norm(m) > 0:
            return None
        if self.solver == "newton":
            return solve_alpha_fair(m, 1.0, start=previous)
        if self._cccp is None or self._cccp.alpha.shape != (m.shape[0],):
            self._cccp = CCCPProblem(self._cvxpy, m.shape[0])
        alpha, solved = self._cccp.solve(m, previous, self.optim_niter)
        return alpha if solved else None

    def _report_failure(self) -> None:
        self._failures += 1
        if self._failures == self._next_report:
            self._next_report *= 10
            log.warning(
                "nash_mtl: no bargaining solution found at step %d (Pareto-stationary or zero gradients, or the %s solver did not "
                "converge); keeping the previous weights (%d such steps so far)",
                int(self.step), self.solver, self._failures,
            )

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        if self.alpha.numel() != gramian.shape[0]:
            raise RuntimeError(f"combiner 'nash_mtl' was set up for {self.alpha.numel()} tasks, got a {gramian.shape[0]}-task Gramian")
        if int(self.step) % self.update_weights_every == 0:
            previous = self.alpha.detach().cpu().numpy()
            alpha = self._solve(gramian_to_numpy(gramian), previous)
            if alpha is None:
                self._report_failure()
            else:
                self.alpha = torch.as_tensor(alpha, dtype=torch.float64).to(self.alpha.device)
        self.step += 1
        return self.alpha.to(device=gramian.device, dtype=gramian.dtype)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        weights = self.weights_from_gramian(grads @ grads.T, losses)
        direction = weights.to(grads) @ grads
        if self.max_norm > 0:
            direction = direction * (self.max_norm / direction.norm()).clamp(max=1.0)
        return Aggregation(direction, weights)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "solver": self.solver,
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "optim_niter": self.optim_niter,
        }
