"""Tiny datasets in exactly the on-disk formats the real readers consume, for tests and loader benchmarks.

Content is random but valid under the data contract: labels in ``-1..C-1`` with about 10 % ignore pixels,
positive depths with about 10 % zeros (invalid), unit normals with about 5 % all-zero (invalid) pixels,
images in [0, 1]; CelebA gets smooth random JPEGs that decode, the exact 40-name attribute header with
``1``/``-1`` values formatted like the official file, and a partition covering train, val and test.

Layout written by :func:`write_fixtures` (``CelebADataset(root=<root>/celeba)`` reads the torchvision layout,
and so does ``torchvision.datasets.CelebA(root=<root>/celeba)`` but for its MD5 check)::

    <root>/nyuv2/{train,val}/{image,label,depth,normal}/<i>.npy
    <root>/cityscapes/{train,val}/{image,label_7,label_19,label,depth}/<i>.npy
    <root>/celeba/celeba/{img_align_celeba/<id>.jpg, list_attr_celeba.txt, list_eval_partition.txt}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# The header of the official list_attr_celeba.txt, in file order.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling",
    "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
CELEBA_IMAGE_SIZE = (218, 178)  # height, width of the aligned faces


def _labels(rng: np.random.Generator, size: tuple[int, int], num_classes: int, dtype: str) -> np.ndarray:
    lab = rng.integers(0, num_classes, size=size)
    lab[rng.random(size) < 0.1] = -1
    return lab.astype(dtype)


def _depth(rng: np.random.Generator, size: tuple[int, int], low: float, high: float, dtype: str) -> np.ndarray:
    depth = rng.uniform(low, high, size=size + (1,))
    depth[rng.random(size) < 0.1] = 0.0
    return depth.astype(dtype)


def _normals(rng: np.random.Generator, size: tuple[int, int], dtype: str) -> np.ndarray:
    n = rng.normal(size=size + (3,))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[rng.random(size) < 0.05] = 0.0
    return n.astype(dtype)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def write_nyuv2_fixture(
    root: str | os.PathLike, n_train: int = 4, n_test: int = 2, size: Sequence[int] = (288, 384), seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write ``<root>/{train,val}/{image,label,depth,normal}/<i>.npy`` (mtan NYUv2 layout); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    hw = (int(size[0]), int(size[1]))
    for folder, n in (("train", n_train), ("val", n_test)):
        for i in range(n):
            _save(root / folder / "image" / f"{i}.npy", rng.random(hw + (3,)).astype(dtype))
            _save(root / folder / "label" / f"{i}.npy", _labels(rng, hw, 13, dtype))
            _save(root / folder / "depth" / f"{i}.npy", _depth(rng, hw, 0.5, 10.0, dtype))
            _save(root / folder / "normal" / f"{i}.npy", _normals(rng, hw, dtype))
    return root


def write_cityscapes_fixture(
    root: str | os.PathLike, n_train: int = 4, n_test: int = 2, size: Sequence[int] = (128, 256), seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write ``<root>/{train,val}/{image,label_7,label_19,label,depth}/<i>.npy``; ``label/`` copies ``label_7/``
    as in LibMTL's copy of the data; depth is inverse depth in [0.01, 0.49] with zeros.  Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    hw = (int(size[0]), int(size[1]))
    for folder, n in (("train", n_train), ("val", n_test)):
        for i in range(n):
            label_7 = _labels(rng, hw, 7, dtype)
            _save(root / folder / "image" / f"{i}.npy", rng.random(hw + (3,)).astype(dtype))
            _save(root / folder / "label_7" / f"{i}.npy", label_7)
            _save(root / folder / "label" / f"{i}.npy", label_7)
            _save(root / folder / "label_19" / f"{i}.npy", _labels(rng, hw, 19, dtype))
            _save(root / folder / "depth" / f"{i}.npy", _depth(rng, hw, 0.01, 0.49, dtype))
    return root


def _face(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random RGB image (JPEG-friendly, unlike white noise)."""
    coarse = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size[1], size[0]), Image.BICUBIC)


