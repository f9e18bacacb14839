"""Entry point: ``python -m mtl_bench.train [overrides]`` (``-m`` for multiruns).

Composes the config from the groups in ``configs/``, validates it, builds the benchmark, model,
combiner, optimizer and loggers, trains, and writes ``config_resolved.yaml``, ``metrics.jsonl`` and
``summary.json`` into the job's output folder.  Bad input (an invalid value, an unknown task, a missing
dataset) fails before training with a one-line message; a NaN/inf loss stops the run naming the step
and task.  Both exit non-zero; in a multirun the failing job is reported and the others still run.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

import mtl_bench.config.schema  # noqa: F401  (registers the structured-config schemas)
from mtl_bench import __version__
from mtl_bench.combiners import COMBINERS, Combiner
from mtl_bench.config.schema import TrainerConf
from mtl_bench.config.validate import RUNTIME_KEYS, validate_config
from mtl_bench.data.base import Benchmark
from mtl_bench.engine import GradientObserver
from mtl_bench.checkpoint import load_checkpoint
from mtl_bench.distributed import DistContext, cleanup, init_distributed
from mtl_bench.errors import CheckpointError, ConfigError, MTLBenchError, NonFiniteLossError, PreemptedError, StorageError
from mtl_bench.diagnostics.au import AUMonitor
from mtl_bench.loggers.run_logger import RunLogger, WandbSettings
from mtl_bench.forkmerge import ForkMerge
from mtl_bench.loss_transforms import build_transforms
from mtl_bench.loss_transforms import describe as describe_transforms
from mtl_bench.metrics.delta_tracking import build_delta_m
from mtl_bench.models.mtl_model import build_model
from mtl_bench.optim import build_optimizer, build_scheduler
from mtl_bench.selection import ModelSelector
from mtl_bench import runlock
from mtl_bench.preemption import in_entry_process, install_process_handlers, status_for, stop_exit_code, stop_requested
from mtl_bench.trainer import RESULT_KEYS, Trainer, metric_directions, read_summary, write_summary_file
from mtl_bench.utils import configure_determinism, flatten_dict, resolve_device, resolve_num_threads, seed_everything

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


def aux_roles(mode: DictConfig, benchmark: Benchmark, defaults: DictConfig | None = None) -> tuple[list[str], list[str]]:
    """(targets, auxiliaries) of an auxiliary-task mode, validated against the dataset's tasks; unset mode
    fields fall back to the top-level ``aux_targets`` / ``aux_auxiliaries`` (the aux_method bundles)."""
    names = list(benchmark.tasks)
    fallback = defaults if defaults is not None else {}
    targets = list(mode.targets or fallback.get("aux_targets") or [])
    if not targets:
        raise ConfigError(f"mode={mode.name} needs mode.targets=[<task>, ...]; dataset '{benchmark.name}' has tasks {names}")
    given_aux = mode.auxiliaries if mode.auxiliaries is not None else fallback.get("aux_auxiliaries")
    aux = list(given_aux) if given_aux is not None else [t for t in names if t not in targets]
    unknown = [t for t in [*targets, *aux] if t not in names]
    if unknown:
        raise ConfigError(f"task(s) {unknown} not in dataset '{benchmark.name}'; its tasks are {names}")
    both = [t for t in aux if t in targets]
    if both:
        raise ConfigError(f"task(s) {both} are both targets and auxiliaries")
    return targets, aux


def active_task_names(mode: DictConfig, benchmark: Benchmark, defaults: DictConfig | None = None) -> list[str] | None:
    if mode.name in ("aux", "forkmerge"):
        targets, aux = aux_roles(mode, benchmark, defaults)
        return [*targets, *aux]
    if mode.name == "stl":
        if mode.task is None and defaults is not None and defaults.get("aux_targets"):
            return [defaults.aux_targets[0]]
        if mode.task is None:
            raise ConfigError(
                f"mode=stl needs mode.task=<task>; dataset '{benchmark.name}' has tasks {list(benchmark.tasks)}"
            )
        return [mode.task]
    return list(mode.tasks) if mode.tasks is not None else None


def head_factories(heads_cfg: DictConfig, tasks: Sequence[str], all_tasks: Sequence[str]) -> dict[str, Callable]:
    per_task = heads_cfg.get("per_task") or {}
    unknown = [t for t in per_task if t not in all_tasks]
    if unknown:
        raise ConfigError(f"heads.per_task names unknown task(s) {unknown}; the dataset's tasks are {list(all_tasks)}")
    return {t: instantiate_checked(per_task.get(t, heads_cfg.default), f"heads[{t}]") for t in tasks}


def hydra_identity() -> dict[str, Any]:
    """Job number, overrides and sweep folder of the current Hydra job (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "multirun": multirun,
        "job_num": hc.job.num if multirun else None,
        "override_dirname": hc.job.override_dirname,
        "overrides": list(hc.overrides.task),
        "sweep_dir": hc.sweep.dir if multirun else None,
        "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith(("hydra/", "schema/"))},
    }


