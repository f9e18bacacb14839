"""IMTL, the hybrid of Impartial Multi-Task Learning as LibMTL implements it: IMTL-L loss scales + IMTL-G on the shared gradients."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from mtl_bench.combiners._loss_utils import LearnedLogScale
from mtl_bench.combiners.base import Aggregation, GradientAggregator
from mtl_bench.combiners.imtl_g import imtl_g_weights
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.solvers import eigen_rtol, gramian_to_numpy

log = logging.getLogger(__name__)


@register("imtl")
class IMTL(LearnedLogScale, GradientAggregator):
    """IMTL (hybrid): scale the losses as IMTL-L does, L̃_k = e^{s_k} L_k − s_k with learnable s, and combine the
    shared gradients g̃_k = ∇L̃_k = e^{s_k} g_k with IMTL-G's equal-projection weights.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang: "Towards Impartial Multi-task Learning", ICLR 2021 (the
    paper's full method; no official code).  We follow LibMTL's ``IMTL`` (``LibMTL/weighting/IMTL.py``;
    reference note breadth-methods.md, "LibMTL IMTL"):

    * shared parameters: d = Σ_k α̃_k g̃_k with α̃ = IMTL-G weights of the scaled gradients (Σ α̃ = 1 and equal
      projections dᵀ g̃_i/‖g̃_i‖), i.e. effective weights α̃_k e^{s_k} on the raw gradients g_k;
    * heads (task-specific parameters): the gradient of L̃_k, i.e. e^{s_k} ∇L_k (``Aggregation.weights`` =
      e^{s} are the head weights, so the direction is *not* weightsᵀG: ``provides_task_weights = False``);
    * the log-scales s: gradient ∂Σ_k L̃_k/∂s_k = e^{s_k} L_k − 1 (from the loss values only), accumulated
      into ``log_scale.grad`` during :meth:`aggregate` and applied by the trainer's optimizer (``combiner``
      group, ``weight_decay=0``, ``lr`` as in ``imtl_l``), as LibMTL's per-task backward passes do.

    Why a gradient aggregator, and why no engine change is needed: the engine gives an aggregator the
    per-task gradients of the raw losses and their values; IMTL-G's direction only needs the Gramian of
    the scaled gradients, D M D with D = diag(e^{s}), and the gradient of s only needs the loss values, so
    the whole hybrid is computed here.  The one liberty this takes with the interface is writing the
    gradient of its own parameter inside ``aggregate`` (loss weightings get theirs from the engine's
    backward of ``combine``; aggregators have no such pass).  It uses the detached (global-batch) losses the
    engine passes, so it is the same on every DDP rank.

    Scale convention: the shared update has Σ α̃ = 1 on the scaled gradients (``scale = "unit_sum"``); the
    heads' scale is set by e^{s}.  All s = 0 at initialisation, when the shared update is IMTL-G's and the
    heads get their unweighted gradients (LibMTL's heads).  Gradient sources: ``params`` (default) and
    ``representation`` (LibMTL's ``rep_grad``).  Degenerate Gramians are handled as in ``imtl_g``
    (pseudo-inverse or null-space solution, uniform α̃ when none exists).

    Deviations from LibMTL: its ``torch.inverse`` of DUᵀ fails on singular systems; we use ``imtl_g``'s
    Gramian form with explicit singular cases.  LibMTL's s are trained by the model's optimizer with the
    model's weight decay; we exempt them from weight decay as ``imtl_l`` and ``uw`` do.
    """

    scale = "unit_sum"
    provides_task_weights = False

    def _scales(self, like: torch.Tensor) -> torch.Tensor:
        if self.log_scale is None or self.log_scale.numel() != like.shape[0]:
            raise RuntimeError(f"combiner 'imtl' must be set up for the {like.shape[0]} tasks before use")
        return torch.exp(self.log_scale.detach()).to(like)

    def scaled_weights(self, grads: torch.Tensor) -> torch.Tensor:
        """α̃: IMTL-G's weights of the scaled gradients e^{s_k} g_k (sum to one)."""
        scale = self._scales(grads)
        scaled = grads * scale.unsqueeze(1)
        gramian = scaled @ scaled.T
        m = gramian_to_numpy(gramian)
        alpha = imtl_g_weights(m, eigen_rtol(gramian.dtype))
        if alpha is None:
            if np.trace(m) > 0:
                log.warning("imtl: no weights with equal projections sum to one for this Gramian; using uniform weights")
            alpha = np.full(m.shape[0], 1.0 / m.shape[0])
        return torch.as_tensor(alpha, dtype=grads.dtype, device=grads.device)

    def accumulate_scale_grad(self, losses: torch.Tensor) -> None:
        """log_scale.grad += e^{s} ⊙ L − 1, the gradient of Σ_k (e^{s_k} L_k − s_k) w.r.t. s."""
        s = self.log_scale
        g = torch.exp(s.detach()) * losses.detach().to(s) - 1.0
        if s.grad is None:
            s.grad = g
        else:
            s.grad.add_(g)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        scale = self._scales(grads)
        alpha = self.scaled_weights(grads)
        direction = (alpha * scale) @ grads
        self.accumulate_scale_grad(losses)
        return Aggregation(direction, scale)

    def optimizer_overrides(self) -> dict[str, Any]:
        return {"weight_decay": 0.0} if self.lr is None else {"weight_decay": 0.0, "lr": self.lr}

    def describe(self) -> dict:
        return {**super().describe(), "lr": self.lr}
