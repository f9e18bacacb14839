"""The gradient engine: from K separate task losses to ``.grad`` on every parameter.

* Loss-weighting combiners: one backward pass of ``combiner.combine(losses)``.
* Gradient aggregators: K backward passes, one per task loss (kept as **separate scalars**, so the
  backward of task k walks only head k and the shared encoder), producing the exact K×d matrix ``G`` of
  per-task gradients over the shared parameters and each head's own gradient in the same pass.  The
  aggregated direction is written into the shared parameters' ``.grad`` and each head gets its task's
  gradient times the aggregator's weight, so any torch optimizer can step afterwards.
* Observers (diagnostics) that ask for per-task gradients on a step get the ``G`` the engine computed;
  on steps where the combiner itself does not need ``G`` the engine computes it for them with K extra
  backward passes *before* the usual single backward, so the training trajectory is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import torch
from torch import nn

from mtl_bench.combiners.base import Combiner, GradientAggregator, LossWeighting
from mtl_bench.errors import ConfigError
from mtl_bench.models.mtl_model import MultiTaskModel


class GradientObserver(Protocol):
    """A diagnostic that reads the per-task gradient matrix (e.g. conflict or dominance probes)."""

    def wants_grads(self, step: int) -> bool: ...

    def observe(self, step: int, grads: torch.Tensor, task_names: Sequence[str], losses: torch.Tensor) -> None: ...


@dataclass
class StepResult:
    objective: torch.Tensor  # detached scalar that was differentiated (Σ_k w_k L_k for aggregators)
    weights: torch.Tensor  # detached K-vector of per-task weights (what the heads were scaled by)
    grads: torch.Tensor | None  # K×d per-task gradients over the shared parameters, if computed


def flat_size(params: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def write_flat_grad(params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
    """Accumulate a flat d-vector into the ``.grad`` of ``params`` (``backward`` semantics)."""
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p)
        offset += n
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


class GradientEngine:
    def __init__(
        self,
        model: MultiTaskModel,
        combiner: Combiner,
        task_names: Sequence[str],
        observers: Sequence[GradientObserver] = (),
    ):
        if combiner.needs_grads and combiner.grad_source != "params":
            # 'last_shared' and 'representation' sources arrive with the combiner library (issue 3).
            raise ConfigError(
                f"gradient source '{combiner.grad_source}' is not available in this engine; use grad_source=params"
            )
        self.model = model
        self.combiner = combiner
        self.task_names = list(task_names)
        self.observers = list(observers)
        self.shared = model.shared_parameters()
        self.heads = {t: model.task_parameters(t) for t in self.task_names}
        self.dim = flat_size(self.shared)

    def task_gradients(
        self, losses: Sequence[torch.Tensor], with_heads: bool, keep_graph: bool
    ) -> tuple[torch.Tensor, list[list[torch.Tensor | None]]]:
        """Row k of the returned K×d matrix is ∇_shared L_k; also returns each head's own gradient."""
        first = self.shared[0]
        grads = torch.zeros(len(losses), self.dim, device=first.device, dtype=first.dtype)
        head_grads: list[list[torch.Tensor | None]] = []
        for k, (task, loss) in enumerate(zip(self.task_names, losses)):
            head = self.heads[task] if with_heads else []
            retain = keep_graph or k < len(losses) - 1
            g = torch.autograd.grad(loss, self.shared + head, retain_graph=retain, allow_unused=True)
            offset = 0
            for p, gp in zip(self.shared, g[: len(self.shared)]):
                n = p.numel()
                if gp is not None:
                    grads[k, offset : offset + n].copy_(gp.reshape(-1))
                offset += n
            head_grads.append(list(g[len(self.shared) :]))
        return grads, head_grads

    def backward(self, losses: Mapping[str, torch.Tensor], step: int) -> StepResult:
        loss_list = [losses[t] for t in self.task_names]
        watchers = [o for o in self.observers if o.wants_grads(step)]
        grads: torch.Tensor | None = None

        if isinstance(self.combiner, LossWeighting):
            if watchers:
                grads, _ = self.task_gradients(loss_list, with_heads=False, keep_graph=True)
            objective, weights = self.combiner.combine(torch.stack(loss_list))
            objective.backward()
        elif isinstance(self.combiner, GradientAggregator):
            grads, head_grads = self.task_gradients(loss_list, with_heads=True, keep_graph=False)
            detached = torch.stack([loss.detach() for loss in loss_list])
            agg = self.combiner.aggregate(grads, detached)
            write_flat_grad(self.shared, agg.direction)
            weights = agg.weights.detach() if agg.weights is not None else torch.ones_like(detached)
            for k, task in enumerate(self.task_names):
                for p, g in zip(self.heads[task], head_grads[k]):
                    if g is None:
                        continue
                    g = g * weights[k]
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)
            objective = (weights * detached).sum()
        else:  # pragma: no cover - guarded by the class hierarchy
            raise TypeError(f"unsupported combiner type {type(self.combiner).__name__}")

        if watchers:
            detached = torch.stack([loss.detach() for loss in loss_list])
            for o in watchers:
                o.observe(step, grads, self.task_names, detached)
        return StepResult(objective.detach(), weights.detach(), grads)
