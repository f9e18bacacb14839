"""What a combiner that looks beyond the step's batch receives once per step: the :class:`StepContext`.

A combiner declares ``extra_batches = n > 0`` (see :mod:`mtl_bench.combiners.base`); the trainer then calls
``combiner.before_backward(ctx)`` once per training step, after the forward pass and before the engine's backward,
with a context built by :func:`step_context`.  The context holds what bilevel or double-sampling methods (Auto-Lambda,
MoDo) need: the model, the optimizer (its param groups' lr / momentum / weight decay and its momentum buffers), the
engine (``engine.task_gradients`` over the shared parameters), the task names, the step's batch and its (transformed)
task losses, a function computing the task losses of any batch (optionally at other parameter values), and
``extra_batch(i)``: the i-th additional batch of the training split for this step.

Extra batches are drawn **statelessly**: the indices of batch ``i`` at global step ``s`` are the first ``batch_size``
entries of a permutation of the training split drawn from a ``torch.Generator`` seeded by
``SeedSequence([run seed, s, i, SALT])``.  They consume neither the data-order generator nor the global RNG, so a
run killed and resumed from any checkpoint draws the same extra batches without new checkpoint state (the run seed is
the data generator's initial seed, which its saved state keeps).  Like a second shuffled loader over the training set
(Auto-Lambda's official code), an extra batch may share samples with the step's batch.

Not exact under torchrun: every rank would need the same extra batches sharded and every per-task quantity reduced;
:func:`refuse_distributed` (called by the combiners' ``setup``) refuses with one line instead.  fp16 training is
refused too (the extra passes are not loss-scaled); bf16 and fp32 run the extra passes under the trainer's autocast.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from torch.func import functional_call

from mtl_bench.distributed import current as current_dist
from mtl_bench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from mtl_bench.engine import GradientEngine
    from mtl_bench.trainer import Trainer

Batch = tuple[Any, dict[str, torch.Tensor]]
LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]
SALT = 0x65787472  # "extr": keeps these seeds apart from other SeedSequence users of the same run seed

__all__ = ["StepContext", "extra_indices", "load_indices", "refuse_distributed", "step_context"]


@dataclass
class StepContext:
    """One training step as an extra-batch combiner sees it (see the module docstring)."""

    model: torch.nn.Module  # called as model(x, task_names) -> {task: output}
    optimizer: torch.optim.Optimizer | None
    engine: GradientEngine | None
    task_names: list[str]
    step: int  # the global step about to be taken (0-based)
    batch: Batch  # the step's batch, on the device
    losses: Mapping[str, torch.Tensor]  # the step's (transformed) task losses, attached to the graph
    loss_fn: LossFn  # (outputs, targets) -> the (transformed) task losses the combiner sees
    draw: Callable[[int], Batch]  # i -> extra batch i of this step, on the device
    autocast: Callable[[], AbstractContextManager] = nullcontext

    def stacked(self) -> torch.Tensor:
        """The step's task losses as a K-vector in ``task_names`` order (attached)."""
        return torch.stack([self.losses[t] for t in self.task_names])

    def extra_batch(self, i: int) -> Batch:
        """The i-th extra batch of this step (i < the combiner's ``extra_batches``), on the device."""
        return self.draw(i)

    def task_losses(self, x: Any, targets: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """K-vector of the (transformed) task losses of the batch ``(x, targets)``, attached to the graph.  ``params``
        (name -> tensor, a subset of ``model.named_parameters()``) evaluates the model at those values instead, with
        copies of its buffers, so the model's parameters and BatchNorm statistics are left untouched; without it the
        model itself runs (its buffers update as in any training forward)."""
        with self.autocast():
            if params is None:
                outputs = self.model(x, self.task_names)
            else:
                buffers = {n: b.clone() for n, b in self.model.named_buffers()}
                outputs = functional_call(self.model, {**buffers, **params}, (x, self.task_names))
            losses = self.loss_fn(outputs, targets)
        return torch.stack([losses[t] for t in self.task_names])


def extra_indices(n: int, batch_size: int, seed: int, step: int, i: int) -> torch.Tensor:
    """Indices of extra batch ``i`` at global step ``step``: ``min(batch_size, n)`` distinct indices of ``range(n)``,
    a function of ``(seed, step, i)`` only."""
    mixed = int(np.random.SeedSequence([seed, step, i, SALT]).generate_state(1, dtype=np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(mixed))[: min(batch_size, n)]


def load_indices(loader: Any, indices: torch.Tensor) -> Any:
    """The samples ``indices`` of the loader's dataset, collated as the loader collates its batches (in this process)."""
    dataset = loader.dataset
    if getattr(dataset, "batch_indexing", False):  # gathered a batch at a time (TensorDictDataset)
        return loader.collate_fn(dataset[indices])
    return loader.collate_fn([dataset[int(k)] for k in indices])


def refuse_distributed(name: str) -> None:
    """One-line refusal of an extra-batch combiner under torchrun (see the module docstring)."""
    dist = current_dist()
    if dist.enabled:
        raise ConfigError(
            f"combiner '{name}' draws extra training batches every step, which is not exact under torchrun "
            f"(world size {dist.world_size}): run it on one process"
        )


def step_context(trainer: Trainer, x: Any, targets: Mapping[str, torch.Tensor], losses: Mapping[str, torch.Tensor]) -> StepContext:
    """The context of the trainer's current step (``Trainer.train_step`` calls this for ``extra_batches > 0``)."""
    name = trainer.combiner.name
    refuse_distributed(name)
    if trainer.scaler is not None:
        raise ConfigError(
            f"combiner '{name}' cannot be used with trainer.precision=fp16 (its extra passes are not loss-scaled); "
            f"use trainer.precision=bf16 or fp32"
        )
    seed, step = trainer.data_generator.initial_seed(), trainer.global_step
    n, batch_size = len(trainer.train_loader.dataset), trainer.settings.batch_size

    def draw(i: int) -> Batch:
        return trainer._to_device(load_indices(trainer.train_loader, extra_indices(n, batch_size, seed, step, i)))

    return StepContext(
        model=trainer.model, optimizer=trainer.optimizer, engine=trainer.engine, task_names=list(trainer.task_names),
        step=step, batch=(x, dict(targets)), losses=losses,
        loss_fn=lambda outputs, y: trainer.transform(trainer.task_losses(outputs, y)), draw=draw, autocast=trainer.autocast,
    )
