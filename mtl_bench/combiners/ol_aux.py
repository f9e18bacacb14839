"""OL-AUX: online adaptation of auxiliary weights by the alignment of auxiliary and target gradients."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import AuxiliaryRoles, cosine_with_target
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError, check_choice


@register("ol_aux")
class OnlineAuxiliaryWeighting(AuxiliaryRoles, GramianWeighting):
    """OL-AUX (Lin, Baweja, Kantor, Held, "Adaptive Auxiliary Task Weighting for Reinforcement Learning",
    NeurIPS 2019), in the form the ForkMerge code base uses as a baseline (``OLAUX.py`` of
    ``thuml/ForkMerge``): auxiliary weights start at 1; every step the similarity s_a between auxiliary a's
    gradient and the (summed) target gradient is accumulated as β·s_a, and every ``update_every`` steps the
    accumulated amount is added to w_a (targets keep weight 1).  The update is g_T + Σ_a w_a g_a.

    ``similarity="cos"`` is what the ForkMerge code does (cosine); ``"dot"`` is the paper's first-order rule
    (the gradient of the target loss w.r.t. w_a after one step is −lr·g_T·g_a, i.e. the dot product, absorbed
    in β).  As in that code the weights are not clipped (an auxiliary can end up with a negative weight).
    Defaults: β = 1e-4 and 5 steps, the ForkMerge scripts' values.

    Scale convention: sum (targets weight 1).  Roles from ``mode=aux``/``forkmerge``.  State: weights,
    accumulator and step counter (buffers).
    """

    scale = "sum"

    def __init__(self, beta: float = 1e-4, update_every: int = 5, similarity: str = "cos", grad_source: str | None = None):
        super().__init__(grad_source)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ConfigError(f"combiner.beta must be a non-negative number, got {beta!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ConfigError(f"combiner.update_every must be a positive integer, got {update_every!r}")
        check_choice("combiner.similarity", similarity, ("cos", "dot"))
        self.beta, self.update_every, self.similarity = float(beta), update_every, similarity
        self.register_buffer("aux_weights", torch.empty(0, dtype=torch.float64))
        self.register_buffer("accumulated", torch.empty(0, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def setup(self, task_names: list[str]) -> None:
        keep = list(task_names) == self.task_names and self.aux_weights.numel() == len(task_names)
        super().setup(task_names)
        if not keep:
            device = self.aux_weights.device
            self.aux_weights = torch.ones(self.num_tasks, dtype=torch.float64, device=device)
            self.accumulated = torch.zeros(self.num_tasks, dtype=torch.float64, device=device)
            self.steps = torch.zeros((), dtype=torch.long, device=device)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        is_target = self._target_mask(self.accumulated.device)
        gram = gramian.detach().to(self.accumulated)
        sel = is_target.to(gram.dtype)
        sim = cosine_with_target(gram, sel) if self.similarity == "cos" else gram @ sel  # cos or g_a · g_T
        # weights used at this step, then the online update (applied every update_every steps, as the code does);
        # the step test stays on the device (no sync): where/masked_fill_ leave the buffers untouched between updates
        weights = torch.where(is_target, torch.ones_like(self.aux_weights), self.aux_weights)
        self.accumulated += torch.where(is_target, torch.zeros_like(sim), self.beta * sim)
        self.steps += 1
        due = self.steps % self.update_every == 0
        self.aux_weights.copy_(torch.where(due, self.aux_weights + self.accumulated, self.aux_weights))
        self.accumulated.masked_fill_(due, 0.0)
        return weights.to(device=gramian.device, dtype=gramian.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": self.beta, "update_every": self.update_every, "similarity": self.similarity,
                "targets": self.targets}
