"""GradNorm: learn loss weights that equalise the tasks' weighted gradient norms, scaled by their training rates."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import Aggregation, GradientAggregator
from mtl_bench.combiners.registry import register


@register("gradnorm")
class GradNorm(GradientAggregator):
    """Gradient Normalization (GradNorm).

    Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
    Deep Multitask Networks", ICML 2018.

    Learnable weights w (``task_weights``, an ``nn.Parameter``, ones at the start, Σ_k w_k = K).  At every step,
    with g_k the gradient of L_k over W (the last shared layer by default), G_k = ‖∇_W (w_k L_k)‖ = w_k ‖g_k‖
    (so no double backward is needed), Ḡ = mean_k G_k, loss ratios L̃_k = L_k(t) / L_k(0) with L_k(0) the losses
    of the first call (recorded in a buffer), and relative inverse training rates r_k = L̃_k / mean_j L̃_j:

        L_grad = Σ_k |G_k − Ḡ · r_k^α|,   the target Ḡ · r_k^α treated as a constant,

    so ∂L_grad/∂w_k = sign(G_k − Ḡ r_k^α) · ‖g_k‖.  This gradient is accumulated into ``task_weights.grad`` and
    the trainer's optimizer updates w in the ``combiner`` parameter group (``lr``: a separate learning rate for
    that group, ``null`` = the model's; weight decay is switched off for it).  After the optimizer step
    (``after_step``) w is renormalised to Σ_k w_k = K, as in the paper.  A task that trains slower than the
    others (larger r_k) has a larger target, so its weight grows.  The model update is Σ_k w_k ∇L_k with the
    current, detached w (Algorithm 1 uses w(t) for the network step): the direction w @ G and head weights w;
    under ``last_shared`` the engine applies w by one weighted backward.

    Scale convention: a weighted **sum** with weights of mean 1 (``scale = "sum"``; at w = 1 this is EW's sum).

    α: 1.5, the value the paper uses for NYUv2 and LibMTL's default (the paper's synthetic experiments use
    α = 0.12; α = 0 equalises the weighted gradient norms).

    Gradient sources: ``last_shared`` (default; the paper's W is the last shared layer) and ``params`` (norms
    over all shared parameters).  Zero gradients give ∂L_grad/∂w = 0.  A task with L_k(0) = 0 gets L̃_k = 1, and
    if every L̃_k is 0 all r_k = 1.

    Deviations: we use the paper's explicit renormalisation, not LibMTL's K·softmax parametrisation; before
    renormalising, negative weights (possible after a large optimizer step) are clipped to 0 (and all-zero
    weights are reset to 1), a guard the paper does not need to state.  LibMTL uses the mean losses of the first
    *epoch* as L(0) and trains with equal weights during that epoch; we follow the paper (L(0) = the first
    step's losses, GradNorm from the first step).
    """

    scale = "sum"
    provides_task_weights = True  # the direction is exactly wᵀG with w = the learned task weights
    supported_sources = ("params", "last_shared")
    default_source = "last_shared"

    def __init__(self, alpha: float = 1.5, lr: float | None = None, grad_source: str | None = None):
        super().__init__(grad_source)
        self.alpha = check_real("alpha", alpha, low=0.0)
        self.lr = None if lr is None else check_real("lr", lr, low=0.0, low_open=True)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        k = len(task_names)
        self.task_weights = nn.Parameter(torch.ones(k))
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("has_initial_losses", torch.zeros((), dtype=torch.bool))

    def optimizer_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {"weight_decay": 0.0}
        if self.lr is not None:
            overrides["lr"] = self.lr
        return overrides

    def gradnorm_gradient(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """∂L_grad/∂w in the dtype of ``task_weights`` (records the initial losses at the first call)."""
        losses = losses.detach().to(grads)
        initial = torch.where(self.has_initial_losses, self.initial_losses.to(losses), losses)
        self.initial_losses.copy_(initial)
        self.has_initial_losses.fill_(True)
        ones = torch.ones_like(losses)
        ratios = torch.where(initial > 0, losses / torch.where(initial > 0, initial, ones), ones)
        mean_ratio = ratios.mean()
        inverse_rates = torch.where(mean_ratio > 0, ratios / torch.where(mean_ratio > 0, mean_ratio, 1.0), ones)
        norms = grads.detach().norm(dim=1)
        weighted = self.task_weights.detach().to(grads) * norms
        target = weighted.mean() * inverse_rates**self.alpha
        return (torch.sign(weighted - target) * norms).to(self.task_weights)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        grad_w = self.gradnorm_gradient(grads, losses)
        if self.task_weights.grad is None:
            self.task_weights.grad = grad_w
        else:
            self.task_weights.grad.add_(grad_w)
        weights = self.task_weights.detach().to(grads)
        return Aggregation(direction=weights @ grads, weights=weights)

    def after_step(self, post_losses: torch.Tensor | None) -> None:
        with torch.no_grad():
            w = self.task_weights.clamp_(min=0.0)
            total = w.sum()
            renormalised = w * (len(self.task_names) / torch.where(total > 0, total, torch.ones_like(total)))
            w.copy_(torch.where(total > 0, renormalised, torch.ones_like(w)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "alpha": self.alpha, "lr": self.lr}
