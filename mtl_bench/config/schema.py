"""Structured-config schemas for the config groups.

Importing this module registers every schema in Hydra's ConfigStore under the ``schema/`` group; the
YAML options extend them explicitly (``defaults: [/schema/<group>@_here_: <name>, _self_]``), so a
misspelled key (``trainer.epoch=3``) or a wrongly typed value (``trainer.epochs=abc``) is rejected at
composition time, before anything is built.  Range checks that types cannot express live in
:mod:`mtl_bench.config.validate`.

Keep the schemas under ``schema/``: the group listings Hydra prints for an unknown choice then show
only real options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SelectionConf:
    rule: str = "best"  # best | last | last_k
    metric: str = "val/loss"  # a validation key (rule=best)
    mode: str = "auto"  # auto | min | max
    k: int = 10  # rule=last_k: average over the last k evaluations


@dataclass
class PreemptionConf:
    """Cluster preemption: on one of ``signals`` the trainer finishes the current step, writes a checkpoint
    (with the data-loader position) and exits with ``exit_code``; a handler installed before ours (e.g.
    submitit's requeue handler) is called after the checkpoint is on disk."""

    # SIGINT: Ctrl-C (status interrupted, exit code 130); SIGTERM: SLURM preemption / scancel; SIGUSR1:
    # `sbatch --signal=USR1@<s>`; SIGUSR2: what submitit asks for (status preempted, exit_code)
    signals: List[str] = field(default_factory=lambda: ["SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"])
    exit_code: int = 75  # EX_TEMPFAIL ("try again"): the job is meant to be requeued and resumed


@dataclass
class TrainerConf:
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:<index>
    num_workers: int = 0
    drop_last: bool = True  # drop the last incomplete training batch if a full one remains (BatchNorm needs >1 sample; as LibMTL)
    eval_every: int = 1  # epochs between validation passes (the last epoch is always evaluated)
    log_every_n_steps: int = 20
    max_steps_per_epoch: Optional[int] = None
    grad_clip_norm: Optional[float] = None
    check_finite: bool = True  # stop on a NaN/inf task loss or one outside the combiner's domain (one host sync per step)
    # what a diverged run means to a sweep: fail (the launcher records a failed job; with max_batch_size the sweep
    # stops) | record (status diverged in summary.json, the sweep goes on: learning-rate grids, where a too-large
    # rate diverging is a result, not an error)
    on_divergence: str = "fail"
    # sequential: K backward passes | batched: K head passes + one vmapped encoder pass (same G up to rounding;
    # faster only for some models, see docs/benchmarks.md; falls back to sequential where vmap fails)
    per_task_backward: str = "sequential"
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + dynamic loss scaling); GPU options
    channels_last: bool = False  # NHWC memory format for image models (GPU throughput)
    sync_bn: bool = False  # torchrun: SyncBatchNorm (global-batch statistics; CUDA only), see docs/distributed.md
    deterministic: bool = False
    num_threads: Optional[int] = None  # torch intra-op threads (None: torch default)
    progress_bar: Optional[bool] = None  # None: only when stderr is a terminal
    checkpoint_every: int = 1  # epochs between checkpoints/last.pt writes (0: only at the end)
    # keep the checkpoint that last.pt replaces as last.prev.pt (a hard link: no copy; a way out if last.pt is damaged)
    keep_previous_checkpoint: bool = True
    checkpoint_every_n_steps: int = 0  # also mid-epoch (with the data-loader position) every N steps (0: off)
    checkpoint_every_min: float = 0.0  # and every N minutes of wall time (0: off); keep it below the cluster's signal delay
    # auto: continue from <output_dir>/checkpoints/last.pt when it exists (requeued or restarted jobs) |
    # never: start from scratch (an existing run in the folder is overwritten) | <path>: continue from that checkpoint
    resume: str = "auto"
    preemption: PreemptionConf = field(default_factory=PreemptionConf)
    selection: SelectionConf = field(default_factory=SelectionConf)


@dataclass
class MTLModeConf:
    _target_: str = "mtl_bench.modes.mtl.MTLMode"  # the Mode class (mtl_bench/modes/)
    name: str = "mtl"
    tasks: Optional[List[str]] = None  # None: every task of the dataset


