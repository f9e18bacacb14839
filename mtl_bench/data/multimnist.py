"""MultiMNIST (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018): two MNIST digits
overlaid, tasks ``left`` and ``right`` = 10-class classification of each digit.  Generated here from the MNIST files
the user points to, seeded, and cached.

Source files (torchvision's on-disk MNIST layout; each file raw or gzip-compressed, the raw one preferred)::

    <root>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}[.gz]

(``root`` may also be the ``MNIST`` folder itself.)  The IDX files are read with numpy (big-endian header: magic
2051 and N, rows, cols for images; magic 2049 and N for labels; then ``uint8`` data); torchvision is not needed.  A
missing file, a wrong magic number, a size that does not match the header, an image file and a label file of
different lengths, or a label outside 0..9 raise a one-line :class:`~mtl_bench.errors.DatasetError` naming the file
and the expected layout.

Protocol (the construction of Sener & Koltun's ``multi_mnist_loader.py``, with the splits of Kurin et al., NeurIPS
2022, ``supervised_experiments/loaders/multi_mnist_loader.py``):

1. **Source pools**: train = MNIST training images ``[0, 60000 − val_size)``, val = the last ``val_size`` (default
   10,000, Kurin et al.'s 50k/10k), test = the 10,000 MNIST test images.  A pair uses two digits of its own pool, so
   val and test digits are never seen in training.
2. **Pairs**: pair ``i`` of a split has the pool's ``i``-th image as its *left* digit (one pair per source image, as
   both reference codes) and a *right* digit drawn uniformly **with replacement** from the same pool (it may be the
   left image itself: Sener's ``permutation(length)[:1]`` and Kurin's ``randint`` do not exclude it).  The draws come
   from ``np.random.default_rng(SeedSequence([seed, split_id]))`` (split ids train 0, val 1, test 2), so a split
   depends only on the seed, its pool and its size.
3. **Overlay**: a black ``canvas``×``canvas`` canvas (36); the left digit at ``[0:28, 0:28]``, the right digit at
   ``[offset:offset+28]`` on both axes (offset 6: ``[6:34, 6:34]``), the overlap the pixel-wise maximum.
4. **Resize**: to ``size``×``size`` (28) with nearest-neighbour sampling, source pixel ``floor((j + 0.5)·canvas/size)``
   — exactly PIL's ``NEAREST`` (Kurin's ``Image.resize``; tested against PIL).  ``size: null`` keeps the 36×36 canvas
   (Pareto-MTL's images are not resized).
5. **Input**: float32 1×size×size, ``(x/255 − mean)/std`` with MNIST's (0.1307, 0.3081), as both reference codes.

Tasks ``left``/``right``: :func:`mtl_bench.task_library.classification_task` (cross-entropy on N×10 logits; metric
``acc``); the reference codes' log-softmax + NLL is the same loss.

Deviations (all stated here, none in the default images except the first):

* Sener & Koltun's ``scipy.misc.imresize`` first byte-scales the float canvas (its maximum to 255) before the
  nearest resize; we do not (Kurin et al. do not either).  This changes nothing when the brighter of the two digits
  reaches 255.
* Sener & Koltun have no validation split (60k train pairs); we follow Kurin et al.'s 50k/10k carve-out
  (``val_size``), taken from the end of the training file as theirs.
* Randomness: our seeded generator, not the global ``np.random`` state of the reference codes, so the pairs are not
  the references' pairs (theirs are not reproducible either).
* ``n_train``/``n_val``/``n_test`` (default ``null`` = one pair per pool image) may ask for fewer pairs (the first
  ``n`` pool images are the left digits) or more (the pool is cycled: image ``i mod |pool|``, each time with a fresh
  right digit); quick runs and fixtures only.

Cache: the generated uint8 images, labels and source indices of the three splits are stored in
``<cache_dir>/multimnist-<hash>.npz``, the hash over the generation settings (format, seed, val_size, sizes, canvas,
offset, size) and each source file's name, size and modification time, so the second run reads the cache instead of
regenerating.  The file is written to a temporary name and renamed (atomic); an unreadable or inconsistent cache file
is regenerated with a logged warning.  ``cache_dir: null`` disables the cache.  Cost at full size (70,000 pairs,
uncompressed IDX files, one core): generation 0.5 s, a build from the cache 0.4 s (most of it the float conversion
and the fingerprint), a 57 MB cache file; the cache mainly pins the exact pairs of a setting.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mtl_bench.data.base import Benchmark, TensorDictDataset, arrays_fingerprint, check_int, check_task_subset, splits_fingerprint
from mtl_bench.errors import ConfigError, DatasetError
from mtl_bench.task_library import classification_task

log = logging.getLogger(__name__)

TASKS = ("left", "right")
NUM_CLASSES = 10
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SOURCE_FILES = {  # source split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CACHE_FORMAT = 1
_CACHE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def expected_layout(root: str | os.PathLike) -> str:
    names = ", ".join(name for pair in SOURCE_FILES.values() for name in pair)
    return f"{root}/MNIST/raw/{{{names}}} (torchvision's MNIST layout; each file raw or .gz)"


def find_mnist_file(root: str | os.PathLike, name: str) -> Path:
    """The path of the IDX file ``name`` (raw, else ``.gz``) under ``<root>/MNIST/raw`` or ``<root>/raw``."""
    base = Path(root).expanduser()
    for folder in (base / "MNIST" / "raw", base / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetError(f"MNIST file {base / 'MNIST' / 'raw' / name}[.gz] not found; expected {expected_layout(base)}")


def _read_bytes(path: Path, layout: str) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read MNIST file {path} ({type(e).__name__}: {e}); expected {layout}") from None


def read_idx(path: str | os.PathLike, magic: int, layout: str | None = None) -> np.ndarray:
    """An IDX file of ``uint8`` data (magic 2051: N×rows×cols images, 2049: N labels) as a numpy array."""
    path = Path(path)
    layout = layout or expected_layout(path.parent)
    ndim = magic & 0xFF
    data = _read_bytes(path, layout)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"MNIST file {path} is {len(data)} bytes, shorter than its {header}-byte IDX header; expected {layout}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(f"MNIST file {path} has magic number {found}; expected {magic} (IDX uint8, {ndim}-d) in {layout}")
    dims = tuple(int.from_bytes(data[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    if len(data) - header != int(np.prod(dims)):
        raise DatasetError(f"MNIST file {path} holds {len(data) - header} data bytes but its header declares "
                           f"{' x '.join(map(str, dims))} = {int(np.prod(dims))}; expected {layout}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_split(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``train`` or ``test``: uint8 N×rows×cols images and int64 labels (checked against each other)."""
    layout = expected_layout(Path(root).expanduser())
    image_path, label_path = (find_mnist_file(root, name) for name in SOURCE_FILES[split])
    images = read_idx(image_path, IMAGE_MAGIC, layout)
    labels = read_idx(label_path, LABEL_MAGIC, layout).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"MNIST file {label_path} has {len(labels)} labels but {image_path} has {len(images)} images; "
                           f"expected equal counts in {layout}")
    if images.shape[1] != images.shape[2] or len(images) == 0:
        raise DatasetError(f"MNIST file {image_path} holds {images.shape} images; expected N >= 1 square digits in {layout}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"MNIST file {label_path} has labels in [{labels.min()}, {labels.max()}]; expected 0..9 in {layout}")
    return images, labels


def overlay_pairs(images: np.ndarray, left: np.ndarray, right: np.ndarray, canvas: int, offset: int) -> np.ndarray:
    """N×canvas×canvas uint8: ``images[left]`` at the top-left corner, ``images[right]`` ``offset`` px down and right,
    pixel-wise maximum where they overlap (Sener & Koltun's construction)."""
    side = images.shape[1]
    out = np.zeros((len(left), canvas, canvas), dtype=np.uint8)
    out[:, :side, :side] = images[left]
    region = out[:, offset:offset + side, offset:offset + side]
    np.maximum(region, images[right], out=region)
    return out


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of N×S×S images to N×size×size, identical to PIL's ``Image.NEAREST``."""
    source = images.shape[-1]
    idx = np.floor((np.arange(size) + 0.5) * source / size).astype(np.int64)
    return images[:, idx][:, :, idx]


@dataclass(frozen=True)
class Generation:
    """The settings that determine the generated pairs (and the cache key, with the source files' identity)."""

    seed: int
    val_size: int
    sizes: tuple[int | None, int | None, int | None]  # pairs per split (train, val, test); None = one per pool image
    canvas: int
    offset: int
    size: int | None

    def key(self, files: Sequence[Path]) -> dict[str, Any]:
        stats = [{"name": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files]
        return {"format": CACHE_FORMAT, "seed": self.seed, "val_size": self.val_size, "sizes": list(self.sizes),
                "canvas": self.canvas, "offset": self.offset, "size": self.size, "files": stats}


def split_pairs(pool: np.ndarray, n: int | None, seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Left and right source indices of a split's ``n`` pairs (see the module docstring, step 2)."""
    count = len(pool) if n is None else n
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split]]))
    left = pool[np.arange(count) % len(pool)]
    right = pool[rng.integers(len(pool), size=count)]
    return left, right


