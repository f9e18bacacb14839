"""Building a run's components from its composed config, in the order that fixes their random initialisation:
dataset → the mode's tasks and targets → network → combiner → (the mode's data changes) → optimizer, scheduler and
loss transforms; then the metric directions, Δm and the model selector.  Every ``_target_`` is instantiated through
:func:`instantiate_checked`, which turns our own errors back into one-line messages."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig

from mtl_bench.combiners import COMBINERS, Combiner
from mtl_bench.config.schema import TrainerConf
from mtl_bench.data.base import Benchmark
from mtl_bench.distributed import DistContext
from mtl_bench.errors import ConfigError, MTLBenchError
from mtl_bench.loss_transforms import build_transforms
from mtl_bench.metrics.delta_tracking import build_delta_m
from mtl_bench.models.mtl_model import MultiTaskModel, build_model
from mtl_bench.modes import Mode
from mtl_bench.optim import build_optimizer, build_scheduler
from mtl_bench.run_summary import metric_directions
from mtl_bench.selection import ModelSelector
from mtl_bench.tasks import Task
from mtl_bench.utils import configure_determinism, resolve_device, resolve_num_threads, seed_everything

log = logging.getLogger("mtl_bench")


def instantiate_checked(node: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that turns our own errors back into one-line messages."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, MTLBenchError):
            raise cause from None
        raise ConfigError(f"{key}: {str(e).splitlines()[0]} {cause or ''}".strip()) from e


def resolve_function(path: Any) -> Callable:
    """A user-supplied function from its dotted path (custom loss transforms)."""
    try:
        return get_method(str(path))
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot import function '{path}': {e}") from e


def head_factories(heads_cfg: DictConfig, tasks: Sequence[str], all_tasks: Sequence[str]) -> dict[str, Callable]:
    per_task = heads_cfg.get("per_task") or {}
    unknown = [t for t in per_task if t not in all_tasks]
    if unknown:
        raise ConfigError(f"heads.per_task names unknown task(s) {unknown}; the dataset's tasks are {list(all_tasks)}")
    return {t: instantiate_checked(per_task.get(t, heads_cfg.default), f"heads[{t}]") for t in tasks}


@dataclass
class RunParts:
    """The built components of a run, in the order they are built."""

    benchmark: Benchmark
    tasks: dict[str, Task]
    targets: list[str]
    model: MultiTaskModel
    combiner: Combiner
    optimizer: torch.optim.Optimizer
    scheduler: Any
    transforms: dict[str, Callable]


def setup_process(settings: TrainerConf, dist: DistContext, seed: int) -> tuple[torch.device, dict[str, Any]]:
    """Threads, determinism, device and the global seed of this run."""
    threads, threads_source = resolve_num_threads(settings.num_threads)
    torch.set_num_threads(threads)
    configure_determinism(settings.deterministic)
    device = dist.device if dist.enabled else resolve_device(settings.device)
    seed_everything(seed)
    return device, {"intra_op": threads, "from": threads_source}


def make_optimizer(cfg: DictConfig, model: MultiTaskModel, combiner: Combiner) -> torch.optim.Optimizer:
    return build_optimizer(instantiate_checked(cfg.optimizer, "optimizer"), model, combiner)


def make_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> Any:
    target = cfg.scheduler.get("_target_") if cfg.scheduler is not None else None
    return build_scheduler(instantiate_checked(cfg.scheduler, "scheduler") if target else None, optimizer)


def build_network(cfg: DictConfig, mode: Mode, benchmark: Benchmark, tasks: Mapping[str, Task], device: torch.device,
                  dist: DistContext) -> MultiTaskModel:
    encoder_factory = instantiate_checked(cfg.backbone, "backbone")
    model = build_model(encoder_factory, head_factories(cfg.heads, list(tasks), list(benchmark.tasks)), tasks, benchmark.input_shape)
    model.to(device)
    mode.adapt_model(model)
    return dist.prepare_model(model)  # torchrun: SyncBatchNorm if trainer.sync_bn, rank 0's initial weights everywhere


def build_combiner(cfg: DictConfig, mode: Mode, tasks: Sequence[str], targets: Sequence[str], device: torch.device) -> Combiner:
    combiner = instantiate_checked(cfg.combiner, "combiner")
    if not isinstance(combiner, Combiner):
        raise ConfigError(f"combiner._target_ must build a Combiner; registered combiners: {sorted(COMBINERS)}")
    combiner = mode.adapt_combiner(combiner)
    combiner.setup(list(tasks))
    set_roles = getattr(combiner, "set_roles", None)
    if set_roles is not None:  # auxiliary-aware combiners (GCS, OL_AUX, ...) need to know the targets
        set_roles(list(targets))
    combiner.to(device)
    return combiner


def build_parts(cfg: DictConfig, mode: Mode, device: torch.device, dist: DistContext) -> RunParts:
    """Dataset → the mode's tasks and targets → network → combiner → (the mode's data changes) → optimizer,
    scheduler and loss transforms."""
    benchmark: Benchmark = instantiate_checked(cfg.dataset, "dataset")
    roles = mode.roles(benchmark)
    tasks = benchmark.select_tasks(roles.tasks)
    targets = list(roles.targets) if roles.targets is not None else list(tasks)
    model = build_network(cfg, mode, benchmark, tasks, device, dist)
    combiner = build_combiner(cfg, mode, list(tasks), targets, device)
    mode.adapt_data(benchmark)
    optimizer = make_optimizer(cfg, model, combiner)
    scheduler = make_scheduler(cfg, optimizer)
    transforms = build_transforms(cfg.get("loss_transforms"), list(tasks), list(benchmark.tasks), resolve=resolve_function)
    return RunParts(benchmark, dict(tasks), targets, model, combiner, optimizer, scheduler, transforms)


def build_selection(cfg: DictConfig, settings: TrainerConf, parts: RunParts) -> tuple[dict[str, Any], Any, dict[str, Any], ModelSelector]:
    """Metric directions, the Δm spec (targets against their STL baselines) and the model selector."""
    tasks, targets = parts.tasks, parts.targets
    directions = metric_directions(tasks, aux=len(targets) < len(tasks))
    delta, delta_info = build_delta_m(cfg.get("delta_m"), parts.benchmark.name, metric_directions({t: tasks[t] for t in targets}))
    if delta is not None:
        directions.update({"val/delta_m": False, "test/delta_m": False})
    sel = settings.selection
    if sel.metric == "val/delta_m" and delta is None and delta_info.get("stl_runs"):
        log.warning("selection metric val/delta_m is unavailable (%s); selecting on val/loss", delta_info["reason"])
        delta_info["selection_fallback"] = {"requested": "val/delta_m", "used": "val/loss"}
        sel.metric = "val/loss"
    return directions, delta, delta_info, ModelSelector(sel.rule, sel.metric, sel.mode, sel.k, directions)


