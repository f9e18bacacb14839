"""Task heads.  A head factory is called as ``factory(in_dim=encoder.out_dim, task=task)``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mtl_bench.models.backbones import make_activation
from mtl_bench.tasks import Task


class MLPHead(nn.Module):
    """``rep -> [Linear -> act] × len(hidden) -> Linear(task.out_dim)``; ``hidden=[]`` is a linear head."""

    def __init__(self, in_dim: int, task: Task, hidden: Sequence[int] = (32,), activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), make_activation(activation)]
            in_dim = width
        layers.append(nn.Linear(in_dim, task.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.net(rep)