def generate_pairs(root: str | os.PathLike, gen: Generation) -> dict[str, dict[str, np.ndarray]]:
    """The three splits: ``images`` uint8 N×size×size, ``labels`` int64 N×2 (left, right), ``sources`` int64 N×2
    (indices into MNIST train for train/val, into MNIST test for test)."""
    train_images, train_labels = load_mnist_split(root, "train")
    test_images, test_labels = load_mnist_split(root, "test")
    side = train_images.shape[1]
    if test_images.shape[1:] != train_images.shape[1:]:
        raise DatasetError(f"MNIST test images are {test_images.shape[1:]} and training images {train_images.shape[1:]}; "
                           f"expected the same size in {expected_layout(root)}")
    if side + gen.offset > gen.canvas:
        raise ConfigError(f"dataset.canvas={gen.canvas} is invalid; {side}-px digits offset by {gen.offset} need "
                          f"{side + gen.offset} pixels")
    if gen.val_size >= len(train_images):
        raise ConfigError(f"dataset.val_size={gen.val_size} is invalid; the MNIST training file holds {len(train_images)} "
                          "images and some must stay for training")
    n_fit = len(train_images) - gen.val_size
    pools = {"train": (np.arange(n_fit), train_images, train_labels),
             "val": (np.arange(n_fit, len(train_images)), train_images, train_labels),
             "test": (np.arange(len(test_images)), test_images, test_labels)}
    out = {}
    for (split, (pool, images, labels)), n in zip(pools.items(), gen.sizes):
        left, right = split_pairs(pool, n, gen.seed, split)
        merged = overlay_pairs(images, left, right, gen.canvas, gen.offset)
        if gen.size is not None:
            merged = resize_nearest(merged, gen.size)
        sources = np.stack([left, right], axis=1).astype(np.int64)
        out[split] = {"images": merged, "labels": labels[sources], "sources": sources}
    return out


