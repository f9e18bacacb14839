"""NYUv2 and Cityscapes in the preprocessed ``.npy`` layout of lorenmt/mtan (used by mtan, LibMTL, CAGrad,
Nash-MTL, FAMO and Auto-Lambda).

Layout (one file per sample and modality, ``i = 0..N-1`` without leading zeros)::

    <root>/{train,val}/image/<i>.npy     H×W×3 float, RGB in [0, 1]
    <root>/{train,val}/label/<i>.npy     H×W class ids stored as float (or int); −1 = ignore   (NYUv2: 13 classes)
    <root>/{train,val}/depth/<i>.npy     H×W×1 float; 0 = invalid       (NYUv2: metres; Cityscapes: inverse depth)
    <root>/{train,val}/normal/<i>.npy    H×W×3 float unit vectors; all-zero = invalid  (NYUv2 only)

Cityscapes has ``label_7/`` (7 classes), ``label_19/`` (19 classes) and, in LibMTL's copy, ``label/`` (the
7-class labels renamed) instead of ``label/``; only the folders of the tasks and label set in use must exist.
NYUv2 is 288×384 (795 train / 654 val); Cityscapes 128×256 or 256×512 (2975 / 500).  The size is read
from the files, never assumed.  The official ``val/`` folder is the *test* split in every published table;
see :mod:`mtl_bench.data.splits` for validation protocols.

A sample is ``(image, targets)`` as in the shared data contract: ``image`` float32 3×H×W (optionally
ImageNet-normalised), ``targets["seg"]`` int64 H×W (−1 ignore), ``targets["depth"]`` float32 1×H×W
(0 invalid), ``targets["normal"]`` float32 3×H×W (all-zero invalid).  Values are passed through as stored,
like the official loaders (``im2im_pred/create_dataset.py`` in mtan), except for the optional normalisation.

Loading: files are memory-mapped (``np.load(mmap_mode="r")``); construction lists the folders and reads only
sample 0 of each one; ``__getitem__`` reads one sample.  Checks: the layout (every folder holds exactly the
files ``0..N-1`` of ``image/``) and sample 0 of every folder at construction; the shape and dtype of every
file and the label range (and finiteness of depth) of every sample when it is loaded.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mtl_bench.data.transforms import RandomScaleCropFlip, StagedImages, check_normalize
from mtl_bench.errors import ConfigError, DatasetError

FOLDERS = ("train", "val")
NYUV2_TASKS = ("seg", "depth", "normal")
NYUV2_NUM_CLASSES = 13
CITYSCAPES_TASKS = ("seg", "depth")
# label_set -> (sub-folder, number of classes); "label" is LibMTL's name for the 7-class labels.
CITYSCAPES_LABEL_SETS: dict[str, tuple[str, int]] = {"7": ("label_7", 7), "19": ("label_19", 19), "label": ("label", 7)}

# A first-sample image outside this range is almost surely stored as 0..255 (or otherwise rescaled).
_IMAGE_RANGE = (-0.5, 1.5)


@dataclass(frozen=True)
class _Field:
    """One modality: its sub-folder, kind and the trailing channel dimension of its files (None: H×W)."""

    folder: str
    kind: str  # image | label | depth | normal
    channels: int | None

    @property
    def dtype_kinds(self) -> str:
        return "fiu" if self.kind == "label" else "f"

    def describe(self, num_classes: int) -> str:
        return {
            "image": "an RGB image (float in [0, 1])",
            "label": f"a label map (float or int class ids, -1 = ignore, 0..{num_classes - 1})",
            "depth": "a depth map (float, 0 = invalid)",
            "normal": "a normal map (float unit vectors, all-zero = invalid)",
        }[self.kind]


_IMAGE = _Field("image", "image", 3)


def _listing(directory: Path, layout: str) -> set[int]:
    """The integer stems of the ``<i>.npy`` files in ``directory``."""
    found: set[int] = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(".npy"):
                continue
            stem = entry.name[: -len(".npy")]
            if not stem.isdigit() or str(int(stem)) != stem:
                raise DatasetError(f"unexpected file {directory / entry.name}: files must be named <i>.npy, i = 0..N-1; expected {layout}")
            found.add(int(stem))
    return found


class MtanNpyDataset(StagedImages):
    """A folder (``train`` or ``val``) of an mtan-layout dataset; see the module docstring.

    Subclasses fix the modalities (:class:`NYUv2Dataset`, :class:`CityscapesDataset`).  ``indices`` restricts
    the dataset to those file indices (in the given order); ``augment`` applies the mtan #34 augmentation
    (:class:`~mtl_bench.data.transforms.RandomScaleCropFlip`, seeded by ``seed``).
    """

    name = "mtan"

    def __init__(
        self,
        root: str | os.PathLike,
        folder: str,
        fields: dict[str, _Field],
        num_classes: int,
        indices: Sequence[int] | None = None,
        augment: bool = False,
        normalize: str | None = None,
        seed: int = 0,
        renormalize_normals: bool = False,
    ):
        if folder not in FOLDERS:
            raise ConfigError(f"{self.name} folder={folder!r} is not valid; expected one of {list(FOLDERS)} (val = official test set)")
        self.normalize = check_normalize(normalize)
        self.root = Path(root).expanduser()
        self.folder = folder
        self.fields = dict(fields)
        self.num_classes = num_classes
        self._base = self.root / folder
        self._layout = self._describe_layout()
        self.num_files = self._check_layout()
        self.image_size = self._check_first_sample()
        self.indices = self._check_indices(indices)
        self.augment = bool(augment)
        self.transform = (
            RandomScaleCropFlip(seed=seed, kinds={t: f.kind for t, f in self.fields.items()}, renormalize_normals=renormalize_normals)
            if self.augment
            else None
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def _describe_layout(self) -> str:
        folders = [_IMAGE.folder, *(f.folder for f in self.fields.values())]
        return ", ".join(f"{self._base / sub}/<i>.npy" for sub in folders) + f" (mtan preprocessed {self.name})"

    def _check_layout(self) -> int:
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} does not exist or is not a folder; expected {self._layout}")
        listings: dict[str, set[int]] = {}
        for field in (_IMAGE, *self.fields.values()):
            directory = self._base / field.folder
            if not directory.is_dir():
                raise DatasetError(f"missing folder {directory}; expected {self._layout}")
            listings[field.folder] = _listing(directory, self._layout)
        images = listings[_IMAGE.folder]
        n = len(images)
        if n == 0:
            raise DatasetError(f"no .npy files in {self._base / _IMAGE.folder}; expected {self._layout}")
        gaps = sorted(set(range(n)) - images)
        if gaps:
            first = self._base / _IMAGE.folder / f"{gaps[0]}.npy"
            raise DatasetError(f"missing {first} ({n} files in image/ but not numbered 0..{n - 1}); expected {self._layout}")
        for sub, found in listings.items():
            missing, extra = sorted(images - found), sorted(found - images)
            if missing:
                raise DatasetError(f"missing {self._base / sub / f'{missing[0]}.npy'} ({len(found)} files in {sub}/, {n} in image/); "
                                   f"expected {self._layout}")
            if extra:
                raise DatasetError(f"unexpected {self._base / sub / f'{extra[0]}.npy'} ({len(found)} files in {sub}/, {n} in image/); "
                                   f"expected {self._layout}")
        return n

    def _open(self, field: _Field, i: int, size: tuple[int, int] | None) -> np.ndarray:
        """Memory-map ``<field>/<i>.npy`` and check its shape and dtype (nothing but the header is read).

        ``size=None`` (sample 0 of ``image/``, which defines the dataset's size) accepts any H×W.
        """
        path = self._base / field.folder / f"{i}.npy"
        trailing = (field.channels,) if field.channels else ()
        expected = "(H, W, 3)" if size is None else str(size + trailing)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DatasetError(f"missing {path}; expected {self._layout}") from None
        except (ValueError, OSError) as e:
            raise DatasetError(f"cannot read {path} as a .npy array ({e}); expected {field.describe(self.num_classes)} "
                               f"of shape {expected}") from None
        ok_shape = isinstance(arr, np.ndarray) and (
            arr.shape == size + trailing if size is not None else (arr.ndim == 3 and arr.shape[2] == 3)
        )
        if not ok_shape or arr.dtype.kind not in field.dtype_kinds:
            got = f"shape {arr.shape} and dtype {arr.dtype}" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}"
            like = "" if field is _IMAGE else f" like {self._base / _IMAGE.folder / f'{i}.npy'}"
            raise DatasetError(f"{path} has {got}; expected {field.describe(self.num_classes)} of shape {expected}{like} ({self.name})")
        return arr

    def _check_first_sample(self) -> tuple[int, int]:
        image = self._open(_IMAGE, 0, None)
        lo, hi = float(image.min()), float(image.max())
        if not (_IMAGE_RANGE[0] <= lo and hi <= _IMAGE_RANGE[1]):
            raise DatasetError(f"{self._base / _IMAGE.folder / '0.npy'} has values in [{lo:g}, {hi:g}]; "
                               f"expected {_IMAGE.describe(self.num_classes)} (images stored as 0..255 must be divided by 255)")
        size = (int(image.shape[0]), int(image.shape[1]))
        for field in self.fields.values():
            self._read(field, 0, size)
        return size

    def _check_indices(self, indices: Sequence[int] | None) -> list[int]:
        if indices is None:
            return list(range(self.num_files))
        out = []
        for i in indices:
            try:
                j = operator.index(i)
            except TypeError:
                raise ConfigError(f"{self.name} indices must be integers, got {i!r}") from None
            if not 0 <= j < self.num_files:
                raise ConfigError(
                    f"{self.name} index {j} is out of range for {self._base} ({self.num_files} samples, valid 0..{self.num_files - 1})"
                )
            out.append(j)
        if not out:
            raise ConfigError(f"{self.name} indices select no sample of {self._base}")
        return out

    def _read(self, field: _Field, i: int, size: tuple[int, int]) -> torch.Tensor:
        """Load one file as a tensor in the contract's layout, checking shape, dtype and values."""
        arr = self._open(field, i, size)
        if field.kind == "label":
            lab = torch.from_numpy(np.array(arr, dtype=np.float32))
            lo, hi = (float(v) for v in torch.aminmax(lab))
            if not (lo >= -1 and hi <= self.num_classes - 1):
                raise DatasetError(f"{self._base / field.folder / f'{i}.npy'} has label values in [{lo:g}, {hi:g}]; "
                                   f"expected -1 (ignore) or class ids 0..{self.num_classes - 1} ({self.name}, {self.num_classes} classes)")
            return lab.long()
        t = torch.from_numpy(np.array(np.moveaxis(arr, -1, 0), dtype=np.float32))
        if field.kind == "depth" and not math.isfinite(float(t.sum())):  # one pass; NaN/inf anywhere make the sum non-finite
            path = self._base / field.folder / f"{i}.npy"
            raise DatasetError(f"{path} contains NaN or infinite depth; expected finite values, 0 = invalid ({self.name})")
        return t

    def __len__(self) -> int:
        return len(self.indices)

    # The three stages of ``__getitem__``, exposed so that wrappers (``mtl_bench.corruptions``) can change
    # the image between them: read (float [0, 1], as stored) -> augment (training only) -> normalise.

    def raw_sample(self, index: int, with_image: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Sample ``index`` as stored: float32 3×H×W image in [0, 1] (``None`` if ``with_image=False``) and targets;
        neither augmented nor normalised."""
        i = self.indices[index]
        image = self._read(_IMAGE, i, self.image_size) if with_image else None
        targets = {task: self._read(field, i, self.image_size) for task, field in self.fields.items()}
        return image, targets

    def augment_sample(self, image: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training augmentation (one random draw) when ``augment=True``; otherwise the inputs unchanged."""
        if self.transform is None:
            return image, targets
        return self.transform(image, targets)

    def info(self) -> dict[str, Any]:
        """Provenance for a run summary."""
        return {
            "format": f"mtan preprocessed {self.name} (.npy)",
            "root": str(self.root),
            "folder": self.folder,
            "samples": len(self),
            "image_size": list(self.image_size),
            "tasks": list(self.tasks),
            "num_classes": self.num_classes,
            "label_folder": self.fields["seg"].folder if "seg" in self.fields else None,
            "augment": self.augment,
            "normalize": self.normalize,
        }


def _select_tasks(dataset: str, tasks: Sequence[str] | None, valid: Sequence[str]) -> list[str]:
    if tasks is None:
        return list(valid)
    names = list(tasks)
    unknown = [t for t in names if t not in valid]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(f"{dataset} tasks {names} are not valid; expected distinct names among {list(valid)}")
    return names


class NYUv2Dataset(MtanNpyDataset):
    """NYUv2 (13-class segmentation, depth, surface normals) in the mtan layout; 288×384 as distributed.

    ``folder="train"`` has 795 samples, ``folder="val"`` the official 654 that every paper reports as test.
    ``tasks`` restricts the targets (and the files read) to a subset of ``("seg", "depth", "normal")``.
    """

    name = "NYUv2"

    def __init__(
        self,
        root: str | os.PathLike,
        folder: str = "train",
        indices: Sequence[int] | None = None,
        augment: bool = False,
        normalize: str | None = None,
        tasks: Sequence[str] | None = None,
        seed: int = 0,
        renormalize_normals: bool = False,
    ):
        specs = {
            "seg": _Field("label", "label", None),
            "depth": _Field("depth", "depth", 1),
            "normal": _Field("normal", "normal", 3),
        }
        fields = {t: specs[t] for t in _select_tasks(self.name, tasks, NYUV2_TASKS)}
        super().__init__(root, folder, fields, NYUV2_NUM_CLASSES, indices, augment, normalize, seed, renormalize_normals)


class CityscapesDataset(MtanNpyDataset):
    """Cityscapes (segmentation, inverse depth) in the mtan layout, 128×256 or 256×512 (inferred from the files).

    ``label_set``: ``"7"`` reads ``label_7/`` (7 classes; FAMO, CAGrad, Nash-MTL), ``"19"`` reads ``label_19/``
    (19 classes), ``"label"`` reads LibMTL's ``label/`` (the 7-class labels under another name).  Integers 7
    and 19 are accepted (YAML parses ``label_set: 7`` as an int).  ``depth`` is the stored inverse depth,
    unchanged (mtan #15, #25).  ``folder="val"`` is the official 500-image set used as test.
    """

    name = "Cityscapes"

    def __init__(
        self,
        root: str | os.PathLike,
        folder: str = "train",
        label_set: str | int = "7",
        indices: Sequence[int] | None = None,
        augment: bool = False,
        normalize: str | None = None,
        tasks: Sequence[str] | None = None,
        seed: int = 0,
    ):
        key = str(label_set)
        if isinstance(label_set, bool) or key not in CITYSCAPES_LABEL_SETS:
            raise ConfigError(f"Cityscapes label_set={label_set!r} is not valid; expected one of {list(CITYSCAPES_LABEL_SETS)}")
        label_folder, num_classes = CITYSCAPES_LABEL_SETS[key]
        self.label_set = key
        specs = {"seg": _Field(label_folder, "label", None), "depth": _Field("depth", "depth", 1)}
        fields = {t: specs[t] for t in _select_tasks(self.name, tasks, CITYSCAPES_TASKS)}
        super().__init__(root, folder, fields, num_classes, indices, augment, normalize, seed)
