"""Shared helpers of the dense-prediction losses and metrics: shape checks and resizing to the target.

Contract (shared by the dataset builders, the heads and the tasks): a dense head may predict at any
resolution (e.g. 1/8 of the input); the task's loss and metrics resize the prediction to the target's
spatial size with bilinear interpolation, ``align_corners=False``, when the sizes differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtl_bench.errors import ConfigError


def check_dense(pred: torch.Tensor, target: torch.Tensor, channels: int, what: str, target_channels: int | None) -> None:
    """Raise a one-line ``ConfigError`` unless ``pred`` is N×channels×h×w and ``target`` is N×[target_channels×]H×W.

    ``target_channels=None`` means a target without a channel axis (segmentation labels, N×H×W).
    Only Python-side shape checks: no device synchronisation.
    """
    expected_target = "N×H×W" if target_channels is None else f"N×{target_channels}×H×W"
    target_dims = 3 if target_channels is None else 4
    if pred.dim() != 4 or pred.shape[1] != channels:
        raise ConfigError(f"{what}: the head must output N×{channels}×h×w, got shape {tuple(pred.shape)}")
    if target.dim() != target_dims or (target_channels is not None and target.shape[1] != target_channels):
        raise ConfigError(f"{what}: the target must be {expected_target}, got shape {tuple(target.shape)}")
    if pred.shape[0] != target.shape[0]:
        raise ConfigError(f"{what}: prediction batch size {pred.shape[0]} differs from the target's {target.shape[0]}")


def resize_to(pred: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``pred`` (N×C×h×w) bilinearly resized to ``size`` = (H, W) (``align_corners=False``); unchanged if equal."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred, size=tuple(size), mode="bilinear", align_corners=False)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (asynchronous device→host copies must land before they are read)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
