"""Entry point: ``python -m mtl_bench.train [overrides]`` (``-m`` for multiruns).

Composes the config from the groups in ``configs/``, validates it and hands it to the chosen mode
(:mod:`mtl_bench.modes`): the runs the mode depends on are trained first (each once), then the run's components are
built (:mod:`mtl_bench.build`), its diagnostics (:mod:`mtl_bench.diagnostics.base`), its checkpoint to resume from
(:mod:`mtl_bench.resume`) and its logger, and the mode trains the :class:`~mtl_bench.trainer.Trainer`; the run folder
receives ``config_resolved.yaml``, ``metrics.jsonl`` and ``summary.json``.  Bad input (an invalid value, an unknown
task, a missing dataset) fails before training with a one-line message; a NaN/inf loss stops the run naming the step
and task.  Both exit non-zero; in a multirun the failing job is reported and the others still run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import mtl_bench.config.schema  # noqa: F401  (registers the structured-config schemas)
from mtl_bench import __version__
from mtl_bench.build import RunParts, build_parts, build_selection, instantiate_checked, make_optimizer, make_scheduler, setup_process
from mtl_bench.resume import completed_summary, load_resume
from mtl_bench.config.schema import TrainerConf
from mtl_bench.config.validate import validate_config
from mtl_bench.engine import GradientObserver
from mtl_bench.distributed import DistContext, cleanup, init_distributed
from mtl_bench.errors import ConfigError, MTLBenchError, NonFiniteLossError, NotApplicableError, PreemptedError, StorageError
from mtl_bench.diagnostics.base import Diagnostic, RunContext, build_diagnostics, directions_of
from mtl_bench.loggers.run_logger import RunLogger, WandbSettings, default_group
from mtl_bench.loss_transforms import describe as describe_transforms
from mtl_bench.modes import DependencyRun, Mode, RunBuild, build_mode
from mtl_bench import runlock
from mtl_bench.preemption import in_entry_process, install_process_handlers, status_for, stop_exit_code, stop_requested
from mtl_bench.trainer import Trainer, read_summary, write_summary_file

log = logging.getLogger("mtl_bench")


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


def wandb_settings(cfg: DictConfig, mode: Mode, ident: Mapping[str, Any], output_dir: Path,
                   directions: Mapping[str, bool | None]) -> WandbSettings | None:
    lg = cfg.logger
    if lg.name == "none":
        return None
    group = default_group(cfg.experiment_name, ident["sweep_dir"] if ident.get("multirun") else None)
    if ident.get("multirun"):
        name = f"{ident['job_num']}_{ident['override_dirname']}".rstrip("_")
    else:
        name = ident.get("override_dirname") or output_dir.name
    return WandbSettings(
        project=lg.project, entity=lg.entity, mode=lg.mode, group=lg.group or group, job_type=mode.name,
        name=lg.run_name or name, tags=list(lg.tags) + list(cfg.tags), notes=lg.notes,
        system_stats=lg.system_stats, summary_directions={k: v for k, v in directions.items() if k.startswith("val/")},
        epoch_metrics={k: v for k, v in directions.items() if not k.startswith(("val/", "test/"))},
    )


def build_and_train(
    cfg: DictConfig, output_dir: str | os.PathLike | None = None, observers: Sequence[GradientObserver] = ()
) -> dict[str, Any]:
    """Train the runs ``cfg``'s mode depends on (each once: a complete one is reused), then build every component
    from ``cfg`` and train; returns the run summary (also in summary.json).  Under ``torchrun`` every process calls
    this; rank 0 writes the files (see docs/distributed.md)."""
    validate_config(cfg)
    settings: TrainerConf = OmegaConf.to_object(cfg.trainer)
    dist = init_distributed(settings)
    try:
        mode = build_mode(cfg)
        mode.trained_dependencies = run_dependencies(cfg, mode, dist)
        return train_run(cfg, mode, output_dir, observers, settings, dist)
    finally:
        if dist.enabled:
            cleanup()


def run_dependencies(cfg: DictConfig, mode: Mode, dist: DistContext) -> list[DependencyRun]:
    """Train the mode's dependency runs that are not complete yet (plain runs: their modes have none); returns those
    trained now.  A dependency that another job of a parallel sweep is training is waited for, then reused."""
    if type(mode).dependencies is Mode.dependencies:
        return []
    task_names = list(instantiate_checked(cfg.dataset, "dataset").tasks)
    trained = []
    for dep in mode.dependencies(task_names):
        while not dependency_complete(dep):
            if dist.enabled:  # no nested process groups
                raise ConfigError(f"the {dep.name} run {dep.output_dir} that this job depends on is not trained yet, and it "
                                  "cannot be trained inside a torchrun job; run the same command once without torchrun (or "
                                  "train it as its own torchrun job) first")
            if train_dependency(dep, dist):
                trained.append(dep)
        if dep not in trained:
            log.info("reusing the %s run in %s", dep.name, dep.output_dir)
    return trained


def train_dependency(dep: DependencyRun, dist: DistContext) -> bool:
    """Train ``dep`` in its folder; ``False`` when another process owns the folder (after waiting for it to end)."""
    log.info("training the %s run in %s (a dependency of this job)", dep.name, dep.output_dir)
    t0 = time.monotonic()
    try:
        train_run(dep.cfg, build_mode(dep.cfg), dep.output_dir, (), OmegaConf.to_object(dep.cfg.trainer), dist)
    except runlock.RunFolderBusy as busy:
        log.info("%s; waiting for it", busy)
        while runlock.holder(dep.output_dir) is not None:
            time.sleep(2.0)
        return False
    log.info("%s trained in %.1fs", dep.name, time.monotonic() - t0)
    return True


def dependency_complete(dep: DependencyRun) -> bool:
    summary = read_summary(dep.output_dir)
    return summary is not None and summary.get("status") == "completed"


def train_run(
    cfg: DictConfig, mode: Mode, output_dir: str | os.PathLike | None, observers: Sequence[GradientObserver],
    settings: TrainerConf, dist: DistContext,
) -> dict[str, Any]:
    """One run in its folder (owned by this process while it trains; a completed one with the same config is skipped)."""
    # ranks compose their own (timestamped) folders: rank 0's is the run's
    output_dir = Path(dist.broadcast_object(str(output_dir if output_dir is not None else cfg.paths.output_dir)))
    with runlock.owned(output_dir) if dist.is_main else nullcontext():  # one process per run folder
        resolved = OmegaConf.to_container(cfg, resolve=True)
        done = completed_summary(settings, output_dir, resolved)
        if done is not None:
            log.info("%s: this run already completed %d epoch(s) with this config; skipped (trainer.resume=never trains "
                     "it again)", output_dir, settings.epochs)
            return done
        return _build_and_train_in(cfg, resolved, mode, output_dir, observers, settings, dist)


def describe_run(cfg: DictConfig, mode: Mode, parts: RunParts, ident: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The run's identity in summary.json: what was trained, with what, where (``info``: delta_m, device, threads,
    output_dir, diagnostics, config)."""
    choices = ident.get("choices", {})
    resolved = info["config"]
    return {
        "experiment": cfg.experiment_name, "mode": mode.name, "tasks": list(parts.tasks), "targets": parts.targets,
        "auxiliaries": [t for t in parts.tasks if t not in parts.targets], "aux_method": choices.get("aux_method"),
        "post_train_epochs": mode.trainer_options().get("post_train_epochs", 0),
        "dataset": {"name": parts.benchmark.name, **parts.benchmark.info},
        "combiner": parts.combiner.describe(),
        "optimizer": {"choice": choices.get("optimizer"), "class": type(parts.optimizer).__name__,
                      **{k: v for k, v in resolved["optimizer"].items() if not k.startswith("_")}},
        "scheduler": choices.get("scheduler", type(parts.scheduler).__name__ if parts.scheduler else None),
        "seed": cfg.seed, "delta_m": info["delta_m"], "loss_transforms": describe_transforms(cfg.get("loss_transforms")),
        "device": info["device"], "threads": info["threads"], "parameters": parts.model.parameter_counts(),
        "sharing": parts.model.sharing(),
        "output_dir": info["output_dir"], "hydra": {k: v for k, v in ident.items() if k != "choices"}, "choices": choices,
        "mtl_bench_version": __version__, "distributed": info["distributed"],
        "diagnostics": info["diagnostics"], "config": resolved,
    }


