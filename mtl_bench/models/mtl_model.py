"""The multi-task model: an explicit shared encoder and one head per task (hard parameter sharing).

The split between shared and task-specific parameters is structural, not name-based:
``shared_parameters()`` are the encoder's, ``task_parameters(name)`` are that task's head's.  The
forward pass is exposed in two stages (``encode`` → shared representation, ``decode`` → per-task
outputs) so that the gradient engine can differentiate w.r.t. the representation and diagnostics can
observe it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from mtl_bench.tasks import Task


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))

    encoder_frozen = False

    def freeze_encoder(self) -> None:
        """Freeze the shared encoder: no gradients, and eval mode (BatchNorm running statistics and dropout) even
        while the model trains — its parameters and buffers then stay bit-identical (transfer fine-tuning)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder_frozen = True
        self.encoder.eval()

    def train(self, mode: bool = True) -> "MultiTaskModel":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def encode(self, x: torch.Tensor) -> Any:
        """The shared representation (a tensor, or a tuple of tensors for multi-scale encoders)."""
        return self.encoder(x)

    def decode(self, rep: Any, tasks: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        names = self.task_names if tasks is None else list(tasks)
        return {t: self.heads[t](rep) for t in names}

    def forward(self, x: torch.Tensor, tasks: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        return self.decode(self.encode(x), tasks)

    def shared_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"encoder.{n}", p) for n, p in self.encoder.named_parameters() if p.requires_grad]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.shared_named_parameters()]

    def task_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for p in self.heads[name].parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder's last shared layer (``encoder.last_shared_module()`` if defined)."""
        if hasattr(self.encoder, "last_shared_module"):
            module = self.encoder.last_shared_module()
        else:
            module = [m for m in self.encoder.modules() if any(True for _ in m.parameters(recurse=False))][-1]
        return [p for p in module.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        counts = {"shared": sum(p.numel() for p in self.shared_parameters())}
        for t in self.task_names:
            counts[f"head/{t}"] = sum(p.numel() for p in self.task_parameters(t))
        return counts


def build_model(
    encoder_factory: Callable[..., nn.Module],
    head_factories: Mapping[str, Callable[..., nn.Module]],
    tasks: Mapping[str, Task],
    input_shape: tuple[int, ...],
) -> MultiTaskModel:
    encoder = encoder_factory(input_shape=input_shape)
    heads = {name: head_factories[name](in_dim=encoder.out_dim, task=task) for name, task in tasks.items()}
    return MultiTaskModel(encoder, heads)
