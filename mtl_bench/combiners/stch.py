"""STCH: smooth Tchebycheff scalarisation of the log losses (Lin et al., ICML 2024)."""

from __future__ import annotations

import logging
import math

import torch

from mtl_bench.combiners._loss_utils import check_nonnegative_losses, check_positive_eps
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError

log = logging.getLogger(__name__)


def _check_mu(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ConfigError(f"combiner.mu={value!r} must be a positive finite number")
    return float(value)


def _check_warmup(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"combiner.warmup_epochs={value!r} must be a non-negative integer")
    return value


@register("stch")
class SmoothTchebycheff(LossWeighting):
    """STCH: minimise K·μ·log Σ_k exp(ℓ_k/μ) with ℓ_k = log(L_k/z_k + ε), after a warm-up on Σ_k log L_k.

    Lin, Zhang, Yang, Liu, Wang, Zhang: "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024 (arXiv 2402.19078).  Rule of the official multi-task code (``Xi-L/STCH``
    ``STCH_MTL/LibMTL/weighting/STCH.py``, identical to LibMTL's ``STCH``; reference note
    breadth-methods.md, "STCH"), with epochs counted from 0 as there:

    * epochs 0 … W−1 (``warmup_epochs`` W): minimise Σ_k log(L_k + ε);
    * epoch W: the same objective, while the batch losses are averaged into the nadir point z;
    * from epoch W+1: the smooth Tchebycheff objective above on the nadir-normalised log losses.

    μ·log Σ exp(ℓ/μ) is a smooth upper bound of max_k ℓ_k (within μ log K) and tends to it as μ → 0.  Its
    gradient is Σ_k p_k ∇ℓ_k with p = softmax(ℓ/μ) (:meth:`softmax_weights`, summing to one), so the
    effective weights on the raw losses are ∂objective/∂L_k = K p_k / (L_k + ε z_k) (returned for logging;
    during the warm-up 1/(L_k + ε)).  With ``normalise=False`` z = 1 and there is no nadir epoch: the
    smooth Tchebycheff objective on log L_k starts at epoch W.

    Scale convention: ``scale = "log_softmax"``: K × a softmax-weighted mean of log-loss gradients (Σ log L
    during the warm-up).  State (buffers): ``epochs_done`` (set by :meth:`on_epoch_end`), the nadir running
    sum and count, and the nadir itself; ``loss_lower_bound`` is 0 (logs of losses).

    Defaults: μ = 1, W = 4, ε = 1e-20 (the official code's).  Deviations from the official code: the
    objective's value adds the (detached) max back inside the log-sum-exp (torch.logsumexp), which changes
    the logged value, not the gradient; the paper's preference weights λ_k are fixed to 1 as in the code;
    if no batch was seen in the nadir epoch (e.g. a run resumed past it from an older checkpoint) z = 1 is
    used with a warning.  TorchJD's STCH differs (weights 1/K, no log, no nadir warm-up) and is not followed.
    """

    scale = "log_softmax"

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 4, normalise: bool = True, eps: float = 1e-20,
                 grad_source: str | None = None):
        super().__init__(grad_source)
        self.mu = _check_mu(mu)
        self.warmup_epochs = _check_warmup(warmup_epochs)
        if not isinstance(normalise, bool):
            raise ConfigError(f"combiner.normalise={normalise!r} must be true or false")
        self.normalise = normalise
        self.eps = check_positive_eps(eps)
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("nadir_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("nadir_sum", None)
        self.register_buffer("nadir", None)
        self.register_buffer("nadir_ready", torch.zeros((), dtype=torch.bool))

    def setup(self, task_names: list[str]) -> None:
        keep = self.nadir_sum is not None and list(task_names) == self.task_names
        super().setup(task_names)
        if not keep:
            self.nadir_sum = torch.zeros(self.num_tasks, dtype=torch.float64)
            self.nadir = torch.ones(self.num_tasks, dtype=torch.float64)
            self.nadir_count.zero_()
            self.nadir_ready.zero_()

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        self.epochs_done.fill_(int(epoch))

    def phase(self) -> str:
        """``warmup`` (Σ log L), ``nadir`` (Σ log L while averaging z) or ``stch``."""
        e = int(self.epochs_done)
        if e < self.warmup_epochs:
            return "warmup"
        if self.normalise and e == self.warmup_epochs:
            return "nadir"
        return "stch"

    def _nadir(self, losses: torch.Tensor) -> torch.Tensor:
        if self.normalise and not bool(self.nadir_ready):
            if int(self.nadir_count) > 0:
                self.nadir.copy_(self.nadir_sum / self.nadir_count.to(self.nadir_sum.dtype))
            else:
                log.warning("stch: no batch losses were averaged in the nadir epoch; using z = 1")
            self.nadir_ready.fill_(True)
        return self.nadir.to(losses)

    def log_losses(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ℓ_k = log(L_k/z_k + ε) and z (ones unless normalised)."""
        z = self._nadir(losses)
        return torch.log(losses / z + self.eps), z

    def softmax_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """p = softmax(ℓ/μ): the weights of the log losses in the smooth Tchebycheff gradient (sum to one)."""
        ell, _ = self.log_losses(losses.detach())
        return torch.softmax(ell / self.mu, dim=0)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        if self.phase() != "stch":
            return 1.0 / (losses.detach() + self.eps)
        ell, z = self.log_losses(losses.detach())
        return self.num_tasks * torch.softmax(ell / self.mu, dim=0) / (losses.detach() + self.eps * z)

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_nonnegative_losses(losses, self.name, self.task_names)
        phase = self.phase()
        if phase != "stch":
            if phase == "nadir":
                self.nadir_sum.add_(losses.detach().to(self.nadir_sum))
                self.nadir_count.add_(1)
            return torch.log(losses + self.eps).sum(), (1.0 / (losses.detach() + self.eps))
        ell, z = self.log_losses(losses)
        objective = self.num_tasks * self.mu * torch.logsumexp(ell / self.mu, dim=0)
        p = torch.softmax(ell.detach() / self.mu, dim=0)
        return objective, self.num_tasks * p / (losses.detach() + self.eps * z)

    def loss_lower_bound(self) -> float:
        return 0.0

    def describe(self) -> dict:
        return {**super().describe(), "mu": self.mu, "warmup_epochs": self.warmup_epochs, "normalise": self.normalise,
                "eps": self.eps}
