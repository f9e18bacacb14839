"""Surface normals: angular error statistics over the valid pixels.

Per valid pixel, angle = degrees(acos(clamp(⟨p̂, g⟩, −1, 1))) where p̂ is the prediction resized to the
target and normalised to unit length (``F.normalize``; a zero prediction gives 90°) and g the target as
stored (the dataset provides unit vectors).  Reported: ``mean``, ``median`` and the fractions of pixels with
an angle **strictly below** 11.25°, 22.5° and 30° (``within_*``, fractions in [0, 1]).

Sources: mtan ``im2im_pred/utils.py::normal_error`` and its copies in Nash-MTL ``experiments/nyuv2/utils.py``
and CAGrad ``nyuv2/utils.py`` (``np.mean(error < 11.25)`` etc., hence "strictly below"); LibMTL
``examples/nyu/utils.py::NormalMetric`` (normalises the prediction, pools all pixels).  The official SegNet
models normalise their output inside the network, so normalising again in the metric changes nothing there.

Validity: by default a pixel is valid unless its target is the zero vector.  mtan uses "sum of the target
channels ≠ 0", which also drops the (measure-zero) unit vectors whose components sum to 0; with
``paper_compatible=True`` we use that rule.

Aggregation over a split:

* default (**pooled**): the mean and the three fractions are exact over all valid pixels of the split
  (float64 sums on the device, no host sync in ``update``).  The median needs the whole distribution:

  - ``median="exact"``: every per-pixel angle is kept as float32 **on the host** (an asynchronous copy per
    batch), 4 bytes per target pixel of the split including invalid ones (stored as NaN and dropped in
    ``compute``), e.g. about 290 MB for NYUv2's 654 test images at 288×384.  The median is numpy's (the
    mean of the two middle values for an even count).
  - ``median="histogram"``: counts in fixed 0.01° bins over [0°, 180°] on the device (18,000 int64
    counters, constant memory); the median is read from the bin midpoints, so it is within 0.005° of the
    exact value (the brief allows 0.01°).  The mean and fractions stay exact.

* ``paper_compatible=True``: mtan/Nash-MTL/FAMO compute the five statistics **per batch** (``np.median`` of
  the batch's valid pixels) and average them with equal weight per batch, so the reported "median" is a mean
  of per-batch medians and every statistic depends on the evaluation batch size.  We reproduce that with one
  term per ``update`` call; per-batch medians are exact and computed on the device (sort), so
  ``median`` must stay ``"exact"``.  Deviation: a batch without valid pixels is skipped (official: NaN).

Angles are computed in float64 (the official code uses float32, which differs by < 0.02° per pixel near 0°
and far less elsewhere).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.metrics._dense import check_dense, resize_to, synchronize
from mtl_bench.metrics.base import Metric

THRESHOLDS_DEG = (11.25, 22.5, 30.0)
HISTOGRAM_BIN_DEG = 0.01
HISTOGRAM_BINS = 18000  # [0°, 180°] in 0.01° bins; 180° itself falls into the last bin
MEDIAN_MODES = ("exact", "histogram")


def normal_valid_mask(target: torch.Tensor, paper_compatible: bool = False) -> torch.Tensor:
    """N×H×W boolean mask of valid pixels of an N×3×H×W normal map (see the module docstring)."""
    if paper_compatible:
        return target.sum(dim=1) != 0
    return (target != 0).any(dim=1)


def normal_angles(pred: torch.Tensor, target: torch.Tensor, paper_compatible: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel angular error in degrees (float64, N×H×W) and the validity mask, after resizing and normalising ``pred``."""
    target = target.detach().to(torch.float64)
    unit = F.normalize(resize_to(pred.detach(), target.shape[-2:]).to(torch.float64), dim=1)
    cosine = (unit * target).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine)), normal_valid_mask(target, paper_compatible)


