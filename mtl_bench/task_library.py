"""Task factories for the real benchmarks: semantic segmentation, depth, surface normals, binary attributes.

Each factory returns a :class:`mtl_bench.tasks.Task` whose loss gives one scalar per batch and whose metric
accumulator pools exact statistics over a split (``paper_compatible=True`` switches to the official
per-batch averaging; see ``mtl_bench/metrics/{segmentation,depth,normals}.py``).

Data contract (shared with the dataset builders and heads): images are float32 C×H×W; ``seg`` targets int64
H×W with −1 = ignore; ``depth`` float32 1×H×W with 0 = invalid; ``normal`` float32 3×H×W unit vectors with
the zero vector = invalid; an attribute target float32 (1,) with values 0./1.  Dense heads may predict at
any resolution: losses and metrics resize the prediction to the target (bilinear, ``align_corners=False``).

Losses (per batch, over valid pixels only; a batch without any valid pixel gives 0 with a gradient path
instead of the official code's NaN):

* segmentation: cross-entropy averaged over pixels whose label is in ``[0, C)`` (mtan ``model_fit``:
  ``nll_loss(..., ignore_index=-1)`` on log-softmax outputs).  Computed as log-softmax + gather rather than
  ``F.cross_entropy``, whose CUDA kernel refuses ``torch.use_deterministic_algorithms(True)``.  Labels outside
  ``[0, C)`` other than ``ignore_index`` are left out of the loss (a CUDA gather would hit a device-side assert)
  and reported by the metric's ``DatasetError`` at the next evaluation.
* depth: L1 averaged over valid pixels, valid = target channel sum ≠ 0 (mtan ``model_fit``).
* normal: 1 − ⟨p̂, g⟩ averaged over valid pixels, p̂ the resized prediction normalised to unit length and g
  the stored unit target (mtan computes 1 − mean of the raw dot product and relies on the network's own
  normalisation; Nash-MTL/FAMO/LibMTL likewise).  Validity as in :func:`normal_valid_mask`.
* binary attribute: binary cross-entropy with logits, averaged over the batch (FAMO uses sigmoid + ``BCELoss``,
  equal in exact arithmetic).
* classification (one class per sample, N×C logits): cross-entropy averaged over the samples whose label is in
  ``[0, C)``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from mtl_bench.errors import ConfigError, check_choice
from mtl_bench.metrics._dense import check_dense, resize_to
from mtl_bench.metrics.attributes import BinaryAttributeMetrics
from mtl_bench.metrics.classification import ClassificationMetrics, check_logits
from mtl_bench.metrics.depth import DepthMetrics, depth_valid_mask
from mtl_bench.metrics.normals import MEDIAN_MODES, NormalMetrics, normal_valid_mask
from mtl_bench.metrics.segmentation import SegmentationMetrics
from mtl_bench.tasks import Task


def segmentation_loss(pred: torch.Tensor, target: torch.Tensor, *, num_classes: int, task: str = "seg") -> torch.Tensor:
    """Mean cross-entropy over the pixels with a label in ``[0, num_classes)`` (all others are ignored)."""
    check_dense(pred, target, num_classes, f"segmentation task '{task}'", None)
    logits = resize_to(pred, target.shape[-2:]).float()
    valid = (target >= 0) & (target < num_classes)
    safe = torch.where(valid, target, 0).to(torch.int64).unsqueeze(1)
    nll = -F.log_softmax(logits, dim=1).gather(1, safe).squeeze(1)
    return torch.where(valid, nll, 0.0).sum() / valid.sum().clamp_min(1)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, *, task: str = "depth") -> torch.Tensor:
    """Mean absolute error over the valid pixels (target ≠ 0)."""
    check_dense(pred, target, 1, f"depth task '{task}'", 1)
    valid = depth_valid_mask(target)
    err = (resize_to(pred, target.shape[-2:]).float() - target).abs()
    return torch.where(valid, err, 0.0).sum() / valid.sum().clamp_min(1)


def normal_loss(pred: torch.Tensor, target: torch.Tensor, *, paper_compatible: bool = False, task: str = "normal") -> torch.Tensor:
    """Mean of 1 − ⟨p̂, g⟩ over the valid pixels, p̂ the resized prediction normalised to unit length."""
    check_dense(pred, target, 3, f"normal task '{task}'", 3)
    unit = F.normalize(resize_to(pred, target.shape[-2:]).float(), dim=1)
    valid = normal_valid_mask(target, paper_compatible)
    cosine = (unit * target).sum(dim=1)
    return torch.where(valid, 1.0 - cosine, 0.0).sum() / valid.sum().clamp_min(1)


def attribute_loss(pred: torch.Tensor, target: torch.Tensor, *, task: str = "attribute") -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the batch."""
    if pred.numel() != target.numel():
        raise ConfigError(
            f"attribute task '{task}': prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
        )
    return F.binary_cross_entropy_with_logits(pred.reshape(target.shape).float(), target.float())