def write_celeba_fixture(
    root: str | os.PathLike, n: int = 12, seed: int = 0, image_size: Sequence[int] = CELEBA_IMAGE_SIZE,
) -> Path:
    """Write ``<root>/celeba/{img_align_celeba/<id>.jpg, list_attr_celeba.txt, list_eval_partition.txt}``.

    Images ``000001.jpg..`` in order; the first 60 % (at least one) are train, the next 20 % val, the rest
    test, contiguous like the official partition.  Returns ``root`` (the torchvision-style root).
    """
    if n < 3:
        raise ValueError(f"a CelebA fixture needs n >= 3 images to cover train/val/test, got {n}")
    base = Path(root) / "celeba"
    images = base / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hw = (int(image_size[0]), int(image_size[1]))
    n_train = max(1, int(0.6 * n))
    n_val = max(1, int(0.2 * n))
    attr_lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    part_lines = []
    for k in range(n):
        name = f"{k + 1:06d}.jpg"
        _face(rng, hw).save(images / name, "JPEG", quality=90)
        values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
        attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
        part_lines.append(f"{name} {0 if k < n_train else 1 if k < n_train + n_val else 2}")
    (base / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n", encoding="utf-8")
    (base / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n", encoding="utf-8")
    return Path(root)


CELEBA_DAMAGE = ("text", "empty", "truncated")


def damage_celeba_image(root: str | os.PathLike, image_id: str, how: str) -> Path:
    """Replace image ``image_id`` of a fixture written by :func:`write_celeba_fixture` (``root`` as given to it) by
    a broken file, the faults a download or a disk can leave: ``text`` (an HTML error page saved as the JPEG),
    ``empty`` (0 bytes), ``truncated`` (an interrupted download: the JPEG cut 64 bytes into its image data, so
    its headers parse and decoding fails).  Returns the file's path."""
    path = Path(root) / "celeba" / "img_align_celeba" / image_id
    if how not in CELEBA_DAMAGE:
        raise ValueError(f"how={how!r}; choose one of {list(CELEBA_DAMAGE)}")
    if how == "text":
        path.write_text("<html><body>429 Too Many Requests</body></html>\n", encoding="utf-8")
    elif how == "empty":
        path.write_bytes(b"")
    else:
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"\xff\xda") + 64])  # SOS marker: the entropy-coded data follows
    return path


def write_fixtures(
    root: str | os.PathLike,
    n_train: int = 4,
    n_test: int = 2,
    nyuv2_size: Sequence[int] = (288, 384),
    cityscapes_size: Sequence[int] = (128, 256),
    celeba_n: int = 12,
    seed: int = 0,
    dtype: str = "float32",
) -> dict[str, Path]:
    """Write all three fixtures under ``root``; returns the dataset roots ``{"nyuv2", "cityscapes", "celeba"}``."""
    root = Path(root)
    return {
        "nyuv2": write_nyuv2_fixture(root / "nyuv2", n_train, n_test, nyuv2_size, seed, dtype),
        "cityscapes": write_cityscapes_fixture(root / "cityscapes", n_train, n_test, cityscapes_size, seed + 1, dtype),
        "celeba": write_celeba_fixture(root / "celeba", celeba_n, seed + 2),
    }


