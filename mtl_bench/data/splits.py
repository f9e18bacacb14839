"""Validation protocols: a held-out validation split carved from the training folder, or a user's index file.

NYUv2 and Cityscapes ship only a training folder and an official evaluation folder (``val/``), which the
community uses as the *test* set.  Selecting hyper-parameters or epochs on it leaks the test set (LibMTL
#75, FAMO #13).  Elich et al. (seeds §1.3) instead hold out part of the training folder for validation:
159 of NYUv2's 795 images (LibMTL's ``examples/nyu/data_split.json``) and 595 of Cityscapes' 2975 images
(20 % in both cases).  The pieces here only produce index lists; a dataset is restricted to them with its
``indices`` argument, so all three protocols compose from the same parts:

* held-out validation: ``train, val = holdout_split(n, 0.2, seed)`` → ``Dataset(folder="train", indices=train)``
  and ``Dataset(folder="train", indices=val)``; test = ``Dataset(folder="val")``;
* a fixed split file (e.g. LibMTL's): ``train, val = load_split(path, n)``, then as above;
* the community's leaky protocol: val = test = ``Dataset(folder="val")`` and train = the whole training folder.

Index files are JSON objects ``{"train": [...], "val": [...]}`` of 0-based sample indices into the training
folder (the format of LibMTL's ``data_split.json``); :func:`save_split` writes the same format so that a drawn
split can be kept with a run and reused.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mtl_bench.errors import ConfigError, DatasetError

SPLIT_KEYS = ("train", "val")
_FORMAT = 'a JSON object {"train": [...], "val": [...]} of 0-based sample indices'


def resolve_val_size(n: int, val_size: int | float) -> int:
    """Number of held-out samples: an int is a count, a float in (0, 1) a fraction rounded half up.

    Rounding half up (``floor(f·n + 0.5)``) keeps ``0.2 × 795 = 159.00000000000003`` at 159, which the
    ceiling used by scikit-learn would turn into 160.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"holdout split needs at least 2 samples, got n={n!r}")
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ConfigError(f"val_size must be an int count or a float fraction in (0, 1), got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ConfigError(f"val_size={val_size} as a fraction must lie strictly between 0 and 1")
        k = int(math.floor(val_size * n + 0.5))
    else:
        k = val_size
    if not 1 <= k <= n - 1:
        raise ConfigError(f"val_size={val_size!r} gives {k} validation samples out of {n}; expected 1..{n - 1}")
    return k


def holdout_split(n: int, val_size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices ``0..n-1`` into sorted, disjoint ``(train, val)`` lists, deterministic under ``seed``.

    The permutation comes from ``numpy.random.RandomState(seed)``, whose stream NumPy keeps frozen across
    versions (NEP 19), so a given ``(n, val_size, seed)`` yields the same split on every machine; the first
    ``k`` permuted indices are held out.  ``seed`` must lie in ``[0, 2**32)``.
    """
    k = resolve_val_size(n, val_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"holdout split seed must be an int in [0, 2**32), got {seed!r}")
    perm = np.random.RandomState(seed).permutation(n)
    return sorted(int(i) for i in perm[k:]), sorted(int(i) for i in perm[:k])


def _index_list(path: Path, key: str, value: object, n: int | None) -> list[int]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"split file {path}: '{key}' must be a non-empty list of indices, got {type(value).__name__}")
    seen: set[int] = set()
    for i in value:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise DatasetError(f"split file {path}: '{key}' contains {i!r}; expected non-negative integers")
        if n is not None and i >= n:
            raise DatasetError(f"split file {path}: index {i} in '{key}' is out of range for {n} samples (valid 0..{n - 1})")
        if i in seen:
            raise DatasetError(f"split file {path}: '{key}' lists index {i} more than once")
        seen.add(i)
    return list(value)


def load_split(path: str | os.PathLike, n: int | None = None) -> tuple[list[int], list[int]]:
    """Read a user's ``{"train": [...], "val": [...]}`` index file; returns ``(train, val)`` in file order.

    ``n`` (the number of samples in the training folder) enables the range check.  The lists must be
    non-empty, duplicate-free and disjoint; they need not cover all ``n`` samples.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"split file {p} does not exist; expected {_FORMAT}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"split file {p} is not valid JSON ({e.msg} at line {e.lineno}); expected {_FORMAT}") from None
    if not isinstance(data, dict) or sorted(data) != sorted(SPLIT_KEYS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"split file {p} has keys {keys}; expected {_FORMAT}")
    train, val = (_index_list(p, key, data[key], n) for key in SPLIT_KEYS)
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise DatasetError(f"split file {p}: indices {overlap[:5]} are in both 'train' and 'val'; they must be disjoint")
    return train, val


def save_split(path: str | os.PathLike, train: Sequence[int], val: Sequence[int]) -> Path:
    """Write ``(train, val)`` as a split file that :func:`load_split` reads back unchanged."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"train": [int(i) for i in train], "val": [int(i) for i in val]}) + "\n", encoding="utf-8")
    return p
