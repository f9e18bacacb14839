"""AU / rAU task dominance of the shared parameters (Yang et al., "AdaTask: A Task-Aware Adaptive Learning
Rate Approach to Multi-Task Learning", AAAI 2023).

For every shared scalar parameter θ and task k, AU is the exponentially decaying average of the squared
update attributable to task k, and rAU its share across tasks::

    AU_k ← ρ AU_k + (1 − ρ) (Δθ_k)²,      rAU_k = AU_k / Σ_j AU_j

A parameter is *dominated* by a task when max_k rAU_k exceeds ``threshold`` (0.9); balanced parameters have
rAU_k ≈ 1/K.  Reported per shared **layer** — a module with parameters, e.g. ``encoder.net.0`` holding the
tensors ``encoder.net.0.weight`` and ``.bias`` (:func:`layer_of`) — and over all shared parameters: mean rAU per
task, the fraction of dominated parameters, the entropy of rAU normalised by log K (1 = balanced, 0 = one task)
and the layer's **max share** max_k mean rAU_k (1/K when balanced on average, → 1 when one task owns the layer).
The paper plots rAU per shared layer (dominance is strongest in the higher layers) and over training; the
summary therefore holds ``layers`` ({layer: mean_rau per task, dominated, entropy, max_share, dominant_task}),
``layer_max_share`` ({layer: max share}, the report's ``au/layer_max/<layer>``) and ``history`` (one entry per
epoch: epoch, last probe step, and the overall and per-layer mean rAU per task and dominated fraction); the
epoch records of metrics.jsonl carry the same numbers as ``au/<layer>/rau/<task>``, ``au/<layer>/dominated``,
``au/<layer>/entropy``, ``au/<layer>/max_share`` (``<layer>`` = ``all`` over every shared parameter).

Attribution Δθ_k (our reconstruction of the paper's definition, see the reference note §2.2.1):

* task-wise optimizers (AdaTask): the exact per-task updates the optimizer applies (``last_task_updates``);
* Adam/AdamW: Δθ_k = lr · m̂_k / (√v̂ + ε) — per-task first moments (the first moment is linear in the
  gradient) over the optimizer's *shared* second moment;
* SGD (momentum μ): Δθ_k = lr · m_k with m_k the per-task momentum (μ = 0: lr · g_k);
* RMSprop / Adagrad: Δθ_k = lr · g_k / (√G + ε) with the optimizer's shared accumulator G.

Cost is bounded by a cadence: per-task gradients are needed only every ``every_n_steps`` steps.  Between two
probes the per-task gradient is taken as constant, so the per-task first moment advances by
m_k ← β^N m_k + (1 − β^N) g_k (Adam; SGD analogously) and AU decays by ρ^N: exact for N = 1, an
approximation otherwise (documented in the summary).  Sign-based updates (signSGD) are not linear in the
gradient and cannot be attributed: such a run is refused with a clear error.  Memory: K floats per shared
parameter for AU (+ K for per-task moments with Adam/SGD-momentum).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from mtl_bench.diagnostics.base import Diagnostic, FigureSpec, RunContext
from mtl_bench.errors import ConfigError
from mtl_bench.optimizers import is_task_wise

SUPPORTED = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad")
ALL = "all"  # the pseudo-layer of every shared parameter


def layer_of(name: str) -> str:
    """The module a shared parameter belongs to: its name without the attribute (``encoder.net.0.weight`` →
    ``encoder.net.0``); a name without a dot is its own layer."""
    head, dot, _ = name.rpartition(".")
    return head if dot else name


def layer_index(names: Sequence[str], sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """``{layer: positions in the flat vector of shared scalars}``, layers in order of first appearance."""
    parts: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for name, n in zip(names, sizes):
        parts.setdefault(layer_of(name), []).append(torch.arange(offset, offset + n))
        offset += n
    return {layer: torch.cat(idx) for layer, idx in parts.items()}


class AUMonitor(Diagnostic):
    """Observer of the gradient engine (per-task gradients on probe steps) and of the optimizer step."""

    key = "au"

    def __init__(self, every_n_steps: int = 10, decay: float = 0.99, threshold: float = 0.9, eps: float = 1e-30):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ConfigError(f"diagnostics.au.every_n_steps must be a positive integer, got {every_n_steps!r}")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"diagnostics.au.decay must lie in [0, 1), got {decay!r}")
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"diagnostics.au.threshold must lie in (0, 1], got {threshold!r}")
        self.every, self.decay, self.threshold, self.eps = every_n_steps, decay, threshold, eps
        self.au: torch.Tensor | None = None  # K×d
        self.momentum: torch.Tensor | None = None  # K×d per-task first moments (Adam / SGD momentum)
        self._grads: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []  # per-epoch statistics (summary["au"]["history"])
        self.last_probe_step: int | None = None

    def setup(self, run: RunContext) -> None:
        self.bind(run.optimizer, run.shared_named_parameters, list(run.tasks))

    def bind(self, optimizer: torch.optim.Optimizer, shared_named: Sequence[tuple[str, torch.nn.Parameter]], task_names: Sequence[str]):
        self.optimizer = optimizer
        self.task_wise = is_task_wise(optimizer)
        kind = type(optimizer).__name__
        if not self.task_wise and kind not in SUPPORTED:
            raise ConfigError(
                f"diagnostics.au cannot attribute updates of optimizer {kind} to tasks (sign-based or unknown update); "
                f"supported: {list(SUPPORTED)} and the task-wise AdaTask optimizers"
            )
        self.kind = kind
        self.task_names = list(task_names)
        self.names = [n for n, _ in shared_named]
        self.params = [p for _, p in shared_named]
        self.sizes = [p.numel() for p in self.params]
        self.layers = layer_index(self.names, self.sizes)
        self._shared_ids = {id(p) for p in self.params}
        if self.group is None:
            raise ConfigError("diagnostics.au: the optimizer has no parameter group with the shared parameters")

    @property
    def group(self) -> dict[str, Any] | None:
        """The optimizer's parameter group of the shared parameters, looked up each time: loading optimizer state
        (a resumed run) replaces the group dicts, and a scheduler changes their learning rate."""
        return next((g for g in self.optimizer.param_groups if any(id(p) in self._shared_ids for p in g["params"])), None)

    def state_dict(self) -> dict[str, Any]:
        """The running squared-update averages, the per-task moments and the per-epoch history (checkpoints)."""
        return {"au": self.au, "momentum": self.momentum, "history": list(self.history), "last_probe_step": self.last_probe_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = self.params[0].device if getattr(self, "params", None) else "cpu"
        self.au = state["au"].to(device) if state["au"] is not None else None
        self.momentum = state["momentum"].to(device) if state["momentum"] is not None else None
        self.history = list(state["history"])
        self.last_probe_step = state.get("last_probe_step")

    # ------------------------------------------------------------------ engine observer protocol
    def probe(self, step: int) -> bool:
        return step % self.every == 0

    def wants_grads(self, step: int) -> bool:
        return self.probe(step) and not self.task_wise

    def observe(self, step: int, grads: torch.Tensor | None, task_names, losses, source) -> None:
        if grads is not None and source == "params":
            self._grads = grads.detach()

    # ------------------------------------------------------------------ optimizer hooks
    def before_step(self, step: int) -> None:
        if self.task_wise:
            self.optimizer.record_task_updates = self.probe(step)

    def after_step(self, step: int) -> None:
        if not self.probe(step):
            return
        updates = self._task_updates()
        self._grads = None
        self.last_probe_step = step
        self.last_updates = updates  # K×d signed per-task updates of this probe step (for tests and analyses)
        if updates is None:
            return
        n = self.every
        sq = updates.double() ** 2
        if self.au is None:
            self.au = torch.zeros_like(sq)
        rho = self.decay**n
        self.au.mul_(rho).add_(sq, alpha=1.0 - rho)

    def _flat_state(self, key: str) -> torch.Tensor | None:
        parts = []
        for p in self.params:
            st = self.optimizer.state.get(p, {})
            if key not in st:
                return None
            parts.append(st[key].reshape(-1))
        return torch.cat(parts)

    def _task_updates(self) -> torch.Tensor | None:
        if self.task_wise:
            upd = getattr(self.optimizer, "last_task_updates", None)
            return None if upd is None else upd.detach()
        if self._grads is None:
            return None
        g, lr, n = self._grads, self.group["lr"], self.every
        if self.kind in ("Adam", "AdamW"):
            beta1, beta2 = self.group["betas"]
            self.momentum = self._advance(self.momentum, g, beta1**n, 1.0 - beta1**n)
            v = self._flat_state("exp_avg_sq")
            step = self.optimizer.state[self.params[0]].get("step")
            t = float(step) if step is not None else 1.0
            denom = (v / (1.0 - beta2**t)).sqrt() + self.group["eps"]
            return lr * self.momentum / (1.0 - beta1**t) / denom
        if self.kind == "SGD":
            mu = self.group.get("momentum", 0.0)
            if mu == 0.0:
                return lr * g
            self.momentum = self._advance(self.momentum, g, mu**n, sum(mu**i for i in range(n)))
            return lr * self.momentum
        key = "square_avg" if self.kind == "RMSprop" else "sum"
        acc = self._flat_state(key)
        if acc is None:
            return None
        return lr * g / (acc.sqrt() + self.group["eps"])

    @staticmethod
    def _advance(m: torch.Tensor | None, g: torch.Tensor, keep: float, add: float) -> torch.Tensor:
        return add * g if m is None else keep * m + add * g

    # ------------------------------------------------------------------ statistics
    def _stats(self, au: torch.Tensor) -> dict[str, Any]:
        k = au.shape[0]
        total = au.sum(0)
        valid = total > self.eps
        rau = au[:, valid] / total[valid]
        if rau.shape[1] == 0:
            return {"mean_rau": [float("nan")] * k, "dominated": float("nan"), "entropy": float("nan")}
        ent = -(rau.clamp_min(1e-30) * rau.clamp_min(1e-30).log()).sum(0) / math.log(k) if k > 1 else torch.zeros(rau.shape[1])
        return {
            "mean_rau": rau.mean(1).tolist(),
            "dominated": float((rau.max(0).values > self.threshold).double().mean()),
            "entropy": float(ent.mean()),
        }

    def layer_stats(self) -> dict[str, dict[str, Any]]:
        """``{layer: _stats}`` per shared layer (module) and for ``all`` shared parameters; ``{}`` before a probe."""
        if self.au is None:
            return {}
        out = {layer: self._stats(self.au[:, idx]) for layer, idx in self.layers.items()}
        out[ALL] = self._stats(self.au)
        return out

    def _named(self, st: Mapping[str, Any]) -> dict[str, Any]:
        """One layer's statistics with the mean rAU per task name, its largest share and that task."""
        rau = dict(zip(self.task_names, st["mean_rau"]))
        finite = {t: v for t, v in rau.items() if math.isfinite(v)}
        top = max(finite, key=finite.get) if finite else None
        return {"mean_rau": rau, "dominated": st["dominated"], "entropy": st["entropy"],
                "max_share": finite[top] if top is not None else float("nan"), "dominant_task": top}

    def named_stats(self) -> dict[str, dict[str, Any]]:
        return {layer: self._named(st) for layer, st in self.layer_stats().items()}

    def epoch_record(self, epoch: int) -> dict[str, float]:
        """Flat ``au/<layer>/...`` metrics for metrics.jsonl / W&B, and one entry of the history."""
        stats = self.named_stats()
        if not stats:
            return {}
        self.history.append(self._history_entry(epoch, stats))
        rec: dict[str, float] = {}
        for layer, st in stats.items():
            for key in ("dominated", "entropy", "max_share"):
                rec[f"au/{layer}/{key}"] = st[key]
            for t, r in st["mean_rau"].items():
                rec[f"au/{layer}/rau/{t}"] = r
        return rec

    def _history_entry(self, epoch: int, stats: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        brief = {layer: {"mean_rau": st["mean_rau"], "dominated": st["dominated"]} for layer, st in stats.items() if layer != ALL}
        return {"epoch": epoch, "step": self.last_probe_step, "mean_rau": stats[ALL]["mean_rau"],
                "dominated": stats[ALL]["dominated"], "layers": brief}

    def summary(self) -> dict[str, Any]:
        stats = self.named_stats()
        overall = stats.pop(ALL, {})
        approx = "exact" if self.every == 1 or self.task_wise else f"per-task gradient held constant over {self.every} steps"
        return {
            "attribution": ("task-wise optimizer updates" if self.task_wise
                            else f"{self.kind}: per-task first moment / shared second moment"),
            "every_n_steps": self.every, "decay": self.decay, "threshold": self.threshold, "approximation": approx,
            "dominated_fraction": overall.get("dominated"),
            "entropy": overall.get("entropy"),
            "mean_rau": overall.get("mean_rau", {}),
            "layers": stats,
            "layer_max_share": {layer: st["max_share"] for layer, st in stats.items()},
            "history": list(self.history),
        }

    def metric_directions(self) -> dict[str, bool | None]:
        """Statistics to read, not to optimise: no direction."""
        return {f"au/*/{k}": None for k in ("dominated", "entropy", "max_share")} | {"au/*/rau/*": None}

    def panels(self) -> list[str]:
        """The whole model's rAU (tasks overlaid) and dominance statistics; per layer, each task's rAU and the dominated
        fraction with the layers overlaid."""
        return [f"au/{ALL}/rau/{{task}}", f"au/{ALL}/*", "au/{layer}/rau/*", "au/{layer}/dominated"]

    def results_line(self, entry: Mapping[str, Any]) -> str | None:
        shares = ", ".join(f"{t} {v:.3f}" for t, v in entry["mean_rau"].items())
        return (f"AU task dominance ({entry['attribution']}): {entry['dominated_fraction']:.3f} of the shared parameters "
                f"dominated (rAU > {entry['threshold']}), mean rAU {shares}, normalised entropy {entry['entropy']:.3f}")

    def figures(self, entry: Mapping[str, Any]) -> list[FigureSpec]:
        """Layers × tasks heatmap of the mean rAU (last epoch), with the dominated fraction per layer."""
        stats = self.named_stats()
        stats.pop(ALL, None)
        if not stats:
            return []
        return [FigureSpec("heatmap", "au_heatmap.png", "rau_heatmap",
                           {"stats": stats, "task_names": list(self.task_names), "kind": self.kind})]
