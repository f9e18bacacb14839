"""MoDo: Multi-objective gradient with Double sampling (Chen, Fernando, Ying, Chen, NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.moco import project_to_simplex
from mtl_bench.combiners.registry import register
from mtl_bench.step_context import StepContext, refuse_distributed


@register("modo")
class MoDo(LossWeighting):
    """MoDo: simplex weights λ updated from two independent batches, λ ← Π_Δ(λ − γ(J₁J₂ᵀλ + ρλ)), and the update
    direction λᵀ(J₁ + J₂)/2.

    Chen, Fernando, Ying, Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
    Conflict-Avoidance", NeurIPS 2023 (arXiv:2305.20057; JMLR 2024); official code ``heshandevaka/Trade-Off-MOL``
    (``LibMTL/LibMTL/weighting/MoDo.py``); LibMTL ``weighting/MoDo.py``; TorchJD 0.18 ``MoDoWeighting``.

    Every step (:meth:`before_backward`, ``extra_batches = 1``): J₁ = the per-task gradients of the step's batch and
    J₂ those of one extra training batch, over the shared parameters (``engine.task_gradients``); λ ←
    Π_Δ(λ − γ(J₁J₂ᵀλ + ρλ)) (Π_Δ: Euclidean projection onto the simplex); then the step descends
    ½ Σ_k λ_k (L_k(batch 1) + L_k(batch 2)), whose gradient is λᵀ(J₁ + J₂)/2 on the shared parameters and
    λ_k (h₁ + h₂)/2 on head k.  λ starts at 1/K.

    Convention: the two-batch variant of the official code (``three_grads`` off) and of TorchJD's two-batch
    example, with the **mean** of the two batches (TorchJD); the official code sums them, a 2× larger step.
    LibMTL draws a third batch for the update instead.  Scale: **mean** over tasks (λ on the simplex) and over the
    two batches.  Heads receive λ-weighted gradients, the project's convention for weightings and TorchJD's
    example (the official code and LibMTL give heads unit-weight gradients).

    Defaults γ = 0.1, ρ = 0.1 (official code and TorchJD; LibMTL uses γ = 1e-3).

    State: λ, a persistent buffer (saved in checkpoints); the extra batch is drawn statelessly
    (:mod:`mtl_bench.step_context`), so a resumed run repeats the same steps.  Refused under torchrun and with fp16.
    The update is not Σ_k w_k ∇L_k of the step's batch alone, so task-wise optimizers (AdaTask) are refused
    (``provides_task_weights = False``).  Cost: one extra batch, one extra forward, 2K per-task backward passes for
    J₁, J₂ and one backward through both batches.
    """

    scale = "mean"
    extra_batches = 1
    provides_task_weights = False

    def __init__(self, gamma: float = 0.1, rho: float = 0.1, grad_source: str | None = None):
        super().__init__(grad_source)
        self.gamma = check_real("gamma", gamma, low=0.0, low_open=True)
        self.rho = check_real("rho", rho, low=0.0)
        self.register_buffer("lambdas", torch.empty(0, dtype=torch.float64))
        self._second: torch.Tensor | None = None

    def setup(self, task_names: list[str]) -> None:
        refuse_distributed(self.name)
        keep = list(task_names) == self.task_names and self.lambdas.numel() == len(task_names)
        super().setup(task_names)
        if not keep:  # a repeated setup with the same tasks keeps λ
            self.lambdas = torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64, device=self.lambdas.device)
        self._second = None

    def update(self, cross: torch.Tensor) -> torch.Tensor:
        """λ ← Π_Δ(λ − γ(Aλ + ρλ)) with ``cross`` = A = J₁J₂ᵀ (K×K); returns the new λ."""
        lam = self.lambdas
        step = cross.detach().to(lam) @ lam + self.rho * lam
        self.lambdas = project_to_simplex(lam - self.gamma * step)
        return self.lambdas

    def before_backward(self, ctx: StepContext) -> None:
        assert ctx.engine is not None
        first, _ = ctx.engine.task_gradients([ctx.losses[t] for t in ctx.task_names], with_heads=False, keep_graph=True)
        x2, y2 = ctx.extra_batch(0)
        second = ctx.task_losses(x2, y2)
        grads2, _ = ctx.engine.task_gradients(list(second), with_heads=False, keep_graph=True)
        self.update(first @ grads2.T)
        self._second = second

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.lambdas.to(losses.dtype)

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._second is None:
            raise RuntimeError("combiner 'modo' needs its second batch: before_backward (extra_batches) was not called")
        second, self._second = self._second, None
        w = self.weights(losses)
        return 0.5 * ((w * losses).sum() + (w * second.to(losses.dtype)).sum()), w.detach()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gamma": self.gamma, "rho": self.rho, "batches": 2, "batch_reduction": "mean"}