MNIST_FILES = {  # source split -> (images file, labels file), torchvision's names under <root>/MNIST/raw
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a ``uint8`` array as an IDX file (magic ``0x0800 | ndim``: 2051 for N×rows×cols images, 2049 for N
    labels; big-endian dimensions, then the bytes); gzip-compressed when ``path`` ends in ``.gz``.  Returns ``path``."""
    import gzip

    path = Path(path)
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header + arr.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist_fixture(
    root: str | os.PathLike, n_train: int = 64, n_test: int = 32, seed: int = 0, compress: bool = False,
) -> Path:
    """Write ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (torchvision's MNIST layout):
    28×28 ``uint8`` "digits" (random strokes inside the central 20×20 box, as MNIST centres its digits, each with
    a 255 pixel) and labels 0..9.  Returns ``root``."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        box = rng.integers(0, 256, size=(n, 20, 20)) * (rng.random((n, 20, 20)) < 0.3)
        box[:, 10, 10] = 255
        images[:, 4:24, 4:24] = box
        image_file, label_file = MNIST_FILES[split]
        write_idx(raw / f"{image_file}{suffix}", images)
        write_idx(raw / f"{label_file}{suffix}", rng.integers(0, 10, size=n).astype(np.uint8))
    return Path(root)


QM9_ATOMS = (1, 6, 7, 8, 9)  # H, C, N, O, F: PyG's atom types 0..4


def _qm9_molecule(rng: np.random.Generator, i: int) -> dict:
    """One random molecule as PyG's QM9 stores it: a random tree of bonds (both directions, sorted by
    ``row * n + col``), 11 atom features (type one-hot, atomic number, aromatic, sp/sp2/sp3, number of H neighbours),
    positions, 1×19 targets."""
    import torch

    n = int(rng.integers(3, 10))
    types = rng.integers(0, 5, size=n)
    parent = [int(rng.integers(0, j)) for j in range(1, n)]
    pairs = [(j + 1, p) for j, p in enumerate(parent)] + [(p, j + 1) for j, p in enumerate(parent)]
    bond_type = {frozenset(e): int(rng.integers(0, 4)) for e in pairs}
    pairs.sort(key=lambda e: e[0] * n + e[1])
    edge_index = np.array(pairs, dtype=np.int64).T
    edge_attr = np.eye(4, dtype=np.float32)[[bond_type[frozenset(e)] for e in pairs]]
    hybrid = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=n)]
    num_hs = np.bincount(edge_index[1][types[edge_index[0]] == 0], minlength=n).astype(np.float32)
    x = np.concatenate([np.eye(5, dtype=np.float32)[types], np.array(QM9_ATOMS, dtype=np.float32)[types, None],
                        (rng.random((n, 1)) < 0.2).astype(np.float32), hybrid, num_hs[:, None]], axis=1)
    y = rng.normal(np.linspace(-5.0, 5.0, 19), np.linspace(0.5, 3.0, 19)).astype(np.float32)[None]
    return {"x": torch.from_numpy(x), "edge_index": torch.from_numpy(edge_index), "edge_attr": torch.from_numpy(edge_attr),
            "y": torch.from_numpy(y), "pos": torch.from_numpy(rng.normal(0.0, 1.5, (n, 3)).astype(np.float32)),
            "z": torch.from_numpy(np.array(QM9_ATOMS)[types]), "name": f"gdb_{i + 1}", "idx": i}


def write_qm9_fixture(root: str | os.PathLike, n: int = 40, seed: int = 0, layout: str = "processed") -> Path:
    """Write ``n`` random molecules in PyTorch Geometric's QM9 format (needs torch_geometric): ``layout="processed"``
    writes ``<root>/processed/data_v3.pt`` with PyG's own ``InMemoryDataset.save`` (plus its ``pre_transform.pt`` and
    ``pre_filter.pt``), as ``torch_geometric.datasets.QM9(root)`` leaves it; ``layout="raw"`` writes
    ``<root>/raw/qm9_v3.pt``, the list of per-molecule dicts of PyG's pre-processed download.  Returns ``root``."""
    import torch
    from torch_geometric.data import Data, InMemoryDataset

    rng = np.random.default_rng(seed)
    molecules = [_qm9_molecule(rng, i) for i in range(n)]
    root = Path(root)
    if layout == "raw":
        (root / "raw").mkdir(parents=True, exist_ok=True)
        torch.save(molecules, root / "raw" / "qm9_v3.pt")
    elif layout == "processed":
        (root / "processed").mkdir(parents=True, exist_ok=True)
        InMemoryDataset.save([Data(**m) for m in molecules], str(root / "processed" / "data_v3.pt"))
        for name in ("pre_transform.pt", "pre_filter.pt"):
            torch.save("None", root / "processed" / name)
    else:
        raise ValueError(f"layout={layout!r}; choose 'processed' or 'raw'")
    return root
