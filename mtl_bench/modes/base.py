"""The mode protocol: what a run trains and how (``configs/mode/<name>.yaml`` → a registered :class:`Mode`).

A mode is built once per job from the composed config (``mode._target_``; ``mode.name`` is its registry key) and
is asked, in the order the run is built:

1. ``dependencies(task_names)`` — earlier runs this one needs (transfer: its source backbone).  They are trained by
   :func:`mtl_bench.train.build_and_train` *before* this run is built, each into its own folder; a complete one is
   reused.  A dependency is a plain run (its mode has no dependencies of its own): no recursion.
2. ``roles(benchmark)`` — the tasks it trains and which of them are targets (selection, Δm and reporting use the
   targets only; the others are auxiliaries);
3. ``adapt_model(model)`` / ``adapt_combiner(combiner)`` / ``adapt_data(benchmark)`` — changes to the built parts
   before the optimizer is built (transfer: load and freeze the source encoder, equal weights, corrupted splits);
4. ``trainer_options()`` — extra keyword arguments of :class:`~mtl_bench.trainer.Trainer` (aux: post-training);
5. ``attach(trainer)`` — result hooks (transfer: the corruption evaluation);
6. ``run(trainer, build)`` — train and return the summary (default ``trainer.fit()``; ForkMerge builds branch
   trainers with ``build``).

A new mode is one file here (a subclass registered with :func:`register_mode`) and one config in
``configs/mode/`` whose ``_target_`` names the class; ``mode._target_=my_pkg.MyMode`` uses a class from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

from omegaconf import DictConfig

from mtl_bench.data.base import Benchmark
from mtl_bench.errors import ConfigError
from mtl_bench.utils import registrar


@dataclass(frozen=True)
class TaskRoles:
    """The tasks a run trains (in order) and its targets (a subset; all tasks outside auxiliary-task learning)."""

    tasks: list[str] | None  # None: every task of the dataset
    targets: list[str] | None = None  # None: every trained task


@dataclass(frozen=True)
class DependencyRun:
    """An earlier run a job needs: trained into ``output_dir`` with ``cfg`` unless complete there already."""

    name: str
    cfg: DictConfig
    output_dir: Path


class Mode:
    """Base class: multi-task learning on every task (or ``mode.tasks``), one ``trainer.fit()``."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.spec = cfg.mode
        self.trained_dependencies: list[DependencyRun] = []  # those this job's command trained (not found complete)

    def dependencies(self, task_names: Sequence[str]) -> list[DependencyRun]:
        return []

    def roles(self, benchmark: Benchmark) -> TaskRoles:
        tasks = self.spec.get("tasks")
        return TaskRoles(list(tasks) if tasks is not None else None)

    def adapt_model(self, model: Any) -> None:
        pass

    def adapt_combiner(self, combiner: Any) -> Any:
        return combiner

    def adapt_data(self, benchmark: Benchmark) -> None:
        pass

    def trainer_options(self) -> dict[str, Any]:
        return {}

    def metric_directions(self) -> dict[str, bool | None]:
        """Metric keys / glob patterns the mode logs beyond the tasks' metrics, with their directions (see
        :meth:`mtl_bench.diagnostics.base.Diagnostic.metric_directions`)."""
        return {}

    def attach(self, trainer: Any) -> None:
        pass

    def run(self, trainer: Any, build: "RunBuild") -> dict[str, Any]:
        return trainer.fit()


@dataclass
class RunBuild:
    """What a mode may need to build more trainers like the run's own (ForkMerge's branches)."""

    cfg: DictConfig
    benchmark: Benchmark
    tasks: Mapping[str, Any]
    targets: list[str]
    settings: Any
    device: Any
    dist: Any
    output_dir: Path
    directions: dict[str, bool]
    delta: Any
    transforms: Mapping[str, Any]
    make_optimizer: Callable[[Any, Any], Any]  # (model, combiner) -> optimizer, from cfg.optimizer
    make_scheduler: Callable[[Any], Any]  # optimizer -> scheduler (or None), from cfg.scheduler


MODES: dict[str, type[Mode]] = {}
M = TypeVar("M", bound=type[Mode])


register_mode: Callable[[str], Callable[[M], M]] = registrar(MODES, "mode")


def mode_class(spec: Mapping[str, Any]) -> type[Mode]:
    """The class of ``cfg.mode``: its ``_target_`` (a registered mode or any :class:`Mode` subclass)."""
    from hydra.utils import get_class

    target = spec.get("_target_")
    if not target:
        raise ConfigError(f"mode needs a _target_ (a Mode class); registered modes: {sorted(MODES)}")
    try:
        cls = get_class(str(target))
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"mode._target_={target}: cannot import it ({e}); registered modes: {sorted(MODES)}") from None
    if not (isinstance(cls, type) and issubclass(cls, Mode)):
        raise ConfigError(f"mode._target_={target} is not a mtl_bench.modes.Mode; registered modes: {sorted(MODES)}")
    return cls


def build_mode(cfg: DictConfig) -> Mode:
    return mode_class(cfg.mode)(cfg)
