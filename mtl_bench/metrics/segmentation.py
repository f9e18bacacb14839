"""Semantic segmentation: split-wide confusion matrix → mIoU and pixel accuracy.

Convention (mtan ``im2im_pred/utils.py::ConfMatrix`` since Nov 2020, copied verbatim in Nash-MTL
``experiments/nyuv2/utils.py``, FAMO ``experiments/cityscapes/utils.py`` and LibMTL
``examples/nyu/utils.py::SegMetric``): accumulate one C×C confusion matrix (rows = ground truth, columns =
argmax prediction) over **every valid pixel of the split**, then

* IoU_c = TP_c / (TP_c + FP_c + FN_c),  mIoU = mean over classes,
* pixel accuracy = trace / total.

Pixels whose label is ``ignore_index`` (−1 in the mtan NYUv2/Cityscapes files) are skipped.

Classes absent from both prediction and ground truth (union = 0) have IoU 0/0.  The official code takes
``torch.mean`` over all C classes, so such a class turns the whole mIoU into NaN (it is *not* a
``nanmean``; torchmetrics' macro average is the one that skips them).  Our default averages over the
classes present in the prediction **or** the ground truth (a class present only in the prediction has
IoU 0 and counts); with ``paper_compatible=True`` we reproduce the official ``mean`` over all C classes,
NaN included.  On the NYUv2 and Cityscapes test splits every class occurs, so both give the same number.

Deviations from the official code: counts are accumulated with ``scatter_add_`` into a fixed-size int64
vector instead of ``torch.bincount`` on the masked pixels, because both boolean masking and CUDA
``bincount`` (which reads the input's max on the host) synchronise with the device; IoUs are divided
in float64.  Labels outside ``[0, C)`` that are not ``ignore_index`` are counted instead of silently
dropped (the official ``(target >= 0) & (target < n)`` mask drops them) and ``compute`` raises a
``DatasetError`` naming how many there were.
"""

from __future__ import annotations

import math

import torch

from mtl_bench.errors import ConfigError, DatasetError
from mtl_bench.metrics._dense import check_dense, resize_to
from mtl_bench.metrics.base import Metric


class SegmentationMetrics(Metric):
    """Pooled mIoU and pixel accuracy from a split-wide confusion matrix (see the module docstring).

    ``update(pred, target)``: ``pred`` N×C×h×w logits (resized bilinearly to the target when h×w differ),
    ``target`` N×H×W integer labels in ``[0, C)`` or ``ignore_index``.
    """

    higher_is_better = {"miou": True, "pix_acc": True}

    def __init__(self, num_classes: int, ignore_index: int = -1, paper_compatible: bool = False, task: str = "seg"):
        if num_classes < 2:
            raise ConfigError(f"segmentation task '{task}': num_classes must be >= 2, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(
                f"segmentation task '{task}': ignore_index={ignore_index} is a valid class id; use a value outside [0, {num_classes})"
            )
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.paper_compatible = bool(paper_compatible)
        self.task = task
        self.reset()

    def reset(self) -> None:
        # C*C confusion cells, then one bin for ignored pixels and one for out-of-range labels.
        self._counts: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        check_dense(pred, target, c, f"segmentation task '{self.task}'", None)
        if target.is_floating_point():
            raise ConfigError(f"segmentation task '{self.task}': labels must be an integer tensor (int64), got {target.dtype}")
        labels = resize_to(pred.detach(), target.shape[-2:]).argmax(dim=1)
        target = target.detach().to(torch.int64)
        in_range = (target >= 0) & (target < c)
        trash = torch.where(target == self.ignore_index, c * c, c * c + 1)
        index = torch.where(in_range, target * c + labels, trash).flatten()
        if self._counts is None:
            self._counts = torch.zeros(c * c + 2, dtype=torch.int64, device=index.device)
        self._counts.scatter_add_(0, index, torch.ones_like(index))

    def confusion_matrix(self) -> torch.Tensor:
        """The accumulated C×C matrix (rows: ground truth, columns: prediction) as int64 on the host."""
        c = self.num_classes
        if self._counts is None:
            return torch.zeros(c, c, dtype=torch.int64)
        counts = self._counts.cpu()
        bad = int(counts[c * c + 1])
        if bad:
            raise DatasetError(
                f"segmentation task '{self.task}': {bad} target pixel(s) have labels outside [0, {c}) other than "
                f"ignore_index={self.ignore_index}; check the dataset's label files and num_classes"
            )
        return counts[: c * c].reshape(c, c)

    def compute(self) -> dict[str, float]:
        h = self.confusion_matrix().to(torch.float64)
        total = float(h.sum())
        if total == 0:
            return {name: math.nan for name in self.higher_is_better}
        tp = torch.diagonal(h)
        union = h.sum(0) + h.sum(1) - tp
        if self.paper_compatible:
            miou = float((tp / union).mean())  # NaN as soon as one class is absent from both (official torch.mean)
        else:
            present = union > 0
            miou = float((tp[present] / union[present]).mean())
        return {"miou": miou, "pix_acc": float(tp.sum()) / total}
