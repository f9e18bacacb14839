"""ExcessMTL: up-weight the tasks whose estimated excess risk (distance to their own optimum) is largest, by
exponentiated-gradient steps on the task weights (He et al., ICML 2024)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import RunningState, check_int, check_real
from mtl_bench.combiners.base import Aggregation, GradientAggregator
from mtl_bench.combiners.registry import register

ADAGRAD_EPS = 1e-7  # added to the accumulated squared gradients before the square root (official code)


@register("excess_mtl")
class ExcessMTL(RunningState, GradientAggregator):
    """ExcessMTL: task weights driven by per-task excess-risk estimates.

    He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi, Zhao, "Robust Multi-Task Learning with Excess Risks", ICML 2024
    (arXiv:2402.02009); official code ``yifei-he/ExcessMTL`` (``LibMTL/weighting/ExcessMTL.py``, the same as
    LibMTL's); TorchJD 0.18 ``torchjd/aggregation/_excess_mtl.py``.

    Rule at every step, from the K×d matrix G of task gradients: S ← S + G⊙G (an AdaGrad-style diagonal
    curvature estimate, Eq. 7), excess risk e_k = Σ_j G_kj² / √(S_kj + 1e-7) (Eq. 6).  The first
    ``n_warmup_steps`` calls only collect statistics (weights stay 1) and their mean excess risk is the baseline
    e⁰; every later call updates w ← K · w ⊙ exp(η r) / Σ_k w_k exp(η r_k) with r_k = e_k / e⁰_k (the
    exponentiated-gradient step of Eq. 9 with the paper's scale processing).  The update is wᵀG (exactly, with
    w reported), and heads receive their task gradient times w_k (the official loss Σ_k w_k L_k).

    Defaults (official code): η = ``robust_step_size`` = 1e-2; ``n_warmup_steps`` = 1 (the official code takes
    the first step's excess risk as the baseline and leaves the weights at 1 on that step; the paper's
    Appendix C.1 suggests about 3 epochs of statistics, i.e. 3 × batches per epoch).

    Properties (tested): weights stay at 1 during the warm-up, are positive and sum to K afterwards, and equal the
    closed form K·softmax(η Σ_t r_t); a task whose excess risk falls more slowly than the others' gains weight.

    Scale convention: **sum** (``scale = "sum"``: weights start at 1 and sum to K, as in the official code).

    State across steps: S (K×d, in the gradients' dtype and device: as large as K copies of the gradient), the
    weights, the baseline and the warm-up sum, and the step count, kept as the module's extra state, so
    ``state_dict`` / checkpoints restore them.  It restarts if the shape of G changes.

    Gradient sources: ``params`` only (the AdaGrad statistics are per parameter; representation gradients change
    shape with the batch size).

    Deviations: from the official code, the update is done in log space (same weights; no overflow for very
    large ratios) and a task whose baseline excess risk is 0 (a zero gradient throughout the warm-up) gets
    r_k = 0 instead of a division by zero.  From TorchJD: TorchJD's weights sum to 1 (ours = K × TorchJD),
    its default η is 1.0, its ``n_warmup_steps = 0`` still updates the weights on the first call with the raw
    (unnormalised) excess risk (our ``n_warmup_steps = 1`` is its ``1``), and it divides by e⁰ + 1e-7.
    """

    scale = "sum"
    provides_task_weights = True
    supported_sources = ("params",)

    def __init__(self, robust_step_size: float = 1e-2, n_warmup_steps: int = 1, grad_source: str | None = None):
        super().__init__(grad_source)
        self.robust_step_size = check_real("robust_step_size", robust_step_size, low=0.0, low_open=True)
        self.n_warmup_steps = check_int("n_warmup_steps", n_warmup_steps, low=1)
        self.state: dict[str, Any] | None = None

    def _ensure_state(self, grads: torch.Tensor) -> dict[str, Any]:
        state = self.state
        if state is None or state["sq_sum"].shape != grads.shape:
            k = grads.shape[0]
            state = self.state = {
                "sq_sum": torch.zeros_like(grads), "log_weights": grads.new_zeros(k), "baseline": None,
                "warmup_sum": grads.new_zeros(k), "n_steps": 0,
            }
        for key in ("sq_sum", "log_weights", "warmup_sum", "baseline"):
            if state[key] is not None:
                state[key] = state[key].to(grads)
        return state

    def excess_risk(self, grads: torch.Tensor) -> torch.Tensor:
        """Accumulate G⊙G into S and return e_k = Σ_j G_kj² / √(S_kj + 1e-7)."""
        state = self._ensure_state(grads)
        sq = grads.detach() ** 2
        state["sq_sum"] += sq
        return (sq / torch.sqrt(state["sq_sum"] + ADAGRAD_EPS)).sum(dim=1)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        risk = self.excess_risk(grads)
        state = self._ensure_state(grads)
        state["n_steps"] += 1
        if state["n_steps"] <= self.n_warmup_steps:
            state["warmup_sum"] += risk
            if state["n_steps"] == self.n_warmup_steps:
                state["baseline"] = state["warmup_sum"] / self.n_warmup_steps
        else:
            baseline = state["baseline"]
            ratio = torch.where(baseline > 0, risk / torch.where(baseline > 0, baseline, 1.0), 0.0)
            logits = state["log_weights"] + self.robust_step_size * ratio
            state["log_weights"] = logits - torch.logsumexp(logits, 0) + torch.log(logits.new_tensor(float(len(logits))))
        w = state["log_weights"].exp()
        return Aggregation(w @ grads, w)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "robust_step_size": self.robust_step_size, "n_warmup_steps": self.n_warmup_steps}
