"""PLE: Progressive Layered Extraction (Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020).

A stack of extraction levels, as in the paper.  Level ``j`` has ``num_shared_experts`` shared
experts, ``num_task_experts`` experts per task and one softmax gate per task; every level but the last also has a
*shared-branch gate* over all its experts (shared and every task's).  With ``g^{t,j}`` task ``t``'s output and
``g^{s,j}`` the shared branch's output of level ``j`` (``g^{·,0} = x``):

- task ``t``'s experts and gate read ``g^{t,j-1}``; the shared experts and the shared-branch gate read ``g^{s,j-1}``;
- ``g^{t,j} = Σ_e softmax(W^{t,j} g^{t,j-1})_e · [shared experts; experts of t]_e``;
- ``g^{s,j} = Σ_e softmax(W^{s,j} g^{s,j-1})_e · [shared experts; experts of every task]_e`` (not at the last level).

Task ``t``'s head reads ``g^{t,L}``.  One level is CGC (``mtl_bench/models/cgc.py``).  ``levels`` is a count (every
level's experts are copies of ``expert``) or a list of expert configs, one per level; level ``j``'s experts take
level ``j-1``'s output width as their input shape.

Sharing (recorded in ``summary.json["sharing"]``): the shared experts and the shared-branch gates are shared (every
task depends on them).  Task ``t``'s gates (every level) influence task ``t``'s branch only, so they are task
``t``'s unless ``shared_gates: true``.  Task ``t``'s experts are task ``t``'s **at the last level only**: at an earlier
level they also feed the shared-branch gate, hence the next level's shared experts and every task — so they are
shared parameters there, and combiners see them.

LibMTL (``architecture/PLE.py``) differs: it is ResNet-only, with 5 levels on the ResNet stages (stem, layer1–4),
and has **no shared-branch gate** — at each level the shared experts are re-applied to each task's current
representation, so there is no shared branch and a task's experts never reach another task.  We follow the paper
(expert type configurable, any number of levels, the shared-branch gate): that is the model the paper evaluates,
and its sharing (early task experts feeding every task) is what gradient combiners should see.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.cgc import add_cgc_parts, gated, last_layer_of
from mtl_bench.models.mtl_model import TaskAwareEncoder


class ExtractionLevel(nn.Module):
    """One PLE level: shared experts, per-task experts and gates, and (unless ``last``) the shared-branch gate."""

    def __init__(self, expert: Callable[..., nn.Module], input_shape: Sequence[int], task_names: Sequence[str],
                 num_shared_experts: int, num_task_experts: int, last: bool):
        super().__init__()
        self.task_names = list(task_names)
        gate_in = add_cgc_parts(self, expert, input_shape, self.task_names, num_shared_experts, num_task_experts)
        total = num_shared_experts + num_task_experts * len(self.task_names)
        self.branch_gate = None if last else nn.Linear(gate_in, total)

    def forward(self, shared_in: torch.Tensor, task_in: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        shared = [e(shared_in) for e in self.shared_experts]
        own = {t: [e(h) for e in self.task_experts[t]] for t, h in zip(self.task_names, task_in)}
        task_out = [gated(self.gates[t], h.flatten(1), shared + own[t]) for t, h in zip(self.task_names, task_in)]
        if self.branch_gate is None:
            return None, task_out
        everything = shared + [o for t in self.task_names for o in own[t]]
        return gated(self.branch_gate, shared_in.flatten(1), everything), task_out


def level_experts(levels: int | Sequence[Callable[..., nn.Module]], expert: Callable[..., nn.Module] | None) -> list:
    """One expert factory per level: ``levels`` copies of ``expert``, or the list ``levels`` itself."""
    if isinstance(levels, int) and not isinstance(levels, bool):
        if levels < 1:
            raise ConfigError(f"backbone.levels={levels} must be a positive count or a non-empty list of expert configs")
        if expert is None:
            raise ConfigError("backbone.levels is a count, so backbone.expert (the expert config of every level) must be set")
        return [expert] * levels
    factories = list(levels) if isinstance(levels, Sequence) and not isinstance(levels, str) else []
    if not factories or not all(callable(f) for f in factories):
        raise ConfigError(f"backbone.levels={levels!r} must be a positive count or a non-empty list of expert configs "
                          "(each with _target_ and _partial_: true)")
    return factories


def next_shape(out_dim: Any) -> tuple[int, ...]:
    return (int(out_dim),) if isinstance(out_dim, int) else tuple(out_dim)


class PLE(TaskAwareEncoder):
    def __init__(self, input_shape: Sequence[int], task_names: Sequence[str], levels: Any = 2,
                 expert: Callable[..., nn.Module] | None = None, num_shared_experts: int = 2, num_task_experts: int = 1,
                 shared_gates: bool = False):
        super().__init__(task_names)
        factories = level_experts(levels, expert)
        shape, built = tuple(input_shape), []
        for j, factory in enumerate(factories):
            built.append(ExtractionLevel(factory, shape, self.task_names, num_shared_experts, num_task_experts,
                                         last=j == len(factories) - 1))
            shape = next_shape(built[-1].out_dim)
        self.levels = nn.ModuleList(built)
        self.out_dim: Any = built[-1].out_dim
        self.shared_gates = bool(shared_gates)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shared, tasks = x, [x] * len(self.task_names)
        for level in self.levels:
            shared, tasks = level(shared, tasks)
        return tuple(tasks)

    def task_modules(self, task: str) -> list[nn.Module]:
        gates = [] if self.shared_gates else [level.gates[task] for level in self.levels]
        return [self.levels[-1].task_experts[task], *gates]

    def last_shared_module(self) -> nn.Module:
        """The last level's last shared expert's last layer."""
        return last_layer_of(self.levels[-1].shared_experts[-1])

    def level_roles(self) -> list[dict[str, str]]:
        """Per level, each part's role as declared by ``task_modules`` (the summary's readable form)."""
        owned = {id(p) for t in self.task_names for m in self.task_modules(t) for p in m.parameters()}
        roles = []
        for level in self.levels:
            parts = {name: [id(p) for p in child.parameters()] for name, child in level.named_children()}
            roles.append({name: "task-specific" if all(i in owned for i in ids) else "shared"
                          for name, ids in parts.items() if ids})
        return roles

    def sharing(self) -> dict[str, Any]:
        last = self.levels[-1]
        return {"architecture": "ple", "levels": len(self.levels), "num_shared_experts": len(last.shared_experts),
                "num_task_experts": len(last.task_experts[self.task_names[0]]), "shared_gates": self.shared_gates,
                "per_level": self.level_roles()}