@dataclass
class STLModeConf:
    _target_: str = "mtl_bench.modes.stl.STLMode"  # the Mode class (mtl_bench/modes/)
    name: str = "stl"
    task: Optional[str] = None  # required: the single task to train


@dataclass
class AuxModeConf:
    """Auxiliary-task learning: only ``targets`` count for model selection, Δm and reported results."""

    _target_: str = "mtl_bench.modes.aux.AuxMode"  # the Mode class (mtl_bench/modes/)
    name: str = "aux"
    targets: List[str] = field(default_factory=list)  # required: the target task(s)
    auxiliaries: Optional[List[str]] = None  # None: every other task of the dataset
    post_train_epochs: int = 0  # the last N epochs fine-tune on the targets alone ("post-training")


@dataclass
class TransferModeConf:
    """Feature transferability under image corruptions (Elich et al., App. A6): freeze a finished run's backbone,
    fine-tune the heads on randomly corrupted training images, evaluate on every corruption x severity."""

    _target_: str = "mtl_bench.modes.transfer.TransferMode"  # the Mode class (mtl_bench/modes/)
    name: str = "transfer"
    # the backbone's run: "mtl" | "stl:<task>" (trained here first, or reused, under
    # <output_root>/<experiment_name>/sources/<source>/seed<seed>) | a run folder | a checkpoint file
    source: str = "mtl"
    source_checkpoint: str = "best"  # best (the run's selected model) | last
    source_epochs: Optional[int] = None  # epochs of an automatically trained source (None: trainer.epochs)
    tasks: Optional[List[str]] = None  # tasks to fine-tune and evaluate (None: the source's tasks)
    heads: str = "loaded"  # loaded (the source's heads) | fresh (re-initialised)
    backend: str = "mtl_bench"  # corruption implementation: mtl_bench | imagecorruptions (the fork, if installed)
    corruption_seed: int = 0  # corrupted evaluation copies and per-sample training draws
    train_corruptions: List[str] = field(default_factory=lambda: ["common"])  # names, or common | extra | all
    train_severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    clean_prob: float = 0.0  # probability of a clean training image
    eval_corruptions: List[str] = field(default_factory=lambda: ["common"])
    eval_severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    eval_split: str = "test"  # the split evaluated clean and corrupted (validation is used, corrupted, for selection)
    cache_dir: str = "${paths.output_root}/corruption_cache"
    workers: int = 0  # processes for corrupting the evaluation copies (0: in this process)