def cache_file(cache_dir: str | os.PathLike, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / f"multimnist-{digest}.npz"


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """The splits stored in ``path``; ValueError/KeyError/OSError when it is not a complete cache for ``key``."""
    with np.load(path, allow_pickle=False) as z:
        if json.loads(str(z["key"])) != key:
            raise ValueError("its key does not match the generation settings")
        splits = {s: {f: np.array(z[f"{s}_{f}"]) for f in ("images", "labels", "sources")} for s in SPLIT_IDS}
    for s, arrays in splits.items():
        n = len(arrays["images"])
        if arrays["images"].dtype != np.uint8 or arrays["labels"].shape != (n, 2) or arrays["sources"].shape != (n, 2):
            raise ValueError(f"split {s} has inconsistent arrays")
    return splits


def _write_cache(path: Path, key: dict[str, Any], splits: dict[str, dict[str, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    arrays = {f"{s}_{f}": a for s, d in splits.items() for f, a in d.items()}
    try:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cached_pairs(root: str | os.PathLike, gen: Generation, cache_dir: str | os.PathLike | None) -> tuple[dict, Path | None]:
    """The generated splits, read from the cache when it holds them; returns ``(splits, cache path or None)``."""
    files = [find_mnist_file(root, name) for pair in SOURCE_FILES.values() for name in pair]
    if cache_dir is None:
        return generate_pairs(root, gen), None
    key = gen.key(files)
    path = cache_file(cache_dir, key)
    if path.exists():
        try:
            return _read_cache(path, key), path
        except _CACHE_ERRORS as e:
            log.warning("multimnist: cache file %s is unreadable or inconsistent (%s: %s); regenerating it",
                        path, type(e).__name__, e)
    splits = generate_pairs(root, gen)
    _write_cache(path, key, splits)
    log.info("multimnist: wrote %s", path)
    return splits, path


class MultiMNISTSplit(TensorDictDataset):
    """One split: ``images`` uint8 N×1×H×W, ``labels`` N×2 (left, right), ``sources`` N×2 source indices; inputs
    float32 ``(images/255 − mean)/std``, targets ``left``/``right`` int64 (N,)."""

    def __init__(self, arrays: dict[str, np.ndarray], tasks: Sequence[str], mean: float, std: float):
        self.images = arrays["images"][:, None]
        self.labels, self.sources = arrays["labels"], arrays["sources"]
        inputs = torch.from_numpy(np.ascontiguousarray(self.images)).float().div_(255.0).sub_(mean).div_(std)
        targets = {t: torch.from_numpy(self.labels[:, TASKS.index(t)].copy()) for t in tasks}
        super().__init__(inputs, targets)

    def fingerprint(self) -> str:
        """BLAKE2b-128 of the split's images and labels (shapes and bytes)."""
        return arrays_fingerprint(self.images, self.labels)


def _optional_size(value: Any, key: str) -> int | None:
    return None if value is None else check_int(value, key, 1)


def build_multimnist(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_size: int = 10000,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    canvas: int = 36,
    offset: int = 6,
    size: int | None = 28,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
    tasks: Sequence[str] | None = None,
    name: str = "multimnist",
) -> Benchmark:
    """MultiMNIST generated from the MNIST IDX files under ``root``; see the module docstring."""
    gen = Generation(seed=check_int(seed, "seed", 0), val_size=check_int(val_size, "val_size", 1),
                     sizes=(_optional_size(n_train, "n_train"), _optional_size(n_val, "n_val"), _optional_size(n_test, "n_test")),
                     canvas=check_int(canvas, "canvas", 1), offset=check_int(offset, "offset", 1),
                     size=_optional_size(size, "size"))
    if not float(std) > 0:
        raise ConfigError(f"dataset.std={std!r} is invalid; expected a positive number")
    selected = check_task_subset(tasks, TASKS)
    arrays, path = cached_pairs(root, gen, cache_dir)
    splits = {s: MultiMNISTSplit(arrays[s], selected, float(mean), float(std)) for s in SPLIT_IDS}
    fingerprints = {s: d.fingerprint() for s, d in splits.items()}
    side = splits["train"].images.shape[-1]
    info = {
        "name": name,
        "generator": "mtl_bench.data.multimnist (Sener & Koltun's overlay, Kurin et al.'s 50k/10k/10k splits)",
        "root": str(Path(root).expanduser()),
        "cache": None if path is None else str(path),
        "data_seed": gen.seed, "val_size": gen.val_size, "canvas": gen.canvas, "offset": gen.offset, "size": side,
        "normalize": [float(mean), float(std)],
        "sizes": {s: len(d) for s, d in splits.items()},
        "validation": f"the last {gen.val_size} MNIST training images (pairs within them)",
        "fingerprint": splits_fingerprint(fingerprints),
        "split_fingerprints": fingerprints,
    }
    tasks_ = {t: classification_task(t, NUM_CLASSES) for t in selected}
    return Benchmark(name=name, tasks=tasks_, splits=splits, input_shape=(1, side, side), info=info)
