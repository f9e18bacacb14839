"""The combiner interface: how K separate task losses (and possibly their gradients) become one update.

Three families share one base class, so the trainer and Hydra treat them alike (``combiner=NAME``):

* :class:`LossWeighting` — the update is the gradient of ``combine(losses)``, a scalar function of the
  K task losses (weights may be constant, random, learnable or depend on loss history).  The engine
  runs **one** backward pass; these never need per-task gradients.
* :class:`GradientAggregator` — the update is computed from the K×d matrix ``G`` of per-task gradients
  (row k = ∇ L_k over the chosen *gradient source*).  ``aggregate(G, losses)`` returns a direction in the
  source's space (used like a gradient: the optimizer steps along −direction) and optional per-task
  weights, which scale each head's own gradient (heads get unit weights when a method defines none).
* :class:`GramianWeighting` — the aggregators whose update is a linear combination ``wᵀG`` with weights
  that depend on ``G`` only through the Gramian ``G Gᵀ`` (MGDA, IMTL-G, Nash-MTL, UPGrad, CAGrad, …).
  They implement ``weights_from_gramian`` and work with every gradient source, including
  ``last_shared`` (weights from the last shared layer, applied by one weighted backward).

Gradient sources (``grad_source``, validated against the class's ``supported_sources``):

* ``params`` — exact gradients over all shared parameters (K backward passes);
* ``last_shared`` — gradients over the last shared layer only (K short backward passes), weights applied
  with one weighted backward over the whole model (as GradNorm and some MGDA variants do); weight-producing
  methods only;
* ``representation`` — gradients w.r.t. the shared representation (K head backward passes plus one encoder
  backward with the aggregated cotangent; MGDA-UB style).

Declared capabilities (class attributes the engine reads instead of recognising methods by name):

* ``provides_task_weights`` — the update is Σ_k w_k ∇L_k over all shared parameters (exactly ``wᵀG`` under
  ``params``), with ``w`` returned in ``Aggregation.weights`` (for loss weightings: the weights ``combine``
  returns).  A task-wise optimizer (AdaTask) can then take the K weighted per-task gradients w_k ∇L_k instead
  of their sum.  True for loss weightings and for Gramian weightings that keep the base ``aggregate``; False
  by default for other gradient aggregators and for aggregators whose direction is not exactly ``wᵀG`` (norm
  clipping, head weights in place of ``w``).
* ``head_input_term`` — the method adds a head-level term built from δ_k = ∂L_k/∂z_k, the gradient of task k's
  loss at the representation z_k its head reads (ConsMTL).  The engine then applies the heads to detached copies
  of the representation, takes the δ_k with ``create_graph`` and asks the combiner for each head's extra loss
  (``head_terms(deltas, weights)``) and for how it joins the head's ordinary gradient
  (``head_gradient(ordinary, extra)``); see ``engine_steps.HeadTermAggregationStep``.

Hooks the trainer calls: ``setup(task_names)`` once; ``after_step(post_losses)`` after every optimizer
step (``post_losses`` are the task losses recomputed on the same batch, without gradients, when the class
sets ``needs_post_step_losses`` — FAMO); ``on_epoch_end(epoch, train_losses)``; and, for a class that declares
``extra_batches = n > 0`` (methods that need more than the step's batch: Auto-Lambda's meta step, MoDo's second
batch), ``before_backward(ctx)`` once per step after the forward pass and before the backward, with a
:class:`~mtl_bench.step_context.StepContext` (model, optimizer, engine, the step's batch and losses, a loss
function, ``extra_batch(i)`` for i < n; drawn statelessly, so resuming needs no extra checkpoint state).

Combiners are ``nn.Module`` s: learnable weights are parameters (the trainer optimises them in their own
``combiner`` parameter group, with ``optimizer_overrides()`` applied, e.g. a different lr) and history is
kept in buffers or ``get_extra_state``, so ``state_dict`` / ``load_state_dict`` round-trip through
checkpoints.  Random methods draw from their own ``torch.Generator`` (saved in the state), never from the
global RNG, so a combiner never perturbs the data order or initialisation of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError

GRAD_SOURCES = ("params", "last_shared", "representation")


class Combiner(nn.Module):
    name: ClassVar[str] = "base"
    needs_grads: ClassVar[bool] = False
    needs_post_step_losses: ClassVar[bool] = False
    extra_batches: ClassVar[int] = 0  # > 0: before_backward(ctx) is called every step (see the module docstring)
    supported_sources: ClassVar[tuple[str, ...]] = ()
    default_source: ClassVar[str | None] = None
    scale: ClassVar[str] = "n/a"  # "sum" | "mean" | "normalised" ...: documented in each subclass
    provides_task_weights: ClassVar[bool] = False  # update = Σ_k w_k ∇L_k with w reported (see the module docstring)
    head_input_term: ClassVar[bool] = False  # a head-level term from ∂L_k/∂z_k (see the module docstring)

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
        self.check_num_tasks(len(task_names))
        self.task_names = list(task_names)

    def check_num_tasks(self, k: int) -> None:
        """Refuse a task count the method is not defined for (``NotApplicableError``: Krum, TrimmedMean); any count
        by default.  Called by :meth:`setup`."""

    def after_step(self, post_losses: torch.Tensor | None) -> None:
        """Called after every optimizer step (``post_losses``: see ``needs_post_step_losses``)."""

    def before_backward(self, ctx: Any) -> None:
        """Called once per step before the backward when ``extra_batches > 0``; ``ctx``: a
        :class:`mtl_bench.step_context.StepContext`."""

    def head_terms(self, deltas: Sequence[Sequence[torch.Tensor]], weights: torch.Tensor) -> list[torch.Tensor | None]:
        """``head_input_term`` methods: each head's extra loss from the δ_k (see the module docstring)."""
        raise NotImplementedError(f"combiner '{self.name}' declares no head-level term")

    def head_gradient(self, ordinary: Sequence[torch.Tensor | None],
                      extra: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """``head_input_term`` methods: a head's gradient from its ordinary one and its extra loss's gradient."""
        raise NotImplementedError(f"combiner '{self.name}' declares no head-level term")

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        """Hook for methods with epoch-level state (e.g. DWA); ``train_losses`` are epoch means."""

    def loss_lower_bound(self) -> torch.Tensor | float | None:
        """Smallest task loss the method is defined for (e.g. 0 for methods built on log L_k or 1/L_k), or
        ``None``.  The trainer checks it together with finiteness in the one host sync it makes per step, so
        combiners need not synchronise with the device to validate their input."""
        return None

    def optimizer_overrides(self) -> dict[str, Any]:
        """Options for the ``combiner`` parameter group (e.g. ``{"lr": 0.025}``); empty: the model's."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What the run summary records about the method (name, scale convention, gradient source)."""
        return {"name": self.name, "grad_source": self.grad_source, "needs_grads": self.needs_grads, "scale": self.scale}


class LossWeighting(Combiner):
    """Weights from loss values; the update is ∇ of ``combine(losses)``, one backward pass."""

    provides_task_weights = True

    def weights(self, losses: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``losses``: K-vector of task losses (in ``task_names`` order, attached to the graph).  Returns the
        scalar objective to differentiate and the (detached) per-task weights for logging."""
        w = self.weights(losses)
        return (w * losses).sum(), w.detach()


@dataclass
class Aggregation:
    """Result of a gradient aggregator: the update direction in the gradient source's space (used as a
    gradient: the optimizer steps along −direction; ``None`` is allowed only for weight-producing methods
    under ``last_shared``) and optional per-task weights that also scale the heads' gradients."""

    direction: torch.Tensor | None
    weights: torch.Tensor | None = None


class GradientAggregator(Combiner):
    needs_grads = True
    supported_sources = ("params", "representation")
    default_source = "params"

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:  # pragma: no cover
        """``grads``: K×d matrix of per-task gradients; ``losses``: detached K-vector of task losses."""
        raise NotImplementedError


class GramianWeighting(GradientAggregator):
    """Aggregators of the form ``wᵀG`` with ``w = weights_from_gramian(G Gᵀ, losses)``.  Subclasses that override
    :meth:`aggregate` so that the direction is no longer exactly ``wᵀG`` with ``w`` in ``Aggregation.weights``
    must set ``provides_task_weights = False``."""

    provides_task_weights = True
    supported_sources = ("params", "last_shared", "representation")

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        w = self.weights_from_gramian(grads @ grads.T, losses)
        return Aggregation(w.to(grads) @ grads, w)
