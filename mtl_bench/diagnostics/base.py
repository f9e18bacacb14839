"""The diagnostic protocol: callbacks that observe training (per-task gradients, batches, optimizer steps) and
report metrics, a summary entry and figures.

A diagnostic is a ``_target_`` entry of the ``diagnostics`` config group (``configs/diagnostics/``), built by
:func:`build_diagnostics` in one loop: ``+diagnostics.my_probe._target_=my_pkg.MyProbe`` adds one without a change
to mtl_bench.  Every entry may carry ``enabled: false`` (kept in the config, not built).  The trainer, the
gradient engine, the W&B ``define_metric`` set, the results table and checkpoints learn everything they need
from the hooks below; no code names a diagnostic.

Hooks, in the order of a step (all optional: :class:`Diagnostic` implements each as a no-op):

* ``setup(run)`` once, with the built :class:`RunContext` (model, tasks, shared parameters, optimizer, ...);
* ``wants_grads(step)`` → ``observe(step, grads, task_names, losses, source)``: the engine's K×d per-task gradient
  matrix over the shared parameters (computed for the diagnostic when the combiner does not need it);
* ``observe_batch(step, x, targets)``: after the backward, for passes of its own over the batch;
* ``before_step(step)`` / ``after_step(step)``: around the optimizer step;
* ``epoch_record(epoch)``: flat metrics for the epoch record of metrics.jsonl / W&B;
* ``summary()``: the entry ``summary.json[<key>]``; ``results_line(entry)``: one line above the results table;
* ``figures(entry)``: :class:`FigureSpec` s rendered by :mod:`mtl_bench.report.run_figures` into the run folder;
* ``state_dict()`` / ``load_state_dict(state)``: checkpointed with the run (kill-and-resume is bit-identical).

``key`` names the summary entry and the checkpoint slot; ``metric_directions()`` maps the metric keys (or glob
patterns, e.g. ``au/*/dominated``) the diagnostic logs to ``True`` when higher is better, ``False`` when lower
is, ``None`` when neither (a statistic to read, not to optimise).  They reach W&B's ``define_metric`` and
``summary.json["diagnostics"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from mtl_bench.errors import ConfigError


@dataclass(frozen=True)
class RunContext:
    """What a diagnostic (or a mode) may read about the run being trained."""

    model: Any  # MultiTaskModel: model(x, task_names) -> {task: output}
    tasks: Mapping[str, Any]  # name -> Task, in the trainer's order
    targets: Sequence[str]
    optimizer: torch.optim.Optimizer
    combiner: Any
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)

    @property
    def shared_named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.model.shared_named_parameters())


@dataclass(frozen=True)
class FigureSpec:
    """A figure a diagnostic asks for: ``renderer`` (a name in :data:`mtl_bench.report.run_figures.RENDERERS`)
    draws ``data`` into ``<run folder>/<file>``; W&B gets it as ``<diagnostic key>/<name>``."""

    name: str
    file: str
    renderer: str
    data: Mapping[str, Any]


class Diagnostic:
    """Base class of diagnostics: every hook a no-op.  Subclasses set ``key`` and override what they need."""

    key: ClassVar[str] = ""

    def setup(self, run: RunContext) -> None:
        pass

    def wants_grads(self, step: int) -> bool:
        return False

    def observe(self, step: int, grads: torch.Tensor | None, task_names: Sequence[str], losses: torch.Tensor,
                source: str | None) -> None:
        pass

    def observe_batch(self, step: int, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> None:
        pass

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def epoch_record(self, epoch: int) -> dict[str, float]:
        return {}

    def metric_directions(self) -> dict[str, bool | None]:
        return {}

    def panels(self) -> list[str]:
        """Dashboard panels of its metrics (W&B views, :mod:`mtl_bench.report.wandb_views`): key templates in which a
        ``{name}`` segment is overlaid in one panel (one line per value: tasks, pair types, layers) and a ``*``
        segment makes one panel per value; e.g. ``conflict/{pair}/*/all/*``: one panel per metric and statistic
        comparing the pair types.  Default: none declared (the view then groups the logged keys by their parent)."""
        return []

    def summary(self) -> Any:
        return None

    def results_line(self, entry: Any) -> str | None:
        return None

    def figures(self, entry: Any) -> list[FigureSpec]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def _entries(node: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The enabled ``(name, options)`` entries of the ``diagnostics`` node, in config order."""
    out = []
    for name, entry in (node or {}).items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise ConfigError(f"diagnostics.{name} must be a mapping with a _target_ (a Diagnostic class); got {entry!r}")
        options = {k: v for k, v in entry.items() if k != "enabled"}
        if entry.get("enabled", True):
            out.append((str(name), options))
    return out


def build_diagnostics(node: Mapping[str, Any] | None, run: RunContext,
                      instantiate: Callable[[Any, str], Any]) -> list[Diagnostic]:
    """Instantiate every enabled entry (``instantiate(options, key)``, the config's checked instantiation), check it
    is a :class:`Diagnostic` with a unique ``key`` and set it up on ``run``."""
    built: list[Diagnostic] = []
    for name, options in _entries(node):
        diag = instantiate(options, f"diagnostics.{name}")
        if not isinstance(diag, Diagnostic):
            raise ConfigError(f"diagnostics.{name}._target_ must build a mtl_bench.diagnostics.Diagnostic, got {type(diag).__name__}")
        if not diag.key or diag.key in {d.key for d in built}:
            raise ConfigError(f"diagnostics.{name}: key {diag.key!r} is empty or used by another diagnostic")
        diag.setup(run)
        built.append(diag)
    return built


def directions_of(diagnostics: Sequence[Diagnostic]) -> dict[str, bool | None]:
    """Every diagnostic's declared metric keys / patterns with their directions."""
    out: dict[str, bool | None] = {}
    for d in diagnostics:
        out.update(d.metric_directions())
    return out
