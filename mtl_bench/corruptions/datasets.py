"""Dataset wrappers: cached corrupted evaluation splits and random corruption of training samples.

Both wrap a dataset of ``mtl_bench.data`` that exposes the stages of its ``__getitem__`` (the
:class:`StagedImageDataset` protocol, implemented by ``NYUv2Dataset``, ``CityscapesDataset`` and
``CelebADataset``)::

    raw_sample(i, with_image=True) -> (float32 3×H×W image in [0, 1] or None, targets)   # as stored
    augment_sample(image, targets) -> (image, targets)                                   # training augmentation or identity
    normalize_sample(image) -> image                                                     # e.g. ImageNet mean/std

The wrappers corrupt the image as ``uint8`` between the stages, so corruption always happens *before*
normalisation, and pass the targets (dense labels, attributes) through untouched.  Their samples have the
base dataset's format, so the trainer, losses and metrics need no change.

* :class:`CorruptedDataset` (evaluation): ``raw -> uint8 -> corrupt (cached) -> float -> augment -> normalise``.
  The corrupted images come from the on-disk cache (:mod:`mtl_bench.corruptions.cache`); only the targets
  are read from the base dataset.  Wrap evaluation splits (``augment=False``).
* :class:`RandomlyCorruptedDataset` (training, Elich et al. App. A6: a corruption type and a severity drawn
  uniformly at random per sample): ``raw -> augment -> uint8 -> corrupt -> float -> normalise``; corrupting
  after the geometric augmentation keeps the corruption at the pixel scale it has at test time.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from mtl_bench.corruptions.adapters import float_to_uint8_hwc, uint8_hwc_to_float
from mtl_bench.corruptions.backends import DEFAULT_BACKEND, SEVERITIES, check_image, check_name, check_severity, describe, get_backend
from mtl_bench.corruptions.cache import check_seed, corrupted_split_cache, fingerprint_images
from mtl_bench.corruptions.ops import COMMON
from mtl_bench.errors import ConfigError

HOOKS = ("raw_sample", "augment_sample", "normalize_sample")


@runtime_checkable
class StagedImageDataset(Protocol):
    """What a dataset must expose to be corrupted before normalisation (see the module docstring)."""

    def __len__(self) -> int: ...

    def raw_sample(self, index: int, with_image: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]: ...

    def augment_sample(self, image: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def normalize_sample(self, image: torch.Tensor) -> torch.Tensor: ...


def check_staged(dataset: Any) -> StagedImageDataset:
    missing = [h for h in HOOKS if not callable(getattr(dataset, h, None))]
    if missing:
        raise ConfigError(f"{type(dataset).__name__} cannot be corrupted: it lacks {missing}; corruption wrappers need the image "
                          f"before normalisation through {list(HOOKS)} (implemented by NYUv2Dataset, CityscapesDataset, CelebADataset)")
    return dataset


class CleanImages(Sequence[np.ndarray]):
    """The clean images of a staged dataset as ``uint8`` H×W×3 arrays, read on access (a lazy sequence)."""

    def __init__(self, dataset: StagedImageDataset):
        self.dataset = check_staged(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, _ = self.dataset.raw_sample(index)
        return float_to_uint8_hwc(image)


def load_clean_images(dataset: StagedImageDataset) -> np.ndarray:
    """All clean images of ``dataset`` as one N×H×W×3 ``uint8`` array (NYUv2 test: 217 MB)."""
    images = CleanImages(dataset)
    first = images[0]
    out = np.empty((len(images), *first.shape), dtype=np.uint8)
    out[0] = first
    for i in range(1, len(images)):
        out[i] = images[i]
    return out


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dataset_fingerprint(dataset: StagedImageDataset, clean: np.ndarray | None = None) -> str:
    """Content fingerprint of the dataset's clean ``uint8`` images (memoised per dataset object)."""
    try:
        return _FINGERPRINTS[dataset]
    except (KeyError, TypeError):
        pass
    fp = fingerprint_images(clean if clean is not None else CleanImages(dataset))
    try:
        _FINGERPRINTS[dataset] = fp
    except TypeError:  # not weak-referenceable
        pass
    return fp


class CorruptedDataset(Dataset):
    """A split with every image corrupted by ``corruption`` at ``severity``, cached under ``cache_dir``.

    The corrupted images are computed on first use (or found in the cache: see
    :func:`~mtl_bench.corruptions.cache.corrupted_split_cache`) in the constructor; ``__getitem__`` then reads
    the memory-mapped cache and the base dataset's targets.  ``fingerprint``: the clean images' content hash
    if already known (otherwise computed by reading the split once per base dataset object); ``clean``: the
    clean images already loaded (:func:`load_clean_images`), reused for the fingerprint and the corruption.
    """

    def __init__(
        self,
        base: StagedImageDataset,
        corruption: str,
        severity: int,
        seed: int,
        cache_dir: str | os.PathLike,
        *,
        backend: str = DEFAULT_BACKEND,
        fingerprint: str | None = None,
        clean: np.ndarray | None = None,
        workers: int = 0,
    ):
        self.base = check_staged(base)
        self.corruption = check_name(corruption)
        self.severity = check_severity(severity)
        self.seed = check_seed(seed)
        self.backend = backend
        get_backend(backend)  # fail early when the backend is unavailable
        self.fingerprint = fingerprint or dataset_fingerprint(base, clean)
        source = clean if clean is not None else CleanImages(base)
        self.path = corrupted_split_cache(source, corruption, severity, seed, cache_dir, self.fingerprint, backend, workers)
        self.images = np.load(self.path, mmap_mode="r", allow_pickle=False)
        if self.images.shape[0] != len(base):
            raise RuntimeError(f"cached corrupted set {self.path} has {self.images.shape[0]} images, the dataset {len(base)}")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, targets = self.base.raw_sample(index, with_image=False)
        image = uint8_hwc_to_float(np.array(self.images[index]))
        image, targets = self.base.augment_sample(image, targets)
        return self.base.normalize_sample(image), targets

    def info(self) -> dict[str, Any]:
        """Provenance for a run summary."""
        return {"corruption": self.corruption, "severity": self.severity, "seed": self.seed, "implementation": describe(self.backend),
                "dataset_fingerprint": self.fingerprint, "cache": str(self.path)}


