"""DB-MTL: balance loss scales with log losses and gradient magnitudes by rescaling every task to the largest norm."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import Aggregation, GradientAggregator
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError

# LibMTL differentiates log(L_k + 1e-8); the same guard keeps a zero loss finite here
LOG_EPS = 1e-8


def balance_to_max_norm(ema: torch.Tensor) -> torch.Tensor:
    """Rows ĝ_k scaled by max_j ‖ĝ_j‖ / ‖ĝ_k‖ (all of the largest norm); zero rows stay zero."""
    norms = ema.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    scale = torch.where(norms > 0, norms.max() / safe, torch.zeros_like(norms))
    return scale.unsqueeze(1) * ema


@register("db_mtl")
class DBMTL(GradientAggregator):
    """Dual-Balancing Multi-Task Learning (DB-MTL).

    Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Kwok, "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029,
    2023 (LibMTL ``DB_MTL``, the authors' library).

    * Loss-scale balancing: each task optimises log L_k, whose gradient is h_k = g_k / (L_k + ε) (ε = 1e-8 as
      in LibMTL), computed here from G and the loss values; a positive rescaling L_k → c L_k leaves h_k
      unchanged (up to ε).
    * Gradient-magnitude balancing: an exponential moving average ĝ_k ← β_t ĝ_k + (1 − β_t) h_k with
      β_t = β / t^σ (t = 1, 2, … the step, ĝ starting at 0, no bias correction: the first average is
      (1 − β) h_k), then the update Σ_k (max_j ‖ĝ_j‖ / ‖ĝ_k‖) ĝ_k: every task contributes a vector of the
      same norm, the largest of the averaged log-loss gradients.

    Defaults β = 0.9, σ = 0 (constant β) are LibMTL's (``--DB_beta 0.9 --DB_beta_sigma 0``), the reference
    implementation; we could not check the paper's per-dataset β schedule here (set ``beta_sigma`` > 0 for a
    decaying β_t).

    Heads: the shared update is balanced; each head receives the gradient of its own log loss, ∇ log(L_k + ε)
    = ∇L_k / (L_k + ε) (weights 1 / (L_k + ε)), exactly what LibMTL's per-task backward of the log losses leaves
    in the heads.

    Scale convention: every task's contribution has the norm of the largest averaged log-loss gradient
    (``scale = "max-norm"``); the update is their sum.  Zero gradients: a task with ĝ_k = 0 contributes 0
    (LibMTL divides by ‖ĝ_k‖ + 1e-8, which gives the same 0); all-zero input gives a zero update.  Task losses
    must be non-negative (the method takes their logarithm); a negative loss raises ``ConfigError``.

    State: the step t and the K×d average ĝ, created at the first call (d is only known then), kept as
    the module's extra state so ``state_dict`` round-trips; a restored average is moved to the gradients'
    device and dtype at the next call.

    Gradient sources: ``params`` only.  The ``representation`` source is left out on purpose: its rows are
    indexed by (sample, feature) of the current batch, so an average across batches would mix the gradients of
    unrelated samples (and break on a shorter last batch); LibMTL rejects representation gradients too.
    Deviations from LibMTL: none known beyond the exact treatment of zero norms above.
    """

    scale = "max-norm"
    supported_sources = ("params",)

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, grad_source: str | None = None):
        super().__init__(grad_source)
        self.beta = check_real("beta", beta, low=0.0, high=1.0, high_open=True)
        self.beta_sigma = check_real("beta_sigma", beta_sigma, low=0.0)
        self.step = 0
        self.ema: torch.Tensor | None = None

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self.step, "ema": self.ema}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step, self.ema = int(state["step"]), state["ema"]

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        losses = losses.to(grads)
        if losses.device.type == "cpu" and bool((losses < 0).any()):  # on GPUs: the trainer's loss check
            k = int((losses < 0).nonzero()[0])
            raise ConfigError(
                f"combiner 'db_mtl' needs non-negative task losses (it differentiates log L_k); "
                f"task '{self.task_names[k]}' has loss {float(losses[k]):.6g}"
            )
        self.step += 1
        inverse = 1.0 / (losses + LOG_EPS)
        log_grads = inverse.unsqueeze(1) * grads
        if self.ema is None:
            self.ema = torch.zeros_like(log_grads)
        elif self.ema.shape != log_grads.shape:
            raise ValueError(f"db_mtl: stored gradient average has shape {tuple(self.ema.shape)}, gradients {tuple(grads.shape)}")
        beta_t = self.beta / self.step**self.beta_sigma
        self.ema = beta_t * self.ema.to(log_grads) + (1.0 - beta_t) * log_grads
        return Aggregation(direction=balance_to_max_norm(self.ema).sum(0), weights=inverse)

    def loss_lower_bound(self) -> float:
        return 0.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": self.beta, "beta_sigma": self.beta_sigma}
