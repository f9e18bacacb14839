"""MultiMNIST generated from MNIST IDX files (``dataset=multimnist``): the IDX reader, the overlay and resize against
Sener & Koltun's construction and PIL, splits and labels, determinism, the cache, the errors for missing or malformed
files, and a one-epoch run on a fixture written in torchvision's layout."""

from __future__ import annotations

import gzip
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_bench.data import multimnist
from mtl_bench.data.fixtures import write_idx, write_mnist_fixture
from mtl_bench.data.multimnist import (
    build_multimnist, load_mnist_split, overlay_pairs, read_idx, resize_nearest,
)
from mtl_bench.errors import ConfigError, DatasetError
from mtl_bench.train import build_and_train

VAL = 16  # of the fixture's 64 training images


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    return write_mnist_fixture(tmp_path_factory.mktemp("mnist"), n_train=64, n_test=32, seed=0)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_raw_and_gz(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5).astype(np.uint8)
    image_path = write_idx(tmp_path / f"img{suffix}", images)
    label_path = write_idx(tmp_path / f"lab{suffix}", labels)
    raw = gzip.decompress(image_path.read_bytes()) if suffix else image_path.read_bytes()
    assert raw[:16] == bytes.fromhex("00000803" "00000005" "0000001c" "0000001c")  # magic 2051, N, rows, cols
    got = read_idx(image_path, 2051)
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert np.array_equal(read_idx(label_path, 2049), labels)
    root = write_mnist_fixture(tmp_path / "fx", n_train=6, n_test=4, seed=3, compress=bool(suffix))
    x, y = load_mnist_split(root, "test")
    assert x.shape == (4, 28, 28) and y.dtype == np.int64 and y.shape == (4,) and 0 <= y.min() and y.max() <= 9
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(
        f"{n}{suffix}" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                 "t10k-labels-idx1-ubyte"))


def test_overlay_is_sener_and_koltuns_construction_and_resize_is_pils_nearest():
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    digits[2] = 0
    # a left-only pair (the right digit blank) has pixels in [0:28, 0:28] only; a right-only pair in [6:34, 6:34] only
    left_only, right_only = overlay_pairs(digits, np.array([0, 2]), np.array([2, 1]), 36, 6)
    assert np.array_equal(left_only[:28, :28], digits[0]) and not left_only[28:].any() and not left_only[:, 28:].any()
    assert np.array_equal(right_only[6:34, 6:34], digits[1]) and not right_only[:6].any() and not right_only[:, :6].any()
    assert not right_only[34:].any() and not right_only[:, 34:].any()
    # both: the three assignments of multi_mnist_loader.py (left, right, then the max on the overlap)
    pair = overlay_pairs(digits, np.array([0]), np.array([1]), 36, 6)[0]
    expect = np.zeros((36, 36), dtype=np.uint8)
    expect[0:28, 0:28] = digits[0]
    expect[6:34, 6:34] = digits[1]
    expect[6:28, 6:28] = np.maximum(digits[0][6:28, 6:28], digits[1][0:22, 0:22])
    assert np.array_equal(pair, expect)
    small = resize_nearest(pair[None], 28)[0]
    assert np.array_equal(small, np.array(Image.fromarray(pair).resize((28, 28), resample=Image.NEAREST)))
    assert np.array_equal(small, np.array(Image.fromarray(pair.astype(np.float64)).resize((28, 28), resample=Image.NEAREST)))


