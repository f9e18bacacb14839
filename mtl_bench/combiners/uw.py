"""Uncertainty weighting with learnable log-variances (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mtl_bench.combiners._loss_utils import check_lr
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError


@register("uw")
class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting (UW): minimise Σ_k ½ (e^{−s_k} L_k + s_k) jointly over the network and the
    learnable log-variances s_k = log σ_k².

    Kendall, Gal, Cipolla: "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and
    Semantics", CVPR 2018.

    Form used: the paper's Gaussian-regression form 1/(2σ²)·L + log σ written in s = log σ², applied to
    every task; this is the form of Nash-MTL/FAMO (``uw``), LibMTL (``UW``), mtan (``uncert``) and
    TorchJD (``UW``).  For fixed losses the optimum of s_k is e^{s_k} = L_k (∂/∂s_k = ½(1 − e^{−s_k} L_k)),
    i.e. the effective weights ½ e^{−s_k} tend to 1/(2 L_k): UW-O (``uw_o``) is this optimum taken
    analytically at every step.

    Scale convention: effective weights ∂objective/∂L_k = ½ e^{−s_k} (returned for logging); they are ½
    each, summing to K/2, at the default initialisation s = 0.  State: the parameter ``log_var`` (K),
    created in :meth:`setup` and optimised by the trainer in the ``combiner`` parameter group.

    Deviations and choices (we know of no official training code; the anchors differ on these points):

    * the paper's classification form (1/σ²)·L + log σ, i.e. e^{−s}L + ½s, is not used for
      classification tasks (no anchor implementation does);
    * Gal's reference notebook uses e^{−s}L + s (twice ours: the same optimum, twice the gradient);
    * initialisation ``init_log_var=0`` as in Nash-MTL/TorchJD; LibMTL and mtan start from −0.5 (set
      ``init_log_var=-0.5`` to match them);
    * the ``combiner`` group gets ``weight_decay=0`` (the paper does not regularise s; weight decay would
      pull s towards 0) and, with ``lr`` set, its own learning rate (Nash-MTL/FAMO use
      ``--method-params-lr 0.025``; ``lr: null`` uses the model's, as LibMTL and mtan do).
    """

    scale = "learned"

    def __init__(self, init_log_var: float = 0.0, lr: float | None = None, grad_source: str | None = None):
        super().__init__(grad_source)
        if isinstance(init_log_var, bool) or not isinstance(init_log_var, (int, float)) or not math.isfinite(init_log_var):
            raise ConfigError(f"combiner.init_log_var={init_log_var!r} must be a finite number")
        self.init_log_var = float(init_log_var)
        self.lr = check_lr(lr)
        self.register_parameter("log_var", None)

    def setup(self, task_names: list[str]) -> None:
        keep = self.log_var is not None and list(task_names) == self.task_names
        super().setup(task_names)
        if not keep:  # repeated setup with the same tasks keeps learned (or loaded) values
            self.log_var = nn.Parameter(torch.full((self.num_tasks,), self.init_log_var))

    def _log_var(self, losses: torch.Tensor) -> torch.Tensor:
        if self.log_var is None or self.log_var.numel() != losses.numel():
            raise RuntimeError(f"combiner 'uw' must be set up for the {losses.numel()} tasks before use")
        return self.log_var.to(losses.dtype)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return (0.5 * torch.exp(-self._log_var(losses))).detach()

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._log_var(losses)
        objective = 0.5 * (torch.exp(-s) * losses + s).sum()
        return objective, (0.5 * torch.exp(-s)).detach()

    def optimizer_overrides(self) -> dict[str, Any]:
        return {"weight_decay": 0.0} if self.lr is None else {"weight_decay": 0.0, "lr": self.lr}

    def describe(self) -> dict:
        return {**super().describe(), "init_log_var": self.init_log_var, "lr": self.lr}
