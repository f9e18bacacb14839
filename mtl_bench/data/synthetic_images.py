"""Procedurally generated image scenes with dense labels: a CPU-sized stand-in for NYUv2/Cityscapes in
corruption-robustness studies (Elich et al.'s transferability protocol) where the real data are unavailable, and,
as 3-D scenes with NYUv2's three tasks (``dataset=synthetic_scenes``), in optimizer, loss-scale and
gradient-conflict studies.

Two kinds of scenes share the generator: the original **flat** scenes (the default: ``layout=flat``,
``max_tilt=0``; byte-identical to the renderer before the 3-D scenes were added) and **3-D** scenes
(``layout=room`` and/or ``max_tilt > 0``, below).

Flat-scene recipe (one image, H×W, everything drawn from the image's own ``numpy`` generator; depths in "metres",
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

3-D scenes (``layout=room`` or ``max_tilt > 0``) use a pinhole camera with focal length ``f = min(H, W)`` pixels
(53° across the shorter side), x right, y up, z towards the camera for normals:

1. **Room** (``layout=room``; ``flat`` keeps the slanted background plane above): a floor and a back wall, NYUv2's
   dominant surfaces.  The camera stands ``U(1.0, 1.4)`` m above the floor, pitched down by ``U(5°, 15°)``; the wall
   crosses its horizontal viewing direction at ``U(3.2, 4.0)`` m, turned by ``U(−30°, 30°)`` about the vertical.
   The floor fills the bottom ~30 % of the image (1.4–5.6 m away, median 2.4), the wall the rest (2.4–5.6 m, median
   3.5; objects 0.6–2.2 m).  Plain colours (wall
   grey ``U(0.45, 0.85)``, floor ``U(0.15, 0.55)``, tints ±0.1), floor tiles of 0.5 m (a cosine pattern in floor
   coordinates: perspective shows in it), the flat background's coarse and fine texture.
2. **Objects**: drawn as in the flat recipe (same classes, depths of their centre points ``U(0.8, 2)``, sizes:
   world radius ``0.25 · U(0.85, 1.15)`` m, positions, rotations, colours) but each on a **plane tilted** by
   ``U(0, max_tilt)`` degrees towards a uniform azimuth about its centre point (``max_tilt = 0``: fronto-parallel).
   The shape lives in the plane's own coordinates, so a tilted disc projects to an ellipse; every pixel shows the
   *nearest* surface (a depth test: tilted planes may cut each other, the floor may hide an object's lower part).
   A checker-like cosine texture in plane coordinates (±20 %) reveals the plane's orientation by perspective.
3. **Shading**: Lambertian, ``0.35 + 0.65 max(0, n · l)`` for the fixed light direction ``l ∝ (−0.4, 0.5, 0.77)``
   (upper left, in front), relative to a fronto-parallel surface; then haze, noise and quantisation as above.

Normals (task ``normal``, 3-D scenes only): float32 3×H×W unit vectors of the visible surface (x right, y up, z
towards the camera; (0, 0, 1) faces the camera; horizontal flips negate x).  Object pixels carry their plane's
normal; the room's floor and wall theirs; the flat background's normals follow from its depth map (the surface
``P = z(x, y)·(x, y, 1)`` is not a plane under perspective, so they vary slightly across the image).  Normals and
depth maps agree: finite differences of the 3-D points ``depth · ray`` reproduce the stored normals (tested).

Tasks (the same task objects, losses and metrics as NYUv2's; see :mod:`mtl_bench.task_library`):

* ``seg`` — per-pixel class, ``C + 1`` classes: 0 = background, ``k`` = the ``k``-th shape of ``shapes``
  (int64 H×W; no pixel is ignored, but the task keeps NYUv2's ``ignore_index = −1`` convention); mIoU, pixel acc.
* ``depth`` — float32 1×H×W, the depth of the visible surface (object plane or background plane), always > 0
  (every pixel valid under the ``gt > 0`` rule); abs/rel error.
* optional ``has_<shape>`` — binary presence attributes (float32 (1,), 1. when at least one pixel of that class is
  visible), CelebA-style; they need a pooled encoder and linear heads (``backbone=test_resnet_pool
  heads=linear dataset.tasks=[has_disc,...]``) because no head pools a dense feature map.  Default tasks:
  ``[seg, depth]`` (a dense seg + depth pair, like Cityscapes).
* ``normal`` (3-D scenes only) — float32 3×H×W unit normals; loss 1 − cos, metrics mean/median angle and the
  fractions within 11.25°/22.5°/30°.  ``dataset=synthetic_scenes`` selects ``[seg, depth, normal]``.

Determinism: sample ``i`` of split ``s`` is rendered from ``np.random.default_rng(SeedSequence([seed, s, i]))``
(``s`` = 0, 1, 2 for train/val/test), so a split's contents depend only on ``(seed, generator parameters, i)``:
never on generation order, on the other splits' sizes or on the training seed.  Images are stored as ``uint8``,
so the float view ``x / 255`` round-trips exactly through the corruption package's ``uint8`` conversion.

Learnability (CPU, 2 cores, defaults, ``trainer.batch_size=16``, Adam 1e-3, the dataset config's default
``backbone=test_resnet heads=conv``): after 3 epochs (96 steps, ~2 s per epoch) test mIoU ≈ 0.34 (all-background
predictor 0.155) and depth abs_err ≈ 0.38 / rel_err ≈ 0.18 (best constant 0.56 / 0.42; an oracle predicting one
constant for objects and one for background, given the true segmentation, 0.20).  The trainer's default batch of
128 gives only 4 steps per epoch on 512 images: use small batches for quick studies.

``dataset=synthetic_scenes`` (48×48, ``layout=room``, ``max_tilt=45``, tasks ``[seg, depth, normal]``,
``backbone=test_resnet heads=conv``; figures from ``python -m mtl_bench.data.gradient_alignment`` and
``python -m mtl_bench.train``, one torch thread, seeds 0–2 of the initialisation, data seed 0):

* **Loss scales at init** (first 32 training images as one batch): depth L1 2.64 / 2.82 / 2.84 (metres: the heads
  start near 0 and the mean depth is 2.77), seg cross-entropy 1.73 / 1.68 / 1.55 (≈ ln 5), normal 1 − cos
  1.10 / 0.79 / 0.86 — and the *gradient* norms on the shared encoder rank the other way round (normal 1.2–2.1,
  seg 0.57–0.70, depth 0.38–0.42).  After 5 epochs the losses are seg ≈ 0.40, depth ≈ 0.46, normal ≈ 0.086: the
  normal loss (1 − cos ≈ θ²/2 for small errors) ends an order of magnitude below the others, as on NYUv2.
* **Correlated per-sample gradients**: every image is a view of the same kind of room (grey wall above a darker
  tiled floor, the same haze colour and light direction, objects nearer than the background, ~80 % background
  pixels), so the inputs share low-level statistics and, above all, the targets share a common component (a depth
  of ~2.8 m everywhere, background class, floor normals up at the bottom): at init every sample's loss pulls the
  shared features the same way, and neighbouring pixels of an image carry near-identical labels (large smooth
  regions), so a sample's gradient does not average out to a sample-specific direction.  Mean |cos| between
  per-sample gradients of the shared encoder (summed loss, BatchNorm in eval mode, 32 samples, 496 pairs):
  **0.85 / 0.63 / 0.69** (signed mean cos the same sign and nearly the same size: a common direction; first conv
  layer alone 0.62–0.72; per task: depth 0.95–0.97, seg 0.83–0.87, normal 0.63–0.85).  The ``synthetic`` MLP
  regression benchmark (isotropic Gaussian inputs, zero-mean labels) gives **0.075 / 0.063 / 0.058** (first
  layer 0.013–0.015: near-orthogonal, as inputs drawn i.i.d. from N(0, I_100) make them).  Inter-task cosines on the
  same sample are small by comparison (scenes −0.32…+0.07, ``synthetic`` −0.19…+0.02).
* **Learnability** (Adam 1e-3, batch 16, 5 epochs of 512 images = 160 steps, seed 0; 4.4 s of CPU per epoch with
  one thread, training + validation): test seg mIoU 0.32 (all-background 0.16), pixel accuracy 0.83; depth abs_err
  0.46 m, rel_err 0.22 (best constant 0.84 m); normal mean angle 18.8°, median 15.3°, 39 % within 11.25° (best
  constant direction: 39.3° mean, 2.5 % within 11.25°).  Seg and depth still improve at epoch 5; the normal error
  levels off near 19° after two epochs.

A split implements the staged-sample protocol of :mod:`mtl_bench.corruptions.datasets`
(``raw_sample`` → ``augment_sample`` → ``normalize_sample``, chained by ``__getitem__``), so
``CorruptedDataset`` / ``RandomlyCorruptedDataset`` wrap it unchanged.
"""

