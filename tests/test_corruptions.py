"""ImageNet-C corruptions: contract, severity ordering, reproducibility, caching and dataset wrappers.

Small images (64×64, 32×48) keep the whole module at a few seconds; performance lives in
``scripts/bench_corruptions.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtl_bench.corruptions.adapters import reference_scene
from mtl_bench.corruptions import (
    ALL,
    COMMON,
    CORRUPTIONS,
    DETERMINISTIC,
    EXTRA,
    CorruptedDataset,
    RandomCorruption,
    RandomlyCorruptedDataset,
    available_backends,
    corrupt,
    corrupt_indexed,
    corrupt_tensor,
    corrupted_sets,
    corrupted_split_cache,
    describe,
    fingerprint_images,
    float_to_uint8_hwc,
    hwc_to_chw,
    load_clean_images,
    names,
    uint8_hwc_to_float,
)
from mtl_bench.corruptions import ops
from mtl_bench.data.base import TensorDictDataset
from mtl_bench.data.celeba import CelebADataset
from mtl_bench.data.fixtures import write_celeba_fixture, write_nyuv2_fixture
from mtl_bench.data.mtan_npy import NYUv2Dataset
from mtl_bench.data.transforms import normalize_image
from mtl_bench.errors import ConfigError


scene = reference_scene


SCENES = [scene(seed=s) for s in range(3)]


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def structure_loss(a: np.ndarray, b: np.ndarray) -> float:
    """1 − the Pearson correlation of the pixel values."""
    return 1.0 - float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def strength(name: str, severity: int, measure=distance) -> float:
    return float(np.mean([measure(corrupt(img, name, severity, seed), img) for img in SCENES for seed in (0, 1)]))


# ------------------------------------------------------------------------------------------------ contract


def test_names_and_families():
    assert len(COMMON) == 15 and len(EXTRA) == 4 and set(ALL) == set(CORRUPTIONS)
    assert names("noise") == ("gaussian_noise", "shot_noise", "impulse_noise")
    assert names("weather") == ("snow", "frost", "fog", "brightness")
    assert names("extra") == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    with pytest.raises(ConfigError, match="subset"):
        names("everything")


@pytest.mark.parametrize("name", ALL)
def test_changes_the_image_and_keeps_shape_and_dtype(name):
    for img in (SCENES[0], scene(32, 48), scene(48, 33, seed=1)):
        for severity in (1, 3, 5):
            out = corrupt(img, name, severity, 0)
            assert out.shape == img.shape and out.dtype == np.uint8
            assert out is not img
            if severity > 1 or img.shape == (64, 64, 3):  # the mildest spatter may leave no drop on a tiny image
                assert not np.array_equal(out, img), (name, severity, img.shape)


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("frost", "saturate")])
def test_strength_grows_with_severity(name):
    d1, d3, d5 = (strength(name, s) for s in (1, 3, 5))
    assert d1 <= d3 <= d5 and d1 < d5, (d1, d3, d5)


def test_frost_strength_grows_in_structure_not_in_distance():
    # ImageNet-C frost blends keep·x + amount·texture with (keep, amount) = (1, .4) … (.6, .75): from severity 3 on
    # the mean distance to a mid-grey image barely moves (it can fall), but the image's share keeps shrinking.
    s1, s3, s5 = (strength("frost", s, structure_loss) for s in (1, 3, 5))
    assert s1 < s3 < s5
    assert strength("frost", 1) < strength("frost", 5)


def test_saturate_desaturates_then_oversaturates():
    # ImageNet-C saturate scales HSV saturation by .3, .1 (severities 1-2) then 2, 5, 20 (3-5): distance grows within each half.
    d = [strength("saturate", s) for s in (1, 2, 3, 4, 5)]
    assert d[0] < d[1] and d[2] < d[3] < d[4] and d[0] < d[4], d
    grey = corrupt(SCENES[0], "saturate", 2, 0).astype(int)
    assert np.abs(grey - grey.mean(-1, keepdims=True)).mean() < np.abs(SCENES[0] - SCENES[0].mean(-1, keepdims=True)).mean() / 5


def test_reproducible_under_a_seed_and_independent_of_global_rngs():
    img = SCENES[1]
    np.random.seed(0)
    torch.manual_seed(0)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    for name in ALL:
        a = corrupt(img, name, 3, 7)
        np.random.seed(123)  # global generators must not matter ...
        b = corrupt(img, name, 3, np.random.default_rng(7))
        assert np.array_equal(a, b), name
        c = corrupt(img, name, 3, 8)
        assert np.array_equal(a, c) == (name in DETERMINISTIC), name
        np.random.seed(0)
    assert np.array_equal(np.random.get_state()[1], np_state)  # ... and are not consumed
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_invalid_arguments():
    img = SCENES[0]
    with pytest.raises(ConfigError, match="corruption='fisheye'"):
        corrupt(img, "fisheye", 1, 0)
    for bad in (0, 6, True, 2.0):
        with pytest.raises(ConfigError, match="severity"):
            corrupt(img, "fog", bad, 0)
    with pytest.raises(ValueError, match="at least 32"):
        corrupt(img[:31], "fog", 1, 0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(img.astype(np.float32), "fog", 1, 0)
    with pytest.raises(ValueError, match="explicit rng"):
        corrupt(img, "fog", 1, None)
    with pytest.raises(ConfigError, match="backend"):
        corrupt(img, "fog", 1, 0, backend="wand")


def test_tensor_and_float_adapters():
    img = scene(32, 48)
    t = hwc_to_chw(img)
    assert t.shape == (3, 32, 48) and t.dtype == torch.uint8
    assert np.array_equal(corrupt_tensor(t, "shot_noise", 2, 3).permute(1, 2, 0).numpy(), corrupt(img, "shot_noise", 2, 3))
    as_float = uint8_hwc_to_float(img)
    assert as_float.dtype == torch.float32 and float(as_float.max()) <= 1.0
    assert np.array_equal(float_to_uint8_hwc(as_float), img)  # exact for k/255 values
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        corrupt_tensor(t.float(), "fog", 1, 0)


def test_reference_building_blocks():
    disc = ops.defocus_kernel(3, 0.1)
    assert disc.shape == (17, 17) and abs(disc.sum() - 1) < 1e-12 and np.allclose(disc, disc.T)
    fractal = ops.plasma_fractal(64, 2.0, np.random.default_rng(0))
    assert fractal.min() == 0 and fractal.max() == 1
    # the glass-blur pixel "shuffle" equals a literal port of ImageNet-C's loop (whose swap of NumPy views copies)
    for (h, w), (d, iterations) in [((40, 40), (2, 3)), ((33, 45), (4, 2)), ((36, 32), (1, 2))]:
        img = scene(h, w)
        x = img.copy()
        for offsets in ops.shuffle_offsets(h, w, d, iterations, np.random.default_rng(0)):
            k = 0
            for r in range(h - d, d, -1):
                for c in range(w - d, d, -1):
                    dy, dx = offsets[k]
                    k += 1
                    x[r, c], x[r + dy, c + dx] = x[r + dy, c + dx], x[r, c]
        out = ops._local_shuffle(img, d, iterations, np.random.default_rng(0))
        assert np.array_equal(out, x)
        assert {tuple(p) for p in out.reshape(-1, 3)} < {tuple(p) for p in img.reshape(-1, 3)}  # values only disappear
    edges = ops.canny(np.pad(np.full((20, 20), 200, np.uint8), 10), 50, 150)
    assert edges.any() and not edges[20, 20] and not edges[0, 0]
    eq = ops.equalize_hist(np.arange(256, dtype=np.uint8).reshape(16, 16) // 2)
    assert eq.min() == 0 and eq.max() == 255


def test_describe_names_the_backend_and_versions():
    info = describe()
    assert info["backend"] == "mtl_bench" and info["version"] == ops.IMPLEMENTATION_VERSION
    assert {"numpy", "scipy", "pillow"} <= set(info)
    assert "mtl_bench" in available_backends()


@pytest.mark.skipif("imagecorruptions" not in available_backends(), reason="imagecorruptions-imaug not installed")
def test_matches_the_imagecorruptions_fork():
    img = SCENES[0]
    for name in sorted(DETERMINISTIC):  # same operations: equal up to one level of float rounding
        for severity in (1, 3, 5):
            ours, ref = corrupt(img, name, severity, 0), corrupt(img, name, severity, 0, backend="imagecorruptions")
            assert np.abs(ours.astype(int) - ref).max() <= 1, (name, severity)
    for name in ("gaussian_noise", "impulse_noise", "motion_blur", "snow", "fog", "elastic_transform", "spatter"):
        ours = np.mean([distance(corrupt(img, name, 4, s), img) for s in range(4)])
        ref = np.mean([distance(corrupt(img, name, 4, s, backend="imagecorruptions"), img) for s in range(4)])
        assert abs(ours - ref) < 0.15 * ref + 1.0, (name, ours, ref)
    a = corrupt(img, "glass_blur", 2, 5, backend="imagecorruptions")
    assert np.array_equal(a, corrupt(img, "glass_blur", 2, 5, backend="imagecorruptions"))


# ------------------------------------------------------------------------------------------------ cache


@pytest.fixture
def counter(monkeypatch):
    calls = {"n": 0}
    for name in ("gaussian_noise", "contrast"):
        fn = CORRUPTIONS[name]

        def counted(image, severity, rng, fn=fn):
            calls["n"] += 1
            return fn(image, severity, rng)

        monkeypatch.setitem(CORRUPTIONS, name, counted)
    return calls


def test_split_cache_is_computed_once_and_reused(tmp_path, counter):
    images = np.stack([scene(32, 48, seed=s) for s in range(5)])
    fp = fingerprint_images(images)
    path = corrupted_split_cache(images, "gaussian_noise", 3, 0, tmp_path, fp)
    assert counter["n"] == 5
    cached = np.load(path, mmap_mode="r")
    assert cached.shape == images.shape and cached.dtype == np.uint8
    for i in range(5):
        assert np.array_equal(cached[i], corrupt_indexed(images[i], "gaussian_noise", 3, 0, i))
    mtime = os.stat(path).st_mtime_ns
    assert corrupted_split_cache(list(images), "gaussian_noise", 3, 0, tmp_path, None) == path  # fingerprint recomputed, same key
    assert counter["n"] == 10  # the check above corrupted 5 images itself; the second cache call none
    assert os.stat(path).st_mtime_ns == mtime
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["corruption"] == "gaussian_noise" and meta["severity"] == 3 and meta["dataset"] == fp and meta["count"] == 5
    assert meta["backend"] == describe()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_split_cache_key_changes_with_seed_severity_content_and_corruption(tmp_path, counter):
    images = np.stack([scene(32, 48, seed=s) for s in range(3)])
    base = corrupted_split_cache(images, "gaussian_noise", 3, 0, tmp_path)
    changed = images.copy()
    changed[1, 0, 0, 0] ^= 1
    others = [
        corrupted_split_cache(images, "gaussian_noise", 3, 1, tmp_path),
        corrupted_split_cache(images, "gaussian_noise", 4, 0, tmp_path),
        corrupted_split_cache(changed, "gaussian_noise", 3, 0, tmp_path),
        corrupted_split_cache(images[:2], "gaussian_noise", 3, 0, tmp_path),
        corrupted_split_cache(images, "contrast", 3, 0, tmp_path),
    ]
    assert len({base, *others}) == 6 and counter["n"] == 3 * 5 + 2
    assert not np.array_equal(np.load(base), np.load(others[0]))  # another seed, other noise


def test_split_cache_is_independent_of_order_and_workers(tmp_path):
    images = np.stack([scene(32, 32, seed=s) for s in range(6)])
    for name in ("fog", "zoom_blur"):
        serial = np.load(corrupted_split_cache(images, name, 2, 4, tmp_path / "a"))
        parallel = np.load(corrupted_split_cache(images, name, 2, 4, tmp_path / "b", workers=2))
        assert np.array_equal(serial, parallel), name
        assert np.array_equal(serial[4], corrupt_indexed(images[4], name, 2, 4, 4))


# ------------------------------------------------------------------------------------------------ datasets


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory) -> Path:
    return write_nyuv2_fixture(tmp_path_factory.mktemp("nyu"), n_train=4, n_test=3, size=(32, 48), seed=0)


def test_corrupted_dataset_corrupts_before_normalisation_and_keeps_targets(nyu_root, tmp_path, counter):
    base = NYUv2Dataset(nyu_root, "val", normalize="imagenet")
    ds = CorruptedDataset(base, "gaussian_noise", 5, seed=3, cache_dir=tmp_path)
    assert len(ds) == len(base) == 3 and counter["n"] == 3
    for i in range(len(ds)):
        image, targets = ds[i]
        clean, clean_targets = base[i]
        assert image.shape == clean.shape and image.dtype == torch.float32
        assert targets.keys() == clean_targets.keys() and all(torch.equal(targets[k], clean_targets[k]) for k in targets)
        raw, _ = base.raw_sample(i)
        expected = corrupt_indexed(float_to_uint8_hwc(raw), "gaussian_noise", 5, 3, i)
        assert torch.allclose(image, normalize_image(uint8_hwc_to_float(expected), "imagenet"))
        assert not torch.allclose(image, clean, atol=0.05)
    info = ds.info()
    assert info["implementation"]["backend"] == "mtl_bench" and info["severity"] == 5 and Path(info["cache"]).exists()
    calls = counter["n"]  # 3 by the dataset + 3 by the check above
    again = CorruptedDataset(NYUv2Dataset(nyu_root, "val", normalize="imagenet"), "gaussian_noise", 5, seed=3, cache_dir=tmp_path)
    assert again.path == ds.path and counter["n"] == calls  # a new base object: fingerprint recomputed, cache hit
    assert torch.equal(again[2][0], ds[2][0])


def test_corrupted_sets_grid_and_celeba(tmp_path):
    root = tmp_path / "celeba"
    write_celeba_fixture(root, n=8, seed=0)
    base = CelebADataset(root, "test", size=(32, 40))
    grid = corrupted_sets(base, ["contrast", "pixelate"], [1, 5], seed=0, cache_dir=tmp_path / "cache")
    assert sorted(grid) == [("contrast", 1), ("contrast", 5), ("pixelate", 1), ("pixelate", 5)]
    clean = load_clean_images(base)
    assert np.array_equal(float_to_uint8_hwc(base[0][0]), clean[0])  # CelebA pixels are k/255: lossless round trip
    image, targets = grid[("contrast", 5)][0]
    assert torch.equal(targets["Smiling"], base[0][1]["Smiling"])
    assert image.shape == base[0][0].shape and not torch.equal(image, base[0][0])


def test_wrappers_need_the_staged_hooks():
    plain = TensorDictDataset(torch.zeros(4, 3, 32, 32), {"t": torch.zeros(4)})
    with pytest.raises(ConfigError, match="raw_sample"):
        RandomlyCorruptedDataset(plain, RandomCorruption(seed=0))


def test_random_corruption_is_reproducible_and_varied():
    img = SCENES[2]
    a, b = RandomCorruption(seed=1), RandomCorruption(seed=1)
    draws = []
    for _ in range(12):
        out_a, out_b = a(img), b(img)
        assert np.array_equal(out_a, out_b) and a.last == b.last
        draws.append(a.last)
    assert len({n for n, _ in draws}) >= 5 and len({s for _, s in draws}) >= 3
    assert all(n in COMMON and 1 <= s <= 5 for n, s in draws)
    other = RandomCorruption(seed=2)
    other_draws = []
    for _ in range(12):
        other(img)
        other_draws.append(other.last)
    assert other_draws != draws
    # indexed draws are a pure function of (seed, epoch, index)
    assert np.array_equal(a.at(img, 5, 1), RandomCorruption(seed=1).at(img, 5, 1))
    assert not np.array_equal(a.at(img, 5, 1), a.at(img, 5, 2))
    picky = RandomCorruption(["contrast", "fog"], [2], seed=0, clean_prob=0.5)
    seen = set()
    for _ in range(20):
        picky(img)
        seen.add(picky.last)
    assert seen == {(None, 0), ("contrast", 2), ("fog", 2)}
    with pytest.raises(ConfigError, match="clean_prob"):
        RandomCorruption(clean_prob=1.0)


def test_randomly_corrupted_training_split(nyu_root):
    def samples(seed: int) -> list:
        base = NYUv2Dataset(nyu_root, "train", augment=True, seed=0)
        ds = RandomlyCorruptedDataset(base, RandomCorruption(seed=seed))
        return [ds[i] for i in range(4)]

    first, second, third = samples(0), samples(0), samples(1)
    assert all(torch.equal(first[i][0], second[i][0]) for i in range(4))
    assert any(not torch.equal(first[i][0], third[i][0]) for i in range(4))
    assert set(first[0][1]) == {"seg", "depth", "normal"}
    # indexed draws do not depend on the order of requests (without augmentation, whose stream does)
    plain = NYUv2Dataset(nyu_root, "train")
    ds = RandomlyCorruptedDataset(plain, RandomCorruption(seed=0), indexed=True)
    ahead = [ds[i][0] for i in range(4)]
    behind = [ds[i][0] for i in range(3, -1, -1)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(ahead, behind))
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], ahead[i]) for i in range(4))
    for i in range(4):  # targets untouched when the base does not augment
        assert all(torch.equal(ds[i][1][k], plain[i][1][k]) for k in ("seg", "depth", "normal"))


def test_random_corruption_in_dataloader_workers_is_reproducible(nyu_root):
    def run() -> list[torch.Tensor]:
        ds = RandomlyCorruptedDataset(NYUv2Dataset(nyu_root, "train"), RandomCorruption(["gaussian_noise", "fog", "contrast"], seed=0))
        loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork", shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        return [batch[0][0] for batch in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