def open_logger(cfg: DictConfig, resolved: Mapping[str, Any], mode: Mode, output_dir: Path, directions: dict[str, Any],
                resume_state: Mapping[str, Any] | None, dist: DistContext, ident: Mapping[str, Any]) -> RunLogger:
    """metrics.jsonl (truncated to the checkpoint's position on resume) and the W&B run (the same one on resume)."""
    wb = wandb_settings(cfg, mode, ident, output_dir, directions)
    if wb is not None and resume_state is not None:  # continue the same W&B run (same step axes offline)
        id_file = output_dir / "wandb_run_id.txt"
        wb.run_id = resume_state.get("wandb_run_id") or (id_file.read_text().strip() if id_file.is_file() else None)
    return RunLogger(output_dir, {**resolved, "hydra_choices": ident.get("choices", {})}, wb if dist.is_main else None,
                     truncate_to=int(resume_state["metrics_offset"]) if resume_state is not None else 0, enabled=dist.is_main)


def _build_and_train_in(
    cfg: DictConfig, resolved: dict[str, Any], mode: Mode, output_dir: Path, observers: Sequence[GradientObserver],
    settings: TrainerConf, dist: DistContext,
) -> dict[str, Any]:
    """Build the run's components, diagnostics, resume state and logger, and hand the trainer to the mode
    (``resolved``: the config with every interpolation resolved, as written to config_resolved.yaml)."""
    device, threads = setup_process(settings, dist, cfg.seed)
    parts = build_parts(cfg, mode, device, dist)
    run = RunContext(parts.model, parts.tasks, parts.targets, parts.optimizer, parts.combiner, parts.transforms)
    diagnostics = build_diagnostics(cfg.get("diagnostics"), run, instantiate_checked)
    logged = {**directions_of(diagnostics), **mode.metric_directions()}
    directions, delta, delta_info, selector = build_selection(cfg, settings, parts)
    resume_state, resume_path = load_resume(settings, output_dir, dist, resolved)
    if dist.is_main:
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(resolved))
    ident = hydra_identity()
    run_info = describe_run(cfg, mode, parts, ident, {
        "delta_m": delta_info, "device": str(device), "threads": threads, "output_dir": str(output_dir),
        "distributed": dist.describe(), "diagnostics": describe_diagnostics(diagnostics, logged), "config": resolved})
    logger = open_logger(cfg, resolved, mode, output_dir, {**directions, **logged}, resume_state, dist, ident)
    run_info["wandb"] = logger.wandb_info
    log.info("%s run on %s: tasks=%s combiner=%s optimizer=%s lr=%s seed=%d -> %s", mode.name.upper(), device,
             list(parts.tasks), parts.combiner.name, run_info["optimizer"]["class"], resolved["optimizer"].get("lr"), cfg.seed,
             output_dir)
    trainer = Trainer(
        model=parts.model, benchmark=parts.benchmark, tasks=parts.tasks, combiner=parts.combiner, optimizer=parts.optimizer,
        scheduler=parts.scheduler, settings=settings, selector=selector, logger=logger, output_dir=output_dir,
        device=device, seed=cfg.seed, run_info=run_info, observers=observers, delta=delta, transforms=parts.transforms,
        diagnostics=diagnostics, targets=parts.targets, **mode.trainer_options(),
    )
    mode.attach(trainer)
    if resume_state is not None:
        trainer.load_state_dict(resume_state, resume_path)
    build = RunBuild(cfg, parts.benchmark, parts.tasks, parts.targets, settings, device, dist, output_dir, directions, delta,
                     parts.transforms, lambda m, c: make_optimizer(cfg, m, c), lambda o: make_scheduler(cfg, o))
    return run_mode(mode, trainer, build, logger, dist)


