"""MMoE: multi-gate mixture of experts (Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).

``E`` experts, each a copy of the configured ``expert`` encoder (any backbone of the ``backbone`` group, e.g.
``mtl_bench.models.backbones.MLPEncoder``), read the input; task ``t``'s representation is
``h_t = Σ_e softmax(W_t x)_e · expert_e(x)``, a gate per task on the flattened raw input, as in the paper and
LibMTL's ``architecture/MMoE.py``.

Sharing (``shared_gates``, recorded in ``summary.json["sharing"]``): the experts are shared.  With
``shared_gates: false`` (default; LibMTL's ``get_share_params`` is the experts only) each gate belongs to its
task: gradient combiners see the experts only and gate ``t`` gets task ``t``'s gradient like a head.  With
``shared_gates: true`` the gates join the shared parameters, so combiners see them too (row ``k`` of G is
then zero on every other task's gate).

Deviations from LibMTL: none in the forward pass; LibMTL's representation-gradient mode (``rep_grad``) stacks
the K task representations as if they lived in one space, while ours differentiates w.r.t. all K of them
(row ``k`` of G is non-zero only on ``h_k``), which is the exact gradient w.r.t. what the encoder outputs.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.mtl_model import TaskAwareEncoder


def build_experts(expert: Callable[..., nn.Module], count: int, input_shape: Sequence[int], key: str) -> nn.ModuleList:
    """``count`` independent experts (each its own initialisation) with a common output dimension."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError(f"backbone.{key}={count!r} must be a positive integer")
    return nn.ModuleList(expert(input_shape=tuple(input_shape)) for _ in range(count))


def mix(weights: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Σ_e weights[b, e] · outputs[b, e, ...]: the gated combination of E stacked expert outputs."""
    shape = weights.shape + (1,) * (outputs.dim() - 2)
    return (weights.reshape(shape) * outputs).sum(dim=1)


class MMoE(TaskAwareEncoder):
    def __init__(self, input_shape: Sequence[int], task_names: Sequence[str], expert: Callable[..., nn.Module],
                 num_experts: int = 4, shared_gates: bool = False):
        super().__init__(task_names)
        self.experts = build_experts(expert, num_experts, input_shape, "num_experts")
        self.out_dim: Any = self.experts[0].out_dim
        gate_in = math.prod(input_shape)
        self.gates = nn.ModuleDict({t: nn.Linear(gate_in, num_experts) for t in self.task_names})
        self.shared_gates = bool(shared_gates)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = torch.stack([e(x) for e in self.experts], dim=1)  # B × E × out
        flat = x.flatten(1)
        return tuple(mix(torch.softmax(self.gates[t](flat), dim=-1), outputs) for t in self.task_names)

    def task_modules(self, task: str) -> list[nn.Module]:
        return [] if self.shared_gates else [self.gates[task]]

    def last_shared_module(self) -> nn.Module:
        """The last expert's last shared layer (every expert sits at the same depth)."""
        last = self.experts[-1]
        return last.last_shared_module() if hasattr(last, "last_shared_module") else last

    def sharing(self) -> dict[str, Any]:
        return {"architecture": "mmoe", "num_experts": len(self.experts), "shared_gates": self.shared_gates}