def wandb_settings(cfg: DictConfig, ident: Mapping[str, Any], output_dir: Path, directions: dict[str, bool]) -> WandbSettings | None:
    lg = cfg.logger
    if lg.name == "none":
        return None
    if ident.get("multirun"):
        group = f"{cfg.experiment_name}/{Path(ident['sweep_dir']).name}"
        name = f"{ident['job_num']}_{ident['override_dirname']}".rstrip("_")
    else:
        group = cfg.experiment_name
        name = ident.get("override_dirname") or output_dir.name
    return WandbSettings(
        project=lg.project, entity=lg.entity, mode=lg.mode, group=lg.group or group, job_type=cfg.mode.name,
        name=lg.run_name or name, tags=list(lg.tags) + list(cfg.tags), notes=lg.notes,
        system_stats=lg.system_stats, summary_directions={k: v for k, v in directions.items() if k.startswith("val/")},
    )


# config keys that may differ between a run and its resumption (where, how fast and how often, not what)
RESUME_MAY_CHANGE = ("trainer.epochs", *RUNTIME_KEYS)


def resume_checkpoint(settings: TrainerConf, output_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint a run continues from: ``trainer.resume=auto`` → ``<output_dir>/checkpoints/last.pt`` when it
    exists (a requeued or restarted job), ``never`` → none, otherwise the given path (which must exist)."""
    if settings.resume == "never":
        return None, None
    path = output_dir / "checkpoints" / "last.pt" if settings.resume == "auto" else Path(settings.resume)
    if not path.is_file():
        if settings.resume != "auto":
            raise ConfigError(f"trainer.resume={settings.resume}: no such checkpoint file (use auto, never or a path to a last.pt)")
        return None, None
    state = load_checkpoint(path)
    if "partial_epoch" not in state:
        raise ConfigError(f"{path} was written by an older mtl_bench without resume information; use trainer.resume=never")
    return state, path


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every flattened key that differs, RESUME_MAY_CHANGE keys aside."""
    a, b = flatten_dict(dict(saved)), flatten_dict(dict(current))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUME_MAY_CHANGE)]


def check_resume_config(saved: Mapping[str, Any] | None, current: Mapping[str, Any], path: Path) -> None:
    """A run resumes only into the same experiment: differing keys (other than RESUME_MAY_CHANGE) are an error."""
    if saved is None:
        return
    differ = config_differences(saved, current)
    if differ:
        shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in differ[:6])
        raise ConfigError(
            f"{path} belongs to a run with a different config ({shown}{', ...' if len(differ) > 6 else ''}); "
            f"resume it unchanged, or start over with trainer.resume=never or in another output folder"
        )


