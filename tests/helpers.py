"""Small models and combiners shared by the tests."""

from __future__ import annotations

import torch

from mtl_bench.combiners.base import Aggregation, GradientAggregator, GramianWeighting
from mtl_bench.data.synthetic import regression_task
from mtl_bench.models.backbones import MLPEncoder
from mtl_bench.models.heads import MLPHead
from mtl_bench.models.mtl_model import MultiTaskModel, build_model


class SumOfGradients(GradientAggregator):
    """Test-only aggregator: Σ_k g_k with unit weights, i.e. the EW(sum) update computed from G."""

    name = "test_sum"

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        return Aggregation(grads.sum(0), torch.ones_like(losses))


class ScaledMean(GramianWeighting):
    """Test-only Gramian weighting with fixed non-trivial weights a: direction Σ_k a_k g_k."""

    name = "test_scaled"

    def __init__(self, coeffs, grad_source=None):
        super().__init__(grad_source)
        self.coeffs = torch.tensor(coeffs, dtype=torch.float64)

    def weights_from_gramian(self, gramian, losses):
        return self.coeffs.to(gramian)


def tiny_model(tasks=("a", "b", "c"), in_dim=5, seed=0, dtype=torch.float64) -> MultiTaskModel:
    torch.manual_seed(seed)
    specs = {t: regression_task(t) for t in tasks}
    model = build_model(
        lambda input_shape: MLPEncoder(input_shape, hidden=(7, 6)),
        {t: (lambda in_dim, task: MLPHead(in_dim, task, hidden=(4,))) for t in tasks},
        specs,
        (in_dim,),
    )
    return model.to(dtype)


def tiny_batch(n=6, in_dim=5, tasks=("a", "b", "c"), seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g, dtype=dtype)
    y = {t: torch.randn(n, 1, generator=g, dtype=dtype) * (k + 1) for k, t in enumerate(tasks)}
    return x, y


def task_losses(model, x, y):
    out = model(x)
    return {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in model.task_names}
