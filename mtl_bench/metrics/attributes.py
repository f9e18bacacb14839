"""Binary attributes (CelebA): accuracy and F1 of one attribute, pooled over the split.

Convention (FAMO ``experiments/celeba/trainer.py::CelebaMetrics``): a sample is predicted positive when the
sigmoid of the logit exceeds 0.5, i.e. when the logit is > 0 (we test the logit, which is the same rule in
exact arithmetic and avoids the float32 sigmoid rounding tiny positive logits to exactly 0.5); TP, FP and FN
are accumulated over the whole split and F1 = 2·TP / (2·TP + FP + FN).

FAMO computes precision and recall with a 1e-8 in each denominator; that differs from the exact formula by
less than 1e-7 whenever TP > 0, and both give F1 = 0 when the attribute has **no positive in the prediction
nor in the target** (TP = FP = FN = 0) — the case where F1 is 0/0.  We choose 0 there too, matching FAMO and
scikit-learn's default ``zero_division=0``; accuracy is 1 in that case.

Targets must be 0/1 (CelebA's raw −1/1 labels mapped to 0/1); other values are counted and ``compute`` raises
a ``DatasetError``.
"""

from __future__ import annotations

import math

import torch

from mtl_bench.errors import ConfigError, DatasetError
from mtl_bench.metrics.base import Metric


class BinaryAttributeMetrics(Metric):
    """Accuracy and F1 of one binary attribute (see the module docstring).

    ``update(pred, target)``: ``pred`` N×1 logits, ``target`` N×1 with values 0./1.
    """

    higher_is_better = {"acc": True, "f1": True}

    def __init__(self, task: str = "attribute"):
        self.task = task
        self.reset()

    def reset(self) -> None:
        self._counts: torch.Tensor | None = None  # int64 [TP, FP, FN, TN, targets not in {0, 1}]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.numel() != target.numel():
            raise ConfigError(
                f"attribute task '{self.task}': prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
            )
        positive = pred.detach().reshape(target.shape) > 0
        target = target.detach()
        truth = target == 1
        stats = torch.stack([
            (positive & truth).sum(),
            (positive & ~truth).sum(),
            (~positive & truth).sum(),
            (~positive & ~truth).sum(),
            ((target != 0) & ~truth).sum(),
        ])
        self._counts = stats if self._counts is None else self._counts + stats

    def compute(self) -> dict[str, float]:
        if self._counts is None:
            return {name: math.nan for name in self.higher_is_better}
        tp, fp, fn, tn, bad = self._counts.cpu().tolist()
        if tp + fp + fn + tn == 0:
            return {name: math.nan for name in self.higher_is_better}
        if bad:
            raise DatasetError(f"attribute task '{self.task}': {bad} target value(s) are not 0 or 1; map CelebA's -1 labels to 0")
        denom = 2 * tp + fp + fn
        return {"acc": (tp + tn) / (tp + fp + fn + tn), "f1": 2 * tp / denom if denom else 0.0}
