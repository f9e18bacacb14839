"""The training loop: epochs of ``batch → encode → heads → per-task losses → engine → optimizer``.

The trainer is independent of Hydra: it receives built components (model, tasks, combiner, optimizer,
scheduler, selector, logger) and a :class:`~mtl_bench.config.schema.TrainerConf`.  It evaluates on the
validation split every ``eval_every`` epochs (and always after the last), keeps ``checkpoints/last.pt``
(full training state) and ``checkpoints/best.pt`` (the model chosen by the selection rule), stops with a
:class:`~mtl_bench.errors.NonFiniteLossError` naming the step and task when a loss becomes NaN/inf (the
last good checkpoint is left untouched), and writes ``summary.json`` at the end — also when it fails.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mtl_bench import run_state
from mtl_bench.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from mtl_bench.combiners.base import Combiner
from mtl_bench.config.schema import TrainerConf
from mtl_bench.data.base import Benchmark, make_loader
from mtl_bench.distributed import current as current_dist
from mtl_bench.engine import GradientEngine, GradientObserver, StepResult
from mtl_bench.diagnostics.base import Diagnostic
from mtl_bench.errors import ConfigError, MTLBenchError, NonFiniteLossError, PreemptedError
from mtl_bench.loggers.run_logger import RunLogger
from mtl_bench.metrics.delta_tracking import DeltaMSpec
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.optim import PlateauOnMetric, group_lrs
from mtl_bench.optimizers import is_task_wise
from mtl_bench.preemption import PreemptionGuard, status_for, stop_exit_code
from mtl_bench.selection import ModelSelector
from mtl_bench.step_context import step_context
from mtl_bench.tasks import Task
from mtl_bench.report.run_figures import render
from mtl_bench.run_summary import RESULT_COLUMNS, RESULT_KEYS, metric_directions, read_summary, results_rows, results_table
from mtl_bench.run_summary import write_summary_file
from mtl_bench.utils import to_jsonable

__all__ = ["Trainer", "RESULT_KEYS", "metric_directions", "read_summary", "write_summary_file"]

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


def batch_size_of(x: Any) -> int:
    """The number of samples in a batch input: a tensor's first dimension, else the input's ``num_graphs`` (a graph
    batch, e.g. PyTorch Geometric's ``Batch``) or ``len``."""
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    n = getattr(x, "num_graphs", None)
    return int(n) if n is not None else len(x)


def precision(name: str, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """The autocast dtype of ``trainer.precision`` and, for fp16, its dynamic loss scaler (bf16 has fp32's exponent
    range and needs none)."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"trainer.precision='{name}' is invalid; choose one of ['fp32', 'bf16', 'fp16']")
    dtype = dtypes[name]
    return dtype, torch.amp.GradScaler(device.type) if dtype is torch.float16 else None


class Trainer:
    def __init__(
        self,
        *,
        model: MultiTaskModel,
        benchmark: Benchmark,
        tasks: Mapping[str, Task],
        combiner: Combiner,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None,
        settings: TrainerConf,
        selector: ModelSelector,
        logger: RunLogger,
        output_dir: str | os.PathLike,
        device: torch.device,
        seed: int,
        run_info: Mapping[str, Any] | None = None,
        observers: Sequence[GradientObserver] = (),
        delta: DeltaMSpec | None = None,
        transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        diagnostics: Sequence[Diagnostic] = (),
        targets: Sequence[str] | None = None,
        post_train_epochs: int = 0,
    ):
        self.model = model.to(device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype, self.scaler = precision(settings.precision, device)
        self.tasks = dict(tasks)
        self.task_names = list(self.tasks)
        # auxiliary-task learning: only the targets count for selection, Δm and reporting
        self.targets = list(targets) if targets is not None else list(self.task_names)
        self.auxiliaries = [t for t in self.task_names if t not in self.targets]
        if not 0 <= post_train_epochs < settings.epochs:
            raise ConfigError(f"mode.post_train_epochs={post_train_epochs} must lie in [0, trainer.epochs={settings.epochs})")
        self.post_train_epochs = post_train_epochs
        self.combiner = combiner.to(device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.settings = settings
        self.selector = selector
        self.logger = logger
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.device = device
        self.run_info = dict(run_info or {})
        self.delta = delta
        self.transforms = dict(transforms or {})
        self.diagnostics = list(diagnostics)
        self.dist = current_dist()  # under torchrun: the DistContext of mtl_bench/distributed.py; a no-op otherwise
        self.engine = self._engine([*observers, *self.diagnostics])
        self._init_progress(seed)
        self.train_loader, self.eval_loaders = self._loaders(benchmark, device)
        self.directions = metric_directions(self.tasks, aux=bool(self.auxiliaries))
        if delta is not None:
            self.directions.update({"val/delta_m": False, "test/delta_m": False})
        self._t0 = time.monotonic()

    def _engine(self, observers: Sequence[GradientObserver]) -> GradientEngine:
        """The gradient engine; a task-wise optimizer (AdaTask) receives the per-task gradients (and no clipping)."""
        optimizer, settings = self.optimizer, self.settings
        self.task_wise = is_task_wise(optimizer)
        if self.task_wise and settings.grad_clip_norm:
            raise ConfigError(
                f"trainer.grad_clip_norm={settings.grad_clip_norm} cannot be used with the task-wise optimizer "
                f"{type(optimizer).__name__}: its shared parameters receive per-task gradients, not one summed gradient to clip"
            )
        return GradientEngine(self.model, self.combiner, self.task_names, observers, settings.per_task_backward,
                              task_sink=optimizer.set_task_gradients if self.task_wise else None, dist=self.dist)

    def _init_progress(self, seed: int) -> None:
        """Counters, the data-order generator and what a checkpoint carries besides the model and optimizer."""
        self.global_step = 0
        self.epoch = 0
        self.last_checkpoint: Path | None = None
        self.best_val: dict[str, float] = {}
        self.data_generator = torch.Generator().manual_seed(seed)
        self.preemption: PreemptionGuard | None = None  # active during fit()
        self._resume_partial: dict[str, Any] | None = None  # mid-epoch position of a loaded checkpoint
        self.epoch_start_generator: torch.Tensor | None = None
        self.epoch_progress: tuple[int, torch.Tensor, int] = (0, torch.zeros(0), 0)  # batches done, loss sums, samples
        self._last_save_time = time.monotonic()
        self.resumes: list[dict[str, Any]] = []  # one entry per resumption of this run
        self._wall_before = 0.0  # wall time of the run's earlier (interrupted) processes
        # extra state of a driver around this trainer (ForkMerge: branches, merges), saved under "extra"
        self.extra_state: dict[str, Callable[[], Any]] = {}
        # extra summary blocks computed from the final results (transfer: the corruption evaluation)
        self.result_hooks: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.loaded_extra: dict[str, Any] = {}

    def _loaders(self, benchmark: Benchmark, device: torch.device) -> tuple[Any, dict[str, Any]]:
        """The shuffling training loader (this rank's share under torchrun) and the val / test loaders."""
        pin = device.type == "cuda"
        n_train = len(benchmark.splits["train"])
        if n_train == 0:
            raise ConfigError(f"dataset '{benchmark.name}' has an empty training split")
        # drop the last incomplete batch only when at least one full batch remains (tiny datasets keep one)
        drop_last = self.settings.drop_last and n_train >= self.settings.batch_size
        if n_train < self.settings.batch_size:
            log.warning("trainer.batch_size=%d exceeds the %d training samples: one batch of %d per epoch",
                        self.settings.batch_size, n_train, n_train)
        train_set = benchmark.splits["train"]
        if self.dist.enabled:  # every rank draws the same global batches and loads only its slice of each
            train_set, drop_last = self.dist.shard_dataset(train_set, self.settings.batch_size, self.settings.drop_last), True
        train_loader = make_loader(
            train_set, self.settings.batch_size, shuffle=True, generator=self.data_generator,
            num_workers=self.settings.num_workers, drop_last=drop_last, pin_memory=pin,
        )
        eval_bs = self.settings.eval_batch_size or self.settings.batch_size
        eval_loaders = {
            split: make_loader(benchmark.splits[split], eval_bs, shuffle=False, num_workers=self.settings.num_workers, pin_memory=pin)
            for split in ("val", "test")
        }
        return train_loader, eval_loaders

    # ------------------------------------------------------------------ steps
    def _to_device(self, batch: Batch) -> Batch:
        x, targets = batch
        nb = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb)  # a tensor, or any batch object with .to (a graph batch)
        if self.settings.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, {k: v.to(self.device, non_blocking=nb) for k, v in targets.items()}

    def autocast(self):
        """Mixed-precision context for forward passes and losses (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _check_losses(self, stacked: torch.Tensor) -> None:
        """One host sync per step: every task loss finite and inside the combiner's domain."""
        bad = ~torch.isfinite(stacked)
        bound = self.combiner.loss_lower_bound()
        if bound is not None:
            bad = bad | (stacked < torch.as_tensor(bound, dtype=stacked.dtype, device=stacked.device))
        if not bool(bad.any()):
            return
        k = int(bad.nonzero()[0])
        value = float(stacked[k])
        if math.isfinite(value):
            bounds = torch.as_tensor(bound).reshape(-1)
            floor = float(bounds[k] if bounds.numel() > 1 else bounds[0])
            raise ConfigError(
                f"combiner '{self.combiner.name}' is defined for task losses >= {floor:g} only (log or inverse "
                f"losses); task '{self.task_names[k]}' has loss {value:.6g} at global step "
                f"{self.global_step + 1} (epoch {self.epoch}): use another combiner or a non-negative loss"
            )
        raise NonFiniteLossError(
            step=self.global_step + 1, epoch=self.epoch, task=self.task_names[k], value=value,
            checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
        )

    def train_step(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]):
        """One optimizer step; returns the detached K-vector of task losses and the engine's result."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            rep = self.model.encode(x)
            # rep itself, or detached copies for representation-space methods (not in post-training: one plain backward)
            leaves = rep if self.in_post_training else self.engine.leaves(rep)
            outputs = self.model.decode(leaves, self.task_names)
            raw = self.task_losses(outputs, targets)  # separate scalars
            losses = self.transform(raw)  # what the combiner sees (loss_transforms; identity by default)
        # float32 K-vectors; under DDP the global-batch means on every rank, so logs and the checks below agree
        stacked, seen = self.dist.stack_means([raw[t] for t in self.task_names], [losses[t] for t in self.task_names])
        if self.settings.check_finite:
            self._check_losses(seen)
        scale = None
        if self.scaler is not None:
            self.scaler.scale(stacked)  # initialises the scaler's state on first use (the product is unused)
            scale = float(self.scaler.get_scale())
        if self.in_post_training:  # fine-tune on the targets alone: Σ_targets L_t, one backward, no combiner
            objective = sum(losses[t] for t in self.targets)
            (objective * (scale or 1.0)).backward()
            self.dist.average_grads(self.engine.params)  # DDP: the global-batch gradient (no-op on one process)
            weights = torch.tensor([1.0 if t in self.targets else 0.0 for t in self.task_names], device=stacked.device)
            result = StepResult(objective.detach(), weights, None, None)
        else:
            if self.combiner.extra_batches:  # methods that look at other training batches first (Auto-Lambda, MoDo)
                self.combiner.before_backward(step_context(self, x, targets, losses))
            result = self.engine.backward(losses, self.global_step, rep=rep, loss_scale=scale, leaves=leaves)
        self._regularize(x, scale)
        for d in self.diagnostics:  # diagnostics with their own passes over the batch (e.g. per-sample gradients)
            d.observe_batch(self.global_step, x, targets)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.settings.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip_norm)
        for d in self.diagnostics:
            d.before_step(self.global_step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        for d in self.diagnostics:
            d.after_step(self.global_step)
        post = None
        if self.combiner.needs_post_step_losses:  # e.g. FAMO: losses after the step, same batch
            with torch.no_grad(), self.autocast():
                post_losses = self.transform(self.task_losses(self.model(x, self.task_names), targets))
                (post,) = self.dist.stack_means([post_losses[t] for t in self.task_names])
        self.combiner.after_step(post)
        self.global_step += 1
        return stacked, result

    regularizer_value: torch.Tensor | None = None  # the last step's model regularization term (None: the model has none)
    _regularizer_checked = False

    def _regularize(self, x: torch.Tensor, scale: float | None) -> None:
        """Add the gradient of the model's own term (``MultiTaskModel.regularization(x)``, e.g. DSelect-k's selector
        regulariser) to ``.grad``, after the engine's: outside the combiner, like weight decay (the official DSelect-k
        code adds it to the total loss, the same thing when that loss is a plain sum of the task losses).  Under
        fp16 it is scaled like the task losses; under DDP the gradients are averaged again (the engine's part is
        identical on every rank, so averaging it again leaves it unchanged)."""
        with self.autocast():
            term = self.model.regularization(x)
        self.regularizer_value = None
        if term is None:
            return
        if term.requires_grad:
            if self.task_wise and not self._regularizer_checked:
                self._refuse_shared_regularizer(term)
            (term * (scale or 1.0)).backward()
            self.dist.average_grads(self.engine.params)
        (self.regularizer_value,) = self.dist.stack_means([term])

    def _refuse_shared_regularizer(self, term: torch.Tensor) -> None:
        """A task-wise optimizer updates the shared parameters from its per-task gradients and ignores their
        ``.grad``: a regularizer that reaches one of them would be silently dropped."""
        named = self.model.shared_named_parameters()
        grads = torch.autograd.grad(term, [p for _, p in named], retain_graph=True, allow_unused=True)
        reached = [n for (n, _), g in zip(named, grads) if g is not None]
        if reached:
            raise ConfigError(f"the model's regularization term reaches shared parameters ({', '.join(reached[:3])}"
                              f"{', ...' if len(reached) > 3 else ''}), which the task-wise optimizer "
                              f"{type(self.optimizer).__name__} updates from per-task gradients only: use a plain "
                              "optimizer or make them task-specific (e.g. backbone.shared_gates=false)")
        self._regularizer_checked = True

    # ------------------------------------------------------------------ public API for modes driving the trainer
    def advance_to(self, epoch: int, global_step: int) -> None:
        """Set the run's progress counters (a mode that trains other trainers for it, e.g. ForkMerge's branches)."""
        self.epoch, self.global_step = epoch, global_step

    def checkpoint_only_at_boundaries(self) -> None:
        """No mid-epoch checkpoints (a branch trainer, checkpointed inside its driver's checkpoint)."""
        self.settings.checkpoint_every_n_steps, self.settings.checkpoint_every_min = 0, 0.0

    def limit_steps_per_epoch(self, steps: int | None) -> None:
        """At most ``steps`` optimizer steps per :meth:`run_epoch` (``None``: whole epochs)."""
        self.settings.max_steps_per_epoch = steps

    @property
    def wall_time_s(self) -> float:
        """Wall time of the run so far, its earlier (interrupted) processes included."""
        return self._wall_before + time.monotonic() - self._t0

    @property
    def in_post_training(self) -> bool:
        return self.post_train_epochs > 0 and self.epoch > self.settings.epochs - self.post_train_epochs

    def task_losses(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.tasks[t].loss(outputs[t], targets[t]) for t in self.task_names}

    def transform(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.transforms[t](loss) if t in self.transforms else loss for t, loss in losses.items()}

    def _steps_per_epoch(self) -> int:
        n = len(self.train_loader)
        return min(n, self.settings.max_steps_per_epoch) if self.settings.max_steps_per_epoch else n

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split (continuing a loaded mid-epoch checkpoint where there is one)."""
        self.model.train()
        partial, self._resume_partial = self._resume_partial, None
        steps = self._steps_per_epoch()
        resumable = getattr(self.train_loader, "resumable", None)
        if partial is not None:  # redraw this epoch's permutation and skip the batches already trained on
            self.data_generator.set_state(partial["data_generator_epoch_start"])
            start, count = int(partial["batches_done"]), int(partial["count"])
            sums = partial["sums"].to(device=self.device, dtype=torch.float64)
            if resumable is None:
                raise ConfigError("this training loader cannot skip batches; mid-epoch checkpoints cannot be resumed")
            resumable.skip = start
        else:
            start, count = 0, 0
            sums = torch.zeros(len(self.task_names), dtype=torch.float64, device=self.device)
        self.epoch_start_generator = self.data_generator.get_state()
        set_epoch = getattr(self.train_loader.dataset, "set_epoch", None)
        if set_epoch is not None:  # per-epoch random draws that are a function of (seed, epoch, index)
            set_epoch(self.epoch)
        batches = iter(self.train_loader)
        if partial is not None:
            # creating the iterator may draw from the global RNG (the loader's base seed), which the original
            # run did before the checkpointed steps: the checkpoint's streams are the ones to continue from
            set_rng_state(partial["rng"])
        self.epoch_progress = (start, sums, count)
        bar = tqdm(
            total=steps, initial=start, desc=f"epoch {self.epoch}/{self.settings.epochs}", leave=False, dynamic_ncols=True,
            mininterval=1.0, disable=None if self.settings.progress_bar is None else not self.settings.progress_bar,
        )
        for i in range(start, steps):
            x, targets = self._to_device(next(batches))
            stacked, result = self.train_step(x, targets)
            n = batch_size_of(x)
            sums += stacked.double() * n
            count += n
            if self.global_step % self.settings.log_every_n_steps == 0:
                record = {f"train/{t}/loss": v for t, v in zip(self.task_names, stacked.tolist())}
                record["train/objective"] = float(result.objective)
                record.update({f"train/weight/{t}": w for t, w in zip(self.task_names, result.weights.tolist())})
                record.update({f"train/lr/{g}": lr for g, lr in group_lrs(self.optimizer).items()})
                if self.regularizer_value is not None:
                    record["train/regularizer"] = float(self.regularizer_value)
                self.logger.log_step(record, global_step=self.global_step, epoch=self.epoch)
                bar.set_postfix(loss=f"{record['train/objective']:.4g}")
            bar.update(1)
            self.epoch_progress = (i + 1, sums, count)
            self._after_step_checkpoint()
        if steps == len(self.train_loader):
            # run the sampler to its end, as a plain `for batch in loader` does (the shuffling sampler then draws
            # from the data generator once more; no sample is loaded), so the data order of the next epochs does
            # not depend on whether this epoch was resumed
            next(batches, None)
        bar.close()
        self.dist.average_buffers(self.model)  # DDP: every rank evaluates and saves the same BatchNorm statistics
        if resumable is not None:
            resumable.skip = 0
        return dict(zip(self.task_names, (sums / max(count, 1)).tolist()))

    @torch.no_grad()
    def evaluate(self, split: str, loader: Any | None = None) -> dict[str, float]:
        """Metrics ``<split>/<task>/<metric>`` on the split's loader (or on ``loader``, e.g. a corrupted copy)."""
        self.model.eval()
        meters = {t: self.tasks[t].metrics() for t in self.task_names}
        loss_sums = torch.zeros(len(self.task_names), dtype=torch.float64, device=self.device)
        n = 0
        for batch in loader if loader is not None else self.eval_loaders[split]:
            x, targets = self._to_device(batch)
            b = batch_size_of(x)
            with self.autocast():
                outputs = self.model(x, self.task_names)
            for k, t in enumerate(self.task_names):
                pred = outputs[t].float()
                meters[t].update(pred, targets[t])
                loss_sums[k] += self.tasks[t].loss(pred, targets[t]).double() * b
            n += b
        self.model.train()
        out: dict[str, float] = {}
        for t, value in zip(self.task_names, (loss_sums / max(n, 1)).tolist()):
            out[f"{split}/{t}/loss"] = value
            out.update({f"{split}/{t}/{m}": v for m, v in meters[t].compute().items()})
        out[f"{split}/loss"] = sum(out[f"{split}/{t}/loss"] for t in self.targets)
        if self.auxiliaries:
            out[f"{split}/aux_loss"] = sum(out[f"{split}/{t}/loss"] for t in self.auxiliaries)
        if self.delta is not None:
            out.update(self.delta.record(split, out))
        return out

    def _brief(self, val: Mapping[str, float]) -> str:
        keys = ["val/loss", *(["val/delta_m"] if "val/delta_m" in val else [])]
        if len(self.task_names) <= 5:
            keys += [k for k in val if k.count("/") == 2 and not k.endswith("/loss")]
        return "  ".join(f"{k}={val[k]:.4g}" for k in keys)

    # ------------------------------------------------------------------ state
    def state_dict(self, mid_epoch: bool = False) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-identically (:func:`mtl_bench.run_state.capture`)."""
        return run_state.capture(self, mid_epoch)

    def save_last(self, mid_epoch: bool = False) -> None:
        """``checkpoints/last.pt`` (rank 0 only under torchrun: every rank holds the same model)."""
        if self.dist.is_main:
            path = self.ckpt_dir / "last.pt"
            # the file being replaced becomes last.prev.pt only if this run wrote or verified it (never a damaged one
            # that a run resumed from last.prev.pt leaves behind)
            keep = self.settings.keep_previous_checkpoint and self.last_checkpoint == path
            self.last_checkpoint = save_checkpoint(self.state_dict(mid_epoch), path, keep_previous=keep)
        else:
            self.last_checkpoint = self.ckpt_dir / "last.pt"
        self._last_save_time = time.monotonic()

    def load_state_dict(self, state: Mapping[str, Any], path: str | os.PathLike | None = None) -> None:
        """Continue from a checkpoint written by :meth:`state_dict` (the global RNG streams included)."""
        self._resume_partial = run_state.restore(self, state, path)
        self._wall_before = float(state.get("wall_time_s") or 0.0)
        log.info("resuming from %s: %d completed epoch(s), global step %d%s", path, self.epoch, self.global_step,
                 f", {self._resume_partial['batches_done']} batch(es) into epoch {self.epoch + 1}" if self._resume_partial else "")

    def requested_stop(self, time_due: bool = False) -> tuple[str | None, bool]:
        """The preemption signal received (``None`` if none) and ``time_due``, both agreed over the torchrun ranks in
        one collective: rank-local triggers must make every rank stop or save at the same step."""
        signal_name = self.preemption.requested if self.preemption is not None else None
        if self.dist.enabled:
            stop, time_due = self.dist.agree(signal_name is not None, time_due)
            signal_name = (signal_name or "a signal on another rank") if stop else None
        return signal_name, time_due

    def _after_step_checkpoint(self) -> None:
        """Mid-epoch checkpoints: on a preemption signal (then stop) and on the step / time cadences."""
        s = self.settings
        time_due = s.checkpoint_every_min > 0 and time.monotonic() - self._last_save_time >= 60.0 * s.checkpoint_every_min
        signal_name, time_due = self.requested_stop(time_due)
        if signal_name is not None:
            self.save_last(mid_epoch=True)
            self._stop_preempted(signal_name)
        if time_due or (bool(s.checkpoint_every_n_steps) and self.global_step % s.checkpoint_every_n_steps == 0):
            self.save_last(mid_epoch=True)

    def _stop_preempted(self, signal_name: str) -> None:
        status, code = status_for(signal_name), stop_exit_code(signal_name, self.settings.preemption.exit_code)
        err = PreemptedError(signal_name, self.global_step, self.epoch, str(self.last_checkpoint), code, status)
        self.logger.log_event(status, {"signal": signal_name, "global_step": self.global_step, "epoch": self.epoch,
                                       "checkpoint": str(self.last_checkpoint)})
        self.write_summary(status, error=str(err), resumable_checkpoint=str(self.last_checkpoint))
        raise err

    def _save_best(self, val: Mapping[str, float]) -> None:
        if not self.dist.is_main:
            return
        state = {"model": self.model.state_dict(), "combiner": self.combiner.state_dict(), "epoch": self.epoch,
                 "val": dict(val), "selection": self.selector.describe()}
        save_checkpoint(state, self.ckpt_dir / "best.pt")

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        s = self.settings
        with self.guarded(), logging_redirect_tqdm():
            while self.epoch < s.epochs:
                t_epoch = time.monotonic()
                train_losses, train_time = self.run_epoch()
                epoch = self.epoch
                record: dict[str, float] = {f"train_epoch/{t}/loss": v for t, v in train_losses.items()}
                if epoch % s.eval_every == 0 or epoch == s.epochs:
                    val = self.evaluate_and_select(epoch, record)
                    log.info("epoch %d/%d  %s  (train %.1fs)", epoch, s.epochs, self._brief(val), train_time)
                for d in self.diagnostics:
                    record.update(d.epoch_record(epoch))
                record["time/train_epoch_s"] = train_time
                record["time/epoch_s"] = time.monotonic() - t_epoch
                self.logger.log_epoch(record, epoch=epoch, global_step=self.global_step)
                self.boundary_checkpoint(epoch)
            if s.checkpoint_every == 0 or s.epochs % s.checkpoint_every != 0 or self.last_checkpoint is None:
                self.save_last()
            results = self.final_results()
        return self.finish(results)

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """The block trains: the preemption signals are caught (``self.preemption``, polled by :meth:`requested_stop`);
        a preemption (checkpoint already written) is handed on to the previously installed handler, e.g. submitit's
        requeue; a divergence, any other failure (a full disk, a file that cannot be decoded, a bug) and an abort by a
        second Ctrl-C are logged and written to the summary (status ``diverged`` / ``failed`` / ``interrupted``); all
        are re-raised."""
        try:
            with PreemptionGuard(self.settings.preemption.signals) as self.preemption:
                yield
        except PreemptedError:
            self.preemption.chain()
            raise
        except NonFiniteLossError as e:
            self.logger.log_event("error", {"error": str(e), "global_step": e.step, "epoch": e.epoch, "task": e.task})
            self.write_summary("diverged", error=str(e), failed_step=e.step, failed_task=e.task)
            raise
        except KeyboardInterrupt:
            self._record_failure("interrupted", f"aborted by a second SIGINT after global step {self.global_step}; "
                                                f"resume from {self.last_checkpoint or 'scratch (no checkpoint yet)'}")
            raise
        except Exception as e:
            message = str(e) if isinstance(e, MTLBenchError) else f"{type(e).__name__}: {e}"
            self._record_failure("failed", message)
            raise

    def _record_failure(self, status: str, message: str) -> None:
        """Log and summarise a failure; a failure to write them (e.g. the disk that caused it is full) is logged and
        does not replace the error being reported."""
        try:
            self.write_summary(status, error=message, failed_step=self.global_step + 1)
        except (OSError, MTLBenchError) as e:
            log.error("summary.json not updated: %s", e)
        try:
            self.logger.log_event("error", {"error": message, "global_step": self.global_step, "epoch": self.epoch})
        except (OSError, MTLBenchError) as e:
            log.error("metrics.jsonl not updated: %s", e)

    def run_epoch(self) -> tuple[dict[str, float], float]:
        """The next epoch: :meth:`train_epoch`, then the combiner's and the scheduler's epoch-end steps; returns the
        mean training losses and the training time (s)."""
        self.epoch += 1
        t0 = time.monotonic()
        losses = self.train_epoch()
        train_time = time.monotonic() - t0
        self.combiner.on_epoch_end(self.epoch, losses)
        if self.scheduler is not None:
            with warnings.catch_warnings():
                # false alarm when a resumed epoch had no step left in this process (or fp16 skipped it)
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
        return losses, train_time

    def boundary_checkpoint(self, index: int) -> None:
        """At the end of epoch (ForkMerge: merge period) ``index``: ``last.pt`` on the ``checkpoint_every`` cadence or
        when a preemption signal arrived, then stop for the latter (a signal during evaluation stops here)."""
        stop = self.requested_stop()[0]
        if stop or (self.settings.checkpoint_every and index % self.settings.checkpoint_every == 0):
            self.save_last()
        if stop:
            self._stop_preempted(stop)

    def evaluate_and_select(self, epoch: int, record: dict[str, float], val: dict[str, float] | None = None) -> dict[str, float]:
        """Validate (and test where the rule needs it) into ``record``, update the selector, keep the best; ``val``:
        the model's validation metrics when already computed (ForkMerge: the chosen merge trial's)."""
        if val is None:
            val = self.evaluate("val")
        record.update(val)
        if isinstance(self.scheduler, PlateauOnMetric):  # a metric-driven scheduler steps on this evaluation
            self.scheduler.step_on(val)
        if self.selector.needs_test_each_eval:
            record.update(self.evaluate("test"))
        if self.selector.update(epoch, {k: v for k, v in record.items() if k.startswith(("val/", "test/"))}):
            self.best_val = val
            self._save_best(val)
        return val

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json and the results table (local and W&B)."""
        summary = self.write_summary("completed", **results)
        self.logger.set_summary({f"selected/{k}": v for k, v in results["selected"].items()})
        rows = self.results_rows(results)
        self.logger.log_table("results", RESULT_COLUMNS, rows)
        return summary

    @contextmanager
    def selected_weights(self) -> Iterator[dict[str, Any] | None]:
        """Under ``rule=best`` with a ``best.pt``: the model holds the selected (best) weights inside the block and
        its final weights again after it; yields the best checkpoint.  Otherwise the model keeps its final weights
        (which the rules ``last`` and ``last_k`` evaluate) and ``None`` is yielded."""
        path = self.ckpt_dir / "best.pt"
        if self.selector.rule != "best" or not path.is_file():
            yield None
            return
        best = load_checkpoint(path, map_location=self.device)
        final_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best["model"])
        try:
            yield best
        finally:
            self.model.load_state_dict(final_state)

    def final_results(self) -> dict[str, Any]:
        if not self.dist.is_main:  # torchrun: rank 0 evaluates, selects and reports
            return {"final": {}, "selected": {}, "selection": self.selector.describe()}
        final_val = self.evaluate("val")
        final_test = self.evaluate("test")
        final = {**final_val, **final_test}
        rule = self.selector.rule
        if rule == "last":
            selected = dict(final)
        elif rule == "last_k":
            selected = self.selector.last_k_average()
        else:
            with self.selected_weights() as best:
                # no best.pt: no finite validation value was ever seen
                selected = {**best["val"], **self.evaluate("test")} if best is not None else dict(final)
        results = {"final": final, "selected": selected, "selection": self.selector.describe()}
        for name, hook in self.result_hooks.items():
            results[name] = hook(results)
        for d in self.diagnostics:
            results[d.key] = d.summary()
            for name, path in render(d.figures(results[d.key]), self.output_dir).items():
                self.logger.log_image(f"{d.key}/{name}", path)
        if self.delta is not None:
            if rule == "last_k":  # Δm of the averaged metrics (not the average of per-epoch Δm)
                for split in ("val", "test"):
                    selected.update(self.delta.record(split, selected))
            results["delta_m"] = {**self.run_info.get("delta_m", {}), "selected": self.delta.describe(selected),
                                  "final": self.delta.describe(final)}
            for split, d in results["delta_m"]["selected"].items():
                if d["missing_baselines"] or d["undefined_baselines"]:
                    log.warning("Δm (%s) leaves out metrics without a baseline %s and with a zero baseline %s",
                                split, d["missing_baselines"], d["undefined_baselines"])
        return results

    def results_rows(self, results: Mapping[str, Any]) -> list[list[Any]]:
        return results_rows(self.tasks, self.targets, results)

    def results_table(self, results: Mapping[str, Any]) -> str:
        """The per-task results table printed at the end of a run, headed by the selection rule and the diagnostics'
        lines."""
        lines = [d.results_line(results[d.key]) for d in self.diagnostics if results.get(d.key)]
        return results_table(self.results_rows(results), results, [line for line in lines if line])

    def write_summary(self, status: str, **results: Any) -> dict[str, Any]:
        """``summary.json`` (written by rank 0 only under torchrun); returns the summary."""
        summary = {
            **{k: v for k, v in self.run_info.items() if k != "config"},
            "status": status,
            "epochs_completed": self.epoch if status == "completed" else self.epoch - 1,
            "global_steps": self.global_step,
            "wall_time_s": self.wall_time_s,
            "resumed": list(self.resumes),
            "metric_directions": {k.split("/", 1)[1]: v for k, v in self.directions.items() if k.startswith("test/")},
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            **results,
        }
        if not self.dist.is_main:
            return to_jsonable(summary)
        return write_summary_file(self.output_dir, summary)
