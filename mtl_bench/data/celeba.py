"""CelebA (Liu et al., ICCV 2015) as the 40-attribute multi-task benchmark, read from the official release.

Accepted layouts (the first whose attribute file exists wins)::

    <root>/celeba/{list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/<id>.jpg}   torchvision
    <root>/{list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/<id>.jpg}          root = that celeba/ folder
    <root>/{Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt, Img/img_align_celeba/}    Google Drive release (FAMO)

``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names, then one line per
image: ``<id>.jpg`` and 40 values ``1``/``-1``.  ``list_eval_partition.txt``: ``<id>.jpg 0|1|2`` for
train/val/test (the official 162,770 / 19,867 / 19,962 split).  We parse these ourselves rather than use
``torchvision.datasets.CelebA``, whose constructor insists on the MD5 sums of all five annotation files.

Samples follow FAMO (``experiments/celeba/data.py``): the aligned 178×218 JPEG is decoded with PIL,
converted to RGB and resized to ``size`` (default 64×64, aspect ratio not kept) with PIL's bilinear filter —
exactly what ``torchvision.transforms.Resize`` does on a PIL image — then scaled to float32 in [0, 1] like
``ToTensor``; attributes map −1 → 0, +1 → 1 and each is a float32 tensor of shape (1,).  So the default
path is bit-identical to FAMO's inputs.  Deviations, opt-in: ``normalize="imagenet"``; ``fast_decode=True``
lets the JPEG decoder downscale in the DCT domain (PIL ``draft``, here 2× for 64×64 outputs) before the
resize, about 1.7× faster with pixel values that differ from FAMO's by a few levels out of 255.

Malformed data fails when the split is built, as far as it can be checked cheaply: every image the split
lists must exist and start with the JPEG magic bytes ``FF D8 FF`` (only the first three bytes of each file
are read, on a thread pool; per 20,000 files on a 2-core machine: about 0.25 s from the page cache and 1 s
from a cold disk, where 8 threads overlap the latency, against 3.2 s for one thread — so 2.5 s to 10 s for
CelebA's 202,599 images).  A file whose header is fine but whose body is corrupt is found
when it is decoded: :class:`ImageFileError`, a one-line :class:`~mtl_bench.errors.DatasetError` naming the
file, also when raised in a DataLoader worker (``trainer.num_workers > 0``).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtl_bench.data.transforms import StagedImages, check_normalize
from mtl_bench.errors import ConfigError, DatasetError

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
CELEBA_SPLITS = {"train": 0, "val": 1, "test": 2}
JPEG_MAGIC = b"\xff\xd8\xff"  # SOI marker and the first byte of the next marker: every JPEG/JFIF/Exif file starts so
HEADER_THREADS = 8
HEADER_CHUNK = 1024  # files per task: one future per file would cost more than reading the file's first bytes


class ImageFileError(DatasetError):
    """A listed image that cannot be loaded (corrupt, or removed after the split was built): one line naming the
    file, also when raised in a DataLoader worker (:func:`mtl_bench.errors.worker_message`)."""


@dataclass(frozen=True)
class CelebAFiles:
    """Where one CelebA copy keeps its attribute file, partition file and aligned images."""

    attributes: Path
    partition: Path
    images: Path


def _layout(root: Path) -> str:
    return (
        f"{root}/celeba/{{{ATTR_FILE}, {PARTITION_FILE}, {IMAGE_DIR}/<id>.jpg}} (torchvision layout; the celeba/ folder "
        f"itself may be given as root) or {root}/{{Anno/{ATTR_FILE}, Eval/{PARTITION_FILE}, Img/{IMAGE_DIR}/}} (Google Drive release)"
    )


def find_celeba(root: str | os.PathLike) -> CelebAFiles:
    """Locate the CelebA files under ``root`` (see the module docstring for the accepted layouts)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"CelebA root {base} does not exist or is not a folder; expected {_layout(base)}")
    candidates = [
        CelebAFiles(base / "celeba" / ATTR_FILE, base / "celeba" / PARTITION_FILE, base / "celeba" / IMAGE_DIR),
        CelebAFiles(base / ATTR_FILE, base / PARTITION_FILE, base / IMAGE_DIR),
        CelebAFiles(base / "Anno" / ATTR_FILE, base / "Eval" / PARTITION_FILE, base / "Img" / IMAGE_DIR),
    ]
    for files in candidates:
        if files.attributes.is_file():
            if not files.partition.is_file():
                raise DatasetError(f"found {files.attributes} but not {files.partition}; expected {_layout(base)}")
            if not files.images.is_dir():
                raise DatasetError(f"found {files.attributes} but not the image folder {files.images}; expected {_layout(base)}")
            return files
    raise DatasetError(f"no {ATTR_FILE} under {base}; expected {_layout(base)}")


