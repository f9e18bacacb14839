"""Feature transferability under image corruptions: MTL vs STL backbones (Elich et al., "Examining Common
Paradigms in Multi-Task Learning", App. A6).

Protocol (``mode=transfer``):

1. **Source**: a finished run whose backbone is studied — ``mode.source=mtl`` or ``stl:<task>`` trains that run
   first (the job's own config with ``mode=mtl`` / ``mode=stl``, ``mode.source_epochs`` epochs) into
   ``<output_root>/<experiment_name>/sources/<mtl|stl_<task>>/seed<seed>`` or reuses it when it is already
   complete there (a dependency run of the job, trained before the job is built); or an explicit run folder /
   checkpoint file.  The source's *selected* model (``best.pt``) is used by default: "the best clean-data
   model".
2. **Fine-tuning**: the source encoder is loaded and **frozen** (no gradients, BatchNorm in eval mode, so its
   parameters and buffers stay bit-identical); the heads of the transferred tasks are loaded from the source
   (``mode.heads=loaded``) or re-initialised (``fresh``) and trained with equal weights on training images
   corrupted at random per sample (a corruption type and a severity drawn uniformly, a pure function of
   ``(corruption_seed, epoch, index)``); validation images are corrupted the same way (fixed draws), so model
   selection matches the fine-tuning objective.
3. **Evaluation**: the fine-tuned model on the clean split and on a cached corrupted copy of the split for
   every corruption × severity (``mode.eval_corruptions`` × ``mode.eval_severities``); per-task metrics go to
   ``metrics.jsonl`` (``type: corruption`` records), W&B (a table) and ``summary.json["transfer"]``.

The δ statistic that compares an MTL source with STL sources lives in :mod:`mtl_bench.report.robustness`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_bench.checkpoint import digest_path, load_checkpoint
from mtl_bench.config.validate import RUNTIME_KEYS
from mtl_bench.corruptions import ALL, RandomCorruption, RandomlyCorruptedDataset, corrupted_sets, describe, names
from mtl_bench.data.base import Benchmark, make_loader
from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.utils import flatten_dict

log = logging.getLogger(__name__)

# config nodes that define the network and the data: a transfer job must match its source on these
ARCHITECTURE_KEYS = ("dataset", "backbone", "heads")


@dataclass
class SourceRun:
    dir: Path
    checkpoint: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    kind: str  # mtl | stl:<task> | path
    trained_here: bool = False  # this job's command trained it (its dependency run), rather than finding it complete
    tasks: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir), "checkpoint": str(self.checkpoint), "kind": self.kind, "mode": self.summary.get("mode"),
            "tasks": self.tasks, "seed": self.summary.get("seed"), "combiner": (self.summary.get("combiner") or {}).get("name"),
            "optimizer": (self.summary.get("optimizer") or {}).get("choice"), "trained_here": self.trained_here,
            "selection": self.summary.get("selection"),
        }


def expand_corruptions(entries: Sequence[str], key: str) -> list[str]:
    """Corruption names from a list of names and subsets (``common``, ``extra``, ``all``, a family)."""
    out: list[str] = []
    for entry in entries:
        entry = str(entry)
        if entry in ALL:
            chosen: Sequence[str] = [entry]
        else:
            try:
                chosen = names(entry)
            except ConfigError:
                raise ConfigError(
                    f"{key}: '{entry}' is neither a corruption nor a subset; corruptions: {list(ALL)}; subsets: "
                    "common, extra, all, noise, blur, weather, digital"
                ) from None
        out.extend(c for c in chosen if c not in out)
    if not out:
        raise ConfigError(f"{key} is empty; give corruption names or a subset such as [common]")
    return out


def _severities(values: Sequence[int], key: str) -> list[int]:
    out = [int(v) for v in values]
    if not out or any(not 1 <= v <= 5 for v in out):
        raise ConfigError(f"{key}={list(values)} must be a non-empty list of severities in 1..5")
    return out


def auto_source(spec: str, task_names: Sequence[str]) -> tuple[str, str | None] | None:
    """``("mtl", None)`` / ``("stl", task)`` for the automatic sources, ``None`` for a path."""
    if spec == "mtl":
        return "mtl", None
    if spec.startswith("stl:"):
        task = spec[4:]
        if task not in task_names:
            raise ConfigError(f"mode.source={spec}: task '{task}' is not one of the dataset's tasks {list(task_names)}")
        return "stl", task
    return None


def source_config(cfg: DictConfig, kind: str, task: str | None) -> DictConfig:
    """The job's config turned into the source's: the same data, network, optimizer, combiner and seed, with
    ``mode=mtl`` (all tasks, or ``mode.tasks``) or ``mode=stl mode.task=<task>``."""
    from mtl_bench.config.schema import MTLModeConf, STLModeConf, TrainerConf

    src = copy.deepcopy(cfg)
    with open_dict(src):
        mode = STLModeConf(task=task) if kind == "stl" else MTLModeConf(tasks=list(cfg.mode.tasks) if cfg.mode.tasks else None)
        src.mode = OmegaConf.structured(mode)
        trainer = OmegaConf.merge(OmegaConf.structured(TrainerConf), OmegaConf.to_container(cfg.trainer, resolve=True))
        trainer.epochs = int(cfg.mode.source_epochs or cfg.trainer.epochs)
        trainer.resume = "auto"
        src.trainer = trainer
    return src


# keys that do not change what a source run learns: where it runs, how it logs and checkpoints, and its seed and
# names (the seed names its own source folder)
NOT_IDENTITY = (*RUNTIME_KEYS, "seed", "experiment_name", "optimized_metric")
# the classes that implement a mode (named by mode.name) and the diagnostics (which never change what a run learns):
# implementation paths, kept out of the identity so that moving a class does not orphan the sources trained before
IMPLEMENTATION_KEY = re.compile(r"^mode\._target_$|^diagnostics\.[^.]+\._target_$")


def source_identity(src_cfg: DictConfig) -> str:
    """A short hash of everything that defines an automatically trained source (combiner, optimizer and its lr,
    epochs, data, network, mode ...; not the seed, which names its own folder), so that a sweep over methods
    never reuses another method's backbone."""
    probe = copy.deepcopy(src_cfg)
    with open_dict(probe):
        probe.seed = 0  # seed-derived values (e.g. dataset.aug_seed: ${seed}) must not change the identity
    flat = flatten_dict(OmegaConf.to_container(probe, resolve=True))
    kept = {k: v for k, v in sorted(flat.items()) if not k.startswith(NOT_IDENTITY) and not IMPLEMENTATION_KEY.match(k)}
    combiner = str(flat.get("combiner._target_", "")).rsplit(".", 1)[-1]
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{combiner or 'run'}-{digest}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"mode.source: {path} is missing; a source run folder holds config_resolved.yaml, summary.json "
                          "and checkpoints/{best,last}.pt as written by python -m mtl_bench.train")
    return yaml.safe_load(path.read_text()) or {}


