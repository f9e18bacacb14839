"""The gradient engine: from K separate task losses to ``.grad`` on every parameter.

* Loss-weighting combiners: one backward pass of ``combiner.combine(losses)``.
* Gradient aggregators, by gradient source (``combiner.grad_source``):

  - ``params``: K backward passes, one per task loss (kept as **separate scalars**, so the backward of
    task k walks only head k and the encoder), giving the exact K×d matrix ``G`` over the shared
    parameters and each head's own gradient in the same pass.  With ``per_task_backward="batched"`` the
    K passes stop at the shared representation and the encoder is traversed once with a batch of K
    cotangents (``is_grads_batched``, i.e. vmap); if the model does not support that, the engine falls
    back to sequential passes for the rest of the run (logged once).
  - ``last_shared``: K short passes to the last shared layer; the aggregator's weights are then applied
    by one backward of ``Σ w_k L_k`` through the whole model.
  - ``representation``: K head passes to the shared representation; the aggregated cotangent is pushed
    through the encoder by one backward (MGDA-UB style).

  The direction is written into the shared parameters' ``.grad`` and each head receives its task's
  gradient times the aggregator's weight (1 where the method defines none), so any torch optimizer can
  step afterwards.
* Observers (diagnostics) that ask for per-task gradients on a step get the ``G`` the engine computed;
  on steps where the combiner itself does not need ``G`` the engine computes it over the shared
  parameters for them *before* the usual backward, so the training trajectory is unchanged.
* Distributed (``torchrun``, :mod:`mtl_bench.distributed`): no DistributedDataParallel wrapper; the engine
  reduces explicitly where it is exact — the losses the combiner sees, G before aggregation (``params``,
  ``last_shared``), the Gramian (``representation``) and the remaining rank-local ``.grad`` s — so every rank
  ends the step with the single-process ``.grad`` of the global batch.
* Task-wise optimizers (AdaTask, ``task_sink``): the shared parameters get no ``.grad``; the optimizer takes the
  K weighted per-task gradients w_k ∇L_k over them — for combiners that declare ``provides_task_weights``
  (their update is Σ_k w_k ∇L_k with the weights they report) and whose gradients are over all shared parameters.

Each of these paths is a *step strategy* (:mod:`mtl_bench.engine_steps`), chosen once when the engine is built
from the combiner's family (loss weighting / gradient aggregator), its gradient source and whether a task sink is
given: loss weighting, task-wise loss weighting, aggregation over ``params`` (into ``.grad`` or, task-wise, to the
sink), over ``representation`` and over ``last_shared``.  :meth:`GradientEngine.backward` prepares the losses
(stack, DDP average, fp16 scale), runs the strategy, notifies the observers and returns the :class:`StepResult`;
the strategies share the reductions, unscaling / overflow skip and gradient write-out of ``engine_steps``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Protocol, Sequence

import torch

from mtl_bench.combiners.base import Combiner, GradientAggregator, GramianWeighting
from mtl_bench.distributed import REPRESENTATION_NOTE, DistContext, current
from mtl_bench.engine_steps import (
    StepInputs,
    StepResult,
    StepStrategy,
    accumulate_grad,
    as_tuple,
    choose_strategy,
    copy_many,
    fill_rows,
    flat_size,
    write_flat_grad,
)
from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.models.mtl_model import MultiTaskModel

log = logging.getLogger(__name__)

PER_TASK_BACKWARD = ("sequential", "batched")

__all__ = [
    "PER_TASK_BACKWARD", "GradientEngine", "GradientObserver", "StepResult", "accumulate_grad", "as_tuple", "copy_many",
    "exact_on_representation", "fill_rows", "flat_size", "write_flat_grad",
]


class GradientObserver(Protocol):
    """A diagnostic that reads the per-task gradient matrix (e.g. conflict or dominance probes)."""

    def wants_grads(self, step: int) -> bool: ...

    def observe(self, step: int, grads: torch.Tensor, task_names: Sequence[str], losses: torch.Tensor, source: str) -> None: ...


class GradientEngine:
    def __init__(
        self,
        model: MultiTaskModel,
        combiner: Combiner,
        task_names: Sequence[str],
        observers: Sequence[GradientObserver] = (),
        per_task_backward: str = "sequential",
        task_sink: Any = None,
        dist: DistContext | None = None,
    ):
        """``task_sink``: a task-wise optimizer's ``set_task_gradients(G_weighted, present)``.  When given, the
        shared parameters get no ``.grad``: the engine hands the optimizer the K per-task gradients of the
        *weighted* task losses (w_k ∇L_k, with the combiner's weights) instead of their aggregate.

        ``dist``: the distributed context (default: :func:`mtl_bench.distributed.current`, the no-op context
        outside ``torchrun``).  When enabled, every step ends with the same ``.grad`` on every rank, equal to the
        single-process one on the global batch (see "Distributed" below and ``mtl_bench/distributed.py``)."""
        check_choice("trainer.per_task_backward", per_task_backward, PER_TASK_BACKWARD)
        self.model = model
        self.combiner = combiner
        self.task_names = list(task_names)
        self.observers = list(observers)
        self.shared = model.shared_parameters()
        self.last_shared = model.last_shared_parameters()
        self.heads = {t: model.task_parameters(t) for t in self.task_names}
        # task-specific parameters upstream of the representation (listed first in ``heads[t]``; TaskAwareEncoder)
        self.upstream = {t: model.encoder_task_parameters(t) for t in self.task_names}
        self.dim = flat_size(self.shared)
        self.batched = per_task_backward == "batched"
        self.task_sink = task_sink
        self.dist = dist if dist is not None else current()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.head_params = [p for t in self.task_names for p in self.heads[t]]
        if self.dist.enabled:
            self._check_distributed()
        # the step strategy, chosen once (refuses a task sink the combiner cannot feed: see engine_steps.check_task_sink)
        self.strategy: StepStrategy = choose_strategy(combiner, task_wise=task_sink is not None)

    # ------------------------------------------------------------------ distributed
    def _check_distributed(self) -> None:
        """Refuse combinations that would not give the global-batch update under DDP."""
        comb = self.combiner
        if isinstance(comb, GradientAggregator) and comb.grad_source == "representation" and not exact_on_representation(comb):
            others = [s for s in comb.supported_sources if s != "representation"]
            raise ConfigError(
                f"combiner '{comb.name}' with grad_source=representation is not exact under DDP "
                f"(world size {self.dist.world_size}): {REPRESENTATION_NOTE}; use combiner.grad_source with one of {others}"
            )

    # ------------------------------------------------------------------ representation leaves
    @property
    def needs_leaves(self) -> bool:
        """Whether the heads must read detached copies of the representation (see :meth:`leaves`)."""
        comb = self.combiner
        if not isinstance(comb, GradientAggregator):
            return False
        if comb.head_input_term:  # δ_k = ∂L_k/∂z_k at the heads' inputs (engine_steps.HeadTermAggregationStep)
            return True
        return comb.grad_source == "representation" or (comb.grad_source == "params" and self.batched)

    def leaves(self, rep: Any) -> Any:
        """What the heads should be applied to: ``rep`` itself, or — for the representation source and batched
        per-task backward — detached copies that require grad (same structure).  Differentiating w.r.t. the
        copies gives each map's *partial* derivative; pushing all of them through the real ``rep`` once then
        sums every path correctly, also when the maps of a multi-level representation depend on each other
        (differentiating w.r.t. the attached maps would count the inner paths twice)."""
        if not self.needs_leaves:
            return rep
        copies = tuple(r.detach().requires_grad_(True) for r in as_tuple(rep))
        return copies if isinstance(rep, (tuple, list)) else copies[0]

    # ------------------------------------------------------------------ per-task gradients
    def _gradient_rows(
        self, losses: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], with_heads: bool, keep_graph: bool,
        with_shared: bool = False,
    ) -> tuple[torch.Tensor, list[list[torch.Tensor | None]], list[list[torch.Tensor | None]]]:
        """K×d matrix of ∇_inputs L_k (zeros where an input is unused), each head's gradient (if
        ``with_heads``) and, if ``with_shared``, the gradients of shared parameters reached directly from the
        loss (shared modules applied after the representation, e.g. MTAN's shared attention convolutions)."""
        dim = sum(t.numel() for t in inputs)
        ref = inputs[0]
        rows = torch.empty(len(losses), dim, device=ref.device, dtype=ref.dtype)
        head_grads: list[list[torch.Tensor | None]] = []
        shared_grads: list[list[torch.Tensor | None]] = []
        present = []
        extra = self.shared if with_shared else []
        for k, (task, loss) in enumerate(zip(self.task_names, losses)):
            head = self.heads[task] if with_heads else []
            retain = keep_graph or k < len(losses) - 1
            g = torch.autograd.grad(loss, [*inputs, *head, *extra], retain_graph=retain, allow_unused=True)
            fill_rows(rows, k, inputs, g[: len(inputs)])
            present.append(any(x is not None for x in g[: len(inputs)]))
            head_grads.append(list(g[len(inputs) : len(inputs) + len(head)]))
            shared_grads.append(list(g[len(inputs) + len(head) :]))
        self.last_present = torch.tensor(present, dtype=torch.bool)
        return rows, head_grads, shared_grads

    def _leaf_param_rows(
        self, losses: Sequence[torch.Tensor], rep: Any, leaves: Any
    ) -> tuple[torch.Tensor, list[list[torch.Tensor | None]]]:
        """Exact G over the shared parameters from representation leaves: K head passes to the leaves, then
        the encoder traversed with a batch of K cotangents (one vmapped pass; K sequential passes if vmap
        fails), plus the gradients of shared parameters used after the representation."""
        reps, leaf_list = as_tuple(rep), list(as_tuple(leaves))
        rep_rows, head_grads, post = self._gradient_rows(losses, leaf_list, with_heads=True, keep_graph=False, with_shared=True)
        cotangents, offset = [], 0
        for r in reps:
            cotangents.append(rep_rows[:, offset : offset + r.numel()].reshape(len(losses), *r.shape))
            offset += r.numel()
        rows = torch.empty(len(losses), self.dim, device=rep_rows.device, dtype=self.shared[0].dtype)
        try:
            g = torch.autograd.grad(reps, self.shared, grad_outputs=cotangents, allow_unused=True, is_grads_batched=True,
                                    retain_graph=True)
            fill_rows(rows, slice(None), self.shared, g)
        except RuntimeError as e:  # vmap has no batching rule for an op of this model
            log.warning("batched per-task backward is not supported by this model (%s); using sequential passes", str(e).splitlines()[0])
            self.batched = False
            for k in range(len(losses)):
                g = torch.autograd.grad(reps, self.shared, grad_outputs=[c[k] for c in cotangents], allow_unused=True,
                                        retain_graph=True)
                fill_rows(rows, k, self.shared, g)
        for k, grads in enumerate(post):
            if any(x is not None for x in grads):
                extra = torch.zeros_like(rows[k])
                fill_rows(extra.unsqueeze(0), 0, self.shared, grads)
                rows[k] += extra
        self._upstream_head_grads(reps, cotangents, head_grads)
        return rows, head_grads

    def _upstream_head_grads(self, reps: Sequence[torch.Tensor], cotangents: list[torch.Tensor],
                             head_grads: list[list[torch.Tensor | None]]) -> None:
        """Task-specific encoder parameters (gates, task experts) lie before the leaves the heads read, so the
        head passes leave them without gradient: task k's own cotangent pushed through the encoder gives it."""
        for k, task in enumerate(self.task_names):
            upstream = self.upstream[task]
            if upstream:
                g = torch.autograd.grad(reps, upstream, grad_outputs=[c[k] for c in cotangents], allow_unused=True,
                                        retain_graph=True)
                head_grads[k][: len(upstream)] = list(g)

    def task_gradients(
        self, losses: Sequence[torch.Tensor], rep: Any = None, with_heads: bool = True, keep_graph: bool = False,
        leaves: Any = None,
    ) -> tuple[torch.Tensor, list[list[torch.Tensor | None]]]:
        """Row k of the returned K×d matrix is ∇_shared L_k; also returns each head's own gradient.  With
        representation ``leaves`` (see :meth:`leaves`) the batched route is used."""
        if leaves is not None and leaves is not rep:
            return self._leaf_param_rows(losses, rep, leaves)
        rows, head_grads, _ = self._gradient_rows(losses, self.shared, with_heads=with_heads, keep_graph=keep_graph)
        return rows, head_grads

    # ------------------------------------------------------------------ the step
    def backward(
        self, losses: Mapping[str, torch.Tensor], step: int, rep: Any = None, loss_scale: float | None = None, leaves: Any = None
    ) -> StepResult:
        """Differentiate the K task losses and write every parameter's ``.grad`` (or feed the task sink).

        ``rep`` is the shared representation and ``leaves`` what the heads were applied to
        (``engine.leaves(rep)``; required by the ``representation`` source and by batched per-task backward).
        ``loss_scale`` (fp16 training): every loss is multiplied by it before differentiation, per-task
        gradients are divided by it again before a combiner sees them (so scale-sensitive aggregators get
        true gradients), and the ``.grad`` written is scaled by it like a ``GradScaler``-scaled backward, so
        ``scaler.step`` unscales and skips non-finite steps.  A non-finite per-task gradient matrix is not
        aggregated: the shared gradients are set to NaN instead.

        Distributed (``self.dist.enabled``; each rank holds an equal share of the global batch): the losses the
        combiner sees are all-reduced to the global-batch means; G over ``params`` / ``last_shared`` is averaged
        before aggregation; under ``representation`` the Gramian is summed (Σ_r G_r G_rᵀ / W²) and each rank
        pushes ``wᵀG_r`` through its encoder; finally every ``.grad`` that still holds a rank-local value is
        averaged.  Observers receive the global G, except under ``representation`` (the rank's own block).

        The work is done by ``self.strategy`` (see :mod:`mtl_bench.engine_steps`)."""
        x = self._prepare(losses, step, rep, loss_scale, leaves)
        result = self.strategy.step(self, x)
        if result is None:  # fp16 overflow
            return self._skip(x.detached)
        for o in x.watchers:
            o.observe(step, result.grads, self.task_names, x.detached, result.source)
        return result

    def _prepare(
        self, losses: Mapping[str, torch.Tensor], step: int, rep: Any, loss_scale: float | None, leaves: Any
    ) -> StepInputs:
        """The losses in task order (scaled in fp16), their detached global-batch values, and the observers that
        want G this step."""
        loss_list = [losses[t] for t in self.task_names]
        detached = torch.stack([loss.detach() for loss in loss_list])
        self.dist.average_(detached)  # DDP: the global-batch mean losses (no-op on one process)
        raw = loss_list
        if loss_scale is not None:
            loss_list = [loss * loss_scale for loss in loss_list]
        watchers = [o for o in self.observers if o.wants_grads(step)]
        return StepInputs(loss_list, raw, detached, rep, leaves, loss_scale, watchers)

    def _skip(self, detached: torch.Tensor) -> StepResult:
        """fp16 overflow: mark the shared gradients non-finite so the grad scaler skips this step."""
        for p in self.shared:
            p.grad = torch.full_like(p, float("nan"))
        nan = torch.full_like(detached, float("nan"))
        return StepResult(nan.sum(), nan, None, self.combiner.grad_source)


def exact_on_representation(combiner: Combiner) -> bool:
    """Whether DDP can reproduce ``combiner`` under ``grad_source=representation`` exactly: a Gramian weighting
    whose update is the base class's ``wᵀG`` (subclasses that override ``aggregate`` — norm clipping, rescaled
    heads — or non-Gramian aggregators need the whole per-sample G on one process)."""
    return isinstance(combiner, GramianWeighting) and type(combiner).aggregate is GramianWeighting.aggregate