def _read_header(path: Path, line: bytes, count_line: bytes) -> tuple[int, list[str]]:
    try:
        count = int(count_line)
    except ValueError:
        raise DatasetError(f"{path} line 1 is {count_line[:60]!r}; expected the number of images") from None
    names = line.decode("utf-8", errors="replace").split()
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"{path} line 2 must list distinct attribute names, got {line[:80]!r}")
    return count, names


def celeba_attribute_names(root: str | os.PathLike) -> list[str]:
    """The attribute names, in file order, from line 2 of ``list_attr_celeba.txt`` (reads two lines only)."""
    path = find_celeba(root).attributes
    with open(path, "rb") as f:
        count_line, names_line = f.readline(), f.readline()
    return _read_header(path, names_line, count_line)[1]


def _bad_row(path: Path, rows: Sequence[bytes], num_attributes: int) -> DatasetError:
    """Locate the first malformed attribute row (slow path, only taken when the fast checks failed)."""
    for k, row in enumerate(rows):
        tokens = row.split()
        if len(tokens) != num_attributes + 1 or any(t not in (b"1", b"-1") for t in tokens[1:]):
            return DatasetError(f"{path} line {k + 3} is {row[:80]!r}; expected '<id>.jpg' and {num_attributes} values of 1 or -1")
    return DatasetError(f"{path} has malformed attribute rows; expected '<id>.jpg' and {num_attributes} values of 1 or -1 per line")


def _parse_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(attribute names, image ids, uint8 labels n×A in {0, 1})``; vectorised over the 200k rows."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    if len(lines) < 3:
        raise DatasetError(f"{path} has {len(lines)} non-empty lines; expected a count, the attribute names and one line per image")
    count, names = _read_header(path, lines[1], lines[0])
    rows = lines[2:]
    if len(rows) != count:
        raise DatasetError(f"{path} declares {count} images on line 1 but lists {len(rows)}")
    ids, values = [], []
    for row in rows:
        parts = row.split(None, 1)
        ids.append(parts[0].decode("utf-8", errors="replace"))
        values.append(parts[1] if len(parts) == 2 else b"")
    a = len(names)
    blob = np.frombuffer(b" ".join(values), dtype=np.uint8)
    ones = np.flatnonzero(blob == ord("1"))
    minus = np.flatnonzero(blob == ord("-"))
    space = (blob == ord(" ")) | (blob == ord("\t"))
    ok = (
        bool(np.all(space | (blob == ord("1")) | (blob == ord("-"))))  # only '1', '-' and blanks
        and len(ones) == a * len(rows)
        and bool(np.all(blob[np.minimum(minus + 1, len(blob) - 1)] == ord("1")))  # '-' is followed by '1'
        and bool(np.all(space[ones[ones + 1 < len(blob)] + 1]))  # '1' ends a token ('11' is no value)
        and bool(np.all(space[minus[minus > 0] - 1]))  # '-' starts a token
        and all(v.count(b"1") == a for v in values)
    )
    if not ok:
        raise _bad_row(path, rows, a)
    positive = blob[np.maximum(ones - 1, 0)] != ord("-")
    return names, ids, positive.reshape(len(rows), a).astype(np.uint8)