from __future__ import annotations

import colorsys
import operator
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mtl_bench.data.base import Benchmark, arrays_fingerprint, check_int, splits_fingerprint
from mtl_bench.data import transforms
from mtl_bench.data.transforms import RandomScaleCropFlip, StagedImages
from mtl_bench.errors import ConfigError
from mtl_bench.task_library import attribute_task, depth_task, normal_task, segmentation_task
from mtl_bench.tasks import Task

SHAPES = ("disc", "square", "triangle", "ring", "cross")
DEFAULT_SHAPES = ("disc", "square", "triangle", "ring")
DENSE_TASKS = ("seg", "depth", "normal")  # "normal" only with max_tilt > 0 (see task_names)
DEFAULT_TASKS = ("seg", "depth")
TARGET_KINDS = {"seg": "label", "depth": "depth", "normal": "normal"}  # RandomScaleCropFlip's rule per dense task
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
# Tilted ("3-D") mode, max_tilt > 0 (see the module docstring): camera, light, shading and object texture.
FOCAL = 1.0  # focal length / min(H, W): f = min(H, W) pixels (a 53 deg field of view across the shorter side)
MAX_TILT = 60.0  # largest allowed dataset.max_tilt (degrees)
LIGHT = (-0.4, 0.5, 0.77)  # direction towards the light (x right, y up, z towards the camera), normalised on use
AMBIENT = 0.35  # shading = AMBIENT + (1 - AMBIENT) max(0, n . l), divided by its value for a fronto-parallel surface
OBJECT_TEXTURE = 0.2  # amplitude of the checker-like cosine texture on the object planes
# The room layout: a floor and a back wall (NYUv2's dominant surfaces); lengths in metres, angles in degrees.
LAYOUTS = ("flat", "room")
CAMERA_HEIGHT = (1.0, 1.4)  # above the floor
CAMERA_PITCH = (5.0, 15.0)  # downwards
WALL_DISTANCE = (3.2, 4.0)  # where the wall meets the camera's horizontal viewing direction
WALL_YAW = 30.0  # the wall turns by U(-WALL_YAW, WALL_YAW) about the vertical
WALL_GREY = (0.45, 0.85)  # grey level of the wall colour (plus per-channel tints of ±BACKGROUND_TINT)
FLOOR_GREY = (0.15, 0.55)  # grey level of the floor colour (darker than most walls)
FLOOR_TILE = 0.5  # period of the floor's tile texture
FLOOR_TEXTURE = 0.15  # its amplitude
FAR_DEPTH = 10.0  # depth clip of the room (reached only by very wide images)
CONSTANTS = {
    "object_depth": list(OBJECT_DEPTH), "background_depth": list(BACKGROUND_DEPTH), "background_slope": BACKGROUND_SLOPE,
    "size_at_unit_depth": SIZE_AT_UNIT_DEPTH, "size_jitter": list(SIZE_JITTER), "ring_hole": RING_HOLE,
    "background_tint": BACKGROUND_TINT, "haze_colour": list(HAZE_COLOUR), "haze_distance": HAZE_DISTANCE, "texture_coarse": TEXTURE_COARSE,
    "texture_fine": TEXTURE_FINE, "sensor_noise": SENSOR_NOISE,
}
TILT_CONSTANTS = {"focal": FOCAL, "light": list(LIGHT), "ambient": AMBIENT, "object_texture": OBJECT_TEXTURE}
ROOM_CONSTANTS = {
    "camera_height": list(CAMERA_HEIGHT), "camera_pitch": list(CAMERA_PITCH), "wall_distance": list(WALL_DISTANCE),
    "wall_yaw": WALL_YAW, "wall_grey": list(WALL_GREY), "floor_grey": list(FLOOR_GREY), "floor_tile": FLOOR_TILE,
    "floor_texture": FLOOR_TEXTURE, "far_depth": FAR_DEPTH,
}


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its shape, ``seg`` class id (1-based), depth plane, centre (row, col, pixels), radius
    (pixels), rotation (radians) and RGB colour before haze.  With ``max_tilt > 0``: ``depth`` is the depth of the
    plane at the centre pixel, ``radius`` the apparent radius of the untilted shape there, and ``normal`` the
    plane's unit normal (x right, y up, z towards the camera; (0, 0, 1) = fronto-parallel)."""

    shape: str
    label: int
    depth: float
    center: tuple[float, float]
    radius: float
    angle: float
    colour: tuple[float, float, float]
    normal: tuple[float, float, float] = (0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Scene:
    """A rendered sample: ``image`` uint8 H×W×3, ``seg`` uint8 H×W (0 = background), ``depth`` float32 H×W,
    ``instance`` int8 H×W (index into ``objects`` of the visible object, −1 = background), ``normal`` float32
    H×W×3 unit normals of the visible surface (x right, y up, z towards the camera; ``None`` where not kept)."""

    image: np.ndarray
    seg: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    objects: tuple[SceneObject, ...]
    normal: np.ndarray | None = None


def _check_names(key: str, names: Sequence[str] | None, default: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    """``dataset.<key>``: a non-empty list of distinct names among ``valid``; ``None`` means ``default``."""
    names = tuple(default if names is None else names)
    if not names or len(set(names)) != len(names) or any(n not in valid for n in names):
        raise ConfigError(f"dataset.{key}={list(names)} is invalid; expected distinct names among {list(valid)}")
    return names


def check_shapes(shapes: Sequence[str] | None) -> tuple[str, ...]:
    return _check_names("shapes", shapes, DEFAULT_SHAPES, SHAPES)


def task_names(shapes: Sequence[str], three_d: bool = False) -> tuple[str, ...]:
    """Every task a dataset with these shape classes offers: ``seg``, ``depth`` (and ``normal`` for 3-D scenes:
    ``layout=room`` or ``max_tilt > 0``), ``has_<shape>``..."""
    dense = DENSE_TASKS if three_d else tuple(t for t in DENSE_TASKS if t != "normal")
    return (*dense, *(f"has_{s}" for s in shapes))


def check_tasks(tasks: Sequence[str] | None, shapes: Sequence[str], three_d: bool = False) -> tuple[str, ...]:
    valid = task_names(shapes, three_d)
    if not three_d and tasks is not None and "normal" in tasks:
        raise ConfigError(f"dataset.tasks={list(tasks)} is invalid: task 'normal' needs 3-D scenes (dataset.layout=room or "
                          f"dataset.max_tilt > 0); expected distinct names among {list(valid)}")
    return _check_names("tasks", tasks, DEFAULT_TASKS, valid)


def check_max_tilt(value: Any) -> float:
    """``dataset.max_tilt``: degrees in [0, MAX_TILT] (0 = fronto-parallel objects)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) <= MAX_TILT
    if not ok:
        raise ConfigError(f"dataset.max_tilt={value!r} is invalid; expected degrees in [0, {MAX_TILT:g}] (0 = fronto-parallel objects)")
    return float(value)


def check_layout(value: Any) -> str:
    if value not in LAYOUTS:
        raise ConfigError(f"dataset.layout={value!r} is invalid; choose one of {list(LAYOUTS)}")
    return value


@dataclass(frozen=True)
class SceneParams:
    """The generator's parameters (validated); with ``seed`` and the sample index they determine a sample."""

    height: int = 64
    width: int = 64
    shapes: tuple[str, ...] = DEFAULT_SHAPES
    min_objects: int = 1
    max_objects: int = 4
    max_tilt: float = 0.0  # degrees; > 0: tilted object planes (3-D scenes)
    layout: str = "flat"  # flat: one slanted background plane | room: floor + back wall (3-D scenes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "height", check_int(self.height, "height", MIN_SIDE))
        object.__setattr__(self, "width", check_int(self.width, "width", MIN_SIDE))
        object.__setattr__(self, "shapes", check_shapes(self.shapes))
        object.__setattr__(self, "min_objects", check_int(self.min_objects, "min_objects", 1, MAX_OBJECTS))
        object.__setattr__(self, "max_objects", check_int(self.max_objects, "max_objects", self.min_objects, MAX_OBJECTS))
        object.__setattr__(self, "max_tilt", check_max_tilt(self.max_tilt))
        object.__setattr__(self, "layout", check_layout(self.layout))

    @property
    def three_d(self) -> bool:
        """3-D scenes (``layout=room`` or ``max_tilt > 0``): objects drawn with a depth test, possibly tilted, Lambertian
        shading, object and floor textures, and a ``normal`` task.  Otherwise the original flat scenes."""
        return self.layout == "room" or self.max_tilt > 0

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


def camera_rays(h: int, w: int) -> np.ndarray:
    """H×W×3 camera rays ``(x, y, 1)`` through the pixel centres, in the camera frame (x right, y *down*, z forward
    = depth), with the focal length ``f = FOCAL · min(H, W)`` pixels and the principal point at the image centre."""
    f = FOCAL * min(h, w)
    y = (np.arange(h, dtype=np.float64) + 0.5 - h / 2) / f
    x = (np.arange(w, dtype=np.float64) + 0.5 - w / 2) / f
    rays = np.ones((h, w, 3))
    rays[..., 0], rays[..., 1] = x[None, :], y[:, None]
    return rays


def surface_normals(z: np.ndarray, z_x: np.ndarray, z_y: np.ndarray, rays: np.ndarray) -> np.ndarray:
    """Unit normals (x right, y up, z towards the camera) of a surface given as depth ``z(x, y)`` over the normalised
    image coordinates of ``rays`` with partial derivatives ``z_x``, ``z_y``.

    The surface is ``P(x, y) = z · (x, y, 1)``; ``∂P/∂x × ∂P/∂y = −z · (z_x, z_y, −(z + x z_x + y z_y))`` in the camera
    frame (y down, z forward), so the normal facing the camera is ``(z_x, z_y, −(z + x z_x + y z_y))`` there, and
    ``(z_x, −z_y, z + x z_x + y z_y)`` after flipping y and z into the output convention.
    """
    x, y = rays[..., 0], rays[..., 1]
    n = np.stack(np.broadcast_arrays(z_x, -z_y, z + x * z_x + y * z_y), axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def shading(normals: np.ndarray) -> np.ndarray:
    """Lambertian shading ``AMBIENT + (1 − AMBIENT) max(0, n · l)`` relative to a fronto-parallel surface's."""
    light = np.asarray(LIGHT) / np.linalg.norm(LIGHT)
    lambert = AMBIENT + (1.0 - AMBIENT) * np.clip(normals @ light, 0.0, None)
    return lambert / (AMBIENT + (1.0 - AMBIENT) * light[2])


def tilt_frame(tilt: float, azimuth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit normal ``n`` (output convention) of a plane tilted by ``tilt`` towards ``azimuth`` (radians; 0 = the
    normal leans right, π/2 = up) and the plane's in-plane axes ``e1``, ``e2`` in the **camera** frame: the image
    right/down axes of the untilted plane rotated by ``tilt`` about the axis that takes (0, 0, 1) to ``n``."""
    n = np.array([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), np.cos(tilt)])
    m = n * np.array([1.0, -1.0, -1.0])  # the normal in the camera frame (y down, z forward)
    axis = np.cross([0.0, 0.0, -1.0], m)
    s = np.linalg.norm(axis)
    if s < 1e-12:
        return n, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    k = axis / s
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    rot = np.eye(3) + np.sin(tilt) * kx + (1.0 - np.cos(tilt)) * (kx @ kx)  # Rodrigues
    return n, rot[:, 0], rot[:, 1]


def _draw_tilted_objects(rng: np.random.Generator, params: SceneParams, colour: np.ndarray, depth: np.ndarray,
                         normal: np.ndarray, seg: np.ndarray, instance: np.ndarray) -> list[SceneObject]:
    """Tilted ("3-D") mode's objects, drawn into the arrays in place with a depth test (see the module docstring)."""
    h, w = params.height, params.width
    f = FOCAL * min(h, w)
    rays = camera_rays(h, w)
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    depths = np.sort(rng.uniform(*OBJECT_DEPTH, size=n))[::-1]
    objects = []
    side = min(h, w)
    for k in range(n):
        z = float(np.float32(depths[k]))
        cls = int(rng.integers(len(params.shapes)))
        radius = SIZE_AT_UNIT_DEPTH * side / z * rng.uniform(*SIZE_JITTER)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        angle = rng.uniform(0, 2 * np.pi)
        rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
        tilt, azimuth = np.deg2rad(rng.uniform(0.0, params.max_tilt)), rng.uniform(0, 2 * np.pi)
        n_out, e1, e2 = tilt_frame(tilt, azimuth)
        m = n_out * np.array([1.0, -1.0, -1.0])
        centre = z * np.array([(cx - w / 2) / f, (cy - h / 2) / f, 1.0])  # the plane's point on the centre pixel's ray
        along = rays @ m  # < 0 where the ray meets the plane's front side
        hits = along < -1e-6
        zz = np.where(hits, float(centre @ m) / np.where(hits, along, -1.0), np.inf)
        offset = np.where(hits, zz, 0.0)[..., None] * rays - centre  # in-plane offset from the centre (metres) where hits
        a, b = offset @ e1, offset @ e2
        world_radius = radius * z / f
        mask = hits & _shape_mask(params.shapes[cls], b, a, world_radius, angle) & (zz < depth)
        c, s = np.cos(angle), np.sin(angle)
        period = world_radius  # the texture turns with the shape
        texture = 1.0 + OBJECT_TEXTURE * np.cos(2 * np.pi * (c * a + s * b) / period) * np.cos(2 * np.pi * (c * b - s * a) / period)
        colour[mask] = (np.asarray(rgb) * float(shading(n_out)))[None, :] * texture[mask][:, None]
        depth[mask] = zz[mask]
        normal[mask] = n_out
        seg[mask] = cls + 1
        instance[mask] = k
        objects.append(SceneObject(params.shapes[cls], cls + 1, z, (float(cy), float(cx)), float(radius), float(angle),
                                   tuple(float(v) for v in rgb), tuple(float(v) for v in n_out)))
    return objects


def _flat_background(rng: np.random.Generator, params: SceneParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``flat`` layout's background: colour (float64 H×W×3), depth (float32 H×W) and normals (float64 H×W×3)."""
    h, w = params.height, params.width
    rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float64)[None, :] + 0.5
    u, v = cols / w - 0.5, rows / h - 0.5

    # slanted plane, colour gradient, coarse + fine texture
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
    # normals of the surface z(x, y) over the normalised image coordinates x = u·w/f, y = v·h/f
    f = FOCAL * min(h, w)
    z_x, z_y = slope * np.cos(theta) * f / w, slope * np.sin(theta) * f / h
    normal = surface_normals(depth.astype(np.float64), np.full((h, w), z_x), np.full((h, w), z_y), camera_rays(h, w))
    return colour, depth, normal


def plane_depth(rays: np.ndarray, m: np.ndarray, d: float) -> np.ndarray:
    """Depth (camera z) where each ray meets the plane ``m · P = d`` (camera frame, ``m`` facing the camera, ``d < 0``);
    ``inf`` where a ray does not meet its front side."""
    along = rays @ m
    hits = along < -1e-9
    return np.where(hits, d / np.where(hits, along, -1.0), np.inf)


def _room_background(rng: np.random.Generator, params: SceneParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``room`` layout's background: a floor and a back wall seen by a camera pitched down (see the module docstring)."""
    h, w = params.height, params.width
    rays = camera_rays(h, w)
    height = rng.uniform(*CAMERA_HEIGHT)
    pitch = np.deg2rad(rng.uniform(*CAMERA_PITCH))
    distance = rng.uniform(*WALL_DISTANCE)
    yaw = np.deg2rad(rng.uniform(-WALL_YAW, WALL_YAW))
    wall_rgb = rng.uniform(*WALL_GREY) + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=3)
    floor_rgb = rng.uniform(*FLOOR_GREY) + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=3)
    # level frame: x right, y down, z forward, horizontal; rows of `to_cam` = the camera's axes in it
    to_cam = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(pitch), -np.sin(pitch)], [0.0, np.sin(pitch), np.cos(pitch)]])
    floor_m = to_cam @ np.array([0.0, -1.0, 0.0])  # the floor lies `height` below the camera, its normal points up
    wall_m = to_cam @ np.array([np.sin(yaw), 0.0, -np.cos(yaw)])  # the wall meets the level axis at `distance`
    z_floor = plane_depth(rays, floor_m, -height)
    z_wall = plane_depth(rays, wall_m, -distance * np.cos(yaw))
    floor = z_floor < z_wall
    depth = np.minimum(np.where(floor, z_floor, z_wall), FAR_DEPTH)
    flip = np.array([1.0, -1.0, -1.0])  # camera frame -> output convention (x right, y up, z towards the camera)
    normal = np.where(floor[..., None], floor_m * flip, wall_m * flip)
    # colours: plain wall and floor, floor tiles (in floor coordinates, aligned with the wall), coarse + fine texture
    level = (depth[..., None] * rays) @ to_cam  # hit points in the level frame
    c, s = np.cos(yaw), np.sin(yaw)
    a, b = c * level[..., 0] + s * level[..., 2], -s * level[..., 0] + c * level[..., 2]
    tiles = 1.0 + FLOOR_TEXTURE * np.cos(2 * np.pi * a / FLOOR_TILE) * np.cos(2 * np.pi * b / FLOOR_TILE)
    colour = np.where(floor[..., None], floor_rgb * tiles[..., None], wall_rgb)
    gh, gw = max(2, h // 8 + 1), max(2, w // 8 + 1)
    coarse = _interp_matrix(h, gh) @ rng.normal(0.0, TEXTURE_COARSE, size=(gh, gw)) @ _interp_matrix(w, gw).T
    colour = colour + coarse[..., None] + rng.normal(0.0, TEXTURE_FINE, size=(h, w, 3))
    return colour, depth.astype(np.float32), normal


def render_scene(rng: np.random.Generator, params: SceneParams) -> Scene:
    """Render one sample from ``rng`` (see the module docstring for the recipe)."""
    h, w = params.height, params.width
    if params.layout == "room":
        colour, depth, normal = _room_background(rng, params)
    else:
        colour, depth, normal = _flat_background(rng, params)
    seg = np.zeros((h, w), dtype=np.uint8)
    instance = np.full((h, w), -1, dtype=np.int8)

    if params.three_d:  # shading of every surface; object planes (tilted) drawn with a depth test
        colour = colour * shading(normal)[..., None]
        depth64 = depth.astype(np.float64)
        objects = _draw_tilted_objects(rng, params, colour, depth64, normal, seg, instance)
        return _finish(rng, colour, depth64.astype(np.float32), seg, instance, objects, normal)

    # flat scenes: fronto-parallel objects drawn far to near, so later (nearer) objects occlude earlier ones
    rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float64)[None, :] + 0.5
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    depths = np.sort(rng.uniform(*OBJECT_DEPTH, size=n))[::-1]
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
        normal[mask] = (0.0, 0.0, 1.0)
        objects.append(SceneObject(params.shapes[cls], cls + 1, z, (float(cy), float(cx)), float(radius), float(angle),
                                   tuple(float(c) for c in rgb)))
    return _finish(rng, colour, depth, seg, instance, objects, normal)


