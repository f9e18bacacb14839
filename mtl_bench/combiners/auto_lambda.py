"""Auto-Lambda: task weights learned by a one-step look-ahead on the primary tasks (Liu, James, Davison, Johns, TMLR 2022)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.step_context import StepContext, refuse_distributed

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults, as the official meta optimizer
ADAM_EPS = 1e-8
FD_RADIUS = 0.01  # norm of the finite-difference perturbation (official: eps = 0.01 / ‖∇_θ′ L_val‖)


def adam_update(value: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, steps: torch.Tensor,
                grad: torch.Tensor, lr: float) -> None:
    """One in-place step of Adam (no weight decay) on ``value``, as ``torch.optim.Adam`` takes it."""
    beta1, beta2 = ADAM_BETAS
    steps += 1
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    count = steps.to(value.dtype)
    denom = exp_avg_sq.sqrt() / (1 - beta2**count).sqrt() + ADAM_EPS
    value.sub_(lr * exp_avg / ((1 - beta1**count) * denom))


def virtual_parameters(optimizer: torch.optim.Optimizer | None, named: list[tuple[str, torch.Tensor]],
                       grads: tuple[torch.Tensor | None, ...]) -> tuple[dict[str, torch.Tensor], list[float]]:
    """θ′ = θ − α(μ·buf + g + wd·θ) for every parameter, with the lr α, momentum μ, momentum buffer and weight
    decay of the parameter's own param group (μ·buf = 0 where the group has no ``momentum`` or the state no
    buffer; α = 0 for a parameter the optimizer does not hold).  Returns θ′ (detached leaves that require grad)
    and α per parameter.  ``param_groups`` are read afresh on every call (loading optimizer state replaces them)."""
    groups = {id(p): g for g in (optimizer.param_groups if optimizer is not None else []) for p in g["params"]}
    moved, lrs = {}, []
    with torch.no_grad():
        for (name, p), g in zip(named, grads):
            group = groups.get(id(p))
            lr = float(group["lr"]) if group is not None else 0.0
            step = torch.zeros_like(p) if g is None else g.clone()
            if group is not None:
                buf = optimizer.state.get(p, {}).get("momentum_buffer") if "momentum" in group else None
                if buf is not None:
                    step.add_(buf, alpha=float(group["momentum"]))
                step.add_(p, alpha=float(group.get("weight_decay", 0.0)))
            moved[name] = (p - lr * step).requires_grad_(True)
            lrs.append(lr)
    return moved, lrs


@register("auto_lambda")
class AutoLambda(LossWeighting):
    """Auto-Lambda: the objective Σ_k λ_k L_k, with λ updated before every step by one meta step that asks how
    the primary tasks' loss would change after a virtual optimizer step.

    Liu, James, Davison, Johns, "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022
    (arXiv:2202.03091); official code ``lorenmt/auto-lambda`` (``auto_lambda.py``, ``trainer_dense.py``).

    Meta step (:meth:`before_backward`, ``extra_batches = 1``), at parameters θ with the step's batch B and one
    extra batch V of the **training** split (as the official second loader with another shuffle; not held-out
    data):

    1. virtual step θ′ = θ − α(μ·buf + ∇_θ Σ_k λ_k L_k(θ; B) + wd·θ) with the optimizer's current lr α, momentum μ,
       momentum buffer and weight decay (:func:`virtual_parameters`);
    2. d = ∇_θ′ L_val(θ′) with L_val = Σ_{k primary} L_k(θ′; V); primary: all tasks, or the targets under
       ``mode=aux`` (``set_roles``);
    3. the hypergradient ∂L_val(θ′(λ))/∂λ_k = −α ∇_θ L_k(θ; B)·d by a central finite difference:
       ε = 0.01/‖α⊙d‖, λ.grad = −(L_k(θ + εα⊙d; B) − L_k(θ − εα⊙d; B))/(2ε) (with one lr α this is the official
       ε = 0.01/‖d‖ and −α(L₊ − L₋)/(2ε));
    4. one Adam step on λ (lr ``meta_lr``, β = (0.9, 0.999), Adam ε = 1e-8, no weight decay).

    The step then descends Σ_k λ_k L_k(θ; B) with the updated λ.  λ is unconstrained (no softmax, no clamp) and
    starts at ``weight_init`` = 0.1 for every task.

    Scale convention: **sum** with small learned weights (Σ_k λ_k = 0.1·K at the start); the weights reported are λ.

    Defaults: ``meta_lr`` = 1e-4 (the official NYUv2 setting; Cityscapes 3e-5, CIFAR-100 3e-4), ``weight_init`` = 0.1.

    State (persistent buffers, saved in checkpoints): λ, Adam's moments and step count.  The extra batch is drawn
    statelessly (:mod:`mtl_bench.step_context`), so a resumed run repeats the same meta steps.

    Deviations from the official code: (a) the virtual step uses each parameter's own param group (lr, momentum,
    weight decay) instead of the first group's, and the finite difference is taken along α⊙d (identical with one
    lr); (b) the virtual step reuses the gradient of the step's own forward pass and the other passes evaluate the
    model functionally with copies of its buffers, so BatchNorm statistics are updated once per step, as for every
    other method (the official code runs three extra training-mode forwards of the model, two of them on the
    model itself, and restores θ by adding ±ε·d back, which is not exact in floating point); (c) the losses are
    the transformed ones the combiner sees (``loss_transforms``; the raw losses by default); (d) λ's Adam is our
    own few lines (the same update as ``torch.optim.Adam``, tested against it); (e) refused under torchrun and
    with fp16 (:mod:`mtl_bench.step_context`); (f) the look-ahead always has the SGD form of the official code (its
    trainers use SGD with momentum): with an optimizer that keeps no ``momentum_buffer`` (e.g. Adam) it is
    θ − α(g + wd·θ), not the optimizer's own update.  Cost: one extra batch, four extra forward and two extra backward
    passes per step, no model copy.
    """

    scale = "sum"
    extra_batches = 1
    targets: list[str] | None = None

    def __init__(self, weight_init: float = 0.1, meta_lr: float = 1e-4, grad_source: str | None = None):
        super().__init__(grad_source)
        self.weight_init = check_real("weight_init", weight_init)
        self.meta_lr = check_real("meta_lr", meta_lr, low=0.0, low_open=True)
        for name in ("lambdas", "exp_avg", "exp_avg_sq"):
            self.register_buffer(name, torch.empty(0, dtype=torch.float64))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("primary", torch.empty(0, dtype=torch.float64), persistent=False)  # 1 for a primary task

    def set_roles(self, targets: list[str]) -> None:
        """The primary tasks of the meta objective (``mode=aux``: the targets); all tasks when never called."""
        self.targets = list(targets)
        self._set_primary()

    def _set_primary(self) -> None:
        primary = self.task_names if self.targets is None else self.targets
        mask = [1.0 if t in primary else 0.0 for t in self.task_names]
        self.primary = torch.tensor(mask, dtype=torch.float64, device=self.primary.device)

    def setup(self, task_names: list[str]) -> None:
        refuse_distributed(self.name)
        keep = list(task_names) == self.task_names and self.lambdas.numel() == len(task_names)
        super().setup(task_names)
        if not keep:  # a repeated setup with the same tasks keeps λ and Adam's state
            device = self.lambdas.device
            self.lambdas = torch.full((self.num_tasks,), self.weight_init, dtype=torch.float64, device=device)
            self.exp_avg = torch.zeros(self.num_tasks, dtype=torch.float64, device=device)
            self.exp_avg_sq = torch.zeros_like(self.exp_avg)
            self.adam_steps = torch.zeros((), dtype=torch.long, device=device)
        self._set_primary()

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.lambdas.to(losses.dtype)

    # ------------------------------------------------------------------ the meta step
    def hypergradient(self, ctx: StepContext) -> torch.Tensor:
        """∂L_val(θ′(λ))/∂λ (float64 K-vector) by the finite difference of steps 1–3 (see the class docstring)."""
        named = [(n, p) for n, p in ctx.model.named_parameters() if p.requires_grad]
        train = ctx.stacked()
        objective = (self.lambdas.to(train.dtype) * train).sum()
        grads = torch.autograd.grad(objective, [p for _, p in named], retain_graph=True, allow_unused=True)
        moved, lrs = virtual_parameters(ctx.optimizer, named, grads)
        x_val, y_val = ctx.extra_batch(0)
        val = ctx.task_losses(x_val, y_val, moved)
        val = (self.primary.to(val.dtype) * val).sum()
        d = torch.autograd.grad(val, list(moved.values()), allow_unused=True)
        with torch.no_grad():
            v = [lr * (torch.zeros_like(p) if g is None else g) for (_, p), g, lr in zip(named, d, lrs)]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v]))
            eps = FD_RADIUS / norm.clamp_min(torch.finfo(norm.dtype).tiny)  # d = 0: no perturbation, gradient 0
            x, y = ctx.batch
            plus = ctx.task_losses(x, y, {n: p + eps * t for (n, p), t in zip(named, v)})
            minus = ctx.task_losses(x, y, {n: p - eps * t for (n, p), t in zip(named, v)})
            return (-(plus - minus) / (2 * eps)).to(torch.float64)

    def before_backward(self, ctx: StepContext) -> None:
        adam_update(self.lambdas, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.hypergradient(ctx), self.meta_lr)

    def describe(self) -> dict[str, Any]:
        primary = self.task_names if self.targets is None else self.targets
        return {**super().describe(), "weight_init": self.weight_init, "meta_lr": self.meta_lr, "primary": list(primary)}