def test_splits_labels_and_inputs(mnist_root):
    bench = build_multimnist(mnist_root, cache_dir=None, val_size=VAL)
    train_x, train_y = load_mnist_split(mnist_root, "train")
    test_x, test_y = load_mnist_split(mnist_root, "test")
    pools = {"train": (range(0, 48), train_x, train_y), "val": (range(48, 64), train_x, train_y),
             "test": (range(0, 32), test_x, test_y)}
    assert bench.info["sizes"] == {"train": 48, "val": 16, "test": 32} and bench.input_shape == (1, 28, 28)
    for split, (pool, images, labels) in pools.items():
        ds = bench.splits[split]
        assert np.array_equal(ds.sources[:, 0], np.arange(pool.start, pool.stop))  # one pair per pool image, in order
        assert set(ds.sources[:, 1]) <= set(pool)  # the right digit from the same pool
        assert np.array_equal(ds.labels, labels[ds.sources])
        expect = resize_nearest(overlay_pairs(images, ds.sources[:, 0], ds.sources[:, 1], 36, 6), 28)
        assert np.array_equal(ds.images[:, 0], expect)
        x, y = ds[list(range(len(ds)))]
        assert torch.equal(y["left"], torch.from_numpy(labels[ds.sources[:, 0]]))
        assert torch.equal(y["right"], torch.from_numpy(labels[ds.sources[:, 1]]))
        assert torch.allclose(x, (torch.from_numpy(expect[:, None]).float() / 255 - 0.1307) / 0.3081)
    assert list(bench.tasks) == ["left", "right"] and all(t.out_dim == 10 for t in bench.tasks.values())
    big = build_multimnist(mnist_root, cache_dir=None, val_size=VAL, n_train=100, n_test=5, size=None)
    assert np.array_equal(big.splits["train"].sources[:, 0], np.arange(100) % 48)  # cycled pool
    assert len(big.splits["test"]) == 5 and big.input_shape == (1, 36, 36)
    assert list(build_multimnist(mnist_root, cache_dir=None, val_size=VAL, tasks=["right"]).tasks) == ["right"]


def test_generation_is_deterministic_for_a_seed_and_differs_across_seeds(mnist_root):
    a = build_multimnist(mnist_root, cache_dir=None, val_size=VAL, seed=3)
    b = build_multimnist(mnist_root, cache_dir=None, val_size=VAL, seed=3)
    c = build_multimnist(mnist_root, cache_dir=None, val_size=VAL, seed=4)
    for split in ("train", "val", "test"):
        assert a.splits[split].images.tobytes() == b.splits[split].images.tobytes()
        assert np.array_equal(a.splits[split].sources, b.splits[split].sources)
        assert not np.array_equal(a.splits[split].sources[:, 1], c.splits[split].sources[:, 1])
    assert a.info["fingerprint"] == b.info["fingerprint"] != c.info["fingerprint"]


