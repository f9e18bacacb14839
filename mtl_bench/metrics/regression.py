"""Pooled regression metrics: MSE, MAE and R² over all (sample, output) pairs of a split."""

from __future__ import annotations

import math

import torch

from mtl_bench.metrics.base import Metric


class RegressionMetrics(Metric):
    """Exact split-level MSE, MAE and coefficient of determination.

    Statistics are summed in float64 over every element, so the result does not depend on the batch
    size.  R² = 1 − SSE / SST with SST taken around the split's target mean (computed from the pooled
    sums Σy and Σy², i.e. SST = Σy² − (Σy)²/n).  R² is scale-free, which makes it the readable metric
    when tasks have very different label scales.
    """

    higher_is_better = {"mse": False, "mae": False, "r2": True}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._sums: torch.Tensor | None = None  # [Σ e², Σ |e|, Σ y, Σ y²]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.detach().reshape(target.shape).to(torch.float64)
        target = target.detach().to(torch.float64)
        err = pred - target
        stats = torch.stack([(err * err).sum(), err.abs().sum(), target.sum(), (target * target).sum()])
        self._sums = stats if self._sums is None else self._sums + stats
        self._n += target.numel()

    def compute(self) -> dict[str, float]:
        if self._sums is None or self._n == 0:
            return {name: math.nan for name in self.higher_is_better}
        sse, sae, sy, syy = (float(v) for v in self._sums.cpu())
        n = self._n
        sst = syy - sy * sy / n
        r2 = 1.0 - sse / sst if sst > 0 else math.nan
        return {"mse": sse / n, "mae": sae / n, "r2": r2}
