"""Dense-prediction task heads for encoders that return one feature map (``TimmEncoder``, ``SegNetEncoder``).

A head maps the N×C×h×w representation to N×task.out_dim×h×w **raw** outputs at the feature resolution (1/8 of
the input for a dilated ResNet at output stride 8).  It neither upsamples nor normalises: the task's loss and
metrics resize the prediction to the target and apply softmax / normalise normals.

For CelebA attributes (N×C vectors from ``TimmEncoder(pool=True)``) use ``mtl_bench.models.heads.MLPHead`` with
``hidden=[]``, the linear head.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.tasks import Task


def _check_in_dim(in_dim: object, head: str, task: Task) -> int:
    if not isinstance(in_dim, int) or in_dim < 1:
        raise ConfigError(
            f"head {head} for task '{task.name}' needs an encoder with one feature map (positive integer out_dim), got {in_dim!r}"
        )
    return in_dim


def feature_map(rep: torch.Tensor | Sequence[torch.Tensor], head: str) -> torch.Tensor:
    """The (deepest) N×C×h×w map of the representation: the tensor itself, or the last of a multi-level tuple."""
    x = rep[-1] if isinstance(rep, (tuple, list)) else rep
    if x.dim() != 4:
        raise ConfigError(
            f"head {head} needs an N×C×h×w feature map, the encoder gave shape {tuple(x.shape)} (a pooled encoder? use MLPHead)"
        )
    return x


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool → conv1×1–BN–ReLU, broadcast back to h×w.

    DeepLabV3 upsamples the 1×1 map bilinearly; resizing a 1×1 map gives the same constant map, so it is expanded.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = conv_bn_relu(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.proj(x.mean(dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPPHead(nn.Module):
    """The DeepLabV3 head (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017).

    The per-task decoder of LibMTL's NYUv2/Cityscapes examples (``LibMTL/model/decoder/DeepLabHead.py``, the same
    structure as torchvision's ``DeepLabHead``; written from a reading, not copied) on a dilated ResNet-50 at
    output stride 8:

    * ASPP: conv1×1, three conv3×3 with dilation ``rates`` (12, 24, 36: the paper's rates for output stride 8)
      and the image-pooling branch, each → ``channels`` with BN and ReLU; concatenated, projected by
      conv1×1–BN–ReLU and ``Dropout(dropout)``;
    * conv3×3–BN–ReLU at ``channels``, then conv1×1 → ``task.out_dim`` (with bias).

    Convolutions followed by BN have no bias; PyTorch's default initialisation (as LibMTL).  Deviation: LibMTL's
    head also upsamples its output to the image size (bilinear, ``align_corners=True``); here the output stays at
    the feature resolution and the task's loss/metrics resize it.  As in DeepLabV3, training needs batches of at
    least 2 (BatchNorm on the 1×1 pooled branch).
    """

    def __init__(self, in_dim: int, task: Task, channels: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5):
        super().__init__()
        in_dim = _check_in_dim(in_dim, "ASPPHead", task)
        rates = tuple(int(r) for r in rates)
        if channels < 1:
            raise ConfigError(f"head ASPPHead channels={channels} for task '{task.name}' must be a positive width")
        if not rates or any(r < 1 for r in rates):
            raise ConfigError(
                f"head ASPPHead rates={list(rates)} for task '{task.name}' must be positive dilation rates, e.g. [12, 24, 36]"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"head ASPPHead dropout={dropout} for task '{task.name}' must lie in [0, 1)")
        branches = [conv_bn_relu(in_dim, channels, 1)] + [conv_bn_relu(in_dim, channels, 3, r) for r in rates]
        self.branches = nn.ModuleList([*branches, ImagePooling(in_dim, channels)])
        self.project = nn.Sequential(conv_bn_relu(len(self.branches) * channels, channels, 1), nn.Dropout(dropout))
        self.classifier = nn.Sequential(conv_bn_relu(channels, channels, 3), nn.Conv2d(channels, task.out_dim, 1))

    def forward(self, rep: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        x = feature_map(rep, "ASPPHead")
        return self.classifier(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


class ConvHead(nn.Module):
    """A light dense head: conv3×3(in→hidden)–BN–ReLU → conv1×1(hidden→task.out_dim); raw outputs."""

    def __init__(self, in_dim: int, task: Task, hidden: int = 256):
        super().__init__()
        in_dim = _check_in_dim(in_dim, "ConvHead", task)
        if hidden < 1:
            raise ConfigError(f"head ConvHead hidden={hidden} for task '{task.name}' must be a positive width")
        self.net = nn.Sequential(conv_bn_relu(in_dim, hidden, 3), nn.Conv2d(hidden, task.out_dim, 1))

    def forward(self, rep: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.net(feature_map(rep, "ConvHead"))
