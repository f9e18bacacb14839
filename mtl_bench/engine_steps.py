"""The step strategies of :class:`~mtl_bench.engine.GradientEngine` and the operations they share.

The engine picks one strategy when it is built (:func:`choose_strategy`), from the combiner's family
(:class:`~mtl_bench.combiners.base.LossWeighting` or :class:`~mtl_bench.combiners.base.GradientAggregator`),
its gradient source and whether a task-wise optimizer takes the per-task gradients (a *task sink*):

* ``LossWeightingStep`` — one backward of ``combine(losses)`` (G only when an observer asks for it);
* ``TaskWiseLossWeightingStep`` — G over the shared parameters, times ``combine``'s weights, to the sink;
* ``ParamsAggregationStep`` — G over the shared parameters → ``aggregate`` → the direction into ``.grad``;
* ``TaskWiseAggregationStep`` — the same G and weights, but w_k ∇L_k handed to the sink instead;
* ``RepresentationAggregationStep`` — G w.r.t. the representation → the direction pushed through the encoder;
* ``LastSharedAggregationStep`` — G over the last shared layer → the weights applied by one weighted backward.
* ``HeadTermAggregationStep`` — combiners with a head-level term (``head_input_term``, ConsMTL): per-task head
  passes with ``create_graph`` to the representation leaves, G over the shared parameters → ``aggregate``, and
  each head's gradient joined with the gradient of its extra loss.

Every strategy's :meth:`step` gets the prepared losses (:class:`StepInputs`) and returns the
:class:`StepResult`, or ``None`` when fp16 overflowed (the engine then marks the step for skipping).  The
pieces they are built from are plain functions: the reductions (:func:`global_grads`: DDP average of G then
unscaling; :func:`gramian_aggregate_ddp`: the summed Gramian), unscaling (:func:`unscale`, :func:`rescale`),
the write-out of the shared update (:func:`write_direction` into ``.grad``, :func:`send_to_sink` to a task-wise
optimizer) and of the heads (:func:`write_heads`).

This module also holds the gradient-writing primitives (:func:`write_flat_grad`, :func:`fill_rows`, ...) and
:class:`StepResult`; :mod:`mtl_bench.engine` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from mtl_bench.combiners.base import Aggregation, Combiner, GradientAggregator, GramianWeighting, LossWeighting
from mtl_bench.combiners.registry import COMBINERS
from mtl_bench.distributed import DistContext, with_global_value
from mtl_bench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from mtl_bench.engine import GradientEngine, GradientObserver


@dataclass
class StepResult:
    objective: torch.Tensor  # detached scalar: Σ_k w_k L_k (for loss weightings: what was differentiated)
    weights: torch.Tensor  # detached K-vector of per-task weights (what the heads were scaled by)
    grads: torch.Tensor | None  # K×d per-task gradients over ``source``, if computed this step
    source: str | None  # gradient source of ``grads``


# ---------------------------------------------------------------------- gradient-writing primitives
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


# ---------------------------------------------------------------------- shared step operations
@dataclass
class StepInputs:
    """One step's losses, prepared by the engine (stacked, DDP-averaged, fp16-scaled)."""

    losses: list[torch.Tensor]  # the K task losses to differentiate (times ``loss_scale`` in fp16)
    raw: list[torch.Tensor]  # the K task losses as given (unscaled)
    detached: torch.Tensor  # detached K-vector of the losses (global-batch means under DDP)
    rep: Any  # the shared representation
    leaves: Any  # what the heads were applied to (``engine.leaves(rep)``)
    loss_scale: float | None
    watchers: list[GradientObserver]  # the observers that want G this step


def unscale(grads: torch.Tensor, loss_scale: float | None) -> torch.Tensor | None:
    """True per-task gradients from those of scaled losses; ``None`` if fp16 overflowed (inf/NaN)."""
    if loss_scale is None:
        return grads
    grads = grads / loss_scale
    return grads if bool(torch.isfinite(grads).all()) else None


