"""Gradient-conflict probe: tasks (MTL) vs samples (STL analogue), by angle and by magnitude, per layer.

Protocol of Elich et al., "Examining Common Paradigms in Multi-Task Learning" (GCPR 2024, §4 and App. A3.2,
A5–A7; see the reference note ``seeds-elich-adatask.md`` §1.2.3).  Every ``every_n_steps`` training steps, on
the current batch and the current parameters (after the step's backward, before the optimizer step), the probe
draws at most ``max_samples`` samples and ``max_tasks`` tasks at random from its **own** ``torch.Generator``
(seeded by ``seed``; the global RNG is never consumed) and computes the per-sample, per-task gradients

    G[i, t] = ∇_φ L_t(f(x_i))      (φ: the shared parameters; L_t: task t's loss applied to sample i alone)

and compares gradient pairs:

* ``inter_task``   — same sample, two tasks: (G[i, a], G[i, b]), a < b — the MTL conflicts;
* ``inter_sample`` — same task, two samples: (G[i, t], G[j, t]), i < j — the single-task analogue;
* ``inter_task_averaged`` (App. A5) — the *batch-averaged* per-task gradients ∇_φ L_t(batch) of the drawn
  tasks, pairs of tasks.  These are exactly the per-task gradients G the gradient engine computes: on probe
  steps the probe asks the engine for them (``wants_grads``) and uses the engine's matrix — the exact
  gradients of the training step (its forward pass, BatchNorm batch statistics and dropout masks) — when the
  engine computes it over the shared parameters anyway (gradient aggregators with ``grad_source=params``, see
  ``setup(combiner=...)``) or when all tasks are drawn (then the engine's K passes reuse the training forward
  and are the cheapest way).  Otherwise (more tasks than ``max_tasks`` under a loss weighting, a
  ``last_shared``/``representation`` gradient source, loss transforms, an fp16 overflow step, or a probe used
  without the engine) the probe computes them itself: one forward pass over the whole batch with the model's
  training modes (BatchNorm batch statistics, a fresh dropout mask) and one backward pass per drawn task;
* ``inter_sample_averaged`` (App. A5) — the *task-averaged* gradient per drawn sample,
  ∇_φ (1/K) Σ_k L_k(f(x_i)) over **all** K tasks (one extra output of the per-sample pass when fewer than K
  tasks are drawn), pairs of samples.  Single-task runs: identical to ``inter_sample`` (reported as such).

The probe's passes run in the parameters' dtype without autocast, whatever ``trainer.precision`` is.

Which losses (``losses``):

* ``"raw"`` (default): the task losses as defined by the tasks; loss transforms are not applied (the probe measures
  the tasks, not the training objective);
* ``"objective"``: each task's term of the training objective, ``c_t · L_t`` for a run whose loss transform of task
  t is a positive scale ``c_t`` (``loss_transforms.<t>: {kind: scale, factor: c_t}``; tasks without a transform:
  ``c_t = 1``).  This is how a task whose loss is in other units enters the shared update (Elich et al.'s magnitude
  argument: a fixed scalar weight undoes it).  Only scale transforms have such a per-sample term; any other
  transform is refused (``ConfigError``).

For every pair the four metrics of :mod:`mtl_bench.diagnostics.gradient_stats` (``cos``, ``mag_sim``,
``sign_conflict``, ``dot``) are computed on the whole shared vector (layer ``all``) and per layer (a layer = one
shared parameter tensor, named as in ``model.shared_named_parameters()``).  Gradients are of the losses chosen by
``losses`` (above: the raw task losses by default).

Per-sample gradients (``per_sample``):

* ``vmap``: ``torch.func`` — ``vmap(jacrev(losses))`` over the drawn samples with ``functional_call`` (one
  vectorised forward, the per-task backward passes batched); with ``bn_mode="batch"``: one forward of the
  sub-batch and one backward with a batch of one-hot cotangents (``is_grads_batched``);
* ``loop``: one forward per sample (``bn_mode="eval"``) or one shared forward of the sub-batch
  (``bn_mode="batch"``) and one backward pass per (sample, task);
* ``auto`` (default): ``vmap``, falling back to ``loop`` for the rest of the run (logged once) when the model or
  a loss has no batching rule or data-dependent control flow.  ``vmap`` forced and unsupported raises a
  ``ConfigError``.

BatchNorm (``bn_mode``):

* ``"eval"`` (default): the probe's forward runs BatchNorm in eval mode (running statistics), so a sample's
  gradient does not depend on the other samples (a true per-sample gradient, vmap-able); every other module
  keeps the model's mode (dropout stays active, with independent masks per sample).  Early in training the
  running statistics lag behind the batch statistics, so these gradients can differ markedly from the
  training step's;
* ``"batch"``: BatchNorm in train mode with the statistics of the drawn sub-batch (as the training step, but on
  ``max_samples`` samples): per-sample losses come from one shared forward, and each sample's gradient includes
  BatchNorm's coupling between the samples of the sub-batch.

Either way the probe never changes the training trajectory: every buffer (BatchNorm running statistics and
``num_batches_tracked``) is restored, the CPU and CUDA torch RNG states are restored (dropout), ``.grad`` is never
written (``torch.autograd.grad`` / ``torch.func`` only), and every module's train/eval mode is restored.

Cost of a probe step (n drawn samples, m drawn tasks, d shared parameters, batch B):

* per-sample gradients: n·m sample-level backward passes (``vmap``: batched; ``bn_mode="batch"``: each through
  the n-sample graph, ≈ n× the FLOPs), memory n·m·d floats;
* pair metrics: per layer one Gram matrix of the N = n·m + n + m stacked vectors and one product of their 0/1
  sign indicators, O(N²·d) multiply-adds;
* batch-averaged per-task gradients (``inter_task_averaged``): free under a gradient aggregator; under a loss
  weighting the engine's K per-task passes (or the probe's forward + m passes), i.e. K full-batch backward passes
  — the dominant cost for large batches.  ``averaged_every_n_steps`` (rounded up to a multiple of ``every_n_steps``; default:
  every probe step) computes them on fewer probe steps; ``averaged=False`` turns both averaged variants off.

Per-sample costs do not grow with the batch, so the relative overhead falls as B grows; values stay on the
device until the epoch ends (one host transfer per epoch).  Measured overheads: ``scripts/bench_conflicts.py``.

Metrics (``epoch_record``, merged into the epoch's metrics record): over all pairs seen in the epoch, for every
pair type, metric and layer (``all`` + one per shared parameter tensor)::

    conflict/{pair_type}/{metric}/{layer}/{mean|std|p2.5|p97.5}
    conflict/{pair_type}/cos/{layer}/{supporting|conflicting}_{count|fraction|mean}   (cos > 0 | cos < 0)
    conflict/{pair_type}/n_pairs          conflict/probe_steps

``pair_type`` ∈ inter_task, inter_sample, inter_task_averaged, inter_sample_averaged; ``metric`` ∈ cos, mag_sim,
sign_conflict, dot.  A pair type with no pairs in the epoch (one task: no inter-task pairs) has no keys.
``per_layer=False`` keeps only the ``all`` keys (per-layer statistics are still computed for the plots).

Distributions (``summary()["histograms"]``): over all pairs of the run (every epoch), per pair type and metric,
the counts of the whole-vector values in ``histogram_bins`` equal bins of a fixed range — ``cos`` on [−1, 1],
``mag_sim`` and ``sign_conflict`` on [0, 1] — as :func:`histogram` computes them (bins ``[e_k, e_{k+1})``, the last
bin closed, NumPy's convention), so runs, seeds and arms can be pooled by adding counts and compared bin by bin.
``label`` (free text, recorded in ``summary()["settings"]``) names the study setting a run belongs to: the report's
conflict-distribution figure (:mod:`mtl_bench.report.conflict_plots`) draws the MTL and STL runs of one label side
by side.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mtl_bench.diagnostics.base import Diagnostic, FigureSpec, RunContext
from mtl_bench.diagnostics.gradient_stats import METRICS, gram_pair_metrics, group_pairs, row_statistics
from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.optimizers import is_task_wise

log = logging.getLogger(__name__)

PAIR_TYPES = ("inter_task", "inter_sample", "inter_task_averaged", "inter_sample_averaged")
BN_MODES = ("eval", "batch")
PER_SAMPLE = ("auto", "vmap", "loop")
LOSSES = ("raw", "objective")
HISTOGRAM_RANGES = {"cos": (-1.0, 1.0), "mag_sim": (0.0, 1.0), "sign_conflict": (0.0, 1.0)}
PREFIX = "conflict"
ALL_LAYERS = "all"  # the pseudo-layer of every shared parameter
_VMAP_ERRORS = (RuntimeError, NotImplementedError)


def _positive_int(key: str, value: Any, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"diagnostics.conflicts.{key} must be an integer >= {minimum}{why}, got {value!r}")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"diagnostics.conflicts.{key} must be true or false, got {value!r}")
    return value


def histogram(values: np.ndarray, metric: str, bins: int) -> dict[str, Any]:
    """Counts of the finite ``values`` of ``metric`` in ``bins`` equal bins of :data:`HISTOGRAM_RANGES`:
    ``{"range": [lo, hi], "counts": [...], "n": finite values, "outside": finite values outside the range,
    "nonfinite": the others}``.  Bin k is ``[lo + k·w, lo + (k+1)·w)``, the last one also holds ``hi``."""
    lo, hi = HISTOGRAM_RANGES[metric]
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    counts = np.histogram(finite, bins=bins, range=(lo, hi))[0]
    return {"range": [lo, hi], "counts": [int(c) for c in counts], "n": int(finite.size),
            "outside": int(finite.size - counts.sum()), "nonfinite": int(v.size - finite.size)}


def scale_factor(task: str, transform: Any) -> float:
    """The factor ``c`` of a transform that is ``L ↦ c·L`` with ``c > 0`` (checked on a few losses in float64);
    a ``ConfigError`` for any other transform (``losses="objective"`` has no per-sample term for it)."""
    grid = torch.tensor([0.25, 1.0, 3.0, 40.0], dtype=torch.float64)
    try:
        ratios = transform(grid) / grid
    except (TypeError, RuntimeError, ValueError):
        ratios = torch.full_like(grid, math.nan)
    c = float(ratios[0])
    if not (math.isfinite(c) and c > 0 and torch.allclose(ratios, torch.full_like(ratios, c), rtol=1e-9, atol=0.0)):
        raise ConfigError(f"diagnostics.conflicts.losses='objective' needs scale transforms (c·L); task '{task}' has "
                          "another loss transform: use losses=raw")
    return c


class ConflictProbe(Diagnostic):
    """Monitor of the trainer (``observe_batch``, ``epoch_record``, ``summary``, ``figures``) and gradient
    observer of the engine (``wants_grads``/``observe``).  See the module docstring for the protocol.

    ``every_n_steps``: probe cadence (global steps ≡ 0 mod N); ``max_samples`` / ``max_tasks`` (≥ 2): at most
    this many samples / tasks drawn per probe step; ``bn_mode``: ``eval`` | ``batch``; ``seed``: of the probe's
    own generator; ``per_sample``: ``auto`` | ``vmap`` | ``loop``; ``averaged``: also the App. A5 averaged
    variants; ``per_layer``: per-layer keys in the epoch record; ``averaged_every_n_steps``: cadence of the
    batch-averaged per-task gradients (a multiple of ``every_n_steps``; ``None``: every probe step); ``losses``:
    ``raw`` | ``objective`` (the tasks' terms of the objective under scale transforms); ``histogram_bins``: bins of
    the summary's distributions; ``label``: the study setting the run belongs to (for the report's figure);
    ``figures``: the run's own figures (drawn by :mod:`mtl_bench.report.run_figures`; 1-2 s of CPU for a 45-layer
    encoder).

    Build it from the ``diagnostics`` config group (``setup(run)``), or call ``bind(model, tasks,
    shared_named_parameters)``; the trainer passes it to the engine as a gradient observer."""

    key = "conflicts"

    def __init__(
        self,
        every_n_steps: int = 5,
        max_samples: int = 8,
        max_tasks: int = 8,
        bn_mode: str = "eval",
        seed: int = 0,
        per_sample: str = "auto",
        averaged: bool = True,
        per_layer: bool = True,
        averaged_every_n_steps: int | None = None,
        losses: str = "raw",
        histogram_bins: int = 40,
        label: str | None = None,
        figures: bool = True,
    ):
        self.every = _positive_int("every_n_steps", every_n_steps, 1)
        self.max_samples = _positive_int("max_samples", max_samples, 2, " (inter-sample pairs need two samples)")
        self.max_tasks = _positive_int("max_tasks", max_tasks, 2, " (inter-task pairs need two tasks)")
        self.bn_mode = check_choice("diagnostics.conflicts.bn_mode", bn_mode, BN_MODES)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"diagnostics.conflicts.seed must be an integer, got {seed!r}")
        self.seed = seed
        self.per_sample = check_choice("diagnostics.conflicts.per_sample", per_sample, PER_SAMPLE)
        self.averaged = _flag("averaged", averaged)
        self.per_layer = _flag("per_layer", per_layer)
        if averaged_every_n_steps is None:
            averaged_every_n_steps = self.every
        _positive_int("averaged_every_n_steps", averaged_every_n_steps, 1)
        if averaged_every_n_steps % self.every:  # the averaged variant runs on probe steps: round up to one
            averaged_every_n_steps = -(-averaged_every_n_steps // self.every) * self.every
        self.averaged_every = averaged_every_n_steps
        self.losses = check_choice("diagnostics.conflicts.losses", losses, LOSSES)
        self.histogram_bins = _positive_int("histogram_bins", histogram_bins, 1)
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"diagnostics.conflicts.label must be a string or null, got {label!r}")
        self.label = label
        self.draw_figures = _flag("figures", figures)
        self.loss_scales: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.method: str | None = None if per_sample == "auto" else per_sample  # None: not decided yet (auto)
        self.fallback_reason: str | None = None
        self._buffers: dict[str, list[torch.Tensor]] = {p: [] for p in PAIR_TYPES}
        self._epoch_probes = 0
        self._engine: tuple[int, torch.Tensor, list[str]] | None = None
        self.averaged_source = {"engine": 0, "probe": 0}
        self._pair_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, dict[str, int]]] = {}
        self.probe_steps = 0
        self.history: list[dict[str, Any]] = []  # per epoch: {"epoch", "record"} (the flat epoch record)
        self._all_values: dict[str, list[np.ndarray]] = {p: [] for p in PAIR_TYPES}  # whole-vector values, all epochs
        self.model: nn.Module | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, run: RunContext) -> None:
        self.bind(run.model, run.tasks, run.shared_named_parameters, transforms=run.transforms, combiner=run.combiner,
                  optimizer=run.optimizer)

    def bind(
        self,
        model: nn.Module,
        tasks: Mapping[str, Any],
        shared_named_parameters: Sequence[tuple[str, nn.Parameter]],
        *,
        transforms: Mapping[str, Any] | None = None,
        combiner: Any = None,
        optimizer: Any = None,
    ) -> None:
        """Bind the probe to a model (``model(x, task_names) -> {task: output}``), its tasks (name → ``Task``,
        in the trainer's order) and the shared parameters.  ``transforms``: the run's loss transforms (if any
        task has one, the engine's per-task gradients are those of the transformed losses and the probe computes
        the batch-averaged gradients of the raw losses itself).  ``combiner`` / ``optimizer``: when the combiner is
        a gradient aggregator with ``grad_source="params"`` or the optimizer is task-wise (AdaTask), the engine
        computes the per-task gradients anyway and the probe always takes them from it (without them it asks the
        engine only when all tasks are drawn)."""
        if not tasks:
            raise ConfigError("diagnostics.conflicts needs at least one task")
        named = list(shared_named_parameters)
        if not named:
            raise ConfigError("diagnostics.conflicts: the model has no shared parameters to probe")
        self.model = model
        self.tasks = dict(tasks)
        self.task_names = list(self.tasks)
        self.layer_names = [n for n, _ in named]
        if len(set(self.layer_names)) != len(self.layer_names):
            raise ConfigError(f"diagnostics.conflicts: shared parameter names are not unique: {self.layer_names}")
        self.params = [p for _, p in named]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self._shared_ids = {id(p) for p in self.params}
        model_names = {id(p): n for n, p in model.named_parameters()}
        missing = [n for n, p in named if id(p) not in model_names]
        if missing:
            raise ConfigError(f"diagnostics.conflicts: shared parameters {missing} are not parameters of the model")
        self._fc_names = [model_names[id(p)] for p in self.params]  # names for torch.func.functional_call
        engine_params = getattr(model, "shared_parameters", lambda: [])()
        self.engine_layout = [id(p) for p in engine_params] == [id(p) for p in self.params]
        self.transformed = sorted(transforms) if transforms else []
        if self.losses == "objective":
            self.loss_scales = {t: scale_factor(t, fn) for t, fn in (transforms or {}).items()}
        source = getattr(combiner, "grad_source", None)
        self.engine_computes_grads = (hasattr(combiner, "aggregate") and source == "params") or is_task_wise(optimizer)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def probe(self, step: int) -> bool:
        return step % self.every == 0

    def _batch_averaged_step(self, step: int) -> bool:
        """Whether this step computes the batch-averaged per-task gradients (``inter_task_averaged``)."""
        return self.averaged and self.num_tasks >= 2 and step % self.averaged_every == 0

    def _drawn_tasks(self) -> int:
        return min(self.max_tasks, self.num_tasks)

    # ------------------------------------------------------------------ engine observer protocol
    def _engine_usable(self) -> bool:
        # the engine's per-task gradients are those of the objective's terms: the probe's own under losses=objective
        return self.engine_layout and (not self.transformed or self.losses == "objective")

    def wants_grads(self, step: int) -> bool:
        """Ask the engine for the batch-averaged per-task gradients on probe steps when it is the cheapest route."""
        if self.model is None or not (self._batch_averaged_step(step) and self._engine_usable()):
            return False
        return self.engine_computes_grads or self._drawn_tasks() == self.num_tasks

    def observe(self, step: int, grads: torch.Tensor | None, task_names: Sequence[str], losses: Any, source: str | None) -> None:
        if grads is not None and source == "params" and grads.shape[-1] == self.dim and self._engine_usable():
            self._engine = (step, grads, list(task_names))

    # ------------------------------------------------------------------ the probe step
    def observe_batch(self, step: int, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> None:
        """On probe steps: draw samples and tasks, compute the gradients and buffer the pair metrics."""
        engine, self._engine = self._engine, None
        if not self.probe(step):
            return
        if self.model is None:
            raise RuntimeError("ConflictProbe.setup(run) or .bind(model, tasks, shared_named_parameters) must be called before training")
        batch = x.shape[0]
        n, m, k = min(self.max_samples, batch), self._drawn_tasks(), self.num_tasks
        rows = torch.randperm(batch, generator=self.generator)[:n].sort().values
        drawn = [self.task_names[i] for i in torch.randperm(k, generator=self.generator)[:m].sort().values.tolist()]
        rows = rows.to(x.device)
        xs = x.index_select(0, rows)
        ys = {t: targets[t].index_select(0, rows) for t in self.task_names}
        extra = self.averaged and m < k  # task-averaged gradient over all K tasks as one more output
        with self._isolated():
            per_sample = self._per_sample_grads(xs, ys, drawn, extra)  # (n, m [+1], d)
            batch_avg = None
            if self._batch_averaged_step(step):
                if engine is not None and engine[0] == step:
                    index = torch.tensor([engine[2].index(t) for t in drawn], device=engine[1].device)
                    batch_avg = engine[1].detach().index_select(0, index).to(per_sample.dtype)
                    self.averaged_source["engine"] += 1
                else:
                    batch_avg = self._batch_averaged(x, targets, drawn)
                    self.averaged_source["probe"] += 1
        with torch.no_grad():
            vectors = [per_sample[:, :m].reshape(n * m, self.dim)]
            avg_sample = self.averaged and n >= 2 and k > 1
            if avg_sample:
                vectors.append(per_sample[:, m] if extra else per_sample.mean(1))
            if batch_avg is not None:
                vectors.append(batch_avg)
            first, second, counts = self._pairs(n, m, avg_sample, batch_avg is not None, per_sample.device)
            values = gram_pair_metrics(torch.cat(vectors) if len(vectors) > 1 else vectors[0], self.sizes, first, second)
            for ptype, part in zip(counts, torch.split(values, list(counts.values()), dim=1)):
                self._buffers[ptype].append(part)
            if self.averaged and k == 1 and n >= 2:  # the task average of one task is that task's gradient
                self._buffers["inter_sample_averaged"].append(self._buffers["inter_sample"][-1])
        self._epoch_probes += 1
        self.probe_steps += 1

    def _pairs(self, n: int, m: int, avg_sample: bool, avg_task: bool, device) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """Row-index pairs into the stacked vectors [per-sample rows i·m + t (n·m), task-averaged rows (n),
        batch-averaged rows (m)] for every pair type, cached per layout."""
        key = (n, m, avg_sample, avg_task, str(device))
        if key not in self._pair_cache:
            parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            if m >= 2:
                parts["inter_task"] = group_pairs(n, m)  # groups = samples, members = tasks
            if n >= 2:
                a, b = group_pairs(m, n)  # groups = tasks, members = samples: row of (sample i, task t) is i·m + t
                parts["inter_sample"] = ((a % n) * m + a // n, (b % n) * m + b // n)
            offset = n * m
            if avg_sample:
                a, b = group_pairs(1, n)
                parts["inter_sample_averaged"] = (a + offset, b + offset)
                offset += n
            if avg_task:
                a, b = group_pairs(1, m)
                parts["inter_task_averaged"] = (a + offset, b + offset)
            first = torch.cat([p[0] for p in parts.values()]).to(device)
            second = torch.cat([p[1] for p in parts.values()]).to(device)
            self._pair_cache[key] = (first, second, {t: p[0].numel() for t, p in parts.items()})
        return self._pair_cache[key]

    @contextlib.contextmanager
    def _isolated(self) -> Iterator[None]:
        """Restore buffers, RNG streams and module modes afterwards: the probe leaves no trace in training."""
        model = self.model
        modes = [(mod, mod.training) for mod in model.modules()]
        saved = [(b, b.detach().clone()) for b in model.buffers()]
        cpu_rng = torch.get_rng_state()
        device = self.params[0].device  # (the model may have moved since setup)
        cuda = device.type == "cuda"
        cuda_rng = torch.cuda.get_rng_state(device) if cuda else None
        try:
            yield
        finally:
            with torch.no_grad():
                for b, s in saved:
                    b.copy_(s)
            for mod, training in modes:
                mod.training = training
            torch.set_rng_state(cpu_rng)
            if cuda:
                torch.cuda.set_rng_state(cuda_rng, device)

    @contextlib.contextmanager
    def _bn_eval(self) -> Iterator[None]:
        bns = [mod for mod in self.model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
        modes = [mod.training for mod in bns]
        try:
            for mod in bns:
                mod.training = False
            yield
        finally:
            for mod, training in zip(bns, modes):
                mod.training = training

    # ------------------------------------------------------------------ per-sample gradients
    def _per_sample_grads(self, xs: torch.Tensor, ys: Mapping[str, torch.Tensor], drawn: list[str], extra: bool) -> torch.Tensor:
        """``(n, r, d)``: row (i, j) is ∇_φ of sample i's j-th loss (drawn tasks, then the all-task mean if ``extra``)."""
        heads = self.task_names if extra else drawn
        ctx = self._bn_eval() if self.bn_mode == "eval" else contextlib.nullcontext()
        with ctx, torch.enable_grad():
            if self.method in (None, "vmap"):
                try:
                    fn = self._vmap_eval if self.bn_mode == "eval" else self._batched_backward
                    grads = fn(xs, ys, drawn, heads, extra)
                    self.method = "vmap"
                    return grads
                except _VMAP_ERRORS as e:
                    self._fall_back(e)
            return (self._loop_eval if self.bn_mode == "eval" else self._loop_batch)(xs, ys, drawn, heads, extra)

    def _fall_back(self, error: BaseException) -> None:
        text = str(error).strip()
        reason = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        if self.per_sample == "vmap":
            raise ConfigError(
                f"diagnostics.conflicts.per_sample='vmap' is not supported by this model or its losses ({reason}); "
                f"use per_sample=auto or loop"
            ) from error
        log.warning("conflict probe: vectorised per-sample gradients are not supported by this model or its losses (%s); "
                    "using one backward pass per (sample, task) for the rest of the run", reason)
        self.method, self.fallback_reason = "loop", reason

    def _sample_losses(self, out: Mapping[str, torch.Tensor], ys: Mapping[str, torch.Tensor], drawn: list[str],
                       heads: list[str], extra: bool, index: int | None = None) -> torch.Tensor:
        """The loss vector of one sample: the drawn tasks (+ the mean over all tasks if ``extra``).  ``index``
        slices sample ``index`` out of batched outputs and targets; ``None``: they are one sample's already."""
        pick = (lambda v: v) if index is None else (lambda v: v[index : index + 1])
        losses = {t: self._loss(t, pick(out[t]), pick(ys[t])) for t in heads}
        values = [losses[t] for t in drawn]
        if extra:
            values.append(sum(losses[t] for t in self.task_names) / self.num_tasks)
        dtype = self.params[0].dtype
        return torch.stack([v.reshape(()).to(dtype) for v in values])

    def _loss(self, task: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Task ``task``'s loss, times its scale under ``losses="objective"``."""
        loss = self.tasks[task].loss(out, target)
        scale = self.loss_scales.get(task)
        return loss if scale is None else loss * scale

    def _fill(self, row: torch.Tensor, grads: Sequence[torch.Tensor | None]) -> None:
        """Write per-parameter gradients into a flat d-vector (zeros where a parameter is unused)."""
        for dst, g in zip(torch.split(row, self.sizes), grads):
            if g is None:
                dst.zero_()
            else:
                dst.copy_(g.reshape(-1))

    def _vmap_eval(self, xs, ys, drawn, heads, extra) -> torch.Tensor:
        from torch.func import functional_call, jacrev, vmap

        model = self.model
        shared = {name: p.detach() for name, p in zip(self._fc_names, self.params)}
        frozen = {name: p.detach() for name, p in model.named_parameters() if id(p) not in self._shared_ids}
        head_targets = {t: ys[t] for t in heads}

        def losses(params, x, y):
            out = functional_call(model, (params, frozen), (x.unsqueeze(0), heads))
            return self._sample_losses(out, {t: v.unsqueeze(0) for t, v in y.items()}, drawn, heads, extra)

        with torch.no_grad():  # no graph at the outer level (torch.func transforms ignore an outer no_grad)
            jac = vmap(jacrev(losses), in_dims=(None, 0, 0), randomness="different")(shared, xs, head_targets)
        n = xs.shape[0]
        return torch.cat([jac[name].reshape(n, -1, size) for name, size in zip(self._fc_names, self.sizes)], dim=2)

    def _loop_eval(self, xs, ys, drawn, heads, extra) -> torch.Tensor:
        n = xs.shape[0]
        rows = self.params[0].new_empty(n, len(drawn) + extra, self.dim)
        for i in range(n):
            out = self.model(xs[i : i + 1], heads)
            losses = self._sample_losses(out, {t: ys[t][i : i + 1] for t in heads}, drawn, heads, extra)
            for j in range(losses.shape[0]):
                self._fill(rows[i, j], torch.autograd.grad(losses[j], self.params, retain_graph=j < losses.shape[0] - 1,
                                                           allow_unused=True))
        return rows

    def _batch_losses(self, xs, ys, drawn, heads, extra) -> torch.Tensor:
        out = self.model(xs, heads)  # train-mode BatchNorm: statistics of the drawn sub-batch
        return torch.stack([self._sample_losses(out, ys, drawn, heads, extra, index=i) for i in range(xs.shape[0])])

    def _batched_backward(self, xs, ys, drawn, heads, extra) -> torch.Tensor:
        losses = self._batch_losses(xs, ys, drawn, heads, extra)
        n, r = losses.shape
        eye = torch.eye(n * r, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(losses.reshape(-1), self.params, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
        return torch.cat([(g.reshape(n, r, size) if g is not None else p.new_zeros(n, r, size))
                          for g, p, size in zip(grads, self.params, self.sizes)], dim=2)

    def _loop_batch(self, xs, ys, drawn, heads, extra) -> torch.Tensor:
        losses = self._batch_losses(xs, ys, drawn, heads, extra)
        n, r = losses.shape
        rows = self.params[0].new_empty(n, r, self.dim)
        for i in range(n):
            for j in range(r):
                last = i == n - 1 and j == r - 1
                self._fill(rows[i, j], torch.autograd.grad(losses[i, j], self.params, retain_graph=not last, allow_unused=True))
        return rows

    def _batch_averaged(self, x, targets, drawn) -> torch.Tensor:
        """``(m, d)``: ∇_φ L_t(batch) of the drawn tasks with the model's training modes (the engine's definition)."""
        rows = self.params[0].new_empty(len(drawn), self.dim)
        with torch.enable_grad():
            out = self.model(x, drawn)
            for j, t in enumerate(drawn):
                loss = self._loss(t, out[t], targets[t])
                self._fill(rows[j], torch.autograd.grad(loss, self.params, retain_graph=j < len(drawn) - 1, allow_unused=True))
        return rows

    # ------------------------------------------------------------------ statistics
    def _layers(self) -> list[str]:
        return [*self.layer_names, ALL_LAYERS]

    def epoch_record(self, epoch: int) -> dict[str, float]:
        """Statistics over all pairs of the epoch (keys: module docstring); resets the epoch buffers."""
        full: dict[str, float] = {f"{PREFIX}/probe_steps": self._epoch_probes}
        layers = self._layers()
        for ptype in PAIR_TYPES:
            parts = self._buffers[ptype]
            if not parts:
                continue
            values = torch.cat(parts, dim=1).to("cpu", torch.float64).numpy()  # (L + 1, P, 4)
            self._all_values[ptype].append(values[-1].copy())
            full[f"{PREFIX}/{ptype}/n_pairs"] = values.shape[1]
            for k, metric in enumerate(METRICS):
                for name, column in row_statistics(values[:, :, k], split=metric == "cos").items():
                    for layer, v in zip(layers, column):
                        full[f"{PREFIX}/{ptype}/{metric}/{layer}/{name}"] = v
            bad = int((~np.isfinite(values)).sum())
            if bad:
                log.warning("conflict probe: %d non-finite %s pair values in epoch %d (left out of the statistics)", bad, ptype, epoch)
        self.history.append({"epoch": epoch, "record": full})
        self._buffers = {p: [] for p in PAIR_TYPES}
        self._epoch_probes = 0
        if self.per_layer:
            return dict(full)
        return {k: v for k, v in full.items() if k.count("/") < 4 or k.split("/")[3] == ALL_LAYERS}

    @staticmethod
    def _whole(record: Mapping[str, float], ptype: str) -> dict[str, Any]:
        out: dict[str, Any] = {"n_pairs": record.get(f"{PREFIX}/{ptype}/n_pairs", 0)}
        for metric in METRICS:
            prefix = f"{PREFIX}/{ptype}/{metric}/all/"
            out[metric] = {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}
        return out

    def _run_values(self) -> dict[str, np.ndarray]:
        """Whole-vector pair values of the run so far, ``(P, 4)`` per pair type that has pairs."""
        return {p: np.concatenate(v, axis=0) for p, v in self._all_values.items() if v}

    def histograms(self) -> dict[str, dict[str, Any]]:
        """``{pair_type: {metric: histogram}}`` over all pairs of the run (:func:`histogram`, fixed bins)."""
        return {ptype: {metric: histogram(values[:, METRICS.index(metric)], metric, self.histogram_bins)
                        for metric in HISTOGRAM_RANGES}
                for ptype, values in self._run_values().items()}

    def summary(self) -> dict[str, Any]:
        last = self.history[-1]["record"] if self.history else {}
        all_epochs: dict[str, Any] = {}
        for ptype, values in self._run_values().items():
            entry: dict[str, Any] = {"n_pairs": values.shape[0]}
            for k, metric in enumerate(METRICS):
                stats = row_statistics(values[None, :, k], split=metric == "cos")
                entry[metric] = {name: col[0] for name, col in stats.items()}
            all_epochs[ptype] = entry
        bn = ("BatchNorm in eval mode (running statistics): per-sample gradients independent of the other samples"
              if self.bn_mode == "eval" else
              "BatchNorm in train mode with the statistics of the drawn sub-batch: per-sample gradients include "
              "BatchNorm's coupling between the drawn samples")
        return {
            "settings": {"every_n_steps": self.every, "max_samples": self.max_samples, "max_tasks": self.max_tasks,
                         "bn_mode": self.bn_mode, "seed": self.seed, "per_sample": self.per_sample,
                         "averaged": self.averaged, "per_layer": self.per_layer, "averaged_every_n_steps": self.averaged_every,
                         "losses": self.losses, "loss_scales": dict(self.loss_scales), "histogram_bins": self.histogram_bins,
                         "label": self.label, "figures": self.draw_figures},
            "bn_mode": self.bn_mode,
            "bn_semantics": bn + "; running statistics, RNG streams, module modes and .grad are left untouched",
            "per_sample_method": self.method,
            "per_sample_fallback_reason": self.fallback_reason,
            "batch_averaged_source": dict(self.averaged_source),
            "probe_steps": self.probe_steps,
            "key_scheme": f"{PREFIX}/{{pair_type}}/{{metric}}/{{layer}}/{{statistic}}",
            "conventions": {
                "cos": "0 if either gradient is zero; conflicting: cos < 0, supporting: cos > 0",
                "mag_sim": "2|g||g'|/(|g|^2+|g'|^2); 1 if both gradients are zero",
                "sign_conflict": "fraction of all coordinates with strictly opposite signs (zeros never conflict)",
                "std": "population (ddof=0)", "percentiles": "linear interpolation (numpy default)",
            },
            "last_epoch": {p: self._whole(last, p) for p in PAIR_TYPES if f"{PREFIX}/{p}/n_pairs" in last},
            "all_epochs": all_epochs,
            "histograms": self.histograms(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs for identical statistics: the sampling generator, the per-sample
        method chosen, this epoch's pair values so far and the earlier epochs' records."""
        return {
            "generator": self.generator.get_state(), "method": self.method, "fallback_reason": self.fallback_reason,
            "probe_steps": self.probe_steps, "epoch_probes": self._epoch_probes, "averaged_source": dict(self.averaged_source),
            "buffers": {p: [t.detach().cpu() for t in v] for p, v in self._buffers.items()},
            "history": [{"epoch": h["epoch"], "record": dict(h["record"])} for h in self.history],
            "all_values": {p: [torch.from_numpy(a) for a in v] for p, v in self._all_values.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.method, self.probe_steps = state["method"], state["probe_steps"]
        if "buffers" not in state:  # a state written before full checkpoints: generator and method only
            return
        self.fallback_reason, self._epoch_probes = state["fallback_reason"], state["epoch_probes"]
        self.averaged_source = dict(state["averaged_source"])
        device = self.params[0].device if getattr(self, "params", None) else "cpu"
        self._buffers = {p: [t.to(device) for t in v] for p, v in state["buffers"].items()}
        self.history = [{"epoch": h["epoch"], "record": dict(h["record"])} for h in state["history"]]
        self._all_values = {p: [t.numpy() for t in v] for p, v in state["all_values"].items()}

    # ------------------------------------------------------------------ protocol: directions, figures
    def metric_directions(self) -> dict[str, bool | None]:
        """Statistics of pair populations (to compare, not to optimise): no direction."""
        return {f"{PREFIX}/*": None}

    def panels(self) -> list[str]:
        """Whole network: every statistic with the pair types (inter-task, inter-sample, averaged) in one panel; per
        shared layer: the mean of each metric and pair type, layers overlaid."""
        return [f"{PREFIX}/{{pair}}/*/{ALL_LAYERS}/*", f"{PREFIX}/*/*/{{layer}}/mean"]

    def figures(self, entry: Any) -> list[FigureSpec]:
        """The run's pair statistics over the epochs and per shared layer (last epoch), unless ``figures=false``."""
        if not self.draw_figures or not any(f"{PREFIX}/{p}/n_pairs" in h["record"] for h in self.history for p in PAIR_TYPES):
            return []
        data = {"history": self.history, "layers": self.layer_names, "every": self.every, "bn_mode": self.bn_mode}
        return [FigureSpec("epochs", "conflicts_epochs.png", "conflict_epochs", data),
                FigureSpec("layers", "conflicts_layers.png", "conflict_layers", data)]