def completed_summary(settings: TrainerConf, output_dir: Path, resolved: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary of a run that already completed in ``output_dir`` with this config and number of epochs, so that
    rerunning a sweep into its folder skips its finished jobs (``trainer.resume=never`` trains them again)."""
    summary = read_summary(output_dir) if settings.resume == "auto" else None
    saved = output_dir / "config_resolved.yaml"
    if summary is None or summary.get("status") != "completed" or summary.get("epochs_completed") != settings.epochs:
        return None
    if not saved.is_file() or config_differences(yaml.safe_load(saved.read_text()) or {}, resolved):
        return None  # a different experiment: resuming it is refused later, with the differing keys named
    return summary


def mark_failed(output_dir: Path, error: MTLBenchError) -> None:
    """An attempt on an existing run failed before training (e.g. its checkpoint is damaged): its summary must not
    keep saying ``completed``; the earlier results move under ``previous``."""
    earlier = read_summary(output_dir)
    if earlier is None:
        return
    kept = {k: v for k, v in earlier.items() if k not in (*RESULT_KEYS, "previous", "error", "status")}
    try:
        write_summary_file(output_dir, {**kept, "status": "failed", "error": str(error)})
    except StorageError as e:
        log.error("summary.json not updated: %s", e)


def build_and_train(
    cfg: DictConfig, output_dir: str | os.PathLike | None = None, observers: Sequence[GradientObserver] = ()
) -> dict[str, Any]:
    """Build every component from ``cfg`` and train; returns the run summary (also in summary.json).
    Under ``torchrun`` every process calls this; rank 0 writes the files (see docs/distributed.md)."""
    validate_config(cfg)
    settings: TrainerConf = OmegaConf.to_object(cfg.trainer)
    dist = init_distributed(settings)
    try:
        return _build_and_train(cfg, output_dir, observers, settings, dist)
    finally:
        if dist.enabled:
            cleanup()


def _build_and_train(
    cfg: DictConfig, output_dir: str | os.PathLike | None, observers: Sequence[GradientObserver], settings: TrainerConf,
    dist: DistContext,
) -> dict[str, Any]:
    # ranks compose their own (timestamped) folders: rank 0's is the run's
    output_dir = Path(dist.broadcast_object(str(output_dir if output_dir is not None else cfg.paths.output_dir)))
    with runlock.owned(output_dir) if dist.is_main else nullcontext():  # one process per run folder
        done = completed_summary(settings, output_dir, OmegaConf.to_container(cfg, resolve=True))
        if done is not None:
            log.info("%s: this run already completed %d epoch(s) with this config; skipped (trainer.resume=never trains "
                     "it again)", output_dir, settings.epochs)
            return done
        return _build_and_train_in(cfg, output_dir, observers, settings, dist)


def _build_and_train_in(
    cfg: DictConfig, output_dir: Path, observers: Sequence[GradientObserver], settings: TrainerConf, dist: DistContext,
) -> dict[str, Any]:
    threads, threads_source = resolve_num_threads(settings.num_threads)
    torch.set_num_threads(threads)
    configure_determinism(settings.deterministic)
    device = dist.device if dist.enabled else resolve_device(settings.device)
    seed_everything(cfg.seed)

    benchmark: Benchmark = instantiate_checked(cfg.dataset, "dataset")
    source = None
    if cfg.mode.name == "transfer":  # the backbone to study: found, or trained first (a run of its own)
        from mtl_bench import transfer  # only here: its corruptions (scipy.ndimage) cost every other run's start-up
        trainer_fn = None if dist.enabled else (lambda c, d: build_and_train(c, output_dir=d))  # no nested process groups
        source = transfer.ensure_source(cfg, list(benchmark.tasks), trainer_fn)
        if source.kind == "path":
            transfer.check_architecture(cfg, source)
        seed_everything(cfg.seed)
        tasks = benchmark.select_tasks(transfer.transfer_tasks(cfg, source))
    else:
        tasks = benchmark.select_tasks(active_task_names(cfg.mode, benchmark, cfg))
    encoder_factory = instantiate_checked(cfg.backbone, "backbone")
    model = build_model(encoder_factory, head_factories(cfg.heads, list(tasks), list(benchmark.tasks)), tasks, benchmark.input_shape)
    model.to(device)
    if source is not None:  # source encoder (frozen) and heads
        transfer.load_source_weights(model, source, str(cfg.mode.heads))
    model = dist.prepare_model(model)  # torchrun: SyncBatchNorm if trainer.sync_bn, rank 0's initial weights everywhere
    combiner: Combiner = instantiate_checked(cfg.combiner, "combiner")
    if not isinstance(combiner, Combiner):
        raise ConfigError(f"combiner._target_ must build a Combiner; registered combiners: {sorted(COMBINERS)}")
    if source is not None:  # the heads are independent given the frozen encoder: equal weights
        combiner = COMBINERS["ew"]()
    combiner.setup(list(tasks))
    targets = aux_roles(cfg.mode, benchmark, cfg)[0] if cfg.mode.name in ("aux", "forkmerge") else list(tasks)
    set_roles = getattr(combiner, "set_roles", None)
    if set_roles is not None:  # auxiliary-aware combiners (GCS, OL_AUX, ...) need to know the targets
        set_roles(targets)
    combiner.to(device)
    if source is not None:  # clean evaluation split kept; train/val corrupted at random per sample
        eval_base = benchmark.splits[str(cfg.mode.eval_split)]
        corrupt_info = transfer.corrupt_training_splits(benchmark, cfg.mode)
    optimizer = build_optimizer(instantiate_checked(cfg.optimizer, "optimizer"), model, combiner)
    sched_target = cfg.scheduler.get("_target_") if cfg.scheduler is not None else None
    scheduler = build_scheduler(instantiate_checked(cfg.scheduler, "scheduler") if sched_target else None, optimizer)
    transforms = build_transforms(cfg.get("loss_transforms"), list(tasks), list(benchmark.tasks), resolve=resolve_function)
    monitors = []
    au_cfg = (cfg.get("diagnostics") or {}).get("au") or {}
    if au_cfg.get("enabled"):
        au = AUMonitor(au_cfg.get("every_n_steps", 10), au_cfg.get("decay", 0.99), au_cfg.get("threshold", 0.9))
        au.setup(optimizer, model.shared_named_parameters(), list(tasks))
        monitors.append(au)
    conf_cfg = (cfg.get("diagnostics") or {}).get("conflicts") or {}
    if conf_cfg.get("enabled"):
        from mtl_bench.diagnostics.conflicts import ConflictProbe

        options = {k: v for k, v in conf_cfg.items() if k != "enabled"}
        probe = instantiate_checked({"_target_": "mtl_bench.diagnostics.conflicts.ConflictProbe", **options}, "diagnostics.conflicts")
        assert isinstance(probe, ConflictProbe)
        probe.setup(model, tasks, model.shared_named_parameters(), transforms=transforms, combiner=combiner, optimizer=optimizer)
        monitors.append(probe)
    directions = metric_directions(tasks, aux=len(targets) < len(tasks))
    # Δm compares the targets with their STL baselines (all tasks outside auxiliary-task learning)
    target_directions = metric_directions({t: tasks[t] for t in targets})
    delta, delta_info = build_delta_m(cfg.get("delta_m"), benchmark.name, target_directions)
    if delta is not None:
        directions.update({"val/delta_m": False, "test/delta_m": False})
    sel = settings.selection
    if sel.metric == "val/delta_m" and delta is None and delta_info.get("stl_runs"):
        log.warning("selection metric val/delta_m is unavailable (%s); selecting on val/loss", delta_info["reason"])
        delta_info["selection_fallback"] = {"requested": "val/delta_m", "used": "val/loss"}
        sel.metric = "val/loss"
    selector = ModelSelector(sel.rule, sel.metric, sel.mode, sel.k, directions)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        resume_state, resume_path = resume_checkpoint(settings, output_dir)
    except CheckpointError as e:
        if dist.is_main:
            mark_failed(output_dir, e)
        raise
    if resume_state is not None:
        check_resume_config(resume_state.get("config"), resolved, resume_path)
    if dist.is_main:
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(resolved))
    ident = hydra_identity()
    choices = ident.get("choices", {})
    run_info = {
        "experiment": cfg.experiment_name,
        "mode": cfg.mode.name,
        "tasks": list(tasks),
        "targets": targets,
        "auxiliaries": [t for t in tasks if t not in targets],
        "aux_method": choices.get("aux_method"),
        "post_train_epochs": int(cfg.mode.get("post_train_epochs", 0) or 0),
        "dataset": {"name": benchmark.name, **benchmark.info},
        "combiner": combiner.describe(),
        "optimizer": {"choice": choices.get("optimizer"), "class": type(optimizer).__name__,
                      **{k: v for k, v in resolved["optimizer"].items() if not k.startswith("_")}},
        "scheduler": choices.get("scheduler", type(scheduler).__name__ if scheduler else None),
        "seed": cfg.seed,
        "delta_m": delta_info,
        "loss_transforms": describe_transforms(cfg.get("loss_transforms")),
        "device": str(device),
        "threads": {"intra_op": threads, "from": threads_source},
        "parameters": model.parameter_counts(),
        "output_dir": str(output_dir),
        "hydra": {k: v for k, v in ident.items() if k != "choices"},
        "choices": choices,
        "mtl_bench_version": __version__,
        "distributed": dist.describe(),
        "config": resolved,
    }
    wb = wandb_settings(cfg, ident, output_dir, directions)
    if wb is not None and resume_state is not None:  # continue the same W&B run (same step axes offline)
        id_file = output_dir / "wandb_run_id.txt"
        wb.run_id = resume_state.get("wandb_run_id") or (id_file.read_text().strip() if id_file.is_file() else None)
    logger = RunLogger(output_dir, {**resolved, "hydra_choices": choices}, wb if dist.is_main else None,
                       truncate_to=int(resume_state["metrics_offset"]) if resume_state is not None else 0, enabled=dist.is_main)
    run_info["wandb"] = logger.wandb_info
    log.info(
        "%s run on %s: tasks=%s combiner=%s optimizer=%s lr=%s seed=%d -> %s",
        cfg.mode.name.upper(), device, list(tasks), combiner.name, run_info["optimizer"]["class"],
        resolved["optimizer"].get("lr"), cfg.seed, output_dir,
    )
    trainer = Trainer(
        model=model, benchmark=benchmark, tasks=tasks, combiner=combiner, optimizer=optimizer,
        scheduler=scheduler, settings=settings, selector=selector, logger=logger, output_dir=output_dir,
        device=device, seed=cfg.seed, run_info=run_info, observers=observers, delta=delta, transforms=transforms,
        monitors=monitors, targets=targets,
        post_train_epochs=int(cfg.mode.get("post_train_epochs", 0) or 0),
    )
    if source is not None:
        trainer.result_hooks["transfer"] = transfer.CorruptionEvaluation(trainer, eval_base, cfg.mode, source, corrupt_info)
    if resume_state is not None:
        trainer.load_state_dict(resume_state, resume_path)
    exit_code = 1
    try:
        if cfg.mode.name == "forkmerge":
            initial = copy.deepcopy(model.state_dict())

            def make_branch(name: str, auxiliaries: list[str]) -> Trainer:
                """A full copy of the model with its own optimizer/scheduler, trained on targets + ``auxiliaries`` with
                equal weights.  The other tasks' heads are not run at all in this branch (no forward, no gradient, no
                BatchNorm statistics, no weight decay): they keep the merged values, and merging averages them."""
                branch_model = copy.deepcopy(model)
                branch_model.load_state_dict(initial)
                branch_tasks = {t: task for t, task in tasks.items() if t in targets or t in auxiliaries}
                branch_comb = COMBINERS["fixed"](weights={t: 1.0 for t in branch_tasks})
                branch_comb.setup(list(branch_tasks))
                branch_opt = build_optimizer(instantiate_checked(cfg.optimizer, "optimizer"), branch_model, branch_comb)
                branch_sched = build_scheduler(instantiate_checked(cfg.scheduler, "scheduler") if sched_target else None, branch_opt)
                branch_dir = output_dir / "branches" / name
                return Trainer(
                    model=branch_model, benchmark=benchmark, tasks=branch_tasks, combiner=branch_comb, optimizer=branch_opt,
                    scheduler=branch_sched, settings=copy.deepcopy(settings),
                    selector=ModelSelector("last", "val/loss", "auto", 1, directions),
                    logger=RunLogger(branch_dir, {}, enabled=dist.is_main),
                    output_dir=branch_dir, device=device, seed=cfg.seed, delta=delta, transforms=transforms, targets=targets,
                )

            summary = ForkMerge(trainer, make_branch, cfg.mode).fit()
        else:
            summary = trainer.fit()
        exit_code = 0
    finally:
        logger.finish(exit_code)
    if logger.wandb_info.get("mode") == "offline":
        log.info("W&B offline run: %s (upload later with `wandb sync <dir>`)", logger.wandb_info["dir"])
    if dist.is_main:
        log.info("results of %s\n%s", output_dir, trainer.results_table(summary))
    return summary


def exit_code(error: MTLBenchError) -> int:
    """1: the run itself failed (diverged, disk full); 2: the input needs fixing (config, data, checkpoint, folder)."""
    return 1 if isinstance(error, (NonFiniteLossError, StorageError)) else 2


def not_started(cfg: DictConfig, signal_name: str) -> None:
    """A job of a sweep that a stop signal reached before the job began: its folder says so (unless it holds a
    summary already: an earlier attempt's results stay as they are)."""
    output_dir = Path(str(cfg.paths.output_dir))
    log.warning("%s received: this job is not started; run the same command again to continue the sweep", signal_name)
    if read_summary(output_dir) is None:
        try:
            write_summary_file(output_dir, {"status": status_for(signal_name), "error": f"not started: {signal_name} "
                                            "received before this job began", "epochs_completed": 0, "output_dir": str(output_dir)})
        except StorageError as e:
            log.error("summary.json not written: %s", e)


def stop_job(code: int) -> None:
    """End a stopped job: in the entry process a SystemExit, which passes through Hydra's job runner and ends a sweep
    run in this process; in a launcher's worker (joblib) a normal return: the entry process, which received the same
    signal, ends the sweep with the code once the dispatched jobs have stopped (``RunFolderLock.on_multirun_end``)."""
    if in_entry_process():
        sys.exit(code)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if not in_entry_process():
        install_process_handlers()  # a launcher's worker process (joblib): record stop signals between its jobs
    stopped = stop_requested()
    if stopped is not None:  # a sweep received Ctrl-C / SIGTERM between jobs: start no further job
        not_started(cfg, stopped)
        stop_job(stop_exit_code(stopped, int(cfg.trainer.preemption.exit_code)))
        return None
    try:
        summary = build_and_train(cfg)
    except PreemptedError as e:  # not a failure: the job is to be requeued and resumes from its checkpoint
        log.warning("%s", e)
        stop_job(e.exit_code)
        return None
    except NonFiniteLossError as e:
        log.error("%s", e)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            if cfg.trainer.get("on_divergence", "fail") == "record":
                return None  # recorded in summary.json (status diverged); the sweep goes on
            raise
        sys.exit(exit_code(e))
    except MTLBenchError as e:
        log.error("%s", e)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the launcher records this job as failed and runs the others
        sys.exit(exit_code(e))
    if cfg.get("optimized_metric"):
        return summary["selected"].get(cfg.optimized_metric)
    return None


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Accept ``+experiment=NAME`` as well as ``experiment=NAME``.

    ``experiment`` is in the primary defaults list (as ``null``, the lightning-hydra-template layout), so Hydra
    only accepts ``experiment=NAME``; the appending form ``+experiment=NAME``, which many Hydra projects
    document, would fail with "Multiple values for experiment".  Both select the same preset here."""
    return [a[1:] if a.startswith("+experiment=") else a for a in argv]


if __name__ == "__main__":
    sys.argv = normalize_argv(sys.argv)
    install_process_handlers(entry=True)  # Ctrl-C / SIGTERM between jobs: recorded; the running job checkpoints; no new job
    logging.raiseExceptions = False  # a log file on a full disk: no "--- Logging error ---" tracebacks on the console
    # configs/hydra/launcher/submitit_slurm.yaml deliberately replaces the plugin's config of the same name (our
    # cluster defaults, still validated against the plugin's schema); Hydra warns about that name match
    warnings.filterwarnings("ignore", message=r".*validated against ConfigStore schema with the same name")
    main()