def test_the_cache_is_reused_and_a_corrupt_cache_is_regenerated(mnist_root, tmp_path, monkeypatch, caplog):
    first = build_multimnist(mnist_root, cache_dir=tmp_path, val_size=VAL, seed=1)
    path = tmp_path / os.path.basename(first.info["cache"])
    assert path.is_file() and path.name.startswith("multimnist-") and path.suffix == ".npz"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    real = multimnist.generate_pairs
    monkeypatch.setattr(multimnist, "generate_pairs", no_generation)
    again = build_multimnist(mnist_root, cache_dir=tmp_path, val_size=VAL, seed=1, mean=0.0, std=1.0)  # not in the key
    assert again.info["fingerprint"] == first.info["fingerprint"] and again.info["cache"] == first.info["cache"]
    with pytest.raises(AssertionError, match="regenerated"):  # other settings: another cache file
        build_multimnist(mnist_root, cache_dir=tmp_path, val_size=VAL, seed=2)

    monkeypatch.setattr(multimnist, "generate_pairs", real)
    path.write_bytes(b"PK\x03\x04 not a zip")
    with caplog.at_level(logging.WARNING, logger="mtl_bench.data.multimnist"):
        fixed = build_multimnist(mnist_root, cache_dir=tmp_path, val_size=VAL, seed=1)
    assert any(str(path) in r.getMessage() and "regenerating" in r.getMessage() for r in caplog.records)
    assert fixed.info["fingerprint"] == first.info["fingerprint"]
    with np.load(path) as z:
        assert z["train_images"].shape == (48, 28, 28)
    # a changed source file (size or mtime) is a new key
    label_file = mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    stat = label_file.stat()
    try:
        os.utime(label_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert build_multimnist(mnist_root, cache_dir=tmp_path, val_size=VAL, seed=1).info["cache"] != first.info["cache"]
    finally:
        os.utime(label_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _damage(root, how):
    raw = root / "MNIST" / "raw"
    if how == "missing":
        (raw / "t10k-labels-idx1-ubyte").unlink()
        return "t10k-labels-idx1-ubyte", "not found"
    if how == "magic":  # a label file where the images belong
        (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())
        return "train-images-idx3-ubyte", "has magic number 2049; expected 2051"
    if how == "truncated":
        data = (raw / "t10k-images-idx3-ubyte").read_bytes()
        (raw / "t10k-images-idx3-ubyte").write_bytes(data[:-100])
        return "t10k-images-idx3-ubyte", "but its header declares 32 x 28 x 28 = 25088"
    if how == "count":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
        return "train-labels-idx1-ubyte", "has 10 labels but"
    if how == "label_range":
        write_idx(raw / "train-labels-idx1-ubyte", np.full(64, 10, dtype=np.uint8))
        return "train-labels-idx1-ubyte", "expected 0..9"
    (raw / "t10k-labels-idx1-ubyte").unlink()  # bad gzip
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    return "t10k-labels-idx1-ubyte.gz", "cannot read MNIST file"


@pytest.mark.parametrize("how", ["missing", "magic", "truncated", "count", "label_range", "gzip"])
def test_missing_or_malformed_files_name_the_file_and_the_layout(tmp_path, how):
    root = write_mnist_fixture(tmp_path, n_train=64, n_test=32)
    name, needle = _damage(root, how)
    with pytest.raises(DatasetError) as info:
        build_multimnist(root, cache_dir=tmp_path / "cache", val_size=VAL)
    msg = str(info.value)
    assert name in msg and needle in msg and "\n" not in msg, msg
    assert f"{root}/MNIST/raw/{{train-images-idx3-ubyte, train-labels-idx1-ubyte" in msg and "torchvision's MNIST layout" in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_missing_root_and_bad_values(tmp_path, mnist_root):
    with pytest.raises(DatasetError, match=r"MNIST file .*/nowhere/MNIST/raw/train-images-idx3-ubyte\[\.gz\] not found"):
        build_multimnist(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"dataset.val_size=64 is invalid; the MNIST training file holds 64 images"):
        build_multimnist(mnist_root, cache_dir=None, val_size=64)
    with pytest.raises(ConfigError, match=r"dataset.canvas=30 is invalid; 28-px digits offset by 6 need 34 pixels"):
        build_multimnist(mnist_root, cache_dir=None, val_size=VAL, canvas=30)
    with pytest.raises(ConfigError, match=r"dataset.tasks=\['left', 'sum'\] is invalid"):
        build_multimnist(mnist_root, cache_dir=None, val_size=VAL, tasks=["left", "sum"])
    with pytest.raises(ConfigError, match=r"dataset.n_train=0 is invalid"):
        build_multimnist(mnist_root, cache_dir=None, n_train=0)


def test_one_epoch_on_the_fixture(make_cfg, tmp_path):
    write_mnist_fixture(tmp_path / "data" / "mnist", n_train=64, n_test=32, compress=True)
    default = make_cfg("dataset=multimnist", tiny=False)
    assert (default.dataset.canvas, default.dataset.offset, default.dataset.size, default.dataset.val_size) == (36, 6, 28, 10000)
    assert default.dataset.n_train is None and default.backbone._target_.endswith("ConvEncoder")
    assert default.heads.default.hidden == []
    cfg = make_cfg("dataset=multimnist", f"paths.data_dir={tmp_path / 'data'}", "trainer.epochs=1", f"dataset.val_size={VAL}",
                   "backbone.channels=[8,16]", "backbone.fc=16", "trainer.checkpoint_every=0")
    summary = build_and_train(cfg)
    assert summary["status"] == "completed" and summary["tasks"] == ["left", "right"]
    assert summary["dataset"]["sizes"] == {"train": 256, "val": 64, "test": 64}  # the test helper's sizes, pools cycled
    assert summary["dataset"]["cache"].startswith(str(tmp_path / "data" / "mnist" / "multimnist_cache"))
    final = summary["final"]
    assert all(0.0 <= final[f"test/{t}/acc"] <= 1.0 for t in ("left", "right")), final
