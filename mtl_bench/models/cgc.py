"""CGC: Customized Gate Control (Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task
Learning (MTL) Model for Personalized Recommendations", RecSys 2020: its CGC block).

``num_shared_experts`` shared experts and ``num_task_experts`` experts per task, each a copy of the configured
``expert`` encoder (any backbone of the ``backbone`` group, e.g. ``mtl_bench.models.backbones.MLPEncoder``), read
the input.  Task ``t``'s gate is a softmax over the shared experts and task ``t``'s own experts, computed from the
flattened raw input (as in the paper and LibMTL ``architecture/CGC.py``):
``h_t = Σ_e softmax(W_t x)_e · S_t(x)_e`` with ``S_t = [shared experts; experts of t]``.  The task tower of the
paper is the task's head.  With ``num_task_experts: 0`` and one task this is a plain (one-gate) mixture of experts.

Sharing (``shared_gates``, recorded in ``summary.json["sharing"]``): the shared experts are shared; the experts of
task ``t`` feed task ``t``'s representation only, so they are task ``t``'s (the combiner does not see them, they get
task ``t``'s gradient like a head) — as in LibMTL, whose ``get_share_params`` is ``experts_shared``.  With
``shared_gates: false`` (default, LibMTL) gate ``t`` is task ``t``'s too; with ``shared_gates: true`` the gates join
the shared parameters, so combiners see them (row ``k`` of G is then zero on every other task's gate).

Deviations from LibMTL: none in the forward pass (LibMTL builds the experts from one ``encoder_class`` and takes
one expert count per task; we take one count for every task).  The representation-gradient mode differentiates
w.r.t. all K task representations, as for MMoE (see ``mtl_bench/models/mmoe.py``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.mmoe import build_experts, mix
from mtl_bench.models.mtl_model import TaskAwareEncoder


def build_task_experts(expert: Callable[..., nn.Module], count: int, input_shape: Sequence[int], key: str) -> nn.ModuleList:
    """``count`` ≥ 0 experts of one task (zero is allowed: the task then reads the shared experts only)."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ConfigError(f"backbone.{key}={count!r} must be a non-negative integer")
    return nn.ModuleList(expert(input_shape=tuple(input_shape)) for _ in range(count))


def gated(gate: nn.Module, gate_input: torch.Tensor, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The softmax-gated mixture Σ_e softmax(gate(input))_e · outputs[e] (gate input already flattened)."""
    return mix(torch.softmax(gate(gate_input), dim=-1), torch.stack(list(outputs), dim=1))


def last_layer_of(expert: nn.Module) -> nn.Module:
    """An expert's last shared layer (the expert itself if it does not name one)."""
    return expert.last_shared_module() if hasattr(expert, "last_shared_module") else expert


def add_cgc_parts(module: nn.Module, expert: Callable[..., nn.Module], input_shape: Sequence[int],
                  task_names: Sequence[str], num_shared_experts: int, num_task_experts: int) -> int:
    """Give ``module`` CGC's parts — ``shared_experts``, per-task ``task_experts``, per-task ``gates`` over shared + own
    experts reading the flattened input, ``out_dim`` — in this construction order; returns the gate input size."""
    module.shared_experts = build_experts(expert, num_shared_experts, input_shape, "num_shared_experts")
    module.task_experts = nn.ModuleDict(
        {t: build_task_experts(expert, num_task_experts, input_shape, "num_task_experts") for t in task_names})
    module.out_dim = module.shared_experts[0].out_dim
    gate_in = math.prod(input_shape)
    module.gates = nn.ModuleDict({t: nn.Linear(gate_in, num_shared_experts + num_task_experts) for t in task_names})
    return gate_in


class CGC(TaskAwareEncoder):
    def __init__(self, input_shape: Sequence[int], task_names: Sequence[str], expert: Callable[..., nn.Module],
                 num_shared_experts: int = 2, num_task_experts: int = 1, shared_gates: bool = False):
        super().__init__(task_names)
        add_cgc_parts(self, expert, input_shape, self.task_names, num_shared_experts, num_task_experts)
        self.shared_gates = bool(shared_gates)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shared = [e(x) for e in self.shared_experts]
        flat = x.flatten(1)
        return tuple(gated(self.gates[t], flat, shared + [e(x) for e in self.task_experts[t]]) for t in self.task_names)

    def gate_weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's B × (shared + own) expert weights (for inspection; the forward pass recomputes them)."""
        return {t: torch.softmax(self.gates[t](x.flatten(1)), dim=-1) for t in self.task_names}

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.task_experts[task]] + ([] if self.shared_gates else [self.gates[task]])

    def last_shared_module(self) -> nn.Module:
        """The last shared expert's last layer (every expert sits at the same depth)."""
        return last_layer_of(self.shared_experts[-1])

    def sharing(self) -> dict[str, Any]:
        return {"architecture": "cgc", "num_shared_experts": len(self.shared_experts),
                "num_task_experts": len(self.task_experts[self.task_names[0]]), "shared_gates": self.shared_gates,
                "task_experts": "task-specific"}
