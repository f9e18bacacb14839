"""ConsMTL: FairGrad (α = 2) on the shared parameters, a consistency term on each task's head."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import Aggregation
from mtl_bench.combiners.fairgrad import FairGrad
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError

# clip_grad_norm_'s guard, which the official code uses for both of its clippings
CLIP_EPS = 1e-6


@register("cons_mtl")
class ConsMTL(FairGrad):
    """ConsMTL: a bi-level update — fair weights for the shared parameters, a consistency term for the heads.

    Qin, Wang, Yan, "Towards Consistent Multi-Task Learning: Unlocking the Potential of Task-Specific
    Parameters", CVPR 2025 (pp. 10067–10076).  No official repository was found; the implementation read is
    ``suryakmurthy/dibs-mtl`` ``mtl/methods/gradient_weight_methods.py::ConsMTL`` (our own code).

    Upper level (shared parameters θ_s, gradient source ``params``): the α-fair weights of :class:`FairGrad` with
    α = 2, i.e. positive w with (G Gᵀ w)_k = w_k^{−1/2}; the shared update is d = K · Σ_k w_k g_k, then rescaled
    by min(1, max_norm / (‖d‖ + 1e-6)) (``max_norm = 1``; 0 disables the clipping).

    Lower level (heads θ_k): δ_k = ∂L_k/∂z_k, the gradient of task k's loss at the representation z_k its head
    reads, kept differentiable in θ_k (``create_graph``); δ = Σ_k w_k δ_k, detached.  Head k gets the extra
    loss −λ⟨δ_k, δ⟩ (λ = ``lambda_`` = 1): its gradient e_k = ∇_{θ_k}(−λ⟨δ_k, δ⟩) is rescaled by
    min(1, head_clip · ‖∇_{θ_k}L_k‖ / (‖e_k‖ + 1e-6)) (``head_clip = 0.1``) and added to the head's ordinary
    gradient ∇_{θ_k}L_k — with unit weight, not w_k.  Pulling every δ_k towards the weighted consensus δ makes
    the heads ask the shared representation for agreeing changes.  The step is the engine's
    ``HeadTermAggregationStep`` (capability ``head_input_term``).

    z_k in this framework: a single shared tensor → z_k = z for every task (the official code's QM9/CelebA
    path); a tuple that every head reads (SegNet-MTAN's 20 shared maps) → z_k = the tuple, δ_k its partial
    derivatives (the heads read detached copies, so nested maps are not counted twice); one representation per
    task (a task-aware encoder) → z_k = that task's element.  All δ_k must have the same shapes.

    Scale convention (``scale = "alpha_fair_xK_clipped"``): the official ×K ("to match the sum loss") of the
    α-fair combination (unnormalised: ‖Σ_k w_k g_k‖² = Σ_k w_k^{1/2}), then the norm clip, so the shared
    update has norm < max_norm whenever it is clipped.  ``StepResult.weights`` (the logged ``train/weight/*``)
    are the FairGrad weights w; the heads are not scaled by them.

    Deviations from the code read: (1) the α-fair equation is solved exactly by FairGrad's damped Newton,
    warm-started from the previous step (official: ``scipy.optimize.least_squares`` with w ≥ 0 from w = 1/K,
    default tolerances; the solution is unique, so only the accuracy differs), with FairGrad's fallback to the
    previous weights where no solution exists; (2) θ_k is task k's own head, found structurally (official:
    ``task_specific_parameters`` cut into K equal-length chunks); head parameters upstream of the
    representation (a task-aware encoder's task modules) get their ordinary gradient only; (3) for SegNet-MTAN
    the official NYUv2 path uses each task's attended feature map as z_k and only the prediction layer as θ_k
    (its attention masks count as shared); here the masks are head parameters, so z_k is the shared maps and the
    term reaches the masks too; (4) fp16: the term is built from the unscaled δ_k and the head gradients are
    scaled back like the losses; (5) DDP is refused (the per-head clipping needs the global-batch head
    gradients) and ``per_task_backward=batched`` has no effect (one encoder pass per task).
    """

    scale = "alpha_fair_xK_clipped"
    provides_task_weights = False  # the direction is K·wᵀG clipped, not wᵀG
    head_input_term = True
    supported_sources = ("params",)
    default_source = "params"

    def __init__(self, alpha: float = 2.0, max_norm: float = 1.0, lambda_: float = 1.0, head_clip: float = 0.1,
                 grad_source: str | None = None):
        super().__init__(alpha, grad_source)
        self.max_norm = check_real("max_norm", max_norm, low=0.0)
        self.lambda_ = check_real("lambda_", lambda_, low=0.0)
        self.head_clip = check_real("head_clip", head_clip, low=0.0)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        w = self.weights_from_gramian(grads @ grads.T, losses)
        direction = self.num_tasks * (w.to(grads) @ grads)
        if self.max_norm > 0:
            direction = direction * (self.max_norm / (direction.norm() + CLIP_EPS)).clamp(max=1.0)
        return Aggregation(direction, w)

    def head_terms(self, deltas: Sequence[Sequence[torch.Tensor]], weights: torch.Tensor) -> list[torch.Tensor | None]:
        """Each head's extra loss −λ⟨δ_k, δ⟩ (attached to δ_k's graph); ``deltas[k]`` are task k's partial
        derivatives at the inputs its head reads (empty: the loss does not reach the representation → ``None``)."""
        present = [k for k, d in enumerate(deltas) if d]
        if not present:
            return [None] * len(deltas)
        shapes = {tuple(tuple(t.shape) for t in deltas[k]) for k in present}
        if len(shapes) > 1:
            raise ConfigError(
                f"combiner '{self.name}' needs the representations the heads read to have one shape, got {sorted(shapes)}; "
                "use another combiner with this backbone"
            )
        consensus = [sum(weights[k].to(deltas[k][i].dtype) * deltas[k][i].detach() for k in present)
                     for i in range(len(deltas[present[0]]))]
        return [-self.lambda_ * sum((d * c).sum() for d, c in zip(deltas[k], consensus)) if deltas[k] else None
                for k in range(len(deltas))]

    def head_gradient(self, ordinary: Sequence[torch.Tensor | None], extra: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """∇L_k + e_k · min(1, head_clip · ‖∇L_k‖ / (‖e_k‖ + 1e-6)) per head parameter (``None``: no gradient)."""
        norm_ordinary = _norm(ordinary)
        norm_extra = _norm(extra)
        factor = min(1.0, self.head_clip * norm_ordinary / (norm_extra + CLIP_EPS))
        out: list[torch.Tensor | None] = []
        for g, e in zip(ordinary, extra):
            if e is not None:
                e = e * factor
            out.append(e if g is None else (g if e is None else g + e))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_norm": self.max_norm, "lambda_": self.lambda_, "head_clip": self.head_clip}


def _norm(grads: Sequence[torch.Tensor | None]) -> float:
    present = [g.detach().reshape(-1).double() for g in grads if g is not None]
    return float(torch.cat(present).norm()) if present else 0.0