def rescale(direction: torch.Tensor, loss_scale: float | None) -> torch.Tensor:
    return direction if loss_scale is None else direction * loss_scale


def global_grads(dist: DistContext, grads: torch.Tensor, loss_scale: float | None) -> torch.Tensor | None:
    """This rank's per-task gradient rows → the global-batch ones (averaged over the ranks under DDP, before
    the overflow check, so every rank skips together), unscaled; ``None`` if fp16 overflowed."""
    dist.average_(grads)
    return unscale(grads, loss_scale)


def global_losses(dist: DistContext, stacked: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """What a loss weighting combines: under DDP the global-batch losses as values, the local ones for
    gradients (so ∂f/∂L_k is evaluated at the global losses on every rank); the losses themselves otherwise."""
    return with_global_value(stacked, means) if dist.enabled else stacked


def gramian_aggregate_ddp(
    combiner: GramianWeighting, dist: DistContext, grads: torch.Tensor, detached: torch.Tensor, loss_scale: float | None
) -> tuple[torch.Tensor, Aggregation | None]:
    """``grads`` is this rank's block G_r of the per-sample representation gradients (w.r.t. its local mean
    losses).  The global G is [G_1, ..., G_W] / W, so its Gramian is Σ_r G_r G_rᵀ / W²: the weights come from
    it (the same on every rank) and the rank's cotangent is wᵀG_r — the global direction's block times W,
    which the final average of the parameter gradients divides out.  ``None``: fp16 overflow on some rank."""
    if loss_scale is not None:
        grads = grads / loss_scale
    gramian = grads @ grads.T
    dist.sum_(gramian)
    gramian = gramian / dist.world_size**2
    if loss_scale is not None and not bool(torch.isfinite(gramian).all()):  # every rank sees the same Gramian
        return grads, None
    w = combiner.weights_from_gramian(gramian, detached)
    return grads, Aggregation(w.to(grads) @ grads, w)


def owned(direction: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``direction`` itself, or a copy if it shares memory with the gradient matrix observers read."""
    if direction.untyped_storage().data_ptr() == grads.untyped_storage().data_ptr():
        return direction.clone()
    return direction


def agg_weights(agg: Aggregation, detached: torch.Tensor) -> torch.Tensor:
    """The aggregation's per-task weights in the losses' dtype (ones where the method defines none)."""
    return agg.weights.detach().to(detached.dtype) if agg.weights is not None else torch.ones_like(detached)


def write_direction(shared: Sequence[nn.Parameter], direction: torch.Tensor, grads: torch.Tensor, loss_scale: float | None) -> None:
    """The aggregated update into the shared parameters' ``.grad`` (scaled back like the losses in fp16)."""
    write_flat_grad(shared, rescale(owned(direction, grads), loss_scale))


def send_to_sink(engine: GradientEngine, grads: torch.Tensor, weights: torch.Tensor) -> None:
    """The K weighted per-task gradients w_k ∇L_k to the task-wise optimizer (instead of their sum in ``.grad``)."""
    engine.task_sink(grads * weights.to(grads.dtype).unsqueeze(1), engine.last_present)


def write_heads(engine: GradientEngine, head_grads: list[list[torch.Tensor | None]], weights: torch.Tensor) -> None:
    """Each head's own gradient times its task's weight into its ``.grad``."""
    for k, task in enumerate(engine.task_names):
        for p, g in zip(engine.heads[task], head_grads[k]):
            if g is not None:
                accumulate_grad(p, g * weights[k].to(g.dtype))  # (scaled, like the shared grads, in fp16)


def aggregated(weights: torch.Tensor, detached: torch.Tensor, grads: torch.Tensor, source: str) -> StepResult:
    """An aggregator's step result: the objective Σ_k w_k L_k at the (detached) losses."""
    return StepResult((weights.to(detached.dtype) * detached).sum(), weights.detach(), grads, source)


# ---------------------------------------------------------------------- the strategies
class StepStrategy:
    """One path from the prepared losses to ``.grad`` (or the task sink); chosen once per engine."""

    source: str | None = None  # the gradient source of the per-task gradients it computes

    def __init__(self, combiner: Combiner):
        self.combiner = combiner

    def step(self, engine: GradientEngine, x: StepInputs) -> StepResult | None:  # pragma: no cover - abstract
        """Differentiate ``x.losses`` and write the gradients; ``None``: fp16 overflow, skip the step."""
        raise NotImplementedError


class LossWeightingStep(StepStrategy):
    """One backward of ``combine(losses)``; G over the shared parameters only when an observer asks for it
    (computed first, keeping the graph, so the trajectory is unchanged)."""

    def step(self, engine: GradientEngine, x: StepInputs) -> StepResult | None:
        grads: torch.Tensor | None = None
        source: str | None = None
        if x.watchers:
            grads, _ = engine.task_gradients(x.losses, x.rep, with_heads=False, keep_graph=True)
            grads, source = global_grads(engine.dist, grads, x.loss_scale), "params"
        if x.loss_scale is None:
            objective, weights = self.combiner.combine(global_losses(engine.dist, torch.stack(x.losses), x.detached))
            objective.backward()
        else:  # the combiner sees the true losses; only the backward is scaled
            true = torch.stack([loss / x.loss_scale for loss in x.losses])
            objective, weights = self.combiner.combine(global_losses(engine.dist, true, x.detached))
            (objective * x.loss_scale).backward()
        engine.dist.average_grads(engine.params)  # one coalesced all-reduce (combiner parameters are already global)
        return StepResult(objective.detach(), weights.detach(), grads, source)


class TaskWiseLossWeightingStep(StepStrategy):
    """G over the shared parameters, weighted by the weights of ``combine`` (evaluated at the true losses), to
    the task sink; the combiner's own parameters (e.g. UW's log-variances) get their gradient from the tiny
    combiner graph."""

    source = "params"

    def step(self, engine: GradientEngine, x: StepInputs) -> StepResult | None:
        grads, head_grads = engine.task_gradients(x.losses, x.rep, with_heads=True, keep_graph=True)
        grads = global_grads(engine.dist, grads, x.loss_scale)
        if grads is None:
            return None
        objective, weights = self.combiner.combine(global_losses(engine.dist, torch.stack(x.raw), x.detached))
        learnable = [p for p in self.combiner.parameters() if p.requires_grad]
        if learnable:
            for p, g in zip(learnable, torch.autograd.grad(objective, learnable, allow_unused=True)):
                if g is not None:
                    accumulate_grad(p, g)
        weights = weights.detach().to(grads.dtype)
        send_to_sink(engine, grads, weights)
        write_heads(engine, head_grads, weights.to(x.detached.dtype))
        engine.dist.average_grads(engine.head_params)
        return StepResult(objective.detach(), weights.detach(), grads, self.source)


class _Aggregator(StepStrategy):
    combiner: GradientAggregator

    def check_leaves(self, engine: GradientEngine, x: StepInputs) -> None:
        if engine.needs_leaves and (x.leaves is None or x.leaves is x.rep):
            raise ValueError(f"grad_source='{self.source}' with this engine needs the heads applied to engine.leaves(rep)")


class ParamsAggregationStep(_Aggregator):
    """Exact G over the shared parameters (DDP: averaged before aggregating) → ``aggregate`` → the direction
    into the shared ``.grad`` and each head's gradient times its weight."""

    source = "params"

    def step(self, engine: GradientEngine, x: StepInputs) -> StepResult | None:
        self.check_leaves(engine, x)
        grads, head_grads = engine.task_gradients(x.losses, x.rep, with_heads=True, leaves=x.leaves)
        grads = global_grads(engine.dist, grads, x.loss_scale)  # DDP: the global-batch G, before any rank aggregates it
        if grads is None:
            return None
        agg = self.combiner.aggregate(grads, x.detached)
        weights = agg_weights(agg, x.detached)
        self.write_shared(engine, agg, weights, grads, x.loss_scale)
        write_heads(engine, head_grads, weights)
        engine.dist.average_grads(engine.head_params)
        return aggregated(weights, x.detached, grads, self.source)

    def write_shared(self, engine: GradientEngine, agg: Aggregation, weights: torch.Tensor, grads: torch.Tensor,
                     loss_scale: float | None) -> None:
        assert agg.direction is not None  # only last_shared may leave it out
        write_direction(engine.shared, agg.direction, grads, loss_scale)


class TaskWiseAggregationStep(ParamsAggregationStep):
    """:class:`ParamsAggregationStep` with the per-task weighted gradients w_k ∇L_k handed to the task sink
    instead of their aggregate (combiners that declare ``provides_task_weights``)."""

    def write_shared(self, engine: GradientEngine, agg: Aggregation, weights: torch.Tensor, grads: torch.Tensor,
                     loss_scale: float | None) -> None:
        send_to_sink(engine, grads, weights)


class RepresentationAggregationStep(_Aggregator):
    """G w.r.t. the shared representation (K head passes to the leaves) → the aggregated cotangent pushed
    through the encoder by one backward; shared parameters reached after the representation (MTAN's shared
    attention) get the weighted sum of their per-task gradients.  DDP: weights from the summed Gramian."""

    source = "representation"

    def step(self, engine: GradientEngine, x: StepInputs) -> StepResult | None:
        self.check_leaves(engine, x)
        reps = as_tuple(x.rep)
        grads, head_grads, post = engine._gradient_rows(x.losses, list(as_tuple(x.leaves)), with_heads=True,
                                                        keep_graph=False, with_shared=True)
        grads, agg = self.aggregate(engine, grads, x)
        if agg is None:
            return None
        weights = agg_weights(agg, x.detached)
        assert agg.direction is not None
        direction = rescale(agg.direction, x.loss_scale)
        cot, offset = [], 0
        for r in reps:
            cot.append(direction[offset : offset + r.numel()].view_as(r).to(r.dtype))
            offset += r.numel()
        torch.autograd.backward(reps, grad_tensors=cot)
        write_heads(engine, head_grads, weights)
        for k, shared_grads in enumerate(post):  # shared parameters applied after the representation
            for p, g in zip(engine.shared, shared_grads):
                if g is not None:
                    accumulate_grad(p, g * weights[k].to(g.dtype))
        engine.dist.average_grads(engine.params)
        return aggregated(weights, x.detached, grads, self.source)

    def aggregate(self, engine: GradientEngine, grads: torch.Tensor, x: StepInputs) -> tuple[torch.Tensor, Aggregation | None]:
        """(unscaled G, aggregation), or (G, ``None``) on fp16 overflow."""
        if engine.dist.enabled:
            assert isinstance(self.combiner, GramianWeighting)  # guaranteed by GradientEngine._check_distributed
            return gramian_aggregate_ddp(self.combiner, engine.dist, grads, x.detached, x.loss_scale)
        unscaled = unscale(grads, x.loss_scale)
        if unscaled is None:
            return grads, None
        return unscaled, self.combiner.aggregate(unscaled, x.detached)


class LastSharedAggregationStep(_Aggregator):
    """G over the last shared layer (K short passes) → the aggregator's weights, applied by one backward of
    Σ_k w_k L_k through the whole model."""

    source = "last_shared"

    def step(self, engine: GradientEngine, x: StepInputs) -> StepResult | None:
        self.check_leaves(engine, x)
        grads, _, _ = engine._gradient_rows(x.losses, engine.last_shared, with_heads=False, keep_graph=True)
        grads = global_grads(engine.dist, grads, x.loss_scale)
        if grads is None:
            return None
        agg = self.combiner.aggregate(grads, x.detached)
        if agg.weights is None:
            raise ConfigError(f"combiner '{self.combiner.name}' returned no weights; it cannot use grad_source=last_shared")
        weights = agg.weights.detach()
        sum(w * loss for w, loss in zip(weights.to(x.detached.dtype), x.losses)).backward()
        engine.dist.average_grads(engine.params)
        return aggregated(weights, x.detached, grads, self.source)


@dataclass
class HeadPass:
    """Task k's pass through its head from the representation leaves (``create_graph``, so δ_k stays differentiable)."""

    deltas: list[torch.Tensor | None]  # ∂L_k/∂leaf_i, attached to the head's graph (None: leaf not read)
    own: list[nn.Parameter]  # the head parameters reached from the leaves (θ_k)
    ordinary: list[torch.Tensor]  # ∇_{θ_k} L_k, detached
    upstream: list[nn.Parameter]  # the task's parameters the leaves cut off (task modules inside the encoder)
    post: list[torch.Tensor | None]  # gradients of shared parameters applied after the representation


def head_pass(engine: GradientEngine, task: str, loss: torch.Tensor, leaves: list[torch.Tensor]) -> HeadPass:
    upstream = engine.upstream[task]  # listed first in engine.heads[task]; cut off by the leaves
    head, n = engine.heads[task][len(upstream):], len(leaves)
    g = torch.autograd.grad(loss, [*leaves, *head, *engine.shared], create_graph=True, allow_unused=True)
    own = [(p, x.detach()) for p, x in zip(head, g[n : n + len(head)]) if x is not None]
    post = [None if x is None else x.detach() for x in g[n + len(head) :]]
    return HeadPass(list(g[:n]), [p for p, _ in own], [x for _, x in own], list(upstream), post)


def encoder_rows(engine: GradientEngine, reps: Sequence[torch.Tensor], passes: list[HeadPass]) -> tuple[torch.Tensor, list[list]]:
    """G over the shared parameters (each δ_k pushed through the encoder, plus the shared parameters used after the
    representation) and the gradients of each task's upstream parameters, one encoder pass per task."""
    shared = engine.shared
    rows = torch.zeros(len(passes), engine.dim, device=reps[0].device, dtype=shared[0].dtype if shared else reps[0].dtype)
    attached = [i for i, r in enumerate(reps) if r.requires_grad]
    upstream = []
    for k, hp in enumerate(passes):
        targets = [*shared, *hp.upstream]
        g: Sequence[torch.Tensor | None] = [None] * len(targets)
        if attached and targets and any(hp.deltas[i] is not None for i in attached):
            cot = [torch.zeros_like(reps[i]) if hp.deltas[i] is None else hp.deltas[i].detach().to(reps[i].dtype) for i in attached]
            g = torch.autograd.grad([reps[i] for i in attached], targets, grad_outputs=cot, allow_unused=True,
                                    retain_graph=k < len(passes) - 1)
        both = [a if b is None else (b if a is None else a + b) for a, b in zip(g[: len(shared)], hp.post)]
        fill_rows(rows, k, shared, both)
        upstream.append(list(g[len(shared) :]))
    return rows, upstream


class HeadTermAggregationStep(_Aggregator):
    """Combiners declaring ``head_input_term`` (ConsMTL): the heads read detached leaves of the representation;
    per task one head pass with ``create_graph`` gives δ_k = ∂L_k/∂z_k (z_k: the leaves its loss reaches) and
    the head's gradient, one encoder pass the row of G over the shared parameters.  ``aggregate(G)`` gives the
    shared direction; each head gets ``head_gradient(∇L_k, ∇_{θ_k} head_terms(δ, w)[k])`` and its upstream
    parameters their ordinary gradient.  Not under DDP (refused at the first step)."""

    source = "params"

    def step(self, engine: GradientEngine, x: StepInputs) -> StepResult | None:
        self.check_leaves(engine, x)
        if engine.dist.enabled:
            raise ConfigError(f"combiner '{self.combiner.name}' adds a head-level term whose clipping needs the global-batch "
                              f"head gradients: it is not exact under DDP (world size {engine.dist.world_size}); run it on one process")
        leaves = list(as_tuple(x.leaves))
        passes = [head_pass(engine, t, loss, leaves) for t, loss in zip(engine.task_names, x.losses)]
        grads, upstream = encoder_rows(engine, as_tuple(x.rep), passes)
        grads = unscale(grads, x.loss_scale)
        if grads is None:
            return None
        agg = self.combiner.aggregate(grads, x.detached)
        weights = agg_weights(agg, x.detached)
        assert agg.direction is not None
        write_direction(engine.shared, agg.direction, grads, x.loss_scale)
        self.write_heads(passes, upstream, weights, x.loss_scale)
        return aggregated(weights, x.detached, grads, self.source)

    def write_heads(self, passes: list[HeadPass], upstream: list[list], weights: torch.Tensor, loss_scale: float | None) -> None:
        s = 1.0 if loss_scale is None else loss_scale
        deltas = [[d / s for d in hp.deltas if d is not None] for hp in passes]  # the true δ_k in fp16
        extras = self.combiner.head_terms(deltas, weights)
        for hp, ups, extra in zip(passes, upstream, extras):
            e: Sequence[torch.Tensor | None] = [None] * len(hp.own)
            if extra is not None and hp.own and extra.requires_grad:
                e = torch.autograd.grad(extra, hp.own, allow_unused=True, retain_graph=True)
            new = self.combiner.head_gradient([g / s for g in hp.ordinary], e)
            for p, g in zip(hp.own, new):
                if g is not None:
                    accumulate_grad(p, (g * s).to(p.dtype))
            for p, g in zip(hp.upstream, ups):
                if g is not None:
                    accumulate_grad(p, g)


AGGREGATION_STEPS: dict[str, type[_Aggregator]] = {
    "params": ParamsAggregationStep, "representation": RepresentationAggregationStep, "last_shared": LastSharedAggregationStep,
}


def check_task_sink(combiner: Combiner) -> None:
    """Refuse a task-wise optimizer unless the combiner declares ``provides_task_weights`` and its gradients are
    over all shared parameters (loss weightings: no gradient source; aggregators: ``params``)."""
    if combiner.provides_task_weights and combiner.grad_source in (None, "params"):
        return
    valid = sorted(n for n, c in COMBINERS.items() if issubclass(c, GradientAggregator) and c.provides_task_weights
                   and "params" in c.supported_sources)
    raise ConfigError(
        f"a task-wise optimizer needs per-task weights on gradients over all shared parameters; combiner "
        f"'{combiner.name}' (grad_source={combiner.grad_source}) does not provide them: use a loss weighting or a "
        f"gradient aggregator that declares them ({', '.join(valid)}) with grad_source=params"
    )


def choose_strategy(combiner: Combiner, task_wise: bool) -> StepStrategy:
    """The step strategy for ``combiner`` (``task_wise``: a task-wise optimizer takes the per-task gradients)."""
    if task_wise:
        check_task_sink(combiner)
    if isinstance(combiner, LossWeighting):
        return TaskWiseLossWeightingStep(combiner) if task_wise else LossWeightingStep(combiner)
    if isinstance(combiner, GradientAggregator):
        if combiner.head_input_term and not task_wise:
            return HeadTermAggregationStep(combiner)
        if task_wise:
            return TaskWiseAggregationStep(combiner)
        if combiner.grad_source not in AGGREGATION_STEPS:  # pragma: no cover - validated by Combiner.__init__
            raise ConfigError(f"unknown gradient source '{combiner.grad_source}'")
        return AGGREGATION_STEPS[combiner.grad_source](combiner)
    raise TypeError(f"unsupported combiner type {type(combiner).__name__}")
