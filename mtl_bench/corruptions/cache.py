"""Corrupted copies of an evaluation split, computed once and cached on disk.

A cached set is one ``.npy`` file of shape N×H×W×3 (``uint8``, memory-mapped when read) plus a ``.json``
sidecar describing it, named ``<corruption>-s<severity>-<key>.npy`` where ``key`` hashes

* the content fingerprint of the clean images (:func:`fingerprint_images`: every image's shape and bytes,
  in order), so a changed, reordered or re-subsetted split never hits an old entry;
* the corruption name, the severity and the seed;
* the backend's :func:`~mtl_bench.corruptions.describe` (implementation version and library versions, which
  determine the random streams and e.g. the JPEG encoder).

Image ``i`` is corrupted with its own generator seeded by ``(seed, corruption, severity, i)``
(:func:`image_seed`), so the result does not depend on iteration order, chunking or the number of worker
processes.  Files are written to a temporary name in the cache folder and renamed into place
(``os.replace``), so readers never see a partial file and concurrent writers of the same entry are harmless
(the content is identical).  Sizes: a NYUv2 test copy (654 × 288×384) is 217 MB per corruption and
severity (16 GB for 15 × 5), a Cityscapes one (500 × 128×256) 49 MB (3.7 GB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from mtl_bench.corruptions.backends import DEFAULT_BACKEND, check_image, check_name, check_severity, describe, get_backend
from mtl_bench.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"corruption seed={seed!r} is not valid; expected a non-negative int")
    return int(seed)


def image_seed(seed: int, corruption: str, severity: int, index: int) -> np.random.SeedSequence:
    """The seed of image ``index``'s generator: a function of ``(seed, corruption, severity, index)`` only."""
    return np.random.SeedSequence([check_seed(seed), zlib.crc32(corruption.encode()), int(severity), int(index)])


def corrupt_indexed(image: np.ndarray, corruption: str, severity: int, seed: int, index: int, backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """Corrupt image ``index`` of a split exactly as the cache does (validated arguments)."""
    check_image(image)
    rng = np.random.default_rng(image_seed(seed, corruption, severity, index))
    return get_backend(backend).apply(image, check_name(corruption), check_severity(severity), rng)


def fingerprint_images(images: Iterable[np.ndarray]) -> str:
    """A content hash (BLAKE2b, 128 bit, hex) of a sequence of ``uint8`` H×W×3 images: count, shapes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    count = 0
    for image in images:
        a = np.ascontiguousarray(check_image(image))
        h.update(np.asarray(a.shape, dtype=np.int64).tobytes())
        h.update(a.data)
        count += 1
    h.update(np.int64(count).tobytes())
    return h.hexdigest()


def cache_key(dataset_fingerprint: str, corruption: str, severity: int, seed: int, backend: str = DEFAULT_BACKEND) -> dict[str, Any]:
    """Everything that determines a cached set; its hash names the file."""
    return {
        "format": CACHE_FORMAT,
        "dataset": str(dataset_fingerprint),
        "corruption": check_name(corruption),
        "severity": check_severity(severity),
        "seed": check_seed(seed),
        "backend": describe(backend),
    }


def cache_path(cache_dir: str | os.PathLike, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / f"{key['corruption']}-s{key['severity']}-{digest}.npy"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _valid(path: Path, count: int | None) -> bool:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[3] == 3 and (count is None or arr.shape[0] == count)


# State shared with forked worker processes (set just before the pool starts; never pickled).
_JOB: dict[str, Any] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)


def _corrupt_range(bounds: tuple[int, int]) -> tuple[int, np.ndarray]:
    start, stop = bounds
    images, corruption, severity, seed, backend = _JOB["args"]
    out = np.stack([corrupt_indexed(np.asarray(images[i]), corruption, severity, seed, i, backend) for i in range(start, stop)])
    return start, out


def corrupted_split_cache(
    images: Sequence[np.ndarray] | np.ndarray | Iterable[np.ndarray],
    corruption: str,
    severity: int,
    seed: int,
    cache_dir: str | os.PathLike,
    dataset_fingerprint: str | None = None,
    backend: str = DEFAULT_BACKEND,
    workers: int = 0,
) -> Path:
    """The path of the cached corrupted copy of ``images``, computing it first if it is not cached yet.

    ``images``: the clean ``uint8`` H×W×3 images of one split, all of the same size, as an N×H×W×3 array, a
    sequence, or any iterable (materialised).  ``dataset_fingerprint``: a content hash of ``images``
    (:func:`fingerprint_images`; computed here when ``None``, which reads every image once).  ``workers > 0``
    corrupts in that many forked processes (``images`` must then be indexable).  Read the result with
    ``np.load(path, mmap_mode="r")``.
    """
    if not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
        images = list(images)
    seq: Sequence[np.ndarray] = images  # type: ignore[assignment]
    n = len(seq)
    if n == 0:
        raise ValueError("corrupted_split_cache got no images")
    if dataset_fingerprint is None:
        dataset_fingerprint = fingerprint_images(np.asarray(seq[i]) for i in range(n))
    key = cache_key(dataset_fingerprint, corruption, severity, seed, backend)
    path = cache_path(cache_dir, key)
    if path.exists() and _valid(path, n):
        log.debug("corruption cache hit: %s", path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_entry(path, key, (seq, corruption, severity, seed, backend), workers)
    return path


def _write_entry(path: Path, key: dict[str, Any], job: tuple[Any, ...], workers: int) -> None:
    """Corrupt the images of ``job`` = ``(images, corruption, severity, seed, backend)`` into the cache file ``path``
    and write its sidecar; the file appears (``os.replace``) only once complete."""
    seq = job[0]
    n = len(seq)
    first = check_image(np.asarray(seq[0]))
    shape = (n, *first.shape)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    started = time.perf_counter()
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        if workers > 0 and n > 1:
            _fill_parallel(out, job, workers)
        else:
            _fill_serial(out, job, first.shape)
        out.flush()
        del out
        meta = {**key, "count": n, "image_shape": list(first.shape), "file": path.name,
                "seconds": round(time.perf_counter() - started, 3)}
        _atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("corruption cache: wrote %s (%d images, %.1f s)", path, n, time.perf_counter() - started)


def _fill_parallel(out: np.ndarray, job: tuple[Any, ...], workers: int) -> None:
    """Corrupt the images into ``out`` in chunks, in ``workers`` forked processes."""
    n = len(job[0])
    chunk = max(1, min(16, n // (4 * workers)))
    ranges = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    _JOB["args"] = job
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
            for start, block in pool.imap_unordered(_corrupt_range, ranges):
                out[start : start + len(block)] = block
    finally:
        _JOB.clear()


def _fill_serial(out: np.ndarray, job: tuple[Any, ...], shape: tuple[int, ...]) -> None:
    """Corrupt the images into ``out`` one by one in this process; each must have image 0's ``shape``."""
    seq, corruption, severity, seed, backend = job
    for i in range(len(seq)):
        image = np.asarray(seq[i])
        if image.shape != shape:
            raise ValueError(f"image {i} has shape {image.shape}, image 0 {shape}; a cached split needs one image size")
        out[i] = corrupt_indexed(image, corruption, severity, seed, i, backend)
