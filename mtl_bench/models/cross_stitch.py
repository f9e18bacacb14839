"""Cross-stitch networks (Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task Learning",
CVPR 2016, arXiv 1604.03539).

One column per task, each a copy of the configured ``column`` encoder (its own initialisation, or the same local
pretrained file), cut into ``S`` stages.  After every stage but the last, a K×K cross-stitch unit mixes the K
columns: the input of stage ``i+1`` of column ``t`` is ``Σ_j α_i[t, j] · h_i^j`` (the paper's Eq. 1 for K tasks);
task ``t``'s representation is the output of column ``t``'s last stage.

Stages of the supported column encoders:

* ``mtl_bench.models.backbones.MLPEncoder``: one stage per hidden layer (Linear → activation (→ dropout); a
  leading Flatten joins the first) — the synthetic default (``backbone=cross_stitch``);
* ``mtl_bench.models.backbones.ConvEncoder``: one stage per conv block (the global pooling joins the last block,
  the optional fully connected layer is a stage of its own);
* ``mtl_bench.models.timm_encoder.TimmEncoder`` ResNets (``resnet18``/``resnet50``/``test_resnet`` …):
  stem + ``layer1``, ``layer2``, ``layer3``, ``layer4`` (``pool: true`` pools after ``layer4``), hence three units
  as in LibMTL's ``architecture/Cross_stitch.py`` (``backbone=cross_stitch_resnet``).

Initialisation (``init``): ``paper`` (default) is the paper's near-identity setting for two tasks,
``(α_S, α_D) = (0.9, 0.1)`` (same-task / different-task weight; the paper compares several such convex pairs),
generalised to K tasks as rows that sum to one: ``alpha_self`` on the diagonal and ``(1 − alpha_self)/(K − 1)`` on
every other entry (``alpha_self: 1.0`` gives K independent columns; with one task the unit is 1).  ``ones`` is
LibMTL's initialisation (every α = 1: after the first unit every column reads the same sum).  α is one scalar per
(unit, task, task) as in the paper's Eq. 1 and LibMTL; they are not constrained (neither is LibMTL's) and stay
trainable.

Learning rate: the paper trains the units with a higher learning rate than the base network (a multiple of the
order of 10²–10³; the exact factor was not re-checked against the PDF for this module).  Not done here: the
optimizer groups are ``shared`` and ``head/<task>`` (``mtl_bench.optim.param_groups``) and AdaTask requires exactly
one shared group, so the units train at the shared group's learning rate, as in LibMTL.

Sharing (``summary.json["sharing"]``): every column stage before the last unit and every unit influences every task
through the units, so they are shared, as in LibMTL (``get_share_params`` = the whole encoder).  Column ``t``'s
*last* stage, however, feeds task ``t`` only: with ``task_specific_last_stage: false`` (default, LibMTL) it is
still counted as shared — gradient combiners see it, and row ``k`` of G is zero on every other column's last stage —
with ``true`` it becomes task ``t``'s (like a head: the combiner does not see it, it gets task ``t``'s gradient).
``last_shared_module()`` is the last unit together with every column's stage that feeds it.

Deviations from LibMTL: the near-identity initialisation by default (LibMTL: all ones); LibMTL allocates a fourth
unit that is never used (here exactly S − 1); any stage-decomposable column, not only ResNets.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.models.backbones import ConvEncoder, MLPEncoder
from mtl_bench.models.mmoe import build_experts
from mtl_bench.models.mtl_model import TaskAwareEncoder
from mtl_bench.models.timm_encoder import TimmEncoder

INITS = ("paper", "ones")
RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


class GlobalAvgPool(nn.Module):
    """N×C×H×W → N×C (``TimmEncoder(pool=True)``'s pooling, as a module at the end of the last stage)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def resnet_parts(encoder: TimmEncoder) -> tuple[nn.Sequential, list[nn.Sequential]]:
    """The stem (every module of the timm feature extractor before ``layer1``) and ``layer1``–``layer4``."""
    body = encoder.body
    names = [n for n, _ in body.named_children()]
    if any(name not in names for name in RESNET_LAYERS):
        raise ConfigError(
            f"backbone model_name='{encoder.model_name}' is not a ResNet with layer1-layer4 (its stages: {names}); "
            "use e.g. resnet18, resnet50 or test_resnet"
        )
    stem = nn.Sequential(*(m for n, m in body.named_children() if names.index(n) < names.index("layer1")))
    return stem, [getattr(body, name) for name in RESNET_LAYERS]


def _split_sequential(net: nn.Sequential) -> list[nn.Sequential]:
    """Cut a plain layer stack before every Linear/Conv2d (what precedes the first one joins the first stage)."""
    stages: list[list[nn.Module]] = []
    for m in net:
        if isinstance(m, (nn.Linear, nn.Conv2d)) and stages and any(isinstance(x, (nn.Linear, nn.Conv2d)) for x in stages[-1]):
            stages.append([])
        if not stages:
            stages.append([])
        stages[-1].append(m)
    return [nn.Sequential(*s) for s in stages]


def column_stages(column: nn.Module) -> list[nn.Sequential]:
    """The stages of one column encoder (see the module docstring)."""
    if isinstance(column, TimmEncoder):
        stem, layers = resnet_parts(column)
        last = nn.Sequential(layers[3], GlobalAvgPool()) if column.pool else layers[3]
        return [nn.Sequential(stem, layers[0]), layers[1], layers[2], last]
    if isinstance(column, (MLPEncoder, ConvEncoder)):
        return _split_sequential(column.net)
    raise ConfigError(
        f"backbone.column={type(column).__name__} cannot be cut into stages; use "
        "mtl_bench.models.backbones.MLPEncoder, ...ConvEncoder or mtl_bench.models.timm_encoder.TimmEncoder (a ResNet)"
    )


def unit_init(k: int, init: str, alpha_self: float) -> torch.Tensor:
    """The K×K starting value of a unit: ``paper`` (rows sum to 1, ``alpha_self`` on the diagonal) or ``ones``."""
    check_choice("backbone.init", init, INITS)
    if init == "ones":
        return torch.ones(k, k)
    if not 0.0 <= alpha_self <= 1.0:
        raise ConfigError(f"backbone.alpha_self={alpha_self} must lie in [0, 1] (the paper's best is 0.9)")
    if k == 1:
        return torch.ones(1, 1)
    alpha = torch.full((k, k), (1.0 - alpha_self) / (k - 1))
    return alpha.fill_diagonal_(alpha_self)


class CrossStitchUnit(nn.Module):
    """``out[t] = Σ_j alpha[t, j] · h[j]`` over the K columns' activations (any shape, same for every column)."""

    def __init__(self, alpha: torch.Tensor):
        super().__init__()
        self.alpha = nn.Parameter(alpha.clone())

    def forward(self, hs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        mixed = torch.einsum("tj,j...->t...", self.alpha.to(hs[0].dtype), torch.stack(list(hs)))
        return list(mixed.unbind(0))


class CrossStitch(TaskAwareEncoder):
    def __init__(self, input_shape: Sequence[int], task_names: Sequence[str], column: Callable[..., nn.Module],
                 init: str = "paper", alpha_self: float = 0.9, task_specific_last_stage: bool = False):
        super().__init__(task_names)
        k = len(self.task_names)
        encoders = build_experts(column, k, input_shape, "column")
        self.columns = nn.ModuleList(nn.ModuleList(column_stages(e)) for e in encoders)
        self.out_dim: Any = encoders[0].out_dim
        n_stages = len(self.columns[0])
        if n_stages < 2:
            raise ConfigError(
                f"backbone.column has {n_stages} stage: cross-stitch units sit between stages, give it at least two "
                "(e.g. column.hidden=[64, 64])"
            )
        start = unit_init(k, init, float(alpha_self))
        self.units = nn.ModuleList(CrossStitchUnit(start) for _ in range(n_stages - 1))
        self.init = init
        self.alpha_self = float(alpha_self)
        self.task_specific_last_stage = bool(task_specific_last_stage)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hs = [x] * len(self.columns)
        for i in range(len(self.columns[0])):
            hs = [col[i](h) for col, h in zip(self.columns, hs)]
            if i < len(self.units):
                hs = self.units[i](hs)
        return tuple(hs)

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.columns[self.task_names.index(task)][-1]] if self.task_specific_last_stage else []

    def last_shared_module(self) -> nn.Module:
        """The last unit and the stage of every column that feeds it (all of them influence every task)."""
        return nn.ModuleList([*(col[-2] for col in self.columns), self.units[-1]])

    def sharing(self) -> dict[str, Any]:
        return {
            "architecture": "cross_stitch",
            "columns": len(self.columns),
            "stages": len(self.columns[0]),
            "units": len(self.units),
            "init": self.init if self.init == "ones" else f"paper (alpha_self={self.alpha_self})",
            "units_shared": True,
            "task_specific_last_stage": self.task_specific_last_stage,
        }
