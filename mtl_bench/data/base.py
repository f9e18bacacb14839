"""Benchmarks, in-memory datasets and loaders.

A dataset config (``configs/dataset/*.yaml``) instantiates to a :class:`Benchmark`: the task
definitions plus the ``train``/``val``/``test`` splits.  Every split yields batches
``(inputs, {task_name: target})``; models and losses see only this structure.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from mtl_bench.errors import ConfigError
from mtl_bench.tasks import Task

SPLITS = ("train", "val", "test")


@dataclass
class Benchmark:
    """What a dataset config builds: tasks, splits and the input shape the backbone must accept."""

    name: str
    tasks: dict[str, Task]
    splits: dict[str, Dataset]
    input_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)  # provenance logged in the run summary
    extras: dict[str, Any] = field(default_factory=dict)  # objects for analyses/tests, not logged

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"benchmark '{self.name}' lacks split(s) {missing}")

    def select_tasks(self, names: Sequence[str] | None) -> dict[str, Task]:
        """The active tasks, in the order given; ``None`` means all of the dataset's tasks."""
        if names is None:
            return dict(self.tasks)
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise ConfigError(
                f"task(s) {unknown} not in dataset '{self.name}'; its tasks are {list(self.tasks)}"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"task list {list(names)} names a task twice")
        if not names:
            raise ConfigError(f"no task selected; dataset '{self.name}' has tasks {list(self.tasks)}")
        return {n: self.tasks[n] for n in names}


class TensorDictDataset(Dataset):
    """An in-memory split: an input tensor and one target tensor per task, indexed by batches.

    ``ds[indices]`` with a 1-D index tensor or list returns a whole batch in one gather, which is
    much faster than collating single samples; :func:`make_loader` uses that path.
    """

    batch_indexing = True

    def __init__(self, inputs: torch.Tensor, targets: Mapping[str, torch.Tensor]):
        n = inputs.shape[0]
        for name, t in targets.items():
            if t.shape[0] != n:
                raise ValueError(f"target '{name}' has {t.shape[0]} rows, inputs have {n}")
        self.inputs = inputs
        self.targets = dict(targets)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long)
        return self.inputs[index], {k: v[index] for k, v in self.targets.items()}


class ResumableBatchSampler(Sampler[list[int]]):
    """A batch sampler that can start its next pass after ``skip`` batches.

    Resuming a run mid-epoch restores the data generator to its state at the start of the epoch, so the
    epoch's permutation is drawn again, and skips the batches already trained on: only index lists are
    drawn for them, no sample is loaded (and no augmentation randomness is consumed).
    """

    def __init__(self, inner: Sampler[list[int]]):
        self.inner = inner
        self.skip = 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self):
        skip, self.skip = self.skip, 0
        it = iter(self.inner)
        for _ in range(skip):
            if next(it, None) is None:
                return
        yield from it


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset``; batch-indexable datasets are gathered a whole batch at a time.

    Shuffling draws from ``generator`` only, so the data order is a function of the seed and does not
    consume the global torch RNG stream.  Shuffled loaders batch through a :class:`ResumableBatchSampler`
    (``loader.resumable``) so that a resumed run can continue mid-epoch.
    """
    extra: dict[str, Any] = {}
    if num_workers > 0:
        # Safe under Hydra's joblib (loky) launcher, where the default start method breaks workers.
        extra = {"multiprocessing_context": "fork", "persistent_workers": True}
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches: Sampler[list[int]] = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    if shuffle:
        batches = ResumableBatchSampler(batches)
    if getattr(dataset, "batch_indexing", False):
        loader = DataLoader(
            dataset, sampler=batches, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **extra
        )
    else:  # the same sampler chain DataLoader(shuffle=..., generator=...) builds, with the resumable wrapper
        loader = DataLoader(
            dataset, batch_sampler=batches, generator=generator, num_workers=num_workers, pin_memory=pin_memory, **extra
        )
    loader.resumable = batches if shuffle else None  # type: ignore[attr-defined]
    return loader


def check_int(value: Any, key: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int (bools refused) within ``[minimum, maximum]``, else a ConfigError naming ``dataset.<key>``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        v = None
    if v is None or v < minimum or (maximum is not None and v > maximum):
        valid = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ConfigError(f"dataset.{key}={value!r} is invalid; expected {valid}")
    return v


def arrays_fingerprint(*arrays: np.ndarray) -> str:
    """BLAKE2b-128 of the arrays' shapes and bytes, in order: a split's content hash (recorded with corrupted caches
    and in the benchmark's info, so that results name the exact data)."""
    hsh = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        hsh.update(np.asarray(arr.shape, dtype=np.int64).tobytes())
        hsh.update(np.ascontiguousarray(arr).data)
    return hsh.hexdigest()


def splits_fingerprint(fingerprints: Mapping[str, str]) -> str:
    """One BLAKE2b-128 over the splits' fingerprints (sorted by split name)."""
    return hashlib.blake2b(repr(sorted(fingerprints.items())).encode(), digest_size=16).hexdigest()


def check_task_subset(tasks: Sequence[str] | None, available: Sequence[str]) -> tuple[str, ...]:
    """``dataset.tasks``: distinct names among ``available`` (all of them when ``None``), in the given order."""
    selected = tuple(available if tasks is None else tasks)
    if not selected or len(set(selected)) != len(selected) or any(t not in available for t in selected):
        raise ConfigError(f"dataset.tasks={list(selected)} is invalid; expected distinct names among {list(available)}")
    return selected