def describe_diagnostics(diagnostics: Sequence[Diagnostic], logged: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json["diagnostics"]: each diagnostic's class, every metric key / pattern logged beyond the tasks'
    metrics (the diagnostics' and the mode's) with its direction (true: higher is better, null: neither), and each
    diagnostic's dashboard panel templates (:meth:`Diagnostic.panels`)."""
    return {"built": {d.key: f"{type(d).__module__}.{type(d).__qualname__}" for d in diagnostics}, "metrics": dict(logged),
            "panels": {d.key: list(d.panels()) for d in diagnostics if d.panels()}}


def run_mode(mode: Mode, trainer: Trainer, build: RunBuild, logger: RunLogger, dist: DistContext) -> dict[str, Any]:
    """The mode trains; the W&B run is finished whatever happens; rank 0 prints the results table."""
    exit_code = 1
    try:
        summary = mode.run(trainer, build)
        exit_code = 0
    finally:
        logger.finish(exit_code)
    if logger.wandb_info.get("mode") == "offline":
        log.info("W&B offline run: %s (upload later with `wandb sync <dir>`)", logger.wandb_info["dir"])
    if dist.is_main:
        log.info("results of %s\n%s", trainer.output_dir, trainer.results_table(summary))
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


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def not_applicable(cfg: DictConfig, error: NotApplicableError) -> None:
    """A sweep's job whose method is not defined for this problem: its folder says why (status ``not_applicable``)."""
    output_dir = Path(str(cfg.paths.output_dir))
    log.warning("job skipped, not applicable: %s", error)
    try:
        write_summary_file(output_dir, {"status": "not_applicable", "error": str(error), "epochs_completed": 0,
                                        "output_dir": str(output_dir)})
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
        if in_multirun():
            if cfg.trainer.get("on_divergence", "fail") == "record":
                return None  # recorded in summary.json (status diverged); the sweep goes on
            raise
        sys.exit(exit_code(e))
    except NotApplicableError as e:
        if not in_multirun():
            log.error("%s", e)
            sys.exit(exit_code(e))
        not_applicable(cfg, e)  # recorded; the sweep goes on (e.g. Krum in combiner=glob(*) with two tasks)
        return None
    except MTLBenchError as e:
        log.error("%s", e)
        if in_multirun():
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
