"""Procedurally generated image scenes with dense labels: a CPU-sized stand-in for NYUv2/Cityscapes in
corruption-robustness studies (Elich et al.'s transferability protocol) where the real data are unavailable.

Scene recipe (one image, H×W, everything drawn from the image's own ``numpy`` generator; depths in "metres",
NYUv2-like):

1. **Background**: a slanted depth plane ``z(u, v) = z0 + g·(u, v)`` over centred pixel coordinates
   ``u, v ∈ (−½, ½)`` with ``z0 ~ U(2.8, 3.4)`` and a random direction ``g`` of magnitude ``U(0, 0.8)`` (every
   background pixel lies in ``[2.23, 3.97]``); its colour is a smooth gradient between two greyish random colours
   (a common grey level ``U(0.2, 0.8)`` with per-channel tints of ±0.1) along a random direction, plus mild texture
   (a coarse noise field on 8-pixel cells, bilinearly upsampled, and a per-pixel one).
2. **Objects**: ``U{min_objects..max_objects}`` shapes of the configured classes (default ``disc``, ``square``,
   ``triangle``, ``ring``; ``cross`` is also available), each a *fronto-parallel* plane at its own depth
   ``z_k ~ U(0.8, 2)``, drawn far to near (so occlusion by draw order agrees with depth).  Apparent size
   follows perspective, ``radius = 0.25 · min(H, W) / z_k · U(0.85, 1.15)`` (≈ 20 px at z = 0.8, ≈ 8 px at
   z = 2 for 64×64), random position (centre in the middle 80 % of each axis, so shapes may be cut by the border),
   rotation and a saturated random colour (HSV, s, v ∈ [0.6, 1]).  Rings have a hole (radius ½) through which
   what lies behind shows.  About 22 % of the pixels belong to objects (default settings).
3. **Aerial perspective**: every pixel is blended towards a light haze colour by ``1 − exp(−z / 4)`` (its own
   depth), which also dims the contrast of far texture; with the size cue it makes depth inferable from the
   image.  Then sensor noise (σ = 0.02) and quantisation to ``uint8``.

Tasks (the same task objects, losses and metrics as NYUv2's; see :mod:`mtl_bench.task_library`):

* ``seg`` — per-pixel class, ``C + 1`` classes: 0 = background, ``k`` = the ``k``-th shape of ``shapes``
  (int64 H×W; no pixel is ignored, but the task keeps NYUv2's ``ignore_index = −1`` convention); mIoU, pixel acc.
* ``depth`` — float32 1×H×W, the depth of the visible surface (object plane or background plane), always > 0
  (every pixel valid under the ``gt > 0`` rule); abs/rel error.
* optional ``has_<shape>`` — binary presence attributes (float32 (1,), 1. when at least one pixel of that class is
  visible), CelebA-style; they need a pooled encoder and linear heads (``backbone=test_resnet_pool
  heads=linear dataset.tasks=[has_disc,...]``) because no head pools a dense feature map.  Default tasks:
  ``[seg, depth]`` (a dense seg + depth pair, like Cityscapes).

Determinism: sample ``i`` of split ``s`` is rendered from ``np.random.default_rng(SeedSequence([seed, s, i]))``
(``s`` = 0, 1, 2 for train/val/test), so a split's contents depend only on ``(seed, generator parameters, i)``:
never on generation order, on the other splits' sizes or on the training seed.  Images are stored as ``uint8``,
so the float view ``x / 255`` round-trips exactly through the corruption package's ``uint8`` conversion.

Learnability (CPU, 2 cores, defaults, ``trainer.batch_size=16``, Adam 1e-3, the dataset config's default
``backbone=test_resnet heads=conv``): after 3 epochs (96 steps, ~2 s per epoch) test mIoU ≈ 0.34 (all-background
predictor 0.155) and depth abs_err ≈ 0.38 / rel_err ≈ 0.18 (best constant 0.56 / 0.42; an oracle predicting one
constant for objects and one for background, given the true segmentation, 0.20).  The trainer's default batch of
128 gives only 4 steps per epoch on 512 images: use small batches for quick studies.

A split implements the staged-sample protocol of :mod:`mtl_bench.corruptions.datasets`
(``raw_sample`` → ``augment_sample`` → ``normalize_sample``, chained by ``__getitem__``), so
``CorruptedDataset`` / ``RandomlyCorruptedDataset`` wrap it unchanged.
"""

from __future__ import annotations