def _check_name(name: str, factory: str) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{factory}: task name must be a non-empty string without '/', got {name!r}")


def segmentation_task(name: str = "seg", num_classes: int = 13, ignore_index: int = -1, paper_compatible: bool = False) -> Task:
    """Semantic segmentation with ``num_classes`` classes (NYUv2: 13; Cityscapes: 7 or 19); metrics ``miou``, ``pix_acc``.

    ``paper_compatible`` only changes how mIoU treats a class absent from both prediction and ground truth
    (official: NaN; default: skipped); the confusion matrix is split-wide in both modes.
    """
    _check_name(name, "segmentation_task")
    metrics = partial(SegmentationMetrics, num_classes=num_classes, ignore_index=ignore_index,
                      paper_compatible=paper_compatible, task=name)
    metrics()  # validates num_classes / ignore_index now, not at the first evaluation
    return Task(name=name, loss=partial(segmentation_loss, num_classes=num_classes, task=name), metrics=metrics,
                out_dim=num_classes, kind="segmentation")


def depth_task(name: str = "depth", paper_compatible: bool = False) -> Task:
    """Depth (NYUv2, metres) or inverse depth (Cityscapes, as stored); metrics ``abs_err``, ``rel_err``."""
    _check_name(name, "depth_task")
    return Task(name=name, loss=partial(depth_loss, task=name),
                metrics=partial(DepthMetrics, paper_compatible=paper_compatible, task=name), out_dim=1, kind="depth")


def normal_task(name: str = "normal", paper_compatible: bool = False, median: str = "exact") -> Task:
    """Surface normals; metrics ``mean``, ``median`` (degrees), ``within_11.25``, ``within_22.5``, ``within_30`` (fractions).

    ``median`` ∈ {"exact", "histogram"} selects how the pooled median is obtained (host memory vs 0.01° bins).
    """
    _check_name(name, "normal_task")
    check_choice("normal_task: median", median, MEDIAN_MODES)
    metrics = partial(NormalMetrics, paper_compatible=paper_compatible, median=median, task=name)
    metrics()  # validates the median / paper_compatible combination now
    return Task(name=name, loss=partial(normal_loss, paper_compatible=paper_compatible, task=name), metrics=metrics,
                out_dim=3, kind="normal")


def attribute_task(name: str) -> Task:
    """One binary attribute (a CelebA attribute name from ``list_attr_celeba.txt``); metrics ``acc``, ``f1``."""
    _check_name(name, "attribute_task")
    return Task(name=name, loss=partial(attribute_loss, task=name), metrics=partial(BinaryAttributeMetrics, task=name),
                out_dim=1, kind="binary")


def classification_loss(pred: torch.Tensor, target: torch.Tensor, *, num_classes: int, task: str = "classification") -> torch.Tensor:
    """Mean cross-entropy of N×C logits against N class ids (log-softmax + gather, like the segmentation loss).
    Targets outside ``[0, num_classes)`` are left out of the loss and reported by the metric at the next evaluation."""
    check_logits(pred, target, num_classes, task)
    target = target.reshape(-1)
    valid = (target >= 0) & (target < num_classes)
    safe = torch.where(valid, target, 0).to(torch.int64).unsqueeze(1)
    nll = -F.log_softmax(pred.float(), dim=1).gather(1, safe).squeeze(1)
    return torch.where(valid, nll, 0.0).sum() / valid.sum().clamp_min(1)


def classification_task(name: str, num_classes: int) -> Task:
    """Multi-class classification of one label per sample (e.g. MultiMNIST's left/right digit); metric ``acc``."""
    _check_name(name, "classification_task")
    metrics = partial(ClassificationMetrics, num_classes=num_classes, task=name)
    metrics()  # validates num_classes now
    return Task(name=name, loss=partial(classification_loss, num_classes=num_classes, task=name), metrics=metrics,
                out_dim=num_classes, kind="classification")
