"""SDMGrad: MGDA weights pulled towards a preference direction, found by a few warm-started projected SGD steps
on the simplex (Xiao, Ban, Ji, NeurIPS 2023), in its single-batch form."""

from __future__ import annotations

from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_int, check_real
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.moco import project_to_simplex
from mtl_bench.combiners.registry import register
from mtl_bench.combiners.upgrad import _check_pref_vector, check_pref_length

SCALE_EPS = 1e-8  # added to the squared normalising scale (TorchJD; guards all-zero gradients)


@register("sdmgrad")
class SDMGrad(GramianWeighting):
    """SDMGrad (Stochastic Direction-oriented Multi-objective Gradient descent), single-batch form.

    Xiao, Ban, Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
    NeurIPS 2023 (arXiv:2305.18409); official code ``OptMN-Lab/sdmgrad`` (``methods/weight_methods.py``);
    TorchJD 0.18 ``torchjd/aggregation/_sdmgrad.py`` (``SDMGradWeighting``); LibMTL ``weighting/SDMGrad.py``.

    Rule at every step, from a K×K matrix A: normalise a = A / (s² + 1e-8) with s = mean_k √A_kk; starting from
    the previous step's w (1/K at the first step), run ``n_iter`` steps of SGD with momentum (buffer restarted
    every step) on ½(w + λw̃)ᵀa(w + λw̃), each followed by the Euclidean projection onto the simplex; the weights
    are (w + λw̃)/(1 + λ), w̃ = ``pref_vector`` (1/K by default), and the update is their combination of G.

    Single-Jacobian mapping: the paper draws three independent batches (A = J_ξ J_ξ′ᵀ estimates the Gramian
    without bias, the update uses J_ζ).  This interface has one batch per step, so A = G Gᵀ and the update is
    wᵀG: ζ = ξ = ξ′.  This loses the double sampling that the paper's convergence analysis relies on; it is the
    setting the official code actually runs (its three gradient buffers alias one tensor, so all three hold the
    last batch's gradients: reported in the project's reference note, not re-checked here).

    Defaults (TorchJD's, which are the official experiments' values): λ = 0.3 (the official class default is
    0.6), inner lr = 10, momentum = 0.5, n_iter = 20 (LibMTL uses lr = 5).

    Properties (tested): the weights lie on the simplex (Σ = 1, ≥ 0) and are at least λ/(K(1 + λ)) each for the
    default w̃; they do not change when all gradients are multiplied by one constant (up to the 1e-8); λ → ∞
    gives the preference-weighted mean.

    Scale convention: **mean** (weights sum to 1, TorchJD and LibMTL; the official code multiplies by K and
    clips the shared gradient's norm to 1).  Heads receive their task gradient times the weight.

    State across steps: w (the warm start), kept as the module's extra state, so ``state_dict`` / checkpoints
    restore it; it restarts if the number of tasks changes.

    Gradient sources: ``params`` (default), ``last_shared``, ``representation``.
    """

    scale = "mean"

    def __init__(self, lambda_: float = 0.3, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20,
                 pref_vector: list[float] | None = None, grad_source: str | None = None):
        super().__init__(grad_source)
        self.lambda_ = check_real("lambda_", lambda_, low=0.0)
        self.lr = check_real("lr", lr, low=0.0, low_open=True)
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.n_iter = check_int("n_iter", n_iter, low=1)
        self.pref_vector = _check_pref_vector(pref_vector)
        self.w: torch.Tensor | None = None

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        check_pref_length(self.pref_vector, self.task_names)

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        a = gramian.detach().to(device="cpu", dtype=torch.float64)
        k = a.shape[0]
        if self.pref_vector is None:
            pref = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            pref = torch.tensor(self.pref_vector, dtype=torch.float64)
        w = self.w if self.w is not None and self.w.shape[0] == k else torch.full((k,), 1.0 / k, dtype=torch.float64)
        a = a / (a.diagonal().clamp_min(0.0).sqrt().mean() ** 2 + SCALE_EPS)
        velocity = torch.zeros_like(w)
        for i in range(self.n_iter):
            grad = a @ (w + self.lambda_ * pref)
            velocity = grad if i == 0 else self.momentum * velocity + grad
            w = project_to_simplex(w - self.lr * velocity)
        self.w = w
        return ((w + self.lambda_ * pref) / (1.0 + self.lambda_)).to(dtype=gramian.dtype, device=gramian.device)

    def get_extra_state(self) -> dict[str, Any]:
        return {"w": None if self.w is None else self.w.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.w = None if state["w"] is None else state["w"].detach().to(device="cpu", dtype=torch.float64).clone()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lambda_": self.lambda_, "lr": self.lr, "momentum": self.momentum,
                "n_iter": self.n_iter, "pref_vector": self.pref_vector, "batches": "single (ζ = ξ = ξ′)"}