def load_source(run_dir: Path, which: str, kind: str, checkpoint: Path | None = None) -> SourceRun:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"mode.source: {summary_path} is missing; point mode.source at a finished run folder")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "completed":
        raise ConfigError(f"mode.source: the run in {run_dir} has status '{summary.get('status')}', not completed")
    if checkpoint is None:
        checkpoint = run_dir / "checkpoints" / f"{which}.pt"
        if which == "best" and not checkpoint.is_file():  # rule=last/last_k runs keep no best.pt
            checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise ConfigError(f"mode.source: checkpoint {checkpoint} is missing")
    config = _read_yaml(run_dir / "config_resolved.yaml")
    return SourceRun(run_dir, checkpoint, config, summary, kind, tasks=list(summary.get("tasks") or []))


def source_folder(cfg: DictConfig, kind: str, task: str | None, src_cfg: DictConfig) -> tuple[str, Path]:
    """Tag and folder of an automatic source: ``<output_root>/<experiment>/sources/<mtl|stl_task>-<identity>/seed<seed>``."""
    tag = f"{'mtl' if kind == 'mtl' else f'stl_{task}'}-{source_identity(src_cfg)}"
    return tag, Path(cfg.paths.output_root) / str(cfg.experiment_name) / "sources" / tag / f"seed{cfg.seed}"


