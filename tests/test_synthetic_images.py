"""The generated shape-scene dataset (``dataset=synthetic_images``): determinism, label consistency, the staged
hooks and the corruption wrappers over it, config checks, and a short training run that learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtl_bench.corruptions import CorruptedDataset, RandomCorruption, RandomlyCorruptedDataset, float_to_uint8_hwc, load_clean_images
from mtl_bench.data.synthetic_images import (
    SceneParams,
    SyntheticImageDataset,
    _shape_mask,
    build_synthetic_images,
    channel_stats,
)
from mtl_bench.errors import ConfigError
from mtl_bench.build import instantiate_checked
from mtl_bench.train import build_and_train

SMALL = {"n_train": 6, "n_val": 3, "n_test": 4}


def arrays(ds: SyntheticImageDataset) -> tuple[np.ndarray, ...]:
    return ds.images, ds.seg, ds.depth


def test_same_seed_same_data_other_seed_other_data_and_order_independence():
    a, b = build_synthetic_images(**SMALL, seed=3), build_synthetic_images(**SMALL, seed=3)
    for split in ("train", "val", "test"):
        assert all(np.array_equal(x, y) for x, y in zip(arrays(a.splits[split]), arrays(b.splits[split])))
    assert a.info["fingerprint"] == b.info["fingerprint"]
    c = build_synthetic_images(**SMALL, seed=4)
    assert not np.array_equal(a.splits["train"].images, c.splits["train"].images)
    assert a.info["fingerprint"] != c.info["fingerprint"]
    # splits are distinct streams; a sample depends on (seed, split, index) only, not on the sizes or the order
    assert not np.array_equal(a.splits["val"].images, a.splits["test"].images[:3])
    bigger = build_synthetic_images(n_train=9, n_val=5, n_test=4, seed=3)
    assert np.array_equal(bigger.splits["train"].images[:6], a.splits["train"].images)
    assert np.array_equal(bigger.splits["val"].depth[:3], a.splits["val"].depth)
    assert bigger.info["split_fingerprints"]["test"] == a.info["split_fingerprints"]["test"]


def test_labels_agree_with_the_drawn_objects():
    params = SceneParams(48, 40, ("disc", "square", "triangle", "ring", "cross"), 2, 5)
    ds = SyntheticImageDataset(params, "train", 12, seed=1)
    rows, cols = np.arange(48)[:, None] + 0.5, np.arange(40)[None, :] + 0.5
    seen = set()
    for i in range(len(ds)):
        scene = ds.scene(i)
        assert scene.image.dtype == np.uint8 and scene.image.shape == (48, 40, 3)
        assert 2 <= len(scene.objects) <= 5 and (scene.depth > 0).all()
        covered = np.zeros((48, 40), dtype=bool)
        for k in reversed(range(len(scene.objects))):  # nearest first: a pixel shows the nearest object covering it
            obj = scene.objects[k]
            mask = _shape_mask(obj.shape, rows - obj.center[0], cols - obj.center[1], obj.radius, obj.angle)
            visible = mask & ~covered
            assert np.array_equal(scene.instance == k, visible)
            assert (scene.seg[visible] == obj.label).all() and params.shapes[obj.label - 1] == obj.shape
            assert (scene.depth[visible] == np.float32(obj.depth)).all()  # the object's own depth plane, exactly
            if k + 1 < len(scene.objects):
                assert obj.depth >= scene.objects[k + 1].depth  # drawn far to near: occlusion agrees with depth
            covered |= mask
            seen.add(obj.shape)
        background = ~covered
        assert (scene.seg[background] == 0).all() and (scene.instance[background] == -1).all()
        near = max(o.depth for o in scene.objects)
        assert (scene.depth[background] > near).all()  # the background plane lies behind every object
        # the background is a plane: constant second differences
        z = np.where(background, scene.depth.astype(np.float64), np.nan)
        d2 = np.diff(z, 2, axis=1)
        assert np.nanmax(np.abs(d2)) < 1e-5 if np.isfinite(d2).any() else True
    assert seen == set(params.shapes)
    # attribute targets: presence of visible pixels of each class
    attrs = SyntheticImageDataset(params, "val", 5, seed=1, tasks=["has_ring", "seg", "has_cross"])
    for i in range(len(attrs)):
        _, targets = attrs[i]
        assert list(targets) == ["has_ring", "seg", "has_cross"] and targets["has_ring"].shape == (1,)
        assert targets["has_ring"].item() == float((targets["seg"] == 4).any())
        assert targets["has_cross"].item() == float((targets["seg"] == 5).any())


def test_uint8_round_trip_and_hooks_compose_to_getitem():
    bench = build_synthetic_images(**SMALL, normalize="dataset", augment=True, aug_seed=0)
    train = bench.splits["train"]
    assert bench.info["normalize_stats"] == dict(zip(("mean", "std"), channel_stats(train.images)))
    assert np.array_equal(load_clean_images(bench.splits["test"]), bench.splits["test"].images)
    twin = build_synthetic_images(**SMALL, normalize="dataset", augment=True, aug_seed=0).splits["train"]
    flipped = 0
    for i in range(len(train)):
        raw, targets = train.raw_sample(i)
        assert raw.dtype == torch.float32 and raw.shape == (3, 64, 64) and 0 <= raw.min() and raw.max() <= 1
        assert np.array_equal(float_to_uint8_hwc(raw), train.images[i])  # lossless: stored as uint8
        assert train.raw_sample(i, with_image=False)[0] is None
        image, out = train[i]  # same augmentation stream as the composition below on the twin
        aug, aug_targets = twin.augment_sample(*twin.raw_sample(i))
        assert torch.equal(image, twin.normalize_sample(aug)) and all(torch.equal(out[t], aug_targets[t]) for t in out)
        is_flip = torch.equal(aug, raw.flip(-1)) and not torch.equal(aug, raw)
        assert is_flip or torch.equal(aug, raw)
        expect = {t: (v.flip(-1) if is_flip else v) for t, v in targets.items()}
        assert all(torch.equal(aug_targets[t], expect[t]) for t in expect)  # labels flipped with the image
        flipped += is_flip
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in bench.info["normalize_stats"].values())
        assert torch.allclose(train.normalize_sample(raw), (raw - mean) / std)
    assert 0 < flipped < len(train)
    test = bench.splits["test"]  # evaluation splits never augment
    image, targets = test[1]
    raw, raw_targets = test.raw_sample(1)
    assert torch.equal(image, test.normalize_sample(raw)) and torch.equal(targets["depth"], raw_targets["depth"])
    assert targets["seg"].dtype == torch.int64 and targets["depth"].shape == (1, 64, 64)


def test_corruption_wrappers_change_images_not_labels(tmp_path):
    bench = build_synthetic_images(**SMALL, height=32, width=48, normalize="imagenet")
    test = bench.splits["test"]
    corrupted = CorruptedDataset(test, "gaussian_noise", 3, seed=0, cache_dir=tmp_path)
    assert corrupted.images.shape == (4, 32, 48, 3)
    for i in range(len(test)):
        image, targets = corrupted[i]
        clean, clean_targets = test[i]
        assert image.shape == clean.shape and not torch.allclose(image, clean, atol=0.05)
        assert all(torch.equal(targets[t], clean_targets[t]) for t in clean_targets)
    randomly = RandomlyCorruptedDataset(bench.splits["train"], RandomCorruption(["contrast", "impulse_noise"], [4], seed=1), indexed=True)
    image, targets = randomly[2]
    clean, clean_targets = bench.splits["train"][2]
    assert not torch.allclose(image, clean, atol=0.05) and all(torch.equal(targets[t], clean_targets[t]) for t in targets)


@pytest.mark.parametrize(
    "kwargs,key,valid",
    [
        ({"height": 16}, "dataset.height=16", ">= 32"),
        ({"width": 31}, "dataset.width=31", ">= 32"),
        ({"n_val": 0}, "dataset.n_val=0", ">= 1"),
        ({"max_objects": 0}, "dataset.max_objects=0", "[1, 16]"),
        ({"min_objects": 3, "max_objects": 2}, "dataset.max_objects=2", "[3, 16]"),
        ({"shapes": ["disc", "hexagon"]}, "dataset.shapes", "'cross'"),
        ({"tasks": ["seg", "normal"]}, "dataset.tasks", "'has_ring'"),
        ({"normalize": "zscore"}, "dataset.normalize", "'dataset'"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key_and_range(kwargs, key, valid):
    with pytest.raises(ConfigError) as info:
        build_synthetic_images(**{**SMALL, **kwargs})
    msg = str(info.value)
    assert key in msg and valid in msg and "\n" not in msg


def test_two_epochs_on_cpu_learn_seg_and_depth(make_cfg, tmp_path):
    """16 steps of the default dense pair (test_resnet + conv heads, narrowed): both tasks' losses fall."""
    sizes = {"n_train": 128, "n_val": 32, "n_test": 32}
    cfg = make_cfg("dataset=synthetic_images", *(f"dataset.{k}={v}" for k, v in sizes.items()), "trainer.batch_size=16",
                   "heads.default.hidden=32", "trainer.checkpoint_every=0", "trainer.num_threads=1")
    assert (cfg.backbone.model_name, cfg.heads.default._target_) == ("test_resnet", "mtl_bench.models.dense_heads.ConvHead")
    threads = torch.get_num_threads()
    try:
        summary = build_and_train(cfg)  # one thread: a tiny model, and steady timing on a shared machine
    finally:
        torch.set_num_threads(threads)
    assert summary["dataset"]["name"] == "synthetic_images" and summary["tasks"] == ["seg", "depth"]
    assert summary["dataset"]["fingerprint"] == build_synthetic_images(**sizes).info["fingerprint"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = [r for r in records if "val/seg/loss" in r]
    for key in ("val/seg/loss", "val/depth/abs_err", "train_epoch/seg/loss", "train_epoch/depth/loss"):
        assert last[key] < 0.95 * first[key], key


def test_composed_config_is_checked(make_cfg):
    cfg = make_cfg("dataset=synthetic_images", "dataset.height=16")
    assert cfg.dataset.aug_seed == cfg.seed and list(cfg.dataset.shapes) == ["disc", "square", "triangle", "ring"]
    with pytest.raises(ConfigError, match=r"dataset.height=16 is invalid; expected an integer >= 32"):
        instantiate_checked(cfg.dataset, "dataset")
