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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import nn

from mtl_bench.combiners.base import Aggregation, Combiner, GradientAggregator, GramianWeighting, LossWeighting
from mtl_bench.distributed import REPRESENTATION_NOTE, DistContext, current, with_global_value
from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.models.mtl_model import MultiTaskModel

log = logging.getLogger(__name__)

PER_TASK_BACKWARD = ("sequential", "batched")


class GradientObserver(Protocol):
    """A diagnostic that reads the per-task gradient matrix (e.g. conflict or dominance probes)."""

    def wants_grads(self, step: int) -> bool: ...

    def observe(self, step: int, grads: torch.Tensor, task_names: Sequence[str], losses: torch.Tensor, source: str) -> None: ...


@dataclass
class StepResult:
    objective: torch.Tensor  # detached scalar: Σ_k w_k L_k (for loss weightings: what was differentiated)
    weights: torch.Tensor  # detached K-vector of per-task weights (what the heads were scaled by)
    grads: torch.Tensor | None  # K×d per-task gradients over ``source``, if computed this step
    source: str | None  # gradient source of ``grads``


def flat_size(params: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def accumulate_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    """``p.grad += g`` with ``backward`` semantics; ``g`` must be a fresh tensor the caller gives away."""
    if p.grad is None:
        p.grad = g
    else:
        p.grad.add_(g)


def write_flat_grad(params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
    """Accumulate a flat d-vector into the ``.grad`` of ``params``.  ``flat`` must be a tensor the caller
    gives away (the engine copies it first if it aliases the gradient matrix): empty ``.grad`` s become
    views into it, so writing the update costs no copy."""
    flat = flat.contiguous()
    offset = 0
    for p in params:
        n = p.numel()
        accumulate_grad(p, flat[offset : offset + n].view_as(p))
        offset += n


def copy_many(dsts: list[torch.Tensor], srcs: list[torch.Tensor]) -> None:
    """``dst.copy_(src)`` for each pair, in one fused launch where torch offers it (``_foreach_copy_``)."""
    if not dsts:
        return
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dsts, srcs)
    else:  # pragma: no cover - torch < 2.1
        for d, s in zip(dsts, srcs):
            d.copy_(s)


def fill_rows(rows: torch.Tensor, k: int | slice, inputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    """Write the flattened ``grads`` (one per input, ``None`` = unused) into ``rows[k]`` (zeros where unused)."""
    dsts, srcs, offset = [], [], 0
    for x, g in zip(inputs, grads):
        n = x.numel()
        view = rows[k, offset : offset + n]
        if g is None:
            view.zero_()
        else:
            dsts.append(view)
            srcs.append(g.reshape(view.shape))
        offset += n
    copy_many(dsts, srcs)


def as_tuple(rep: Any) -> tuple[torch.Tensor, ...]:
    return tuple(rep) if isinstance(rep, (tuple, list)) else (rep,)


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
        self.dim = flat_size(self.shared)
        self.batched = per_task_backward == "batched"
        self.task_sink = task_sink
        self.dist = dist if dist is not None else current()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.head_params = [p for t in self.task_names for p in self.heads[t]]
        if self.dist.enabled:
            self._check_distributed()
        if task_sink is not None and isinstance(combiner, GradientAggregator) and (
            combiner.grad_source != "params" or not isinstance(combiner, (GramianWeighting,)) and combiner.name != "gradnorm"
        ):
            raise ConfigError(
                f"a task-wise optimizer needs per-task weights on gradients over all shared parameters; combiner "
                f"'{combiner.name}' (grad_source={combiner.grad_source}) does not provide them: use a loss weighting or a "
                f"Gramian weighting (mgda, imtl_g, nash_mtl, upgrad, cagrad, fairgrad, aligned_mtl, dibs_mtl, ...) with grad_source=params"
            )

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

    def _global(self, stacked: torch.Tensor, global_losses: torch.Tensor) -> torch.Tensor:
        """What a loss weighting combines: under DDP the global-batch losses as values, the local ones for
        gradients (so ∂f/∂L_k is evaluated at the global losses on every rank); the losses themselves otherwise."""
        return with_global_value(stacked, global_losses) if self.dist.enabled else stacked

    def _representation_ddp(
        self, grads: torch.Tensor, detached: torch.Tensor, loss_scale: float | None
    ) -> tuple[torch.Tensor, Aggregation | None]:
        """``grads`` is this rank's block G_r of the per-sample representation gradients (w.r.t. its local mean
        losses).  The global G is [G_1, ..., G_W] / W, so its Gramian is Σ_r G_r G_rᵀ / W²: the weights come from
        it (the same on every rank) and the rank's cotangent is wᵀG_r — the global direction's block times W,
        which the final average of the parameter gradients divides out.  ``None``: fp16 overflow on some rank."""
        if loss_scale is not None:
            grads = grads / loss_scale
        gramian = grads @ grads.T
        self.dist.sum_(gramian)
        gramian = gramian / self.dist.world_size**2
        if loss_scale is not None and not bool(torch.isfinite(gramian).all()):  # every rank sees the same Gramian
            return grads, None
        assert isinstance(self.combiner, GramianWeighting)  # guaranteed by _check_distributed
        w = self.combiner.weights_from_gramian(gramian, detached)
        return grads, Aggregation(w.to(grads) @ grads, w)

    # ------------------------------------------------------------------ representation leaves
    @property
    def needs_leaves(self) -> bool:
        """Whether the heads must read detached copies of the representation (see :meth:`leaves`)."""
        comb = self.combiner
        if not isinstance(comb, GradientAggregator):
            return False
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
        return rows, head_grads

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
    def _write_heads(self, head_grads: list[list[torch.Tensor | None]], weights: torch.Tensor) -> None:
        for k, task in enumerate(self.task_names):
            for p, g in zip(self.heads[task], head_grads[k]):
                if g is not None:
                    accumulate_grad(p, g * weights[k].to(g.dtype))  # (scaled, like the shared grads, in fp16)

    def backward(
        self, losses: Mapping[str, torch.Tensor], step: int, rep: Any = None, loss_scale: float | None = None, leaves: Any = None
    ) -> StepResult:
        """Differentiate the K task losses and write every parameter's ``.grad``.

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
        averaged.  Observers receive the global G, except under ``representation`` (the rank's own block)."""
        loss_list = [losses[t] for t in self.task_names]
        detached = torch.stack([loss.detach() for loss in loss_list])
        self.dist.average_(detached)  # DDP: the global-batch mean losses (no-op on one process)
        if loss_scale is not None:
            loss_list = [loss * loss_scale for loss in loss_list]
        watchers = [o for o in self.observers if o.wants_grads(step)]
        grads: torch.Tensor | None = None
        source: str | None = None
        comb = self.combiner

        if isinstance(comb, LossWeighting) and self.task_sink is not None:
            grads, head_grads = self.task_gradients(loss_list, rep, with_heads=True, keep_graph=True)
            grads = self._global_grads(grads, loss_scale)
            source = "params"
            if grads is None:
                return self._skip(detached)
            # the true (unscaled) losses
            objective, weights = comb.combine(self._global(torch.stack([losses[t] for t in self.task_names]), detached))
            learnable = [p for p in comb.parameters() if p.requires_grad]
            if learnable:  # e.g. UW's log-variances: their gradient only needs the (tiny) combiner graph
                for p, g in zip(learnable, torch.autograd.grad(objective, learnable, allow_unused=True)):
                    if g is not None:
                        accumulate_grad(p, g)
            weights = weights.detach().to(grads.dtype)
            self.task_sink(grads * weights.unsqueeze(1), self.last_present)
            self._write_heads(head_grads, weights.to(detached.dtype))
            self.dist.average_grads(self.head_params)
            objective = objective.detach()
        elif isinstance(comb, LossWeighting):
            if watchers:
                grads, _ = self.task_gradients(loss_list, rep, with_heads=False, keep_graph=True)
                grads = self._global_grads(grads, loss_scale)
                source = "params"
            if loss_scale is None:
                objective, weights = comb.combine(self._global(torch.stack(loss_list), detached))
                objective.backward()
            else:  # the combiner sees the true losses; only the backward is scaled
                objective, weights = comb.combine(self._global(torch.stack([loss / loss_scale for loss in loss_list]), detached))
                (objective * loss_scale).backward()
            self.dist.average_grads(self.params)  # one coalesced all-reduce (combiner parameters are already global)
            objective = objective.detach()
        elif isinstance(comb, GradientAggregator):
            source = comb.grad_source
            if self.needs_leaves and (leaves is None or leaves is rep):
                raise ValueError(f"grad_source='{source}' with this engine needs the heads applied to engine.leaves(rep)")
            if source == "params":
                grads, head_grads = self.task_gradients(loss_list, rep, with_heads=True, leaves=leaves)
                grads = self._global_grads(grads, loss_scale)  # DDP: the global-batch G, before any rank aggregates it
                if grads is None:
                    return self._skip(detached)
                agg = comb.aggregate(grads, detached)
                weights = self._weights(agg, detached)
                if self.task_sink is not None:  # per-task weighted gradients instead of their aggregate
                    self.task_sink(grads * weights.to(grads.dtype).unsqueeze(1), self.last_present)
                else:
                    write_flat_grad(self.shared, self._rescale(self._owned(agg.direction, grads), loss_scale))
                self._write_heads(head_grads, weights)
                self.dist.average_grads(self.head_params)
            elif source == "representation":
                reps = as_tuple(rep)
                grads, head_grads, post = self._gradient_rows(loss_list, list(as_tuple(leaves)), with_heads=True,
                                                              keep_graph=False, with_shared=True)
                if self.dist.enabled:
                    grads, agg = self._representation_ddp(grads, detached, loss_scale)
                    if agg is None:
                        return self._skip(detached)
                else:
                    grads = self._unscale(grads, loss_scale)
                    if grads is None:
                        return self._skip(detached)
                    agg = comb.aggregate(grads, detached)
                weights = self._weights(agg, detached)
                direction = self._rescale(agg.direction, loss_scale)
                cot, offset = [], 0
                for r in reps:
                    cot.append(direction[offset : offset + r.numel()].view_as(r).to(r.dtype))
                    offset += r.numel()
                torch.autograd.backward(reps, grad_tensors=cot)
                self._write_heads(head_grads, weights)
                # shared parameters applied after the representation (MTAN's shared attention): weighted sum
                for k in range(len(loss_list)):
                    for p, g in zip(self.shared, post[k]):
                        if g is not None:
                            accumulate_grad(p, g * weights[k].to(g.dtype))
                self.dist.average_grads(self.params)
            elif source == "last_shared":
                grads, _, _ = self._gradient_rows(loss_list, self.last_shared, with_heads=False, keep_graph=True)
                grads = self._global_grads(grads, loss_scale)
                if grads is None:
                    return self._skip(detached)
                agg = comb.aggregate(grads, detached)
                if agg.weights is None:
                    raise ConfigError(f"combiner '{comb.name}' returned no weights; it cannot use grad_source=last_shared")
                weights = agg.weights.detach()
                sum(w * loss for w, loss in zip(weights.to(detached.dtype), loss_list)).backward()
                self.dist.average_grads(self.params)
            else:  # pragma: no cover - validated by Combiner.__init__
                raise ConfigError(f"unknown gradient source '{source}'")
            objective = (weights.to(detached.dtype) * detached).sum()
        else:  # pragma: no cover - guarded by the class hierarchy
            raise TypeError(f"unsupported combiner type {type(comb).__name__}")

        if watchers:
            for o in watchers:
                o.observe(step, grads, self.task_names, detached, source)
        return StepResult(objective, weights.detach(), grads, source)

    def _global_grads(self, grads: torch.Tensor, loss_scale: float | None) -> torch.Tensor | None:
        """This rank's per-task gradient rows → the global-batch ones (averaged over the ranks under DDP, before
        the overflow check, so every rank skips together), unscaled; ``None`` if fp16 overflowed."""
        self.dist.average_(grads)
        return self._unscale(grads, loss_scale)

    @staticmethod
    def _unscale(grads: torch.Tensor, loss_scale: float | None) -> torch.Tensor | None:
        """True per-task gradients from those of scaled losses; ``None`` if fp16 overflowed (inf/NaN)."""
        if loss_scale is None:
            return grads
        grads = grads / loss_scale
        return grads if bool(torch.isfinite(grads).all()) else None

    @staticmethod
    def _rescale(direction: torch.Tensor, loss_scale: float | None) -> torch.Tensor:
        return direction if loss_scale is None else direction * loss_scale

    def _skip(self, detached: torch.Tensor) -> StepResult:
        """fp16 overflow: mark the shared gradients non-finite so the grad scaler skips this step."""
        for p in self.shared:
            p.grad = torch.full_like(p, float("nan"))
        nan = torch.full_like(detached, float("nan"))
        return StepResult(nan.sum(), nan, None, self.combiner.grad_source)

    @staticmethod
    def _owned(direction: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``direction`` itself, or a copy if it shares memory with the gradient matrix observers read."""
        if direction.untyped_storage().data_ptr() == grads.untyped_storage().data_ptr():
            return direction.clone()
        return direction

    @staticmethod
    def _weights(agg, detached: torch.Tensor) -> torch.Tensor:
        return agg.weights.detach().to(detached.dtype) if agg.weights is not None else torch.ones_like(detached)


def exact_on_representation(combiner: Combiner) -> bool:
    """Whether DDP can reproduce ``combiner`` under ``grad_source=representation`` exactly: a Gramian weighting
    whose update is the base class's ``wᵀG`` (subclasses that override ``aggregate`` — norm clipping, rescaled
    heads — or non-Gramian aggregators need the whole per-sample G on one process)."""
    return isinstance(combiner, GramianWeighting) and type(combiner).aggregate is GramianWeighting.aggregate