@dataclass
class ForkMergeModeConf:
    """ForkMerge (Jiang et al., NeurIPS 2023): fork into branches with different task weights, merge by a
    search on the targets' validation score."""

    _target_: str = "mtl_bench.modes.forkmerge.ForkMergeMode"  # the Mode class (mtl_bench/modes/)
    name: str = "forkmerge"
    targets: List[str] = field(default_factory=list)
    auxiliaries: Optional[List[str]] = None
    branches: List[Any] = field(default_factory=lambda: [[], "all"])  # auxiliaries per branch ([] = target only)
    topk: Optional[List[int]] = None  # ranking phase: branch b = targets + the top-k_b auxiliaries
    ranking_epochs: int = 1  # epochs per auxiliary in the ranking phase (topk only)
    merge_every: int = 1  # merge period Δt
    merge_unit: str = "epochs"  # epochs | steps
    search: str = "greedy"  # greedy (official normalised scheme) | lambda (plain λ grid, 2 branches)
    grid: List[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    prune_to: Optional[int] = None  # keep the top-N branches (by merge weight) after the first merge


@dataclass
class WandbLoggerConf:
    name: str = "wandb"
    project: str = "mtl_bench"
    entity: Optional[str] = None
    mode: Optional[str] = None  # None: $WANDB_MODE, else offline
    group: Optional[str] = None  # None: experiment name (+ sweep timestamp in multirun)
    run_name: Optional[str] = None  # None: from the overrides
    tags: List[str] = field(default_factory=list)
    notes: Optional[str] = None
    system_stats: bool = True


@dataclass
class NoLoggerConf:
    name: str = "none"


@dataclass
class SyntheticDatasetConf:
    _target_: str = "mtl_bench.data.synthetic.build_synthetic"
    name: str = "synthetic"
    num_tasks: int = 2
    input_dim: int = 100
    correlation: float = 0.5
    weight_scale: float = 1.0
    num_sin: int = 10
    noise_std: float = 0.1
    label_scales: Optional[List[float]] = None
    n_train: int = 8192
    n_val: int = 2048
    n_test: int = 2048
    seed: int = 0
    task_names: Optional[List[str]] = None


@dataclass
class SyntheticImagesDatasetConf:
    """Generated shape scenes (``mtl_bench.data.synthetic_images``); ranges are checked by the builder."""

    _target_: str = "mtl_bench.data.synthetic_images.build_synthetic_images"
    name: str = "synthetic_images"
    height: int = 64  # >= 32
    width: int = 64  # >= 32
    n_train: int = 512
    n_val: int = 128
    n_test: int = 256
    seed: int = 0  # data seed, independent of the training seed
    shapes: List[str] = field(default_factory=lambda: ["disc", "square", "triangle", "ring"])  # and/or cross
    min_objects: int = 1
    max_objects: int = 4  # <= 16
    tasks: Optional[List[str]] = None  # None: [seg, depth]; also has_<shape> presence attributes
    augment: bool = False  # random horizontal flip of training samples
    aug_seed: int = 0
    normalize: Optional[str] = None  # null | imagenet | dataset (training split's per-channel mean/std)
    max_tilt: float = 0.0  # degrees in [0, 60]: tilted object planes (3-D scenes: shading and the `normal` task)
    layout: str = "flat"  # flat | room (floor + back wall; 3-D scenes)


@dataclass
class MultiDigitsDatasetConf:
    """MultiMNIST-style pairs of scikit-learn's 8x8 digits (``mtl_bench.data.multi_digits``); checked by the builder."""

    _target_: str = "mtl_bench.data.multi_digits.build_multi_digits"
    name: str = "multi_digits"
    canvas: int = 16
    offset: int = 4  # > 2 * jitter
    jitter: int = 1
    overlap: str = "max"  # max | sum
    n_train: int = 10000
    n_val: int = 2000
    n_test: int = 2000
    seed: int = 0  # data seed, independent of the training seed
    source_fractions: List[float] = field(default_factory=lambda: [0.6, 0.15, 0.25])
    tasks: Optional[List[str]] = None  # None: [left, right]


@dataclass
class MultiMNISTDatasetConf:
    """MultiMNIST generated from MNIST's IDX files (``mtl_bench.data.multimnist``); checked by the builder."""

    _target_: str = "mtl_bench.data.multimnist.build_multimnist"
    name: str = "multimnist"
    root: str = "${paths.data_dir}/mnist"  # holds MNIST/raw/*-ubyte[.gz] (torchvision's layout)
    cache_dir: Optional[str] = "${paths.data_dir}/mnist/multimnist_cache"  # None: no cache
    seed: int = 0  # data seed, independent of the training seed
    val_size: int = 10000  # last MNIST training images held out for validation
    n_train: Optional[int] = None  # pairs per split; None: one per source image
    n_val: Optional[int] = None
    n_test: Optional[int] = None
    canvas: int = 36
    offset: int = 6
    size: Optional[int] = 28  # None: keep the canvas size
    mean: float = 0.1307
    std: float = 0.3081
    tasks: Optional[List[str]] = None  # None: [left, right]


@dataclass
class _OptimizerBase:
    _partial_: bool = True
    _convert_: str = "all"  # plain lists in param_groups, so optimizer state saves with weights_only


@dataclass
class AdamConf(_OptimizerBase):
    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 1e-2


@dataclass
class SGDConf(_OptimizerBase):
    _target_: str = "torch.optim.SGD"
    lr: float = 1e-2
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


SCHEMAS: dict[str, dict[str, Any]] = {
    "schema/trainer": {"default": TrainerConf},
    "schema/mode": {"mtl": MTLModeConf, "stl": STLModeConf, "aux": AuxModeConf, "forkmerge": ForkMergeModeConf,
                    "transfer": TransferModeConf},
    "schema/logger": {"wandb": WandbLoggerConf, "none": NoLoggerConf},
    "schema/dataset": {"synthetic": SyntheticDatasetConf, "synthetic_images": SyntheticImagesDatasetConf,
                       "multi_digits": MultiDigitsDatasetConf, "multimnist": MultiMNISTDatasetConf},
    "schema/optimizer": {"adam": AdamConf, "adamw": AdamWConf, "sgd": SGDConf},
}


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)


register_schemas()
