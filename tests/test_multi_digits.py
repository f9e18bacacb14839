"""MultiMNIST-style digit pairs from scikit-learn's bundled digits (``dataset=multi_digits``): determinism, disjoint
source digits, rendering and labels by hand, the classification task, errors, the config and a short run."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl_bench.data.multi_digits import build_multi_digits, load_source_digits
from mtl_bench.errors import ConfigError, DatasetError
from mtl_bench.metrics.classification import ClassificationMetrics
from mtl_bench.task_library import classification_task
from mtl_bench.build import instantiate_checked
from mtl_bench.train import build_and_train

SMALL = {"n_train": 40, "n_val": 12, "n_test": 16}


@pytest.fixture(scope="module")
def source():
    return load_source_digits()


def test_same_seed_same_bytes_other_split_other_pairs_and_order_independence():
    a, b = build_multi_digits(**SMALL, seed=1), build_multi_digits(**SMALL, seed=1)
    for split in ("train", "val", "test"):
        x, y = a.splits[split], b.splits[split]
        assert x.images.tobytes() == y.images.tobytes() and x.labels.tobytes() == y.labels.tobytes()
        assert torch.equal(x.inputs, y.inputs)
    assert a.info["fingerprint"] == b.info["fingerprint"] and len(set(a.info["split_fingerprints"].values())) == 3
    assert not np.array_equal(a.splits["val"].images, a.splits["test"].images[:12])
    c = build_multi_digits(**SMALL, seed=2)
    assert not np.array_equal(a.splits["train"].images, c.splits["train"].images)
    bigger = build_multi_digits(n_train=50, n_val=20, n_test=16, seed=1)  # a pair depends on (seed, split, index) only
    assert np.array_equal(bigger.splits["train"].images[:40], a.splits["train"].images)
    assert bigger.info["split_fingerprints"]["test"] == a.info["split_fingerprints"]["test"]


def test_splits_draw_from_disjoint_pools_of_source_digits(source):
    digits, labels = source
    bench = build_multi_digits(n_train=300, n_val=100, n_test=100, seed=0)
    pools = bench.extras["source_pools"]
    assert bench.info["source_digits"] == {s: len(p) for s, p in pools.items()} and sum(map(len, pools.values())) <= len(labels)
    assert not set(pools["train"]) & set(pools["val"]) and not set(pools["train"]) & set(pools["test"])
    assert not set(pools["val"]) & set(pools["test"])
    for split, pool in pools.items():
        used = bench.splits[split].sources
        assert set(used.ravel()) <= set(pool)
        assert (used[:, 0] != used[:, 1]).all()
        assert set(labels[pool]) == set(range(10))  # stratified: every class in every pool
    # no test pair shows a training digit's pixels (the 1797 images are distinct)
    train_images = {digits[i].tobytes() for i in pools["train"]}
    assert not any(digits[i].tobytes() in train_images for i in bench.splits["test"].sources.ravel())
    assert len(pools["train"]) == pytest.approx(0.6 * len(labels), abs=10)


def test_rendering_and_labels_by_hand(source):
    digits, labels = source
    # no overlap, no jitter: the two 8x8 quadrants are the source digits themselves
    apart = build_multi_digits(canvas=16, offset=8, jitter=0, n_train=6, n_val=2, n_test=2)
    train = apart.splits["train"]
    for i in range(6):
        left, right = train.sources[i]
        assert np.array_equal(train.images[i, 0, :8, :8], digits[left]) and np.array_equal(train.images[i, 0, 8:, 8:], digits[right])
        assert (train.images[i, 0, :8, 8:] == 0).all() and (train.images[i, 0, 8:, :8] == 0).all()
        x, y = train[[i]]
        assert y["left"].item() == labels[left] and y["right"].item() == labels[right]
        assert torch.equal(x[0, 0], torch.from_numpy(train.images[i, 0]).float() / 255)
    # default geometry: corners within offset ± 2 jitter, pixel-wise max of the two placed digits
    for overlap in ("max", "sum"):
        bench = build_multi_digits(n_train=30, n_val=2, n_test=2, overlap=overlap, seed=4)
        split = bench.splits["train"]
        for i in range(30):
            layers = np.zeros((2, 16, 16), dtype=np.int64)
            for k in range(2):
                r, c = split.corners[i, k]
                layers[k, r:r + 8, c:c + 8] = digits[split.sources[i, k]]
            expect = layers.max(0) if overlap == "max" else np.minimum(layers.sum(0), 255)
            assert np.array_equal(split.images[i, 0], expect)
            assert np.array_equal(split.labels[i], labels[split.sources[i]])
            assert (np.abs(split.corners[i, 0] - 2) <= 1).all() and (np.abs(split.corners[i, 1] - 6) <= 1).all()
        gap = split.corners[:, 1] - split.corners[:, 0]
        assert gap.min() >= 2 and gap.max() <= 6 and len(np.unique(gap)) > 2
    assert digits.dtype == np.uint8 and digits.max() == 255 and digits.shape == (1797, 8, 8)


def test_shapes_dtypes_and_tasks():
    bench = build_multi_digits(**SMALL)
    assert bench.input_shape == (1, 16, 16) and list(bench.tasks) == ["left", "right"]
    assert all(t.out_dim == 10 and t.kind == "classification" for t in bench.tasks.values())
    x, y = bench.splits["val"][list(range(12))]
    assert x.shape == (12, 1, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert all(v.shape == (12,) and v.dtype == torch.int64 and 0 <= v.min() and v.max() <= 9 for v in y.values())
    assert list(build_multi_digits(**SMALL, tasks=["right"]).tasks) == ["right"]


def test_classification_loss_and_accuracy():
    task = classification_task("left", 10)
    logits = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 3, 9, 3, 1, 1, 5])
    assert torch.allclose(task.loss(logits, target), F.cross_entropy(logits, target))
    metric = task.metrics()
    metric.update(logits[:4], target[:4])
    metric.update(logits[4:], target[4:])
    assert metric.compute()["acc"] == pytest.approx((logits.argmax(1) == target).float().mean().item())
    bad = ClassificationMetrics(10, task="left")
    bad.update(logits, torch.tensor([0, 3, 9, 3, 1, 1, 10]))
    with pytest.raises(DatasetError, match=r"classification task 'left': 1 target\(s\) outside \[0, 10\)"):
        bad.compute()
    with pytest.raises(ConfigError, match=r"prediction shape \(7, 3\) does not fit 7 targets of 10 classes"):
        task.loss(logits[:, :3], target)


def test_missing_scikit_learn_is_a_one_line_dataset_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # `from sklearn.datasets import ...` raises ImportError
    with pytest.raises(DatasetError) as info:
        build_multi_digits(**SMALL)
    msg = str(info.value)
    assert "dataset=multi_digits needs scikit-learn" in msg and "pip install scikit-learn" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"offset": 2, "jitter": 1}, "dataset.offset=2 is invalid with dataset.jitter=1; expected offset > 2 * jitter"),
        ({"canvas": 13}, "dataset.canvas=13 is invalid; the pair needs 8 + offset + 2 * jitter = 14 pixels"),
        ({"overlap": "mean"}, "dataset.overlap='mean' is invalid; choose one of ['max', 'sum']"),
        ({"source_fractions": [0.6, 0.5, 0.25]}, "dataset.source_fractions=[0.6, 0.5, 0.25] is invalid"),
        ({"source_fractions": [0.6, 0.4]}, "dataset.source_fractions=[0.6, 0.4] is invalid"),
        ({"tasks": ["left", "sum"]}, "dataset.tasks=['left', 'sum'] is invalid; expected distinct names among ['left', 'right']"),
        ({"n_test": 0}, "dataset.n_test=0 is invalid; expected an integer >= 1"),
    ],
)
def test_bad_values_are_one_line_config_errors(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        build_multi_digits(**{**SMALL, **kwargs})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_config_defaults(make_cfg):
    cfg = make_cfg("dataset=multi_digits")
    assert (cfg.dataset.canvas, cfg.dataset.offset, cfg.dataset.jitter, cfg.dataset.overlap) == (16, 4, 1, "max")
    assert (cfg.backbone.model_name, cfg.backbone.pool, cfg.heads.default.hidden) == ("test_resnet", True, [])
    assert cfg.dataset.n_train == 256  # the test helper's tiny sizes apply


def test_a_short_run_learns_both_digits(make_cfg):
    """64 Adam steps of a narrow ConvNet (the quick-study setting in docs/datasets_synthetic.md) beat chance (0.1)
    on both digits of unseen source digits by a wide margin."""
    cfg = make_cfg("dataset=multi_digits", "dataset.n_train=1024", "dataset.n_val=128", "dataset.n_test=256",
                   "backbone=convnet", "backbone.channels=[16,32,64,128]", "backbone.fc=64", "trainer.epochs=2",
                   "trainer.batch_size=32", "trainer.checkpoint_every=0", "trainer.num_threads=1")
    threads = torch.get_num_threads()
    try:
        summary = build_and_train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "completed" and summary["tasks"] == ["left", "right"]
    assert summary["dataset"]["fingerprint"] == instantiate_checked(cfg.dataset, "dataset").info["fingerprint"]
    final = summary["final"]
    assert all(final[f"test/{t}/acc"] > 0.3 for t in ("left", "right")), final