def _finish(rng: np.random.Generator, colour: np.ndarray, depth: np.ndarray, seg: np.ndarray, instance: np.ndarray,
            objects: Sequence[SceneObject], normal: np.ndarray) -> Scene:
    """Aerial perspective, sensor noise and quantisation of a scene's colours."""
    keep = np.exp(-depth.astype(np.float64) / HAZE_DISTANCE)[..., None]
    colour = colour * keep + np.asarray(HAZE_COLOUR) * (1.0 - keep)
    colour = colour + rng.normal(0.0, SENSOR_NOISE, size=colour.shape)
    image = np.rint(np.clip(colour, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Scene(image=image, seg=seg, depth=depth, instance=instance, objects=tuple(objects), normal=normal.astype(np.float32))


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
        self.seed = check_int(seed, "seed", 0)
        self.tasks = check_tasks(tasks, params.shapes, params.three_d)
        self.set_normalization(normalize, mean, std)
        n = check_int(size, f"n_{split}", 1)
        h, w = params.height, params.width
        self.images = np.empty((n, h, w, 3), dtype=np.uint8)
        self.seg = np.empty((n, h, w), dtype=np.uint8)
        self.depth = np.empty((n, h, w), dtype=np.float32)
        self.instance = np.empty((n, h, w), dtype=np.int8)
        # normals (N×H×W×3 float32) are kept only for a split that trains or evaluates them
        self.normal = np.empty((n, h, w, 3), dtype=np.float32) if "normal" in self.tasks else None
        self.objects: list[tuple[SceneObject, ...]] = []
        for i in range(n):
            scene = render_scene(sample_rng(self.seed, split, i), params)
            self.images[i], self.seg[i], self.depth[i], self.instance[i] = scene.image, scene.seg, scene.depth, scene.instance
            if self.normal is not None:
                self.normal[i] = scene.normal
            self.objects.append(scene.objects)
        # presence of each class (visible pixels), N × C
        self.presence = np.stack([(self.seg == k + 1).any(axis=(1, 2)) for k in range(len(params.shapes))], axis=1)
        self.augment = bool(augment)
        dense = {t: TARGET_KINDS[t] for t in self.tasks if t in DENSE_TASKS}
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
        """Sample ``index`` as rendered (arrays are views of the stored ones; ``normal`` is ``None`` unless kept)."""
        normal = None if self.normal is None else self.normal[index]
        return Scene(self.images[index], self.seg[index], self.depth[index], self.instance[index], self.objects[index], normal)

    def fingerprint(self) -> str:
        """BLAKE2b-128 of the split's images and labels (shapes and bytes; normals where kept)."""
        return arrays_fingerprint(self.images, self.seg, self.depth, *(() if self.normal is None else (self.normal,)))

    def _target(self, task: str, i: int) -> torch.Tensor:
        if task == "seg":
            return torch.from_numpy(self.seg[i].astype(np.int64))
        if task == "depth":
            return torch.from_numpy(self.depth[i].copy()).unsqueeze(0)
        if task == "normal":
            return torch.from_numpy(self.normal[i].transpose(2, 0, 1).copy())
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
        """A random horizontal flip of the image and dense labels (normals: x negated) when ``augment=True``; otherwise
        the inputs unchanged."""
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
    if name == "normal":
        return normal_task("normal")
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
    max_tilt: float = 0.0,
    layout: str = "flat",
    name: str = "synthetic_images",
) -> Benchmark:
    """Generated shape scenes with ``seg`` / ``depth`` (``normal`` with ``max_tilt > 0``; optional ``has_<shape>``)
    tasks; see the module docstring."""
    params = SceneParams(height, width, check_shapes(shapes), min_objects, max_objects, max_tilt, layout)
    sizes = {"train": check_int(n_train, "n_train", 1), "val": check_int(n_val, "n_val", 1), "test": check_int(n_test, "n_test", 1)}
    selected = check_tasks(tasks, params.shapes, params.three_d)
    normalize = check_normalize(normalize)
    seed = check_int(seed, "seed", 0)

    # "dataset" statistics come from the training split: render it first, then configure every split
    train = SyntheticImageDataset(params, "train", sizes["train"], seed, selected, augment, aug_seed)
    mean, std = channel_stats(train.images) if normalize == "dataset" else (None, None)
    splits = {"train": train, **{s: SyntheticImageDataset(params, s, sizes[s], seed, selected) for s in ("val", "test")}}
    for split in splits.values():
        split.set_normalization(normalize, mean, std)
    fingerprints = {s: d.fingerprint() for s, d in splits.items()}
    combined = splits_fingerprint(fingerprints)
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
        "constants": {**CONSTANTS, **(TILT_CONSTANTS if params.three_d else {}), **(ROOM_CONSTANTS if params.layout == "room" else {})},
        "fingerprint": combined,
        "split_fingerprints": fingerprints,
    }
    return Benchmark(name=name, tasks={t: _task(t, params.num_classes) for t in selected}, splits=splits,
                     input_shape=(3, params.height, params.width), info=info)
