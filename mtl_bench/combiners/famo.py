"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liu, Stone, Liu, NeurIPS 2023)."""

from __future__ import annotations

import math
from typing import Any

import torch

from mtl_bench.combiners._loss_utils import PerTask, check_positive_eps, parse_per_task, resolve_per_task
from mtl_bench.combiners.base import LossWeighting
from mtl_bench.combiners.registry import register
from mtl_bench.errors import ConfigError

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults, as in the official code
ADAM_EPS = 1e-8


def _check_number(value: Any, key: str, low: float, low_inclusive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < low or (value == low and not low_inclusive):
        bound = ">=" if low_inclusive else ">"
        raise ConfigError(f"{key}={value!r} must be a finite number {bound} {low}")
    return float(value)


@register("famo")
class FAMO(LossWeighting):
    """FAMO: at each step minimise Σ_k z_k log(L_k − L_k^min + ε) / c with z = softmax(ξ) and
    c = Σ_k z_k / (L_k − L_k^min + ε) (c and z held constant), then update the logits ξ from the change of
    the log losses that step produced.

    Liu, Liu, Stone, Liu: "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023 (official code
    ``Cranial-XIX/FAMO``, ``famo.py`` and ``methods/weight_methods.py``).

    Logit update (:meth:`after_step`, with the losses recomputed on the same batch after the optimizer
    step; ``needs_post_step_losses``): δ_k = log(L_k^before − L_k^min + ε) − log(L_k^after − L_k^min + ε)
    (how much task k's log loss fell), gradient g = J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ), and one Adam step on ξ
    with learning rate ``w_lr`` and L2 weight decay ``gamma`` (Adam's coupled ``weight_decay``: g + γξ;
    β = (0.9, 0.999), Adam ε = 1e-8).  Descending zᵀδ moves weight towards the tasks whose log loss fell
    *less* than the weighted average.  ξ starts at 0 (equal z).

    Scale convention: effective weights ∂objective/∂L_k = z_k / (c (L_k − L_k^min + ε)), which sum to 1
    (returned for logging); the objective's value is not a loss value.

    State (persistent buffers, created in :meth:`setup`, not ``nn.Parameter`` s, so the model's optimizer
    never touches them): ``logits`` ξ and the Adam moments ``exp_avg``, ``exp_avg_sq`` and step count
    ``adam_steps``; ``min_losses`` is configuration (a number for every task, a list in task order or a
    mapping task -> value; default 0) and not saved.  The losses of a step are kept between
    :meth:`combine` and :meth:`after_step` only.

    Deviations from the official code: the Adam step on ξ is our own few lines instead of a
    ``torch.optim.Adam`` (same update; tested against it); defaults ``w_lr=0.025``, ``gamma=1e-3`` are the
    values of the paper's NYUv2/CelebA/QM9 runs (``run.sh``; Cityscapes uses ``gamma=1e-2``, ``famo.py``'s
    default is 1e-2 and the experiment class's 1e-5); gradient clipping is not part of the combiner
    (``famo.py`` clips the shared gradients to norm 1 after the backward, the experiment trainers clip
    before it, a no-op; use ``trainer.grad_clip_norm`` to clip); a loss at or below its ``min_losses``
    − ε (where the log is undefined) raises a ``ConfigError`` naming the task instead of producing NaN.
    """

    needs_post_step_losses = True
    scale = "simplex"

    def __init__(
        self,
        w_lr: float = 0.025,
        gamma: float = 1e-3,
        min_losses: Any = 0.0,
        eps: float = 1e-8,
        grad_source: str | None = None,
    ):
        super().__init__(grad_source)
        self.w_lr = _check_number(w_lr, "combiner.w_lr", 0.0, low_inclusive=False)
        self.gamma = _check_number(gamma, "combiner.gamma", 0.0, low_inclusive=True)
        self.eps = check_positive_eps(eps)
        self._min_given: PerTask = parse_per_task(min_losses, "combiner.min_losses", allow_scalar=True)
        for name in ("logits", "exp_avg", "exp_avg_sq"):
            self.register_buffer(name, torch.empty(0, dtype=torch.float64))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("min_losses", torch.empty(0, dtype=torch.float64), persistent=False)
        self._before: torch.Tensor | None = None

    def setup(self, task_names: list[str]) -> None:
        keep = list(task_names) == self.task_names and self.logits.numel() == len(task_names)
        super().setup(task_names)
        device = self.logits.device
        minimum = resolve_per_task(self._min_given, self.task_names, "combiner.min_losses")
        self.min_losses = torch.tensor(minimum, dtype=self.logits.dtype, device=device)
        if not keep:  # repeated setup with the same tasks keeps ξ and Adam's state (e.g. after load_state_dict)
            for name in ("logits", "exp_avg", "exp_avg_sq"):
                setattr(self, name, torch.zeros(self.num_tasks, dtype=self.logits.dtype, device=device))
            self.adam_steps = torch.zeros((), dtype=torch.long, device=device)
        self._before = None

    def loss_lower_bound(self) -> torch.Tensor:
        return self.min_losses

    # ------------------------------------------------------------------ the objective
    def _gap(self, losses: torch.Tensor, when: str) -> torch.Tensor:
        """L_k − L_k^min + ε, checked positive (the log of it is taken)."""
        if self.logits.numel() != losses.numel():
            raise RuntimeError(f"combiner 'famo' was set up for {self.logits.numel()} tasks, got {losses.numel()} losses")
        gap = losses - self.min_losses.to(losses.dtype) + self.eps
        bad = gap.detach() <= 0
        # host tensors only: on a GPU the check would cost a sync; the trainer checks loss_lower_bound() instead
        if gap.device.type == "cpu" and bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ConfigError(
                f"combiner 'famo' needs every task loss above its combiner.min_losses; task '{self.task_names[k]}' has "
                f"loss {float(losses[k]):.6g} {when} the step, min_losses {float(self.min_losses[k]):.6g}"
            )
        return gap

    def _effective(self, z: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        ratio = z / gap.detach()
        return ratio / ratio.sum()

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        z = torch.softmax(self.logits, dim=0).to(losses.dtype)
        return self._effective(z, self._gap(losses.detach(), "before"))

    def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.softmax(self.logits, dim=0).to(losses.dtype)
        gap = self._gap(losses, "before")
        c = (z / gap.detach()).sum()
        objective = (z * torch.log(gap)).sum() / c
        self._before = losses.detach().to(self.logits.dtype)
        return objective, self._effective(z, gap)

    # ------------------------------------------------------------------ the logit update
    def after_step(self, post_losses: torch.Tensor | None) -> None:
        if post_losses is None:
            raise RuntimeError("combiner 'famo' needs the losses recomputed after the optimizer step (needs_post_step_losses)")
        if self._before is None:
            raise RuntimeError("combiner 'famo': after_step was called without a preceding combine")
        before, self._before = self._before, None
        after = self._gap(post_losses.detach().to(before), "after")
        delta = torch.log(self._gap(before, "before")) - torch.log(after)
        z = torch.softmax(self.logits, dim=0)
        self._adam_step(z * (delta - (z * delta).sum()))

    def _adam_step(self, grad: torch.Tensor) -> None:
        """One step of Adam with coupled (L2) weight decay ``gamma`` on ξ, as ``torch.optim.Adam`` does."""
        beta1, beta2 = ADAM_BETAS
        grad = grad + self.gamma * self.logits
        self.adam_steps += 1
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        steps = self.adam_steps.to(self.logits.dtype)
        bias1 = 1 - beta1**steps
        bias2 = 1 - beta2**steps
        denom = self.exp_avg_sq.sqrt() / bias2.sqrt() + ADAM_EPS
        self.logits.sub_(self.w_lr * self.exp_avg / (bias1 * denom))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "w_lr": self.w_lr,
            "gamma": self.gamma,
            "min_losses": dict(zip(self.task_names, self.min_losses.tolist())),
            "eps": self.eps,
        }
