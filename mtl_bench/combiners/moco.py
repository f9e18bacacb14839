"""MoCo: MGDA-type weights computed on a moving-average tracking of the task gradients, with a single
(sub)gradient step on the weights per training step (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import RunningState, check_choice, check_real
from mtl_bench.combiners.base import Aggregation, GradientAggregator
from mtl_bench.combiners.registry import register

SIMPLEX_MAPS = ("softmax", "projection")
NORM_EPS = 1e-8  # added to ‖g_k‖ before dividing (LibMTL)


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a vector onto the probability simplex (sort-based, Held et al. 1974)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, 0) - 1.0
    index = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = int((u - cumulative / index > 0).nonzero().max())
    return (v - cumulative[rho] / (rho + 1)).clamp_min(0.0)


@register("moco")
class MoCo(RunningState, GradientAggregator):
    """MoCo (Multi-objective gradient Correction).

    Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, "Mitigating Gradient Bias in Multi-objective Learning: A
    Provably Convergent Approach", ICLR 2023 (arXiv:2210.12624).  No usable official repository; this follows
    LibMTL's ``weighting/MoCo.py`` (written from the authors' code).  TorchJD 0.18 has no MoCo.

    Rule at step t (t = 1, 2, …), from the K×d matrix G and the task losses L:

    1. ĝ_k = L_k · g_k / (‖g_k‖ + 1e-8) (LibMTL's input: each gradient renormalised to its loss value);
    2. tracking: Y ← Y − β_t (Y − Ĝ), β_t = β / t^{σ_β} (Y starts at 0);
    3. weights: λ ← softmax(λ − γ_t (YYᵀ + ρI) λ), γ_t = γ / t^{σ_γ} (λ starts at 1/K);
    4. update: Yᵀλ.

    The update is **not** λᵀG (it combines the tracked Y), so no task weights are reported and the heads receive
    their own gradients unweighted, as in LibMTL (``provides_task_weights = False``).

    Defaults (LibMTL): β = 0.5, σ_β = 0.5, γ = 0.1, σ_γ = 0.5, ρ = 0, ``simplex`` = ``softmax``.  The paper
    projects λ onto the simplex; ``simplex: projection`` does that (Euclidean projection) instead of LibMTL's
    softmax.

    Properties (tested): the recurrence above step by step; λ stays on the simplex; with β = 1, σ_β = 0 the
    tracking is off (Y = Ĝ); the update does not change when a task gradient is multiplied by a positive
    constant (only its direction and the loss enter).

    Scale convention: **mean** (λ on the simplex) of rows whose norms are the task losses: the update's size
    follows the loss values, not the gradient norms.

    State across steps: Y (K×d, as large as K copies of the gradient, in the gradients' dtype and device), λ and
    the step count, kept as the module's extra state, so ``state_dict`` / checkpoints restore them; they restart
    if the shape of G changes.

    Gradient sources: ``params`` only (as in LibMTL: Y tracks per-parameter gradients; representation gradients
    change shape with the batch size).
    """

    scale = "mean"
    supported_sources = ("params",)

    def __init__(self, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5,
                 rho: float = 0.0, simplex: str = "softmax", grad_source: str | None = None):
        super().__init__(grad_source)
        self.beta = check_real("beta", beta, low=0.0, high=1.0, low_open=True)
        self.beta_sigma = check_real("beta_sigma", beta_sigma, low=0.0)
        self.gamma = check_real("gamma", gamma, low=0.0)
        self.gamma_sigma = check_real("gamma_sigma", gamma_sigma, low=0.0)
        self.rho = check_real("rho", rho, low=0.0)
        self.simplex = check_choice("simplex", simplex, SIMPLEX_MAPS)
        self.state: dict[str, Any] | None = None

    def _ensure_state(self, grads: torch.Tensor) -> dict[str, Any]:
        state = self.state
        if state is None or state["y"].shape != grads.shape:
            k = grads.shape[0]
            state = self.state = {"y": torch.zeros_like(grads), "lambda": grads.new_full((k,), 1.0 / k), "step": 0}
        state["y"], state["lambda"] = state["y"].to(grads), state["lambda"].to(grads)
        return state

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        state = self._ensure_state(grads)
        state["step"] += 1
        t = state["step"]
        g = grads.detach()
        normalised = g / (g.norm(dim=1, keepdim=True) + NORM_EPS) * losses.detach().to(g).unsqueeze(1)
        y = state["y"] - self.beta / t**self.beta_sigma * (state["y"] - normalised)
        lam = state["lambda"]
        k = lam.shape[0]
        gram = y @ y.T + self.rho * torch.eye(k, dtype=y.dtype, device=y.device)
        step = lam - self.gamma / t**self.gamma_sigma * (gram @ lam)
        lam = torch.softmax(step, 0) if self.simplex == "softmax" else project_to_simplex(step)
        state["y"], state["lambda"] = y, lam
        return Aggregation(lam @ y, None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": self.beta, "beta_sigma": self.beta_sigma, "gamma": self.gamma,
                "gamma_sigma": self.gamma_sigma, "rho": self.rho, "simplex": self.simplex}
