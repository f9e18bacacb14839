"""Depth (or inverse depth): absolute and relative error over the valid pixels.

Definitions (mtan ``im2im_pred/utils.py::depth_error``; identical in Nash-MTL ``experiments/nyuv2/utils.py``,
FAMO/CAGrad ``cityscapes/utils.py``):

* a pixel is valid iff the sum of its target channels is non-zero (one channel here, so: target ≠ 0;
  negative targets count as valid, as in the official code),
* abs_err = Σ|p − g| / n,  rel_err = Σ(|p − g| / g) / n over the valid pixels (a plain ratio, not a
  percentage; on mtan's Cityscapes inverse depth it is in the tens because many g are tiny).

Aggregation over a split:

* default (**pooled**): sums and the valid-pixel count are accumulated over the whole split, so the result
  is exact and independent of the batch size.  This is also what LibMTL's ``DepthMetric`` computes in
  effect (it weights per-batch means by the number of valid pixels).
* ``paper_compatible=True``: the official mtan/Nash-MTL/FAMO trainers compute both errors per batch and then
  average the per-batch values with equal weight (``avg_cost += cost / n_batches``), so a short last batch
  weighs as much as a full one and the numbers depend on the evaluation batch size.  We reproduce that with
  one term per ``update`` call.  Deviation: a batch without any valid pixel is skipped (the official code
  divides by zero and returns NaN for the whole split).

Statistics are accumulated in float64 on the prediction's device; ``update`` never synchronises.
"""

from __future__ import annotations

import math

import torch

from mtl_bench.metrics._dense import check_dense, resize_to
from mtl_bench.metrics.base import Metric


def depth_valid_mask(target: torch.Tensor) -> torch.Tensor:
    """N×1×H×W boolean mask of valid pixels: the target's channel sum is non-zero (mtan's rule; 0 = invalid)."""
    return target.sum(dim=1, keepdim=True) != 0


class DepthMetrics(Metric):
    """``abs_err`` and ``rel_err`` over the valid pixels, pooled or per-batch (see the module docstring).

    ``update(pred, target)``: ``pred`` N×1×h×w (resized bilinearly to the target when h×w differ),
    ``target`` N×1×H×W with 0 marking invalid pixels.
    """

    higher_is_better = {"abs_err": False, "rel_err": False}

    def __init__(self, paper_compatible: bool = False, task: str = "depth"):
        self.paper_compatible = bool(paper_compatible)
        self.task = task
        self.reset()

    def reset(self) -> None:
        # pooled: [Σ|p−g|, Σ|p−g|/g, n valid pixels]; paper-compatible: [Σ batch abs, Σ batch rel, n batches]
        self._sums: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        check_dense(pred, target, 1, f"depth task '{self.task}'", 1)
        target = target.detach().to(torch.float64)
        pred = resize_to(pred.detach(), target.shape[-2:]).to(torch.float64)
        valid = depth_valid_mask(target)
        diff = (pred - target).abs()
        abs_sum = torch.where(valid, diff, 0.0).sum()
        rel_sum = torch.where(valid, diff / torch.where(valid, target, 1.0), 0.0).sum()
        n = valid.sum().to(torch.float64)
        if self.paper_compatible:
            has = (n > 0).to(torch.float64)
            per_batch = torch.stack([abs_sum, rel_sum]) / n.clamp_min(1.0) * has
            stats = torch.cat([per_batch, has.reshape(1)])
        else:
            stats = torch.stack([abs_sum, rel_sum, n])
        self._sums = stats if self._sums is None else self._sums + stats

    def compute(self) -> dict[str, float]:
        if self._sums is None:
            return {name: math.nan for name in self.higher_is_better}
        abs_sum, rel_sum, denom = self._sums.cpu().tolist()
        if denom == 0:
            return {name: math.nan for name in self.higher_is_better}
        return {"abs_err": abs_sum / denom, "rel_err": rel_sum / denom}