def corrupted_sets(
    base: StagedImageDataset,
    corruptions: Sequence[str] = COMMON,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    cache_dir: str | os.PathLike = "outputs/corruption_cache",
    *,
    backend: str = DEFAULT_BACKEND,
    workers: int = 0,
) -> dict[tuple[str, int], CorruptedDataset]:
    """``{(corruption, severity): CorruptedDataset}`` for the whole grid (Elich et al.: 15 × 5 copies of the
    test split).  The clean images are read once and shared by the fingerprint and every entry that misses the cache."""
    clean = load_clean_images(base)
    fp = dataset_fingerprint(base, clean)
    return {
        (c, s): CorruptedDataset(base, c, s, seed, cache_dir, backend=backend, fingerprint=fp, clean=clean, workers=workers)
        for c in corruptions
        for s in severities
    }


class RandomCorruption:
    """Draw a corruption type and a severity uniformly at random per image, then apply it.

    ``corruptions``/``severities``: the choices (default: the 15 common ones × 1..5); ``clean_prob``: the
    probability of leaving an image clean.  Randomness comes from this object's own generator only:

    * ``transform(image)`` uses a stream seeded by ``seed`` — a function of ``seed`` and the order of calls in
      the main process; inside a DataLoader worker it is reseeded once from ``(seed, worker_info.seed)`` (as
      :class:`mtl_bench.data.transforms.RandomScaleCropFlip` does), so workers get distinct streams that are
      reproducible for a seeded loader and a fixed ``num_workers``;
    * ``transform.at(image, index, epoch)`` is a pure function of ``(seed, epoch, index)``: independent of
      order and workers.

    ``last`` holds the ``(corruption, severity)`` of the latest call (``(None, 0)`` = clean).
    """

    def __init__(
        self,
        corruptions: Sequence[str] = COMMON,
        severities: Sequence[int] = SEVERITIES,
        seed: int = 0,
        backend: str = DEFAULT_BACKEND,
        clean_prob: float = 0.0,
    ):
        self.corruptions = tuple(check_name(c) for c in corruptions)
        self.severities = tuple(check_severity(s) for s in severities)
        if not self.corruptions or not self.severities:
            raise ConfigError("RandomCorruption needs at least one corruption and one severity")
        if not 0.0 <= clean_prob < 1.0:
            raise ConfigError(f"RandomCorruption clean_prob={clean_prob!r} is not valid; expected a float in [0, 1)")
        self.seed = check_seed(seed)
        self.backend = backend
        self.clean_prob = float(clean_prob)
        self._apply = get_backend(backend).apply
        self._rng = np.random.default_rng(self.seed)
        self._stream: tuple[int, int] | None = None
        self.last: tuple[str | None, int] = (None, 0)

    def _stream_rng(self) -> np.random.Generator:
        info = get_worker_info()
        if info is not None and (info.id, info.seed) != self._stream:
            self._rng = np.random.default_rng([self.seed, info.seed % 2**64])
            self._stream = (info.id, info.seed)
        return self._rng

    def draw(self, rng: np.random.Generator) -> tuple[str | None, int]:
        """One ``(corruption, severity)`` draw; ``(None, 0)`` for a clean sample."""
        if self.clean_prob > 0 and rng.random() < self.clean_prob:
            return None, 0
        return self.corruptions[int(rng.integers(len(self.corruptions)))], self.severities[int(rng.integers(len(self.severities)))]

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw from ``rng`` and corrupt a ``uint8`` H×W×3 image (the same generator drives the corruption)."""
        check_image(image)
        name, severity = self.draw(rng)
        self.last = (name, severity)
        return image.copy() if name is None else self._apply(image, name, severity, rng)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.apply(image, self._stream_rng())

    def at(self, image: np.ndarray, index: int, epoch: int = 0) -> np.ndarray:
        return self.apply(image, np.random.default_rng([self.seed, int(epoch), int(index)]))

    def info(self) -> dict[str, Any]:
        return {"corruptions": list(self.corruptions), "severities": list(self.severities), "seed": self.seed,
                "clean_prob": self.clean_prob, "implementation": describe(self.backend)}


class RandomlyCorruptedDataset(Dataset):
    """A training split whose images are corrupted at random per sample by ``transform`` (after the base
    dataset's augmentation, before its normalisation); targets untouched.

    ``indexed=False`` (default) draws from the transform's stream (a new draw each time a sample is loaded);
    ``indexed=True`` makes each draw a function of ``(seed, epoch, index)``; call :meth:`set_epoch` every
    epoch to redraw (with persistent DataLoader workers the epoch must be set before the workers start, so
    prefer the stream mode there).
    """

    def __init__(self, base: StagedImageDataset, transform: RandomCorruption, indexed: bool = False):
        self.base = check_staged(base)
        self.transform = transform
        self.indexed = bool(indexed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, targets = self.base.raw_sample(index)
        image, targets = self.base.augment_sample(image, targets)
        u8 = float_to_uint8_hwc(image)
        u8 = self.transform.at(u8, index, self.epoch) if self.indexed else self.transform(u8)
        return self.base.normalize_sample(uint8_hwc_to_float(u8)), targets

    def info(self) -> dict[str, Any]:
        return {**self.transform.info(), "indexed": self.indexed}
