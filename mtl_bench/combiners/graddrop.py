"""GradDrop: per coordinate, keep only the task gradients of one sign, chosen with the sign-purity probability."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mtl_bench.combiners._grad_utils import SeededAggregator, check_real
from mtl_bench.combiners.base import Aggregation
from mtl_bench.combiners.registry import register
from mtl_bench.utils import host_to_device
from mtl_bench.errors import ConfigError


@register("graddrop")
class GradDrop(SeededAggregator):
    """Gradient Sign Dropout (GradDrop).

    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, "Just Pick a Sign: Optimizing Deep Multitask
    Models with Gradient Sign Dropout", NeurIPS 2020.

    Per coordinate c of the gradient source: the positive sign purity P_c = ½ (1 + Σ_i g_ic / Σ_i |g_ic|) ∈ [0, 1];
    draw U_c ~ Uniform[0, 1) from the combiner's own generator; if U_c < P_c keep the positive contributions
    (mask M_ic = [g_ic > 0]) else keep the negative ones (M_ic = [g_ic < 0]).  The update is
    Σ_i (ℓ_i + (1 − ℓ_i) M_i) ∘ g_i with leak ℓ_i ∈ [0, 1] (``leak``: one number for all tasks or a list in
    task order; ℓ = 0 is pure GradDrop, ℓ = 1 keeps task i's gradient entirely).  Where all tasks agree in
    sign, P_c ∈ {0, 1} and nothing is dropped.  Coordinates where every g_ic is 0 get P_c = ½ and output 0.

    Scale convention: **sum** of the masked task gradients (``scale = "sum"``; with no sign conflict the
    update is Σ_i g_i), as in the paper, LibMTL and TorchJD.  Heads receive their own gradients unchanged.

    Gradient sources: ``representation`` (default: the paper inserts GradDrop at an activation layer, and
    LibMTL supports only that) and ``params`` (per-coordinate masking of the shared-parameter gradients, as
    TorchJD's ``GradDrop`` does on the Jacobian).

    Deviation from the paper / LibMTL: the paper's Algorithm 1 computes the purity from sgn(A) ∘ ∇_A L_i summed
    over the batch dimension (A: the activations) and applies one mask per unit to the whole batch.  The
    aggregator receives only the flattened K×(batch·features) gradient, without the activation values or the
    batch layout, so we use the per-coordinate form above: each sample-feature entry gets its own P and U and
    sgn(A) is not applied (TorchJD's implementation does the same).  With ``params`` there are no activations
    and the per-coordinate form is the only one.  The monotone function f applied to P is fixed to the identity.
    Random draws are made in float64 on the CPU and moved to the gradients' device and dtype, so CPU and CUDA,
    float32 and float64 runs draw the same U.
    """

    scale = "sum"
    default_source = "representation"

    def __init__(self, leak: float | list[float] = 0.0, seed: int = 0, grad_source: str | None = None):
        super().__init__(seed, grad_source)
        if isinstance(leak, Sequence) and not isinstance(leak, str):  # a list, also an OmegaConf ListConfig
            self.leak: float | list[float] = [check_real(f"leak[{i}]", v, low=0.0, high=1.0) for i, v in enumerate(leak)]
        else:
            self.leak = check_real("leak", leak, low=0.0, high=1.0)

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        if isinstance(self.leak, list) and len(self.leak) != len(task_names):
            raise ConfigError(
                f"combiner.leak={self.leak} has {len(self.leak)} values; give one number or one per task "
                f"({len(task_names)}: {list(task_names)})"
            )

    def purity(self, grads: torch.Tensor) -> torch.Tensor:
        """Positive sign purity P per coordinate (½ where all task gradients are zero)."""
        total, mass = grads.sum(0), grads.abs().sum(0)
        ratio = torch.where(mass > 0, total / torch.where(mass > 0, mass, torch.ones_like(mass)), torch.zeros_like(mass))
        return 0.5 * (1.0 + ratio)

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        uniform = host_to_device(torch.rand(grads.shape[1], generator=self.generator, dtype=torch.float64), grads)
        keep_positive = uniform < self.purity(grads)
        mask = torch.where(keep_positive, grads > 0, grads < 0).to(grads.dtype)
        leak = torch.as_tensor(self.leak, dtype=grads.dtype, device=grads.device).expand(grads.shape[0]).unsqueeze(1)
        return Aggregation(direction=((leak + (1.0 - leak) * mask) * grads).sum(0))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "leak": self.leak}