def planned_source(cfg: DictConfig, task_names: Sequence[str]) -> tuple[str, DictConfig, Path] | None:
    """``(tag, config, folder)`` of the run an automatic source (``mode.source=mtl | stl:<task>``) is trained as
    (a dependency run of the transfer job); ``None`` for an explicit run folder or checkpoint."""
    check_choice("mode.source_checkpoint", str(cfg.mode.source_checkpoint), ("best", "last"))
    auto = auto_source(str(cfg.mode.source), task_names)
    if auto is None:
        return None
    src_cfg = source_config(cfg, *auto)
    tag, run_dir = source_folder(cfg, *auto, src_cfg)
    return tag, src_cfg, run_dir


def find_source(cfg: DictConfig, task_names: Sequence[str]) -> SourceRun:
    """The source run of a transfer job: an explicit run folder / checkpoint, or the automatic source's folder, which
    its dependency run has completed (:mod:`mtl_bench.modes.transfer`)."""
    spec = str(cfg.mode.source)
    which = str(cfg.mode.source_checkpoint)
    planned = planned_source(cfg, task_names)
    if planned is not None:
        tag, _, run_dir = planned
        log.info("using the %s source backbone in %s", tag, run_dir)
        return load_source(run_dir, which, spec)
    path = Path(spec)
    if path.is_file():  # a checkpoint: <run>/checkpoints/<name>.pt
        return load_source(path.parent.parent, which, "path", checkpoint=path)
    if not path.is_dir():
        raise ConfigError(f"mode.source={spec} is neither mtl, stl:<task>, a run folder nor a checkpoint file")
    return load_source(path, which, "path")


def check_architecture(cfg: DictConfig, source: SourceRun) -> None:
    """An explicit source must have been trained with the job's dataset, backbone and heads."""
    current = OmegaConf.to_container(cfg, resolve=True)
    a = flatten_dict({k: source.config.get(k) for k in ARCHITECTURE_KEYS})
    b = flatten_dict({k: current.get(k) for k in ARCHITECTURE_KEYS})
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ:
        choices = source.summary.get("choices") or {}
        hint = " ".join(f"{g}={choices[g]}" for g in ARCHITECTURE_KEYS if g in choices)
        raise ConfigError(
            f"mode.source={source.dir} was trained with a different {', '.join(differ[:6])}; compose this job like the source "
            f"(its choices: {hint or 'see its config_resolved.yaml'})"
        )


def transfer_tasks(cfg: DictConfig, source: SourceRun) -> list[str]:
    tasks = list(cfg.mode.tasks) if cfg.mode.tasks else list(source.tasks)
    missing = [t for t in tasks if t not in source.tasks]
    if missing:
        raise ConfigError(f"mode.tasks={tasks}: the source run in {source.dir} has no head for {missing} (its tasks: {source.tasks})")
    return tasks


def load_source_weights(model: MultiTaskModel, source: SourceRun, heads: str) -> None:
    """Source encoder (and heads, ``heads=loaded``) into ``model``; then freeze the encoder."""
    check_choice("mode.heads", heads, ("loaded", "fresh"))
    # a source this job found or trained is verified; a user's checkpoint from elsewhere may lack a digest file
    verify = source.kind != "path" or digest_path(source.checkpoint).is_file()
    if not verify:
        log.warning("%s has no digest file %s: loaded unverified", source.checkpoint, digest_path(source.checkpoint).name)
    state = load_checkpoint(source.checkpoint, verify=verify)["model"]
    own = model.state_dict()
    wanted = [k for k in own if k.startswith("encoder.") or (heads == "loaded" and k.startswith("heads."))]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ConfigError(f"{source.checkpoint} lacks {len(missing)} entries this model needs (e.g. {missing[:3]}); "
                          "it was trained with another backbone or heads")
    bad = [k for k in wanted if state[k].shape != own[k].shape]
    if bad:
        raise ConfigError(f"{source.checkpoint}: shapes differ for {bad[:3]}; it was trained with another backbone or heads")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    model.freeze_encoder()