def _median_from_sorted(values: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """numpy-style median of the first ``n`` entries of the ascending 1-D ``values`` (``n`` a device tensor, n ≥ 1)."""
    lo = torch.div(n - 1, 2, rounding_mode="floor")
    hi = torch.div(n, 2, rounding_mode="floor")
    return (values.gather(0, lo.reshape(1)) + values.gather(0, hi.reshape(1))).squeeze(0) / 2


class NormalMetrics(Metric):
    """Mean / median angle and within-threshold fractions (see the module docstring for modes and memory).

    ``update(pred, target)``: ``pred`` N×3×h×w (resized bilinearly to the target when h×w differ, then
    normalised), ``target`` N×3×H×W unit vectors with the zero vector marking invalid pixels.
    """

    higher_is_better = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True}

    def __init__(self, paper_compatible: bool = False, median: str = "exact", task: str = "normal"):
        check_choice(f"normal task '{task}': median", median, MEDIAN_MODES)
        if paper_compatible and median != "exact":
            raise ConfigError(
                f"normal task '{task}': median='{median}' applies to pooled statistics only; paper_compatible=True "
                "averages exact per-batch medians, so use median='exact'"
            )
        self.paper_compatible = bool(paper_compatible)
        self.median_mode = median
        self.task = task
        self.reset()

    def reset(self) -> None:
        # pooled: [Σ angle, n, n<11.25, n<22.5, n<30]; paper-compatible: [Σ batch mean, Σ batch median, 3 × Σ batch
        # fraction, n batches]
        self._sums: torch.Tensor | None = None
        self._chunks: list[torch.Tensor] = []  # pooled, median="exact": float32 host copies, NaN = invalid
        self._hist: torch.Tensor | None = None  # pooled, median="histogram"
        self._device: torch.device | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        check_dense(pred, target, 3, f"normal task '{self.task}'", 3)
        angle, valid = normal_angles(pred, target, self.paper_compatible)
        self._device = angle.device
        count = valid.sum()
        n = count.to(torch.float64)
        below = [(valid & (angle < t)).sum().to(torch.float64) for t in THRESHOLDS_DEG]
        angle_sum = torch.where(valid, angle, 0.0).sum()
        if self.paper_compatible:
            has = count > 0
            ordered = torch.sort(torch.where(valid, angle, math.inf).flatten()).values
            median = _median_from_sorted(ordered, count.clamp_min(1))
            per_batch = torch.stack([angle_sum, *below]) / n.clamp_min(1.0)
            stats = torch.cat([per_batch[:1], median.reshape(1), per_batch[1:], torch.ones_like(n).reshape(1)])
            stats = torch.where(has, stats, 0.0)  # a batch without valid pixels adds nothing (its median is inf)
        else:
            stats = torch.stack([angle_sum, n, *below])
            if self.median_mode == "exact":
                kept = torch.where(valid, angle, math.nan).to(torch.float32).flatten()
                self._chunks.append(kept.to("cpu", non_blocking=True))
            else:
                bins = (angle * (1.0 / HISTOGRAM_BIN_DEG)).floor().to(torch.int64).clamp(0, HISTOGRAM_BINS - 1)
                index = torch.where(valid, bins, HISTOGRAM_BINS).flatten()
                if self._hist is None:
                    self._hist = torch.zeros(HISTOGRAM_BINS + 1, dtype=torch.int64, device=index.device)
                self._hist.scatter_add_(0, index, torch.ones_like(index))
        self._sums = stats if self._sums is None else self._sums + stats

    def compute(self) -> dict[str, float]:
        if self._sums is None:
            return {name: math.nan for name in self.higher_is_better}
        synchronize(self._device)  # the asynchronous host copies of the angles must have landed
        sums = self._sums.cpu().tolist()
        if self.paper_compatible:
            *stat_sums, batches = sums
            if batches == 0:
                return {name: math.nan for name in self.higher_is_better}
            return dict(zip(self.higher_is_better, (s / batches for s in stat_sums)))
        angle_sum, n, *below = sums
        if n == 0:
            return {name: math.nan for name in self.higher_is_better}
        median = self._exact_median() if self.median_mode == "exact" else self._histogram_median()
        return {"mean": angle_sum / n, "median": median, **{f"within_{t:g}": b / n for t, b in zip(THRESHOLDS_DEG, below)}}

    def _exact_median(self) -> float:
        values = torch.cat(self._chunks).numpy()
        values = values[~np.isnan(values)]
        n = values.size
        lo, hi = (n - 1) // 2, n // 2
        part = np.partition(values, [lo, hi])
        return (float(part[lo]) + float(part[hi])) / 2

    def _histogram_median(self) -> float:
        counts = self._hist[:HISTOGRAM_BINS].cpu()
        cumulative = torch.cumsum(counts, 0)
        n = int(cumulative[-1])
        ranks = torch.tensor([(n - 1) // 2 + 1, n // 2 + 1], dtype=torch.int64)  # 1-based ranks of the middle values
        bins = torch.searchsorted(cumulative, ranks)
        return float(((bins.to(torch.float64) + 0.5) * HISTOGRAM_BIN_DEG).mean())