import colorsys
import hashlib
import operator
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mtl_bench.data.base import Benchmark
from mtl_bench.data import transforms
from mtl_bench.data.transforms import RandomScaleCropFlip, StagedImages
from mtl_bench.errors import ConfigError
from mtl_bench.task_library import attribute_task, depth_task, segmentation_task
from mtl_bench.tasks import Task

SHAPES = ("disc", "square", "triangle", "ring", "cross")
DEFAULT_SHAPES = ("disc", "square", "triangle", "ring")
DENSE_TASKS = ("seg", "depth")
DEFAULT_TASKS = ("seg", "depth")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
NORMALIZATIONS = (*transforms.NORMALIZATIONS, "dataset")  # plus per-channel statistics of the training split
MIN_SIDE = 32
MAX_OBJECTS = 16

# Scene constants (see the module docstring); changing one changes every dataset, so they are recorded in ``info``.
OBJECT_DEPTH = (0.8, 2.0)
BACKGROUND_DEPTH = (2.8, 3.4)  # z0 of the background plane
BACKGROUND_SLOPE = 0.8  # max |g|; |g·(u, v)| <= |g| / sqrt(2), so background depth stays in [2.23, 3.97]
SIZE_AT_UNIT_DEPTH = 0.25  # apparent radius / min(H, W) at depth 1
SIZE_JITTER = (0.85, 1.15)
RING_HOLE = 0.5
BACKGROUND_TINT = 0.1  # per-channel offset of the two background colours from a common grey level
HAZE_COLOUR = (0.78, 0.80, 0.84)
HAZE_DISTANCE = 4.0
TEXTURE_COARSE = 0.06  # std of the coarse background texture (cells of 8 px)
TEXTURE_FINE = 0.03  # std of the fine background texture
SENSOR_NOISE = 0.02
CONSTANTS = {
    "object_depth": list(OBJECT_DEPTH), "background_depth": list(BACKGROUND_DEPTH), "background_slope": BACKGROUND_SLOPE,
    "size_at_unit_depth": SIZE_AT_UNIT_DEPTH, "size_jitter": list(SIZE_JITTER), "ring_hole": RING_HOLE,
    "background_tint": BACKGROUND_TINT, "haze_colour": list(HAZE_COLOUR), "haze_distance": HAZE_DISTANCE, "texture_coarse": TEXTURE_COARSE,
    "texture_fine": TEXTURE_FINE, "sensor_noise": SENSOR_NOISE,
}


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its shape, ``seg`` class id (1-based), depth plane, centre (row, col, pixels), radius
    (pixels), rotation (radians) and RGB colour before haze."""

    shape: str
    label: int
    depth: float
    center: tuple[float, float]
    radius: float
    angle: float
    colour: tuple[float, float, float]


@dataclass(frozen=True)
class Scene:
    """A rendered sample: ``image`` uint8 H×W×3, ``seg`` uint8 H×W (0 = background), ``depth`` float32 H×W,
    ``instance`` int8 H×W (index into ``objects`` of the visible object, −1 = background)."""

    image: np.ndarray
    seg: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    objects: tuple[SceneObject, ...]


def _check_int(value: Any, key: str, minimum: int, maximum: int | None = None) -> int:
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


def _check_names(key: str, names: Sequence[str] | None, default: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    """``dataset.<key>``: a non-empty list of distinct names among ``valid``; ``None`` means ``default``."""
    names = tuple(default if names is None else names)
    if not names or len(set(names)) != len(names) or any(n not in valid for n in names):
        raise ConfigError(f"dataset.{key}={list(names)} is invalid; expected distinct names among {list(valid)}")
    return names


def check_shapes(shapes: Sequence[str] | None) -> tuple[str, ...]:
    return _check_names("shapes", shapes, DEFAULT_SHAPES, SHAPES)


def task_names(shapes: Sequence[str]) -> tuple[str, ...]:
    """Every task a dataset with these shape classes offers: ``seg``, ``depth``, ``has_<shape>``..."""
    return (*DENSE_TASKS, *(f"has_{s}" for s in shapes))


def check_tasks(tasks: Sequence[str] | None, shapes: Sequence[str]) -> tuple[str, ...]:
    return _check_names("tasks", tasks, DEFAULT_TASKS, task_names(shapes))


@dataclass(frozen=True)
class SceneParams:
    """The generator's parameters (validated); with ``seed`` and the sample index they determine a sample."""

    height: int = 64
    width: int = 64
    shapes: tuple[str, ...] = DEFAULT_SHAPES
    min_objects: int = 1
    max_objects: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "height", _check_int(self.height, "height", MIN_SIDE))
        object.__setattr__(self, "width", _check_int(self.width, "width", MIN_SIDE))
        object.__setattr__(self, "shapes", check_shapes(self.shapes))
        object.__setattr__(self, "min_objects", _check_int(self.min_objects, "min_objects", 1, MAX_OBJECTS))
        object.__setattr__(self, "max_objects", _check_int(self.max_objects, "max_objects", self.min_objects, MAX_OBJECTS))

    @property
    def num_classes(self) -> int:
        """Segmentation classes: the shapes plus background."""
        return len(self.shapes) + 1


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """n_out × n_in linear-interpolation weights from ``n_in`` grid nodes spanning the axis to ``n_out`` pixel centres."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Pixels (offsets ``dy, dx`` from the centre) covered by ``shape`` of ``radius`` rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if shape == "disc":
        return u * u + v * v <= radius * radius
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= radius * radius) & (d2 >= (RING_HOLE * radius) ** 2)
    if shape == "square":  # half side sqrt(pi)/2 · r: the area of the disc of radius r
        a = 0.886 * radius
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    if shape == "triangle":  # equilateral, circumradius 1.2 r: inside the three edges (inradius = half of it)
        big = 1.2 * radius
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            phi = np.pi / 2 + np.pi / 3 + k * 2 * np.pi / 3  # edge normals point away from the vertices
            inside &= u * np.cos(phi) + v * np.sin(phi) <= big / 2
        return inside
    if shape == "cross":
        arm, half = radius, 0.35 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= half)) | ((np.abs(u) <= half) & (np.abs(v) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(rng: np.random.Generator, params: SceneParams) -> Scene:
    """Render one sample from ``rng`` (see the module docstring for the recipe)."""
    h, w = params.height, params.width
    rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float64)[None, :] + 0.5
    u, v = cols / w - 0.5, rows / h - 0.5

    # background: slanted plane, colour gradient, coarse + fine texture
    z0 = rng.uniform(*BACKGROUND_DEPTH)
    theta, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0, BACKGROUND_SLOPE)
    depth = (z0 + slope * (np.cos(theta) * u + np.sin(theta) * v)).astype(np.float32)
    c1, c2 = (rng.uniform(0.2, 0.8) + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=3) for _ in range(2))  # greyish
    phi = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + np.cos(phi) * u + np.sin(phi) * v, 0.0, 1.0)[..., None]
    colour = (1.0 - t) * c1 + t * c2
    gh, gw = max(2, h // 8 + 1), max(2, w // 8 + 1)
    coarse = _interp_matrix(h, gh) @ rng.normal(0.0, TEXTURE_COARSE, size=(gh, gw)) @ _interp_matrix(w, gw).T
    colour = colour + coarse[..., None] + rng.normal(0.0, TEXTURE_FINE, size=(h, w, 3))

    # objects: far to near, so later (nearer) objects occlude earlier ones
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    depths = np.sort(rng.uniform(*OBJECT_DEPTH, size=n))[::-1]
    seg = np.zeros((h, w), dtype=np.uint8)
    instance = np.full((h, w), -1, dtype=np.int8)
    objects = []
    side = min(h, w)
    for k in range(n):
        z = float(np.float32(depths[k]))  # exactly the value stored in the depth map
        cls = int(rng.integers(len(params.shapes)))
        radius = SIZE_AT_UNIT_DEPTH * side / z * rng.uniform(*SIZE_JITTER)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        angle = rng.uniform(0, 2 * np.pi)
        rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))  # saturated
        mask = _shape_mask(params.shapes[cls], rows - cy, cols - cx, radius, angle)
        colour[mask] = rgb
        depth[mask] = z
        seg[mask] = cls + 1
        instance[mask] = k
        objects.append(SceneObject(params.shapes[cls], cls + 1, z, (float(cy), float(cx)), float(radius), float(angle),
                                   tuple(float(c) for c in rgb)))

    # aerial perspective, sensor noise, quantisation
    keep = np.exp(-depth.astype(np.float64) / HAZE_DISTANCE)[..., None]
    colour = colour * keep + np.asarray(HAZE_COLOUR) * (1.0 - keep)
    colour = colour + rng.normal(0.0, SENSOR_NOISE, size=colour.shape)
    image = np.rint(np.clip(colour, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Scene(image=image, seg=seg, depth=depth, instance=instance, objects=tuple(objects))


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: a function of ``(seed, split, index)`` only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_IDS[split], int(index)]))


def check_normalize(normalize: str | None) -> str | None:
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"dataset.normalize={normalize!r} is invalid; expected one of {list(NORMALIZATIONS)}")
    return normalize


class SyntheticImageDataset(StagedImages):
    """One split of generated scenes, rendered eagerly into memory (``uint8`` images, dense labels).

    ``tasks``: a subset of ``seg``, ``depth``, ``has_<shape>``.  ``augment=True`` flips image and dense labels
    horizontally with probability ½ (a private generator seeded by ``aug_seed``, re-seeded per DataLoader
    worker as :class:`~mtl_bench.data.transforms.RandomScaleCropFlip` does).  ``normalize``: ``None`` (floats
    in [0, 1]), ``"imagenet"`` or ``"dataset"`` (per-channel ``mean``/``std``, which must then be given; the
    builder passes the training split's statistics).
    """

    def __init__(
        self,
        params: SceneParams,
        split: str,
        size: int,
        seed: int = 0,
        tasks: Sequence[str] | None = None,
        augment: bool = False,
        aug_seed: int = 0,
        normalize: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        if split not in SPLIT_IDS:
            raise ConfigError(f"synthetic_images split={split!r} is invalid; expected one of {list(SPLIT_IDS)}")
        self.params = params
        self.split = split
        self.seed = _check_int(seed, "seed", 0)
        self.tasks = check_tasks(tasks, params.shapes)
        self.set_normalization(normalize, mean, std)
        n = _check_int(size, f"n_{split}", 1)
        h, w = params.height, params.width
        self.images = np.empty((n, h, w, 3), dtype=np.uint8)
        self.seg = np.empty((n, h, w), dtype=np.uint8)
        self.depth = np.empty((n, h, w), dtype=np.float32)
        self.instance = np.empty((n, h, w), dtype=np.int8)
        self.objects: list[tuple[SceneObject, ...]] = []
        for i in range(n):
            scene = render_scene(sample_rng(self.seed, split, i), params)
            self.images[i], self.seg[i], self.depth[i], self.instance[i] = scene.image, scene.seg, scene.depth, scene.instance
            self.objects.append(scene.objects)
        # presence of each class (visible pixels), N × C
        self.presence = np.stack([(self.seg == k + 1).any(axis=(1, 2)) for k in range(len(params.shapes))], axis=1)
        self.augment = bool(augment)
        dense = {t: ("label" if t == "seg" else "depth") for t in self.tasks if t in DENSE_TASKS}
        self.transform = RandomScaleCropFlip(scales=(1.0,), flip_prob=0.5, seed=aug_seed, kinds=dense) if self.augment else None

    def set_normalization(self, normalize: str | None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        """Configure ``normalize_sample``: ``None``, ``"imagenet"`` or ``"dataset"`` with the given per-channel statistics
        (``mean`` and ``std`` are used, and needed, only for ``"dataset"``)."""
        self.normalize = check_normalize(normalize)
        self.mean = self.std = None
        if self.normalize != "dataset":
            return
        if mean is None or std is None:
            raise ConfigError("normalize='dataset' needs the per-channel mean and std (the builder passes the training split's)")
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor([float(x) for x in std], dtype=torch.float32).view(3, 1, 1)
        if self.mean.numel() != 3 or self.std.numel() != 3 or not bool((self.std > 0).all()):
            raise ConfigError(f"normalisation statistics must be 3 means and 3 positive stds, got mean={mean!r}, std={std!r}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.params.height, self.params.width

    def __len__(self) -> int:
        return self.images.shape[0]

    def scene(self, index: int) -> Scene:
        """Sample ``index`` as rendered (arrays are views of the stored ones)."""
        return Scene(self.images[index], self.seg[index], self.depth[index], self.instance[index], self.objects[index])

    def fingerprint(self) -> str:
        """BLAKE2b-128 of the split's images and labels (shapes and bytes)."""
        hsh = hashlib.blake2b(digest_size=16)
        for arr in (self.images, self.seg, self.depth):
            hsh.update(np.asarray(arr.shape, dtype=np.int64).tobytes())
            hsh.update(np.ascontiguousarray(arr).data)
        return hsh.hexdigest()

    def _target(self, task: str, i: int) -> torch.Tensor:
        if task == "seg":
            return torch.from_numpy(self.seg[i].astype(np.int64))
        if task == "depth":
            return torch.from_numpy(self.depth[i].copy()).unsqueeze(0)
        k = self.params.shapes.index(task[len("has_"):])
        return torch.tensor([float(self.presence[i, k])], dtype=torch.float32)

    # The three stages of ``__getitem__`` (the StagedImageDataset protocol of mtl_bench.corruptions):
    # read (float [0, 1]) -> augment (training only) -> normalise.

    def raw_sample(self, index: int, with_image: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Sample ``index`` as stored: float32 3×H×W image ``uint8 / 255`` (``None`` if ``with_image=False``) and targets."""
        i = operator.index(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image = torch.from_numpy(self.images[i].transpose(2, 0, 1).copy()).float().div_(255.0) if with_image else None
        return image, {t: self._target(t, i) for t in self.tasks}

    def augment_sample(self, image: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A random horizontal flip of the image and dense labels when ``augment=True``; otherwise the inputs unchanged."""
        if self.transform is None:
            return image, targets
        dense = {t: v for t, v in targets.items() if t in DENSE_TASKS}
        image, flipped = self.transform(image, dense)
        return image, {t: flipped.get(t, v) for t, v in targets.items()}

    def normalize_sample(self, image: torch.Tensor) -> torch.Tensor:
        """``(image − mean) / std`` per channel with the split's statistics for ``normalize="dataset"``; otherwise
        :func:`~mtl_bench.data.transforms.normalize_image` (the image itself for ``None``)."""
        if self.normalize != "dataset":
            return super().normalize_sample(image)
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``uint8`` N×H×W×3 images on the [0, 1] scale (float64, rounded to 1e-6)."""
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(m), 6) for m in x.mean(axis=0)], [round(float(s), 6) for s in x.std(axis=0)]


def _task(name: str, num_classes: int) -> Task:
    if name == "seg":
        return segmentation_task("seg", num_classes)
    if name == "depth":
        return depth_task("depth")
    return attribute_task(name)


def build_synthetic_images(
    height: int = 64,
    width: int = 64,
    n_train: int = 512,
    n_val: int = 128,
    n_test: int = 256,
    seed: int = 0,
    shapes: Sequence[str] | None = None,
    min_objects: int = 1,
    max_objects: int = 4,
    tasks: Sequence[str] | None = None,
    augment: bool = False,
    aug_seed: int = 0,
    normalize: str | None = None,
    name: str = "synthetic_images",
) -> Benchmark:
    """Generated shape scenes with ``seg`` / ``depth`` (and optional ``has_<shape>``) tasks; see the module docstring."""
    params = SceneParams(height, width, check_shapes(shapes), min_objects, max_objects)
    sizes = {"train": _check_int(n_train, "n_train", 1), "val": _check_int(n_val, "n_val", 1), "test": _check_int(n_test, "n_test", 1)}
    selected = check_tasks(tasks, params.shapes)
    normalize = check_normalize(normalize)
    seed = _check_int(seed, "seed", 0)

    # "dataset" statistics come from the training split: render it first, then configure every split
    train = SyntheticImageDataset(params, "train", sizes["train"], seed, selected, augment, aug_seed)
    mean, std = channel_stats(train.images) if normalize == "dataset" else (None, None)
    splits = {"train": train, **{s: SyntheticImageDataset(params, s, sizes[s], seed, selected) for s in ("val", "test")}}
    for split in splits.values():
        split.set_normalization(normalize, mean, std)
    fingerprints = {s: d.fingerprint() for s, d in splits.items()}
    combined = hashlib.blake2b(repr(sorted(fingerprints.items())).encode(), digest_size=16).hexdigest()
    info = {
        "name": name,
        "generator": "mtl_bench.data.synthetic_images (procedural shape scenes)",
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()},
        "num_classes": params.num_classes,
        "classes": ["background", *params.shapes],
        "data_seed": seed,
        "sizes": sizes,
        "validation": "independent generated splits (train/val/test drawn from disjoint seed streams)",
        "augment": "hflip" if augment else False,
        "normalize": normalize,
        "normalize_stats": {"mean": mean, "std": std} if mean is not None else None,
        "constants": CONSTANTS,
        "fingerprint": combined,
        "split_fingerprints": fingerprints,
    }
    return Benchmark(name=name, tasks={t: _task(t, params.num_classes) for t in selected}, splits=splits,
                     input_shape=(3, params.height, params.width), info=info)
