"""The multi-task model: an explicit shared encoder and one head per task (hard parameter sharing).

The split between shared and task-specific parameters is structural, not name-based:
``shared_parameters()`` are the encoder's, ``task_parameters(name)`` are that task's head's.  The
forward pass is exposed in two stages (``encode`` → shared representation, ``decode`` → per-task
outputs) so that the gradient engine can differentiate w.r.t. the representation and diagnostics can
observe it.

Multi-task architectures with task-specific parts *inside* the encoder (MMoE's gates, CGC/PLE's task
experts, MTAN's attention modules) subclass :class:`TaskAwareEncoder`: the encoder is built with the task
names, returns one representation per task (a tuple in task order; task ``t``'s head reads element
``t``), and declares which of its modules belong to one task only (``task_modules(t)``).  Those parameters
are then task ``t``'s — the combiner does not see them, and they receive task ``t``'s gradient as its head
does — and every other encoder parameter is shared.  Which modules are which is the architecture's config
choice (e.g. ``shared_gates``) and is written to ``summary.json["sharing"]``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from mtl_bench.tasks import Task


class TaskAwareEncoder(nn.Module):
    """Base class of encoders built for a list of tasks: ``forward`` returns a tuple with one representation
    per task (in ``task_names`` order) and ``task_modules(t)`` lists the modules only task ``t``'s
    representation depends on (default: none, i.e. the whole encoder is shared).  A declared module must
    not influence any other task's representation: its gradient is then task ``t``'s alone, which is what
    lets the engine treat its parameters like task ``t``'s head."""

    out_dim: Any

    def __init__(self, task_names: Sequence[str]):
        super().__init__()
        self.task_names = list(task_names)

    def task_modules(self, task: str) -> list[nn.Module]:
        return []

    def sharing(self) -> dict[str, Any]:
        """What the summary records: the architecture's own description of its sharing choice."""
        return {}

    def regularization(self, x: torch.Tensor) -> torch.Tensor | None:
        """The architecture's own loss term on the batch ``x`` (a scalar), or ``None`` (default: none).  The trainer
        calls it after the engine's backward and adds its gradient to the parameters' ``.grad`` — outside the
        combiner, like weight decay.  The engine's graph is freed by then: a regulariser must not need it (recompute
        what it needs from ``x``, ideally only the small part it depends on, e.g. the gates)."""
        return None


def _named_in(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        self.per_task_rep = isinstance(encoder, TaskAwareEncoder)
        if self.per_task_rep and set(self.heads) - set(encoder.task_names):
            raise ValueError(f"heads {sorted(set(self.heads) - set(encoder.task_names))} have no representation in the encoder")

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
        if self.per_task_rep:  # one representation per task (TaskAwareEncoder)
            index = self.encoder.task_names.index
            return {t: self.heads[t](rep[index(t)]) for t in names}
        return {t: self.heads[t](rep) for t in names}

    def forward(self, x: torch.Tensor, tasks: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        return self.decode(self.encode(x), tasks)

    def regularization(self, x: torch.Tensor) -> torch.Tensor | None:
        """The encoder's :meth:`TaskAwareEncoder.regularization` term on ``x`` (``None`` for plain encoders)."""
        return self.encoder.regularization(x) if self.per_task_rep else None

    def encoder_task_parameters(self, name: str) -> list[nn.Parameter]:
        """Encoder parameters that belong to task ``name`` only (a :class:`TaskAwareEncoder`'s declaration)."""
        return _named_in(self.encoder.task_modules(name)) if self.per_task_rep else []

    def shared_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        owned = {id(p) for t in self.task_names for p in self.encoder_task_parameters(t)}
        return [(f"encoder.{n}", p) for n, p in self.encoder.named_parameters() if p.requires_grad and id(p) not in owned]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.shared_named_parameters()]

    def task_parameters(self, name: str) -> list[nn.Parameter]:
        """Task ``name``'s head and the encoder modules declared as its own."""
        return [*self.encoder_task_parameters(name), *(p for p in self.heads[name].parameters() if p.requires_grad)]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder's last shared layer (``encoder.last_shared_module()`` if defined, else the
        last encoder module with parameters of its own that are all shared)."""
        if hasattr(self.encoder, "last_shared_module"):
            module = self.encoder.last_shared_module()
        else:
            shared = {id(p) for p in self.shared_parameters()}
            own = [list(m.parameters(recurse=False)) for m in self.encoder.modules()]
            module = [m for m, ps in zip(self.encoder.modules(), own) if ps and all(id(p) in shared for p in ps)][-1]
        return [p for p in module.parameters() if p.requires_grad]

    def sharing(self) -> dict[str, Any]:
        """Which encoder parameters count as shared (what gradient combiners see) and which belong to one task: for each,
        the highest encoder modules whose trainable parameters all have that role."""
        owner = {id(p): "shared" for p in self.shared_parameters()}
        for t in self.task_names:
            owner.update({id(p): t for p in self.encoder_task_parameters(t)})
        cover = _covering_modules(self.encoder, owner)
        info: dict[str, Any] = {"shared": cover.get("shared", []),
                                "encoder_task_specific": {t: cover[t] for t in self.task_names if t in cover}}
        if self.per_task_rep:
            info.update(self.encoder.sharing())
        return info

    def parameter_counts(self) -> dict[str, int]:
        counts = {"shared": sum(p.numel() for p in self.shared_parameters())}
        for t in self.task_names:
            counts[f"head/{t}"] = sum(p.numel() for p in self.task_parameters(t))
        return counts


def _covering_modules(encoder: nn.Module, owner: Mapping[int, str]) -> dict[str, list[str]]:
    """Role (``shared`` or a task) → the highest modules ``encoder[.<path>]`` all of whose trainable parameters have that
    role, in parameter order: the shortest exact description of the split (``encoder`` alone when all is shared)."""
    roles = {name: {owner[id(p)] for p in m.parameters() if id(p) in owner} for name, m in encoder.named_modules()}
    out: dict[str, list[str]] = {}
    for pname, p in encoder.named_parameters():
        if id(p) not in owner:
            continue
        role, parts = owner[id(p)], pname.split(".")[:-1]
        paths = (".".join(parts[:i]) for i in range(len(parts) + 1))
        path = next((q for q in paths if roles.get(q) == {role}), pname)
        name = f"encoder.{path}" if path else "encoder"
        if name not in out.setdefault(role, []):
            out[role].append(name)
    return out


def _takes_task_names(factory: Callable[..., nn.Module]) -> bool:
    try:
        return "task_names" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def build_model(
    encoder_factory: Callable[..., nn.Module],
    head_factories: Mapping[str, Callable[..., nn.Module]],
    tasks: Mapping[str, Task],
    input_shape: tuple[int, ...],
) -> MultiTaskModel:
    extra = {"task_names": list(tasks)} if _takes_task_names(encoder_factory) else {}
    encoder = encoder_factory(input_shape=input_shape, **extra)
    heads = {name: head_factories[name](in_dim=encoder.out_dim, task=task) for name, task in tasks.items()}
    return MultiTaskModel(encoder, heads)
