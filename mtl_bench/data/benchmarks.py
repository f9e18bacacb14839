"""Benchmarks built from the community's on-disk datasets: NYUv2, Cityscapes (mtan ``.npy`` layout) and
CelebA (official release layout), with the validation protocol made explicit.

Validation protocols (``validation``), recorded in the benchmark's ``info`` and hence in every summary:

* ``holdout`` (default) — ``val_size`` samples (count or fraction) of the training folder, drawn with
  ``split_seed``, are held out for validation/model selection; test = the official evaluation folder
  (``val/``).  This is Elich et al.'s protocol (NYUv2: 159 of 795, Cityscapes: 595 of 2975).
* ``file`` — the train/val indices of the training folder come from a JSON file ``{"train": [...],
  "val": [...]}`` (e.g. LibMTL's NYUv2 ``data_split.json``, which users point at with ``split_file``).
* ``test`` — the community's leaky protocol: validation *is* the test set (mtan/Nash-MTL/FAMO report the
  test metrics of the last epochs, LibMTL selects on them); labelled as leaking in the summary.

CelebA has an official train/val/test partition; ``validation`` does not apply.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from mtl_bench.data.base import Benchmark
from mtl_bench.data.celeba import CelebADataset
from mtl_bench.data.mtan_npy import CityscapesDataset, NYUv2Dataset
from mtl_bench.data.splits import holdout_split, load_split
from mtl_bench.errors import ConfigError
from mtl_bench.task_library import attribute_task, depth_task, normal_task, segmentation_task
from mtl_bench.tasks import Task

VALIDATION = ("holdout", "file", "test")


def _protocol(
    n_train: int, validation: str, val_size: int | float, split_file: str | None, split_seed: int
) -> tuple[list[int] | None, list[int] | None, str]:
    """Training/validation indices into the training folder (``None`` = all / use the test folder)."""
    if validation == "holdout":
        train, val = holdout_split(n_train, val_size, split_seed)
        return train, val, f"holdout: {len(val)} of {n_train} training samples (split_seed {split_seed}); test = official eval folder"
    if validation == "file":
        if not split_file:
            raise ConfigError("dataset.validation=file needs dataset.split_file=<path to {\"train\": [...], \"val\": [...]}>")
        train, val = load_split(split_file, n_train)
        return train, val, f"file: {split_file} ({len(train)} train / {len(val)} val); test = official eval folder"
    if validation == "test":
        return None, None, "test: validation = official eval folder (community protocol; model selection leaks the test set)"
    raise ConfigError(f"dataset.validation='{validation}' is invalid; choose one of {list(VALIDATION)}")


def _mtan_benchmark(
    name: str, make: Any, tasks: dict[str, Task], validation: str, val_size: int | float, split_file: str | None,
    split_seed: int, augment: bool, info: dict[str, Any],
) -> Benchmark:
    full_train = make("train", None, False)
    train_idx, val_idx, protocol = _protocol(len(full_train), validation, val_size, split_file, split_seed)
    test = make("val", None, False)
    train = make("train", train_idx, augment)
    val = test if val_idx is None else make("train", val_idx, False)
    splits = {"train": train, "val": val, "test": test}
    h, w = full_train.image_size
    info = {"name": name, **info, "validation": protocol, "augment": bool(augment), "image_size": [h, w],
            "sizes": {s: len(d) for s, d in splits.items()}}
    return Benchmark(name=name, tasks=tasks, splits=splits, input_shape=(3, h, w), info=info)


def build_nyuv2(
    root: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    validation: str = "holdout",
    val_size: int | float = 0.2,
    split_file: str | None = None,
    split_seed: int = 0,
    augment: bool = True,
    aug_seed: int = 0,
    normalize: str | None = None,
    paper_compatible: bool = False,
    normal_median: str = "exact",
    name: str = "nyuv2",
) -> Benchmark:
    """NYUv2 (mtan ``.npy`` layout, 288×384): tasks ``seg`` (13 classes), ``depth``, ``normal``."""
    selected = list(tasks) if tasks is not None else ["seg", "depth", "normal"]
    factories = {
        "seg": lambda: segmentation_task("seg", 13, paper_compatible=paper_compatible),
        "depth": lambda: depth_task("depth", paper_compatible=paper_compatible),
        "normal": lambda: normal_task("normal", paper_compatible=paper_compatible, median=normal_median),
    }
    unknown = [t for t in selected if t not in factories]
    if unknown:
        raise ConfigError(f"dataset.tasks {unknown} not in NYUv2; its tasks are {list(factories)}")

    def make(folder: str, indices: list[int] | None, aug: bool) -> NYUv2Dataset:
        return NYUv2Dataset(root, folder, indices=indices, augment=aug, normalize=normalize, tasks=selected, seed=aug_seed)

    info = {"root": str(root), "metrics": "paper_compatible (per-batch)" if paper_compatible else "pooled", "normalize": normalize}
    return _mtan_benchmark(name, make, {t: factories[t]() for t in selected}, validation, val_size, split_file,
                           split_seed, augment, info)


def build_cityscapes(
    root: str | os.PathLike,
    label_set: str | int = "7",
    tasks: Sequence[str] | None = None,
    validation: str = "holdout",
    val_size: int | float = 0.2,
    split_file: str | None = None,
    split_seed: int = 0,
    augment: bool = True,
    aug_seed: int = 0,
    normalize: str | None = None,
    paper_compatible: bool = False,
    name: str = "cityscapes",
) -> Benchmark:
    """Cityscapes (mtan ``.npy`` layout, 128×256 or 256×512): ``seg`` (7 or 19 classes), ``depth`` (inverse depth)."""
    selected = list(tasks) if tasks is not None else ["seg", "depth"]
    unknown = [t for t in selected if t not in ("seg", "depth")]
    if unknown:
        raise ConfigError(f"dataset.tasks {unknown} not in Cityscapes; its tasks are ['seg', 'depth']")

    def make(folder: str, indices: list[int] | None, aug: bool) -> CityscapesDataset:
        return CityscapesDataset(root, folder, label_set=label_set, indices=indices, augment=aug, normalize=normalize,
                                 tasks=selected, seed=aug_seed)

    probe = make("val", None, False)
    factories = {
        "seg": lambda: segmentation_task("seg", probe.num_classes, paper_compatible=paper_compatible),
        "depth": lambda: depth_task("depth", paper_compatible=paper_compatible),
    }
    info = {"root": str(root), "label_set": str(label_set), "num_classes": probe.num_classes,
            "metrics": "paper_compatible (per-batch)" if paper_compatible else "pooled", "normalize": normalize}
    return _mtan_benchmark(name, make, {t: factories[t]() for t in selected}, validation, val_size, split_file,
                           split_seed, augment, info)


def build_celeba(
    root: str | os.PathLike,
    attributes: Sequence[str] | None = None,
    size: int = 64,
    normalize: str | None = None,
    name: str = "celeba",
) -> Benchmark:
    """CelebA (official release layout, official partition), 40 binary attribute tasks at ``size``×``size``."""
    splits = {s: CelebADataset(root, s, attributes=attributes, size=size, normalize=normalize) for s in ("train", "val", "test")}
    names = list(splits["train"].attributes)
    info = {"root": str(root), "size": size, "normalize": normalize, "validation": "official partition",
            "sizes": {s: len(d) for s, d in splits.items()}, "num_attributes": len(names)}
    return Benchmark(name=name, tasks={a: attribute_task(a) for a in names}, splits=splits, input_shape=(3, size, size), info=info)
