"""The combiner interface: how K separate task losses (and possibly their gradients) become one update.

Two families share one base class, so the trainer and Hydra treat them alike (``combiner=NAME``):

* :class:`LossWeighting` — the update is the gradient of ``combine(losses)``, a scalar function of the
  K task losses (weights may be constant, random, learnable or depend on loss history).  The engine
  runs **one** backward pass for these; they never need per-task gradients.
* :class:`GradientAggregator` — the update of the shared parameters is computed from the K×d matrix
  ``G`` of per-task gradients (row k = ∇ L_k over the chosen gradient source).  The engine computes
  ``G`` and writes the aggregated direction into ``.grad``; each head receives its own task's gradient
  scaled by the aggregator's per-task weight (1 where the method defines none).

Which gradients an aggregator sees is explicit: ``grad_source`` is one of :data:`GRAD_SOURCES` and
every class declares the sources it supports; an unsupported choice is a :class:`ConfigError` that
names the supported ones.

Combiners are ``nn.Module`` s: learnable weights are parameters (the trainer gives them their own
optimizer group) and history is kept in buffers or ``get_extra_state``, so ``state_dict`` /
``load_state_dict`` round-trip through checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mtl_bench.errors import ConfigError

GRAD_SOURCES = ("params", "last_shared", "representation")


class Combiner(nn.Module):
    name: ClassVar[str] = "base"
    needs_grads: ClassVar[bool] = False
    supported_sources: ClassVar[tuple[str, ...]] = ()
    default_source: ClassVar[str | None] = None

    def __init__(self, grad_source: str | None = None):
        super().__init__()
        if grad_source is None:
            grad_source = self.default_source
        if grad_source is not None and grad_source not in GRAD_SOURCES:
            raise ConfigError(f"combiner.grad_source='{grad_source}' is unknown; valid sources are {list(GRAD_SOURCES)}")
        if grad_source is not None and grad_source not in self.supported_sources:
            supported = list(self.supported_sources) or ["none (this method uses loss values only)"]
            raise ConfigError(
                f"combiner '{self.name}' does not support grad_source='{grad_source}'; supported: {supported}"
            )
        self.grad_source = grad_source
        self.task_names: list[str] = []

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def setup(self, task_names: list[str]) -> None:
        """Called once, before training, with the active tasks in a fixed order (row order of ``G``)."""
        if not task_names:
            raise ConfigError("a combiner needs at least one task")
        self.task_names = list(task_names)

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        """Hook for methods with epoch-level state (e.g. DWA); ``train_losses`` are epoch means."""

    def describe(self) -> dict:
        """What the run summary records about the method (name, scale convention, gradient source)."""
        return {"name": self.name, "grad_source": self.grad_source, "needs_grads": self.needs_grads}


class LossWeighting(Combiner):
    """Weights from loss values; the update is ∇ of ``combine(losses)``, one backward pass."""

    def weights(self, losses: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``losses``: K-vector of task losses (in ``task_names`` order).  Returns the scalar objective to
        differentiate and the (detached) per-task weights for logging."""
        w = self.weights(losses)
        return (w * losses).sum(), w.detach()


@dataclass
class Aggregation:
    """Result of a gradient aggregator: the shared-parameter update direction (a d-vector, to be used as
    a gradient, i.e. the optimizer steps along −direction) and optional per-task weights that also
    scale the heads' gradients."""

    direction: torch.Tensor
    weights: torch.Tensor | None = None


class GradientAggregator(Combiner):
    needs_grads = True
    supported_sources = ("params",)
    default_source = "params"

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:  # pragma: no cover
        """``grads``: K×d matrix of per-task gradients; ``losses``: detached K-vector of task losses."""
        raise NotImplementedError
