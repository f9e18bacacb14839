"""Dense-task and attribute losses/metrics against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl_bench.errors import ConfigError, DatasetError
from mtl_bench.metrics import BinaryAttributeMetrics, DepthMetrics, NormalMetrics, SegmentationMetrics
from mtl_bench.task_library import attribute_task, depth_task, normal_task, segmentation_task


def logits_for(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N×C×H×W logits whose argmax is ``labels`` (N×H×W)."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 5.0


def normals_at(angles_deg: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """1×3×1×K predictions at the given angles from the target (0, 0, 1), scaled by 2 (the metric normalises)."""
    theta = torch.tensor(angles_deg, dtype=torch.float64).deg2rad()
    pred = torch.stack([theta.sin(), torch.zeros_like(theta), theta.cos()]) * 2.0
    target = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).reshape(3, 1).expand(3, len(angles_deg))
    return pred.reshape(1, 3, 1, -1).float(), target.reshape(1, 3, 1, -1).float()


# ---------------------------------------------------------------- segmentation


def test_segmentation_hand_computed_with_ignore_empty_class_and_prediction_only_class():
    # 4 classes; class 3 is absent from both, class 2 appears only in the prediction; one pixel is ignored
    target = torch.tensor([[[0, 0, 1], [1, -1, 0]]])
    labels = torch.tensor([[[0, 1, 1], [2, 3, 0]]])  # the ignored pixel is predicted 3: it must not count
    m = SegmentationMetrics(num_classes=4)
    m.update(logits_for(labels, 4), target)
    # valid pixels (gt, pred): (0,0) (0,1) (1,1) (1,2) (0,0)
    # IoU_0 = 2/(2+0+1), IoU_1 = 1/(1+1+1), IoU_2 = 0/(0+1+0); class 3 has no union and is skipped
    assert m.confusion_matrix().tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    out = m.compute()
    assert out["miou"] == pytest.approx((2 / 3 + 1 / 3 + 0.0) / 3)
    assert out["pix_acc"] == pytest.approx(3 / 5)

    paper = SegmentationMetrics(num_classes=4, paper_compatible=True)
    paper.update(logits_for(labels, 4), target)
    assert math.isnan(paper.compute()["miou"])  # official torch.mean over all classes: the empty class gives NaN
    assert paper.compute()["pix_acc"] == pytest.approx(3 / 5)


def test_segmentation_resizes_low_resolution_logits_bilinearly():
    # 2×2 logits → 2×4 target.  Bilinear with align_corners=False samples the two source columns at fractions
    # 0, 1/4, 3/4, 1 (align_corners=True: 0, 1/3, 2/3, 1; nearest: 0, 0, 1, 1).  Margins class0 - class1 of
    # row A: +0.3 → -0.7 (zero at 0.3), row B: +0.2 → -0.8 (zero at 0.2).
    margins = torch.tensor([[0.3, -0.7], [0.2, -0.8]])
    logits = torch.stack([margins, torch.zeros_like(margins)]).unsqueeze(0)
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 1]]])  # only align_corners=False gives both rows right
    m = SegmentationMetrics(num_classes=2)
    m.update(logits, target)
    assert m.compute()["pix_acc"] == pytest.approx(1.0)
    nearest = SegmentationMetrics(num_classes=2)
    nearest.update(F.interpolate(logits, size=(2, 4), mode="nearest"), target)
    corners = SegmentationMetrics(num_classes=2)
    corners.update(F.interpolate(logits, size=(2, 4), mode="bilinear", align_corners=True), target)
    assert nearest.compute()["pix_acc"] == pytest.approx(7 / 8)
    assert corners.compute()["pix_acc"] == pytest.approx(7 / 8)


def test_segmentation_pooling_is_batch_independent_and_rejects_bad_labels():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(7, 5, 6, 8, generator=g), torch.randint(-1, 5, (7, 6, 8), generator=g)
    whole, parts = SegmentationMetrics(5), SegmentationMetrics(5)
    whole.update(logits, target)
    for chunk in (slice(0, 1), slice(1, 4), slice(4, 7)):
        parts.update(logits[chunk], target[chunk])
    assert torch.equal(whole.confusion_matrix(), parts.confusion_matrix())
    assert parts.compute() == whole.compute()

    bad = SegmentationMetrics(3)
    bad.update(torch.zeros(1, 3, 1, 3), torch.tensor([[[0, 7, -1]]]))
    with pytest.raises(DatasetError, match="1 target pixel"):
        bad.compute()
    with pytest.raises(ConfigError, match="integer"):
        SegmentationMetrics(3).update(torch.zeros(1, 3, 1, 2), torch.zeros(1, 1, 2))
    with pytest.raises(ConfigError, match="N×3×h×w"):
        SegmentationMetrics(3).update(torch.zeros(1, 4, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long))


def test_segmentation_loss_value_and_gradient_only_at_valid_pixels():
    task = segmentation_task(num_classes=2)
    logits = torch.tensor([[[[0.0, math.log(3.0), 9.0]], [[0.0, 0.0, -9.0]]]], requires_grad=True)
    target = torch.tensor([[[0, 0, -1]]])
    loss = task.loss(logits, target)
    assert loss.item() == pytest.approx((math.log(2.0) + math.log(4 / 3)) / 2)
    loss.backward()
    grad = logits.grad[0, :, 0]
    # d/dlogits of mean CE = (softmax - onehot) / n_valid at valid pixels, 0 at the ignored one
    assert grad[:, 0].tolist() == pytest.approx([(0.5 - 1) / 2, 0.5 / 2])
    assert grad[:, 1].tolist() == pytest.approx([(0.75 - 1) / 2, 0.25 / 2])
    assert grad[:, 2].tolist() == [0.0, 0.0]


def test_losses_without_valid_pixels_are_zero_with_a_gradient_path():
    cases = [
        (segmentation_task(num_classes=3).loss, torch.randn(2, 3, 2, 2), torch.full((2, 2, 2), -1)),
        (depth_task().loss, torch.randn(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)),
        (normal_task().loss, torch.randn(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)),
    ]
    for loss_fn, pred, target in cases:
        pred.requires_grad_(True)
        loss = loss_fn(pred, target)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred))


# ---------------------------------------------------------------- depth


def test_depth_hand_computed_with_invalid_pixels():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [2.0, 8.0]]]])  # the first pixel is invalid
    m = DepthMetrics()
    m.update(pred, target)
    out = m.compute()
    assert out["abs_err"] == pytest.approx((1 + 1 + 4) / 3)
    assert out["rel_err"] == pytest.approx((1 / 1 + 1 / 2 + 4 / 8) / 3)


def test_depth_resizes_bilinearly_without_corner_alignment():
    # [0, 4] → [0, 1, 3, 4] (align_corners=False); align_corners=True would give [0, 4/3, 8/3, 4]
    m = DepthMetrics()
    m.update(torch.tensor([[[[0.0, 4.0]]]]), torch.tensor([[[[0.0, 2.0, 2.0, 2.0]]]]))
    assert m.compute()["abs_err"] == pytest.approx((1 + 1 + 2) / 3)
    assert m.compute()["rel_err"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert depth_task().loss(torch.tensor([[[[0.0, 4.0]]]]), torch.tensor([[[[0.0, 2.0, 2.0, 2.0]]]])).item() == pytest.approx(4 / 3)


def test_depth_pooled_vs_paper_per_batch_average():
    # batch A: one valid pixel with error 1; batch B: three valid pixels with error 3 each
    batches = [
        (torch.tensor([[[[2.0, 5.0]]]]), torch.tensor([[[[1.0, 0.0]]]])),
        (torch.tensor([[[[4.0, 4.0, 4.0]]]]), torch.tensor([[[[1.0, 1.0, 1.0]]]])),
    ]
    pooled, paper = DepthMetrics(), DepthMetrics(paper_compatible=True)
    for pred, target in batches:
        pooled.update(pred, target)
        paper.update(pred, target)
    assert pooled.compute()["abs_err"] == pytest.approx((1 + 9) / 4)
    assert paper.compute()["abs_err"] == pytest.approx((1 + 3) / 2)
    assert paper.compute()["rel_err"] == pytest.approx((1 + 3) / 2)
    paper.update(torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))  # a batch without valid pixels is skipped
    assert paper.compute()["abs_err"] == pytest.approx(2.0)


def test_depth_pooled_is_batch_independent():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(9, 1, 4, 5, generator=g)
    target = torch.rand(9, 1, 8, 10, generator=g) * (torch.rand(9, 1, 8, 10, generator=g) > 0.3)
    whole, parts = DepthMetrics(), DepthMetrics()
    whole.update(pred, target)
    for chunk in (slice(0, 2), slice(2, 3), slice(3, 9)):
        parts.update(pred[chunk], target[chunk])
    for key, value in whole.compute().items():
        assert parts.compute()[key] == pytest.approx(value, rel=1e-12)


def test_depth_loss_gradient_only_at_valid_pixels():
    pred = torch.tensor([[[[1.0, 2.0, 5.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 3.0, 4.0]]]])
    loss = depth_task().loss(pred, target)
    assert loss.item() == pytest.approx((1 + 1) / 2)
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([0.0, -0.5, 0.5])


# ---------------------------------------------------------------- normals


def test_normals_hand_computed_with_invalid_pixel():
    pred, target = normals_at([0.0, 10.0, 20.0, 45.0, 30.0])
    target = target.clone()
    target[..., 4] = 0.0  # the 30° pixel is invalid
    m = NormalMetrics()
    m.update(pred, target)
    out = m.compute()
    assert out["mean"] == pytest.approx((0 + 10 + 20 + 45) / 4)
    assert out["median"] == pytest.approx(15.0, abs=1e-5)  # mean of the two middle values (numpy's median)
    assert out["within_11.25"] == pytest.approx(2 / 4)
    assert out["within_22.5"] == pytest.approx(3 / 4)
    assert out["within_30"] == pytest.approx(3 / 4)
    pred.requires_grad_(True)
    loss = normal_task().loss(pred, target)
    expected = sum(1 - math.cos(math.radians(a)) for a in (0, 10, 20, 45)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.equal(pred.grad[..., 4], torch.zeros(1, 3, 1))  # the invalid pixel gets no gradient
    assert pred.grad[..., 3].abs().sum() > 0


def test_normal_validity_rule_default_vs_paper():
    # (1, -1, 0)/√2 is a unit vector whose components sum to 0: mtan's "sum ≠ 0" rule drops it
    target = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]).div(torch.tensor([2.0**0.5, 1.0])).reshape(1, 3, 1, 2)
    pred = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).reshape(1, 3, 1, 2)  # 90° and 0°
    default, paper = NormalMetrics(), NormalMetrics(paper_compatible=True)
    default.update(pred, target)
    paper.update(pred, target)
    assert default.compute()["mean"] == pytest.approx(45.0)
    assert paper.compute()["mean"] == pytest.approx(0.0, abs=1e-6)


def test_normals_resize_then_normalise():
    # low-res prediction [(1,0,0), (0,0,1)] → 1×4 bilinear: (1,0,0), (.75,0,.25), (.25,0,.75), (0,0,1)
    pred = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]).reshape(1, 3, 1, 2)
    target = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 4).contiguous()
    m = NormalMetrics()
    m.update(pred, target)
    angles = [90.0, math.degrees(math.atan2(0.75, 0.25)), math.degrees(math.atan2(0.25, 0.75)), 0.0]
    assert m.compute()["mean"] == pytest.approx(sum(angles) / 4)


def test_normals_paper_mode_averages_per_batch_medians():
    pooled, paper = NormalMetrics(), NormalMetrics(paper_compatible=True)
    for angles in ([0.0, 10.0, 20.0], [30.0, 50.0]):
        pred, target = normals_at(angles)
        pooled.update(pred, target)
        paper.update(pred, target)
    assert pooled.compute()["median"] == pytest.approx(20.0, abs=1e-4)
    assert pooled.compute()["mean"] == pytest.approx(110 / 5)
    assert paper.compute()["median"] == pytest.approx((10 + 40) / 2, abs=1e-4)
    assert paper.compute()["mean"] == pytest.approx((10 + 40) / 2)
    assert paper.compute()["within_11.25"] == pytest.approx((2 / 3 + 0) / 2)
    assert pooled.compute()["within_11.25"] == pytest.approx(2 / 5)


def test_normals_pooled_batch_independent_and_histogram_median_within_bin():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(6, 3, 8, 8, generator=g)
    target = F.normalize(torch.randn(6, 3, 8, 8, generator=g), dim=1) * (torch.rand(6, 1, 8, 8, generator=g) > 0.2)
    whole, parts, hist = NormalMetrics(), NormalMetrics(), NormalMetrics(median="histogram")
    whole.update(pred, target)
    for chunk in (slice(0, 1), slice(1, 6)):
        parts.update(pred[chunk], target[chunk])
        hist.update(pred[chunk], target[chunk])
    exact = whole.compute()
    for key, value in parts.compute().items():
        assert value == pytest.approx(exact[key], rel=1e-12)
    approx = hist.compute()
    assert abs(approx["median"] - exact["median"]) <= 0.005 + 1e-6
    for key in ("mean", "within_11.25", "within_22.5", "within_30"):
        assert approx[key] == pytest.approx(exact[key], rel=1e-12)


def test_normal_options_are_validated():
    with pytest.raises(ConfigError, match="median='mode'"):
        normal_task(median="mode")
    with pytest.raises(ConfigError, match="paper_compatible"):
        normal_task(paper_compatible=True, median="histogram")


# ---------------------------------------------------------------- attributes


def test_attribute_accuracy_f1_and_edge_cases():
    m = BinaryAttributeMetrics()
    # logit 0 is sigmoid 0.5, i.e. not above the threshold: predicted negative
    m.update(torch.tensor([[2.0], [-1.0], [0.5], [-3.0], [0.0]]), torch.tensor([[1.0], [1.0], [0.0], [0.0], [0.0]]))
    # TP=1, FP=1, FN=1, TN=2
    assert m.compute() == {"acc": pytest.approx(3 / 5), "f1": pytest.approx(2 / 4)}

    none = BinaryAttributeMetrics()  # no positive in prediction nor target: F1 is 0/0, we report 0
    none.update(torch.full((4, 1), -2.0), torch.zeros(4, 1))
    assert none.compute() == {"acc": 1.0, "f1": 0.0}

    perfect = BinaryAttributeMetrics()
    perfect.update(torch.tensor([[3.0], [-3.0]]), torch.tensor([[1.0], [0.0]]))
    assert perfect.compute() == {"acc": 1.0, "f1": 1.0}

    raw = BinaryAttributeMetrics()
    raw.update(torch.zeros(2, 1), torch.tensor([[1.0], [-1.0]]))
    with pytest.raises(DatasetError, match="-1"):
        raw.compute()


def test_attribute_loss_is_bce_with_logits():
    task = attribute_task("Smiling")
    pred = torch.tensor([[0.0], [2.0]], requires_grad=True)
    loss = task.loss(pred, torch.tensor([[1.0], [0.0]]))
    assert loss.item() == pytest.approx((math.log(2.0) + math.log(1 + math.exp(2.0))) / 2)
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([(0.5 - 1) / 2, torch.sigmoid(torch.tensor(2.0)).item() / 2])


# ---------------------------------------------------------------- task factories


def test_task_factories_describe_heads_and_directions():
    seg, depth, normal, attr = segmentation_task(num_classes=7), depth_task(), normal_task(), attribute_task("Male")
    assert [(t.name, t.kind, t.out_dim) for t in (seg, depth, normal, attr)] == [
        ("seg", "segmentation", 7), ("depth", "depth", 1), ("normal", "normal", 3), ("Male", "binary", 1)]
    assert seg.higher_is_better == {"miou": True, "pix_acc": True}
    assert depth.higher_is_better == {"abs_err": False, "rel_err": False}
    assert normal.higher_is_better == {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True}
    assert attr.higher_is_better == {"acc": True, "f1": True}
    with pytest.raises(ConfigError, match="ignore_index=3"):
        segmentation_task(num_classes=7, ignore_index=3)
    with pytest.raises(ConfigError, match="task name"):
        attribute_task("a/b")