def _parse_partition(path: Path) -> tuple[list[str], np.ndarray]:
    ids, codes = [], []
    for k, line in enumerate(path.read_bytes().splitlines()):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in (b"0", b"1", b"2"):
            raise DatasetError(f"{path} line {k + 1} is {line[:80]!r}; expected '<id>.jpg 0|1|2' (train/val/test)")
        ids.append(parts[0].decode("utf-8", errors="replace"))
        codes.append(int(parts[1]))
    return ids, np.asarray(codes, dtype=np.int8)


@functools.lru_cache(maxsize=2)
def _annotations(attr_path: Path, part_path: Path, stamp: tuple[int, ...]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Parsed and cross-checked annotations, cached per file version (``stamp``) so splits share one parse."""
    names, ids, labels = _parse_attributes(attr_path)
    part_ids, part_codes = _parse_partition(part_path)
    if part_ids == ids:
        codes = part_codes
    else:
        lookup = dict(zip(part_ids, part_codes.tolist()))
        missing = [i for i in ids if i not in lookup]
        if missing:
            raise DatasetError(f"{part_path} has no entry for {missing[0]} (and {len(missing) - 1} more images of {attr_path})")
        if len(lookup) != len(ids):
            raise DatasetError(f"{part_path} lists {len(lookup)} images but {attr_path} has {len(ids)}; expected the same images")
        codes = np.asarray([lookup[i] for i in ids], dtype=np.int8)
    return names, ids, labels, codes


def _read_heads(paths: Sequence[str]) -> list[bytes | OSError]:
    """The first three bytes of each file, or the ``OSError`` reading it raised (``FileNotFoundError`` if absent)."""
    heads: list[bytes | OSError] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                heads.append(os.read(fd, len(JPEG_MAGIC)))
            finally:
                os.close(fd)
        except OSError as e:
            heads.append(e)
    return heads


def _stamp(*paths: Path) -> tuple[int, ...]:
    out: list[int] = []
    for p in paths:
        st = p.stat()
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``: an int means a square; any non-string sequence (also a Hydra ListConfig) a pair."""
    if isinstance(size, int) and not isinstance(size, bool):
        pair: tuple = (size, size)
    else:
        pair = tuple(size) if isinstance(size, Sequence) and not isinstance(size, str) else ()
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair):
        raise ConfigError(f"CelebA size={size!r} is not valid; expected a positive int or a pair (height, width)")
    return int(pair[0]), int(pair[1])


