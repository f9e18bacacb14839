"""Shared encoders.  Every encoder takes ``input_shape`` (from the dataset) and exposes ``out_dim``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError, check_choice

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{name}'; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLPEncoder(nn.Module):
    """A fully connected shared bottom: ``input -> [Linear -> act (-> dropout)] × len(hidden)``.

    The output of the last hidden layer is the shared representation fed to every task head.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if not hidden or any(h < 1 for h in hidden):
            raise ConfigError(f"backbone.hidden must be a non-empty list of positive widths, got {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"backbone.dropout must lie in [0, 1), got {dropout}")
        in_dim = 1
        for s in input_shape:
            in_dim *= int(s)
        layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def last_shared_module(self) -> nn.Module:
        """The last layer with parameters (the 'last shared layer' some combiners differentiate)."""
        return [m for m in self.net if isinstance(m, nn.Linear)][-1]


class ConvEncoder(nn.Module):
    """A small convolutional shared encoder for image inputs (``input_shape = (C, H, W)``).

    ``len(channels)`` blocks of ``conv3x3 -> norm -> ReLU -> maxpool(2)``, then global average pooling and
    an optional fully connected layer of width ``fc``; the output is a ``out_dim``-vector per image.  With
    ``channels=(64, 128, 256, 512)`` and ``fc=512`` it has the shape of the CelebA ConvNet used by the FAMO
    code base (4 conv blocks + FC), which attribute heads then read.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] = (64, 128, 256, 512),
        fc: int | None = 512,
        norm: str = "batch",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"backbone ConvEncoder needs image inputs (C, H, W), the dataset gives {tuple(input_shape)}")
        check_choice("backbone.norm", norm, ("batch", "group", "none"))
        layers: list[nn.Module] = []
        in_ch = int(input_shape[0])
        for ch in channels:
            layers.append(nn.Conv2d(in_ch, ch, kernel_size=3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(ch))
            elif norm == "group":
                layers.append(nn.GroupNorm(min(32, ch), ch))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if fc:
            layers += [nn.Linear(in_ch, fc), nn.ReLU(inplace=True)]
            in_ch = fc
        self.net = nn.Sequential(*layers)
        self.out_dim = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def last_shared_module(self) -> nn.Module:
        return [m for m in self.net if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
