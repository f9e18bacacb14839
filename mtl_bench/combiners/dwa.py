"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): weights from the epoch-level loss descent rate."""

from __future__ import annotations

import math

import torch

from mtl_bench.combiners._loss_utils import check_nonnegative_losses
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError


@register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (DWA): during epoch t the weights are w = K·softmax(r/T) with
    r_k = L̄_k(t−1) / L̄_k(t−2), the ratio of the task's **epoch-mean training losses** of the last two
    epochs; w = 1 during the first two epochs.  A task whose loss fell less (larger r_k) gets more weight.

    Liu, Johns, Davison: "End-to-End Multi-Task Learning with Attention", CVPR 2019 (MTAN); temperature
    T = 2 as in the paper and its code (``lorenmt/mtan``, ``--temp``).

    Scale convention: the weights sum to K (all 1 for equal descent rates and in the first two epochs).
    State (persistent buffers, created in :meth:`setup`): the last two epoch-mean loss vectors
    ``loss_history`` (row 0: epoch t−2, row 1: epoch t−1), the number of epochs seen and the current
    weights; they change only in :meth:`on_epoch_end` (the trainer passes the epoch means there).

    Deviations: the trainer's epoch means weight each batch by its size (mtan averages per-batch losses;
    identical with ``drop_last`` or equal batches).  The Nash-MTL/FAMO ``dwa`` is a different, iteration-level
    variant (windows of 25 steps, weights divided by K); LibMTL follows the paper as we do.  A negative
    epoch-mean loss raises a ``ConfigError`` (the ratio is meaningless); a zero one is floored at the
    smallest positive float64 in the denominator.
    """

    scale = "sum"

    def __init__(self, temperature: float = 2.0, grad_source: str | None = None):
        super().__init__(grad_source)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (0 < temperature < math.inf):
            raise ConfigError(f"combiner.temperature={temperature!r} must be a positive finite number")
        self.temperature = float(temperature)
        self.register_buffer("loss_history", torch.empty(2, 0, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_weights", torch.empty(0, dtype=torch.float64))

    def setup(self, task_names: list[str]) -> None:
        keep = list(task_names) == self.task_names and self.task_weights.numel() == len(task_names)
        super().setup(task_names)
        if not keep:  # repeated setup with the same tasks keeps the history (e.g. after load_state_dict)
            device = self.loss_history.device
            self.loss_history = torch.ones(2, self.num_tasks, dtype=torch.float64, device=device)
            self.epochs_seen = torch.zeros((), dtype=torch.long, device=device)
            self.task_weights = torch.ones(self.num_tasks, dtype=torch.float64, device=device)

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        latest = torch.tensor([float(train_losses[t]) for t in self.task_names], dtype=self.loss_history.dtype)
        check_nonnegative_losses(latest, self.name, self.task_names)
        latest = latest.to(self.loss_history.device)
        self.loss_history = torch.stack([self.loss_history[1], latest])
        self.epochs_seen = self.epochs_seen + 1
        if int(self.epochs_seen) >= 2:
            ratio = self.loss_history[1] / self.loss_history[0].clamp(min=torch.finfo(self.loss_history.dtype).tiny)
            self.task_weights = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        if self.task_weights.numel() != losses.numel():
            raise RuntimeError(f"combiner 'dwa' was set up for {self.task_weights.numel()} tasks, got {losses.numel()} losses")
        return self.task_weights.to(losses)

    def describe(self) -> dict:
        return {**super().describe(), "temperature": self.temperature}