def corrupt_training_splits(benchmark: Benchmark, spec: DictConfig) -> dict[str, Any]:
    """Wrap the train and validation splits: one random corruption and severity per sample."""
    train_names = expand_corruptions(spec.train_corruptions, "mode.train_corruptions")
    sev = _severities(spec.train_severities, "mode.train_severities")
    info = {}
    for split in ("train", "val"):
        base = benchmark.splits[split]
        if not hasattr(base, "raw_sample"):
            raise ConfigError(f"mode=transfer needs an image dataset with raw (uint8-representable) images; dataset "
                              f"'{benchmark.name}' has none (use nyuv2, cityscapes, celeba or synthetic_images)")
        seed = int(spec.corruption_seed) + (0 if split == "train" else 1)
        transform = RandomCorruption(train_names, sev, seed=seed, backend=str(spec.backend), clean_prob=float(spec.clean_prob))
        benchmark.splits[split] = RandomlyCorruptedDataset(base, transform, indexed=True)
        info[split] = benchmark.splits[split].info()
    return info


class CorruptionEvaluation:
    """The result hook of a transfer run: the selected model on every corruption × severity."""

    def __init__(self, trainer: Any, base: Any, spec: DictConfig, source: SourceRun, train_info: Mapping[str, Any]):
        self.trainer, self.base, self.spec, self.source, self.train_info = trainer, base, spec, source, dict(train_info)
        self.corruptions = expand_corruptions(spec.eval_corruptions, "mode.eval_corruptions")
        self.severities = _severities(spec.eval_severities, "mode.eval_severities")
        self.split = str(spec.eval_split)
        check_choice("mode.eval_split", self.split, ("test",))  # (the validation split is corrupted at random for model selection)

    def __call__(self, results: Mapping[str, Any]) -> dict[str, Any]:
        tr = self.trainer
        split = self.split
        eval_bs = tr.settings.eval_batch_size or tr.settings.batch_size
        corrupted: dict[str, dict[str, dict[str, float]]] = {}
        rows = []
        t0 = time.monotonic()
        sets = corrupted_sets(self.base, self.corruptions, self.severities, int(self.spec.corruption_seed), self.spec.cache_dir,
                              backend=str(self.spec.backend), workers=int(self.spec.workers))
        fingerprint = next(iter(sets.values())).fingerprint
        with tr.selected_weights() as best:  # the model whose clean numbers the corrupted ones are compared with
            # rule=best: best.pt's; rules last / last_k (and best without a best.pt): the final weights, whose
            # clean numbers are results["final"] (under last_k, "selected" averages several epochs' evaluations)
            evaluated = results["selected"] if best is not None else results["final"]
            clean = {k.split("/", 1)[1]: v for k, v in evaluated.items() if k.startswith(f"{split}/") and k.count("/") == 2}
            for (c, s), ds in sets.items():
                loader = make_loader(ds, eval_bs, shuffle=False, num_workers=tr.settings.num_workers)
                out = tr.evaluate(split, loader=loader)
                metrics = {k.split("/", 1)[1]: v for k, v in out.items() if k.count("/") == 2}
                corrupted.setdefault(c, {})[str(s)] = metrics
                tr.logger.log_event("corruption", {"corruption": c, "severity": s, "split": split,
                                                   **{f"{split}/{k}": v for k, v in metrics.items()}})
                rows.extend([c, s, k, v] for k, v in metrics.items())
        tr.logger.log_table("corruptions", ["corruption", "severity", "metric", "value"], rows)
        return {
            "source": self.source.describe(), "heads": str(self.spec.heads), "split": split,
            "corruptions": {**describe(str(self.spec.backend)), "names": self.corruptions, "severities": self.severities,
                            "seed": int(self.spec.corruption_seed), "dataset_fingerprint": fingerprint,
                            "cache_dir": str(self.spec.cache_dir)},
            "fine_tuning": {"combiner": "ew", "frozen": "encoder", **self.train_info},
            "clean": clean, "corrupted": corrupted, "eval_time_s": time.monotonic() - t0,
        }