class CelebADataset(StagedImages):
    """One official split of CelebA with the selected attributes as binary tasks (see the module docstring).

    ``attributes=None`` selects all 40 in file order; a list selects (and orders) a subset by name.
    A sample is ``(image float32 3×H×W, {attribute: float32 tensor of shape (1,) in {0., 1.}})``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        attributes: Sequence[str] | None = None,
        size: int | Sequence[int] = 64,
        normalize: str | None = None,
        fast_decode: bool = False,
    ):
        if split not in CELEBA_SPLITS:
            raise ConfigError(f"CelebA split={split!r} is not valid; expected one of {list(CELEBA_SPLITS)}")
        self.size = _check_size(size)
        self.normalize = check_normalize(normalize)
        self.fast_decode = bool(fast_decode)
        self.split = split
        self.root = Path(root).expanduser()
        self.files = find_celeba(root)
        attr, part = self.files.attributes, self.files.partition
        names, ids, labels, codes = _annotations(attr, part, _stamp(attr, part))
        if attributes is None:
            selected = list(names)
        else:
            selected = list(attributes)
            unknown = [a for a in selected if a not in names]
            if unknown or not selected or len(set(selected)) != len(selected):
                raise ConfigError(f"CelebA attributes {selected} are not valid (unknown: {unknown}); expected distinct names among {names}")
        self.attributes = selected
        rows = np.flatnonzero(codes == CELEBA_SPLITS[split])
        if len(rows) == 0:
            raise DatasetError(f"{self.files.partition} assigns no image to split '{split}' (code {CELEBA_SPLITS[split]})")
        self.ids = [ids[k] for k in rows]
        columns = [names.index(a) for a in selected]
        self.labels = np.ascontiguousarray(labels[rows][:, columns])
        self._check_images()

    def _check_images(self) -> None:
        """Every listed image of the split exists, is readable and starts with the JPEG magic bytes (reads the
        first three bytes of each file, on a thread pool); else one ``DatasetError`` for the first bad file,
        with the number of bad files of the split."""
        paths = [str(self.files.images / i) for i in self.ids]
        chunks = [paths[k : k + HEADER_CHUNK] for k in range(0, len(paths), HEADER_CHUNK)]
        if len(chunks) > 1:
            with ThreadPoolExecutor(min(HEADER_THREADS, len(chunks))) as pool:
                heads = [h for chunk in pool.map(_read_heads, chunks) for h in chunk]
        else:
            heads = [h for chunk in chunks for h in _read_heads(chunk)]
        listed = f"the {len(paths)} '{self.split}' images listed in {self.files.attributes}"
        missing = [p for p, h in zip(paths, heads) if isinstance(h, FileNotFoundError)]
        if missing:
            raise DatasetError(f"missing {missing[0]} ({len(missing)} of {listed} are absent); expected {_layout(self.root)}")
        unreadable = [(p, h) for p, h in zip(paths, heads) if isinstance(h, OSError)]
        if unreadable:
            path, e = unreadable[0]
            raise DatasetError(f"cannot read {path} ({e.strerror or e}; {len(unreadable)} of {listed} cannot be read); "
                               f"expected {_layout(self.root)}")
        bad = [(p, h) for p, h in zip(paths, heads) if h != JPEG_MAGIC]
        if bad:
            path, head = bad[0]
            what = "is empty" if not head else f"starts with {head.hex(' ').upper()}"
            raise DatasetError(f"{path} is not a JPEG: it {what}, a JPEG starts with FF D8 FF ({len(bad)} of {listed} are "
                               f"not JPEGs); expected {_layout(self.root)}")

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> torch.Tensor:
        """Decode and resize image ``index`` to a float32 3×H×W tensor in [0, 1] (before normalisation)."""
        path = self.files.images / self.ids[index]
        height, width = self.size
        try:
            with Image.open(path) as img:
                if self.fast_decode:
                    img.draft("RGB", (width, height))
                pixels = np.array(img.convert("RGB").resize((width, height), Image.BILINEAR))
        except FileNotFoundError:
            raise ImageFileError(f"missing {path} (listed in {self.files.attributes}; it existed when the split was built)") from None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageFileError(f"cannot decode {path} as an image ({' '.join(str(e).split())}); expected a JPEG of the "
                                   "aligned CelebA faces (the file is corrupt: download it again)") from None
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous().float().div(255)

    # The stages of ``__getitem__`` (read -> augment -> normalise), exposed for wrappers such as
    # ``mtl_bench.corruptions`` that change the image before normalisation.  CelebA has no augmentation.

    def raw_sample(self, index: int, with_image: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Sample ``index`` before normalisation: float32 3×H×W image in [0, 1] (exactly k/255; ``None`` if
        ``with_image=False``) and the attribute targets."""
        image = self.load_image(index) if with_image else None
        row = torch.from_numpy(self.labels[index].astype(np.float32))
        return image, {a: row[k : k + 1] for k, a in enumerate(self.attributes)}

    def info(self) -> dict[str, Any]:
        """Provenance for a run summary."""
        return {
            "format": "CelebA official release (aligned JPEGs, list_attr_celeba.txt, list_eval_partition.txt)",
            "root": str(self.files.attributes.parent),
            "split": self.split,
            "samples": len(self),
            "image_size": list(self.size),
            "attributes": list(self.attributes),
            "normalize": self.normalize,
            "fast_decode": self.fast_decode,
        }
