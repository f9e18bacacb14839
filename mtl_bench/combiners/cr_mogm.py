"""CR-MOGM: smooth the weights of any Gramian weighting with an exponential moving average across steps
(Zhou et al., NeurIPS 2022; TorchJD's ``CRMOGMWeighting``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mtl_bench.combiners._grad_utils import check_real
from mtl_bench.combiners.base import GramianWeighting
from mtl_bench.combiners.registry import COMBINERS, register
from mtl_bench.errors import ConfigError


def _inner_weighting(name: Any, kwargs: Any, grad_source: str | None) -> GramianWeighting:
    cls = COMBINERS.get(name) if isinstance(name, str) else None
    def ok(c: Any) -> bool:  # wᵀG updates; not itself, not the auxiliary-task methods (they need roles)
        return issubclass(c, GramianWeighting) and c.provides_task_weights and c is not CRMOGM and not hasattr(c, "set_roles")

    usable = sorted(n for n, c in COMBINERS.items() if ok(c))
    if cls is None or not ok(cls):
        raise ConfigError(
            f"combiner.weighting={name!r} is invalid; valid: a Gramian weighting whose update is wᵀG: {usable}"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigError(f"combiner.weighting_kwargs={kwargs!r} is invalid; valid: null or a mapping of options")
    return cls(**dict(kwargs or {}), grad_source=grad_source)


@register("cr_mogm")
class CRMOGM(GramianWeighting):
    """CR-MOGM (correlation-reduced stochastic multi-objective gradient manipulation): the weights of a wrapped
    Gramian weighting, smoothed by an exponential moving average over the steps.

    Zhou, Zhang, Jiang, Zhong, Gu, Zhu, "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and
    Beyond", NeurIPS 2022 (no official code found; TorchJD 0.18 ``torchjd/aggregation/_cr_mogm.py``,
    ``CRMOGMWeighting``).  With λ̂_t the wrapped method's weights at step t,
    λ_t = α λ_{t−1} + (1 − α) λ̂_t and λ_0 = λ̂_1 (so the first update is the wrapped method's); the update is
    λ_tᵀ G_t.  The smoothing reduces the correlation between the stochastic weights and the stochastic gradients
    that biases stochastic MGDA-type updates.

    Defaults: ``weighting`` = ``mgda`` (the stochastic multi-gradient method the paper analyses; any registered
    Gramian weighting whose update is exactly wᵀG may be wrapped, options in ``weighting_kwargs``), α = 0.9
    (TorchJD's default; the paper's Corollary 1 uses a schedule α_t rising from near 0 towards 1 as the learning
    rate decays, which a fixed α does not reproduce: set ``alpha`` to 1 − lr/lr₀ by hand to approximate it).

    Properties (tested): α = 0 is the wrapped method; α = 1 freezes the first step's weights; the weights are the
    stated convex combination of the wrapped weights, and their sum is preserved for weightings of constant sum.

    Scale convention: **inherited** from the wrapped weighting (``scale`` in ``describe`` names it).  Heads receive
    their task gradient times λ_k.

    State across steps: λ_{t−1} (module extra state) and the wrapped weighting's own state (a sub-module), both in
    ``state_dict``, so checkpoints restore them.

    Gradient sources: ``params`` (default), ``last_shared``, ``representation`` (passed to the wrapped weighting).

    Deviations from TorchJD: no ``initial_weights`` option (λ_0 = λ̂_1 always); a change in the number of tasks
    raises here too.
    """

    scale = "inherited"

    def __init__(self, weighting: str = "mgda", alpha: float = 0.9, weighting_kwargs: Mapping[str, Any] | None = None,
                 grad_source: str | None = None):
        super().__init__(grad_source)
        self.alpha = check_real("alpha", alpha, low=0.0, high=1.0)
        self.inner = _inner_weighting(weighting, weighting_kwargs, self.grad_source)
        self.previous: torch.Tensor | None = None

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.inner.setup(task_names)

    def after_step(self, post_losses: torch.Tensor | None) -> None:
        self.inner.after_step(post_losses)

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        self.inner.on_epoch_end(epoch, train_losses)

    def loss_lower_bound(self) -> torch.Tensor | float | None:
        return self.inner.loss_lower_bound()

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        fresh = self.inner.weights_from_gramian(gramian, losses).detach()
        if self.previous is None:
            smoothed = fresh
        elif self.previous.shape != fresh.shape:
            raise ConfigError(
                f"combiner 'cr_mogm': the number of tasks changed from {self.previous.shape[0]} to {fresh.shape[0]}"
            )
        else:
            smoothed = self.alpha * self.previous.to(fresh) + (1.0 - self.alpha) * fresh
        self.previous = smoothed
        return smoothed

    def get_extra_state(self) -> dict[str, Any]:
        return {"previous": None if self.previous is None else self.previous.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        previous = state["previous"]
        self.previous = None if previous is None else previous.clone()

    def describe(self) -> dict[str, Any]:
        inner = self.inner.describe()
        return {**super().describe(), "scale": inner["scale"], "alpha": self.alpha, "weighting": inner}
