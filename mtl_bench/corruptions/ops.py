"""The ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), written for ``mtl_bench``.

Every function has the signature ``fn(image, severity, rng) -> image``: ``image`` is a ``uint8`` H×W×3 RGB
array (H, W ≥ 32, any aspect ratio), ``severity`` an int in 1..5, ``rng`` a :class:`numpy.random.Generator`
that supplies *all* randomness (the global NumPy/Python/torch generators are never used), and the result is
a new ``uint8`` array of the same shape.  Callers normally go through :func:`mtl_bench.corruptions.corrupt`,
which validates the arguments; the functions here assume valid input.

Severity parameters are the ones of the ImageNet-C generation code, in the form generalised to arbitrary
image sizes by Michaelis et al. (2019, the ``imagecorruptions`` package): the same tables, the same
operations, with the operations that used OpenCV, scikit-image or ImageMagick re-expressed with NumPy,
SciPy and Pillow.  Like the reference, the final float image is clipped to [0, 255] and truncated
(not rounded) to ``uint8``.  Deviations and notes (see ``docs/corruptions.md``):

* ``frost`` blends a procedurally synthesised ice-crystal texture (:func:`frost_texture`) instead of
  ImageNet-C's frost photographs (it ships six and samples from the first five);
* ``spatter`` finds the liquid-layer edges with our own Canny detector and an exact Euclidean distance
  transform (OpenCV: its Canny and a 5×5-mask approximation), and returns the image unchanged where the
  reference divides 0 by 0 (no liquid above the threshold: NaN, then undefined ``uint8`` values);
* ``impulse_noise``, ``glass_blur`` and every other random draw come from ``rng``, so all 19 corruptions are
  reproducible (the reference's impulse noise and glass blur ignore ``np.random.seed``); the streams differ
  from the reference's, so individual corrupted images differ while their distribution is the same;
* not a deviation: ``glass_blur`` reproduces the reference's pixel "swap", which on NumPy views copies the
  neighbour instead of swapping (:func:`_local_shuffle`), vectorised but equal to the sequential loop;
* brightness and saturate change V and S through closed forms of the HSV round trip (equal to
  scikit-image's ``rgb2hsv``/``hsv2rgb`` up to float rounding), zoom blur uses our separable linear resize on
  ``scipy.ndimage.zoom(order=1)``'s sampling grid (equal up to float rounding, several times faster).
"""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

CorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Bumped whenever any function's output changes for the same input and generator state; part of every
# cache key (see :mod:`mtl_bench.corruptions.cache`), so stale corrupted sets are never reused.
IMPLEMENTATION_VERSION = "1"


# ----------------------------------------------------------------------------------------------------------
# helpers


def _to01(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _finish01(x: np.ndarray) -> np.ndarray:
    """Clip a [0, 1] float image and truncate to uint8, like the reference's ``np.uint8(clip(x) * 255)``."""
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _finish255(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 255.0).astype(np.uint8)


def _sk_gaussian(x: np.ndarray, sigma: float | tuple[float, ...], mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``filters.gaussian`` on a float array: spatial sigma, no smoothing across channels."""
    sig = (sigma, sigma) if np.isscalar(sigma) else tuple(sigma)
    if x.ndim == 3:
        sig = (*sig, 0.0)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _cv_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV's 1-D Gaussian kernel for ``sigma > 0`` (``getGaussianKernel``): sampled at integer offsets, normalised."""
    offsets = np.arange(size) - (size - 1) / 2.0
    k = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return k / k.sum()


def _filter_reflect101(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel of an H×W×C image with a symmetric odd-sized 2-D kernel, border reflect-101
    (OpenCV's ``filter2D`` default); by FFT, which is what OpenCV switches to for kernels this large."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    # numpy "reflect" excludes the edge pixel = OpenCV BORDER_REFLECT_101; pad of at most H-1 per side is allowed.
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    from scipy import signal  # here, not at the top: scipy.signal (and the scipy.stats it loads) cost every process ~0.5 s

    return signal.fftconvolve(padded, kernel[::-1, ::-1, None], mode="valid", axes=(0, 1))


def _linear_resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` to ``size`` samples on the ``align_corners`` grid (output
    ``i`` samples input ``i · (n − 1) / (size − 1)``), the grid of ``scipy.ndimage.zoom(order=1)``."""
    n = x.shape[axis]
    pos = np.arange(size, dtype=np.float64) * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
    lo = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    w = (pos - lo).astype(x.dtype).reshape(shape)
    a, b = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
    return a + (b - a) * w


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Crop the centre ``ceil(H / f) × ceil(W / f)`` window and scale it by ``f`` with linear interpolation on
    the ``align_corners`` grid (``scipy.ndimage.zoom(order=1)``'s), output ``round(size · f)``, cut to H×W from
    the top-left corner as in the reference.  ``x``: float H×W×C array.  Pure NumPy, so the result does not
    depend on the number of threads."""
    h, w = x.shape[:2]
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top : top + ch, left : left + cw]
    out_h, out_w = int(round(ch * factor)), int(round(cw * factor))
    rows = _linear_resize_axis(crop, out_h, 0)[:h]  # only the kept rows/columns are computed past this point
    return _linear_resize_axis(rows, out_w, 1)[:, :w]


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """A one-sided Gaussian-weighted streak: the weighted sum of copies of ``x`` shifted along ``angle``
    (degrees) by 0..2·radius pixels, with the border pixel repeated; ``x`` is H×W or H×W×C float."""
    width = 2 * radius + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2.0 * sigma**2))
    weights /= weights.sum()
    s, c = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    h, w = x.shape[:2]
    shifts = []
    for i in range(width):
        dy = -math.ceil(i * s - 0.5)
        dx = -math.ceil(i * c - 0.5)
        if abs(dy) >= h or abs(dx) >= w:  # the streak left the image
            break
        shifts.append((weights[i], dy, dx))
    py = max(abs(dy) for _, dy, _ in shifts)
    px = max(abs(dx) for _, _, dx in shifts)
    pad = ((py, py), (px, px)) + ((0, 0),) * (x.ndim - 2)
    padded = np.pad(x.astype(np.float32, copy=False), pad, mode="edge")  # edge = the repeated border pixel
    out = np.zeros(x.shape, dtype=np.float32)
    for k, dy, dx in shifts:
        # out[y, x] += k · x[clip(y - dy), clip(x - dx)]
        out += np.float32(k) * padded[py - dy : py - dy + h, px - dx : px - dx + w]
    return out


def _rgb_gray(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (OpenCV's RGB→GRAY weights)."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _hsv_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value V = max, saturation S and each channel's position g ∈ [0, 1] below V in units of V·S, so that
    ``rgb = V · (1 − S · g)``; grey pixels get scikit-image's hue 0 (g = (0, 1, 1))."""
    r, g_, b = x[..., 0], x[..., 1], x[..., 2]
    v = np.maximum(np.maximum(r, g_), b)  # faster than reducing over a length-3 last axis
    delta = v - np.minimum(np.minimum(r, g_), b)
    sat = np.divide(delta, v, out=np.zeros_like(v), where=v > 0)
    g = np.divide(v[..., None] - x, delta[..., None], out=np.zeros_like(x), where=delta[..., None] > 0)
    grey = delta <= 0
    if grey.any():
        g[grey] = (0.0, 1.0, 1.0)
    return v, sat, g


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A ``size × size`` (power of two) periodic diamond-square height map scaled to [0, 1].

    Each refinement level sets the new points to the mean of their four neighbours (wrapping around) plus
    uniform noise whose amplitude is divided by ``decay**2`` per level, which is the relative amplitude
    schedule of the ImageNet-C fog map (larger ``decay`` = smoother fog).
    """
    if size < 2 or size & (size - 1):
        raise ValueError(f"plasma_fractal size must be a power of two >= 2, got {size}")
    grid = np.zeros((size, size), dtype=np.float64)
    amp = 1.0
    step = size
    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        # square step: centres of the cells
        centre = (corners + np.roll(corners, -1, 0) + np.roll(corners, -1, 1) + np.roll(corners, (-1, -1), (0, 1))) / 4
        grid[half::step, half::step] = centre + amp * rng.uniform(-1.0, 1.0, centre.shape)
        centres = grid[half::step, half::step]
        # diamond step: edge midpoints between two corners and two centres
        horiz = (corners + np.roll(corners, -1, 1) + centres + np.roll(centres, 1, 0)) / 4  # at (row 0::step, col half::step)
        vert = (corners + np.roll(corners, -1, 0) + centres + np.roll(centres, 1, 1)) / 4  # at (row half::step, col 0::step)
        grid[0::step, half::step] = horiz + amp * rng.uniform(-1.0, 1.0, horiz.shape)
        grid[half::step, 0::step] = vert + amp * rng.uniform(-1.0, 1.0, vert.shape)
        step = half
        amp /= decay**2
    grid -= grid.min()
    top = grid.max()
    return grid / top if top > 0 else grid


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ----------------------------------------------------------------------------------------------------------
# noise


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    scale = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = _to01(image)
    return _finish01(x + rng.normal(0.0, scale, size=x.shape))


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    photons = (60, 25, 12, 5, 3)[severity - 1]
    x = _to01(image)
    return _finish01(rng.poisson(x * photons) / float(photons))


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise on each *value* (channels independently): a fraction ``amount`` is replaced,
    half by 0 and half by 255 (scikit-image ``random_noise(mode="s&p")``'s model)."""
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    hit = rng.random(image.shape) < amount
    salt = rng.random(image.shape) < 0.5
    out = image.copy()
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


def speckle_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    scale = (0.15, 0.2, 0.35, 0.45, 0.6)[severity - 1]
    x = _to01(image)
    return _finish01(x + x * rng.normal(0.0, scale, size=x.shape))


# ----------------------------------------------------------------------------------------------------------
# blur


def defocus_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """An anti-aliased disc: the indicator of ``x² + y² ≤ r²`` on a (2·max(r, 8) + 1)² grid, normalised,
    then smoothed by a 3×3 (r ≤ 8) or 5×5 Gaussian of σ = ``alias_blur`` with reflect-101 borders."""
    half = 8 if radius <= 8 else radius
    ksize = 3 if radius <= 8 else 5
    offsets = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    disc = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disc /= disc.sum()
    g = _cv_gaussian_kernel(ksize, alias_blur)
    disc = ndimage.correlate1d(disc, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disc, g, axis=1, mode="mirror")


def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    return _finish01(_filter_reflect101(_to01(image), defocus_kernel(radius, alias)))


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (1, 2, 3, 4, 6)[severity - 1]
    return _finish01(_sk_gaussian(_to01(image), sigma))


def shuffle_offsets(height: int, width: int, max_delta: int, iterations: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The random offsets of :func:`_local_shuffle`: per iteration an array of ``(dy, dx)`` in ``[-d, d)`` for the
    interior pixels in visiting order (rows ``H-d .. d+1`` descending, then columns ``W-d .. d+1`` descending)."""
    n = max(0, height - 2 * max_delta) * max(0, width - 2 * max_delta)
    return [rng.integers(-max_delta, max_delta, size=(n, 2)) for _ in range(iterations)]


def _local_shuffle(image: np.ndarray, max_delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's local pixel "shuffle": visiting the interior pixels from the bottom-right to the top-left
    (rows ``H-d .. d+1``, columns ``W-d .. d+1``), ``iterations`` times, each pixel takes the current value of
    the pixel at a random offset ``(dy, dx)`` in ``[-d, d)``.

    The reference writes ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on NumPy array views, which does not swap
    but *copies* the neighbour into ``(h, w)``; we reproduce that, including its sequential order, without a
    Python loop: a visited pixel reads the *new* value of its source if the source is an interior pixel visited
    earlier (a larger flat index), else the source's old value.  Following these links to their ends by pointer
    doubling gives every pixel's final source in O(log chain length) vectorised steps.
    """
    h, w, _ = image.shape
    rows = np.arange(h - max_delta, max_delta, -1)
    cols = np.arange(w - max_delta, max_delta, -1)
    offsets = shuffle_offsets(h, w, max_delta, iterations, rng)
    if rows.size == 0 or cols.size == 0:
        return image.copy()
    src = (rows[:, None] * w + cols[None, :]).ravel()
    interior = np.zeros(h * w, dtype=bool)
    interior[src] = True
    flat = image.reshape(h * w, 3)
    for d in offsets:
        dst = src + d[:, 0] * w + d[:, 1]
        ptr = np.arange(h * w)
        ptr[src] = dst
        linked = np.zeros(h * w, dtype=bool)
        linked[src] = (dst > src) & interior[dst]
        active = np.flatnonzero(linked)
        while active.size:
            nxt = ptr[active]
            ptr[active] = ptr[nxt]
            linked[active] = linked[nxt]
            active = active[linked[active]]
        flat = flat[ptr]
    return flat.reshape(h, w, 3).copy()


def glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma, max_delta, iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    blurred = (_sk_gaussian(_to01(image), sigma) * 255.0).astype(np.uint8)
    shuffled = _local_shuffle(blurred, max_delta, iterations, rng)
    return _finish01(_sk_gaussian(_to01(shuffled), sigma))


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    angle = rng.uniform(-45.0, 45.0)
    return _finish255(_motion_blur(image.astype(np.float64), radius, sigma, angle))


_ZOOMS = (
    np.arange(1, 1.11, 0.01),
    np.arange(1, 1.16, 0.01),
    np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02),
    np.arange(1, 1.31, 0.03),
)


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of the image and its centre zooms by each factor of the severity's list (1.00 … 1.30)."""
    factors = _ZOOMS[severity - 1]
    x = (image.astype(np.float32) / 255.0).astype(np.float32)
    acc = x.copy()
    for f in factors:
        acc += _clipped_zoom(x, float(f))
    return _finish01(acc / (len(factors) + 1))


# ----------------------------------------------------------------------------------------------------------
# weather


def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    )[severity - 1]
    h, w, _ = image.shape
    x = image.astype(np.float32) / np.float32(255.0)
    flakes = rng.normal(loc, scale, size=(h, w)).astype(np.float32)
    flakes = _clipped_zoom(flakes[..., None], zoom)[..., 0]
    flakes[flakes < threshold] = 0
    flakes = np.clip(flakes, 0, 1)
    flakes = _motion_blur(flakes, radius, sigma, rng.uniform(-135.0, -45.0))
    flakes = (np.round(flakes * 255).astype(np.uint8) / 255.0)[:h, :w, None]
    x = keep * x + (1 - keep) * np.maximum(x, _rgb_gray(x)[..., None] * 1.5 + 0.5)
    return _finish01(x + flakes + np.rot90(flakes, k=2))


def frost_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural frost texture, float H×W×3 RGB in [0, 255] (replaces ImageNet-C's frost photographs).

    Feather-like ice crystals: ≈ one seed per 55 px², each a straight stem of 6–30 px at a random angle with
    six side branches at ±60° that shorten towards the tip, splatted with random intensities, saturated
    (``1 − exp(−a)``) and lightly blurred; over a cloudy plasma-fractal haze; coloured from a dark blue-grey
    to a bluish white (mean ≈ (130, 142, 156), std ≈ 27, high-pass std ≈ 19 on 0..255).  The brightness was
    calibrated so that the mean absolute change of a test scene at every severity matches ImageNet-C's frost
    (its five photographs) within ≈ 2 %: see ``docs/corruptions.md``.  Crystal sizes are in pixels, like the
    photographs' (which the reference crops at ≥ 1.1× their native resolution).
    """
    area = height * width
    seeds = max(1, int(area / 55))
    ys = rng.uniform(0, height, seeds)
    xs = rng.uniform(0, width, seeds)
    theta = rng.uniform(0, 2 * np.pi, seeds)
    length = rng.uniform(6, 30, seeds)
    strength = rng.uniform(0.3, 1.0, seeds)

    stem_t = np.linspace(0.0, 1.0, 32)
    sy = ys[:, None] + np.sin(theta)[:, None] * length[:, None] * stem_t
    sx = xs[:, None] + np.cos(theta)[:, None] * length[:, None] * stem_t
    sv = np.broadcast_to(strength[:, None], sy.shape)

    branches = 6
    along = (np.arange(branches) + 0.5) / branches  # position on the stem
    side = np.where(np.arange(branches) % 2 == 0, 1.0, -1.0) * (np.pi / 3)
    b_theta = theta[:, None] + side[None, :]
    b_len = 0.45 * length[:, None] * (1.0 - along[None, :])
    by0 = ys[:, None] + np.sin(theta)[:, None] * length[:, None] * along[None, :]
    bx0 = xs[:, None] + np.cos(theta)[:, None] * length[:, None] * along[None, :]
    b_t = np.linspace(0.0, 1.0, 12)
    by = by0[..., None] + (np.sin(b_theta) * b_len)[..., None] * b_t
    bx = bx0[..., None] + (np.cos(b_theta) * b_len)[..., None] * b_t
    bv = np.broadcast_to(0.7 * strength[:, None, None], by.shape)

    py = np.concatenate([sy.ravel(), by.ravel()])
    px = np.concatenate([sx.ravel(), bx.ravel()])
    pv = np.concatenate([sv.ravel(), bv.ravel()])
    iy = np.floor(py).astype(np.int64) % height  # the texture wraps around
    ix = np.floor(px).astype(np.int64) % width
    crystals = np.bincount(iy * width + ix, weights=pv, minlength=area).reshape(height, width)
    crystals = 1.0 - np.exp(-0.9 * crystals)
    crystals = ndimage.gaussian_filter(crystals, 0.6, mode="wrap")

    haze = plasma_fractal(_next_pow2(max(height, width)), 1.8, rng)[:height, :width]
    haze = ndimage.gaussian_filter(haze, 2.0, mode="wrap")
    t = np.clip(0.55 * crystals + 0.45 * haze + 0.03, 0.0, 1.0)[..., None]
    dark = np.array([62.0, 78.0, 96.0])
    light = np.array([236.0, 242.0, 250.0])
    return dark + t * (light - dark)


def frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    keep, amount = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    h, w, _ = image.shape
    return _finish255(keep * image.astype(np.float64) + amount * frost_texture(h, w, rng))


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    thickness, decay = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    h, w, _ = image.shape
    x = _to01(image)
    top = x.max()
    x = x + thickness * plasma_fractal(_next_pow2(max(h, w)), decay, rng)[:h, :w, None]
    return _finish01(x * top / (top + thickness))


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add ``c`` to the HSV value channel (hue and saturation kept)."""
    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    x = _to01(image)
    v, sat, g = _hsv_parts(x)
    v2 = np.clip(v + shift, 0.0, 1.0)
    return _finish01(v2[..., None] * (1.0 - sat[..., None] * g))


def _spatter_liquid(h: int, w: int, loc: float, scale: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _sk_gaussian(rng.normal(loc, scale, size=(h, w)), sigma)


def canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges of a 2-D uint8 image (3×3 Sobel, L1 gradient magnitude, non-maximum suppression in four
    directions, hysteresis with 8-connectivity), as a bool map.  OpenCV's ``Canny(img, low, high)`` model;
    edge pixels can differ where its integer arithmetic breaks ties differently."""
    x = image.astype(np.float64)
    gx = ndimage.sobel(x, axis=1, mode="nearest")
    gy = ndimage.sobel(x, axis=0, mode="nearest")
    mag = np.abs(gx) + np.abs(gy)
    ax, ay = np.abs(gx), np.abs(gy)
    tan22 = math.tan(math.radians(22.5))
    horizontal = ay <= ax * tan22  # gradient along x: compare left/right
    vertical = ax <= ay * tan22  # gradient along y: compare up/down
    diag_same = ~horizontal & ~vertical & (gx * gy > 0)  # gradient towards (+1, +1) in (row, col)
    diag_other = ~horizontal & ~vertical & ~diag_same
    p = np.pad(mag, 1, mode="constant")
    c = p[1:-1, 1:-1]

    def nb(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : p.shape[0] - 1 + dy, 1 + dx : p.shape[1] - 1 + dx]

    keep = (
        (horizontal & (c > nb(0, -1)) & (c >= nb(0, 1)))
        | (vertical & (c > nb(-1, 0)) & (c >= nb(1, 0)))
        | (diag_same & (c > nb(-1, -1)) & (c >= nb(1, 1)))
        | (diag_other & (c > nb(-1, 1)) & (c >= nb(1, -1)))
    )
    candidates = keep & (mag > low)
    strong = keep & (mag > high)
    labels, n = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros(image.shape, dtype=bool)
    has_strong = np.zeros(n + 1, dtype=bool)
    has_strong[labels[strong]] = True
    has_strong[0] = False
    return has_strong[labels]


def equalize_hist(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation of a 2-D uint8 image (OpenCV ``equalizeHist``'s lookup table)."""
    hist = np.bincount(image.ravel(), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    total = image.size
    if hist[first] == total:
        return np.full_like(image, first)
    scale = 255.0 / (total - hist[first])
    cdf = np.cumsum(hist) - hist[first]
    lut = np.clip(np.round(cdf * scale), 0, 255).astype(np.uint8)
    lut[: first + 1] = 0
    return lut[image]


_SPATTER_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
_WATER = np.array([175.0, 238.0, 238.0]) / 255.0  # pale turquoise
_MUD = np.array([63.0, 42.0, 20.0]) / 255.0


def spatter(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops (severities 1–3: embossed, pale turquoise, additive) or mud (4–5: brown, occluding)."""
    loc, scale, sigma, threshold, intensity, mud = (
        (0.65, 0.3, 4, 0.69, 0.6, False),
        (0.65, 0.3, 3, 0.68, 0.6, False),
        (0.65, 0.3, 2, 0.68, 0.5, False),
        (0.65, 0.3, 1, 0.65, 1.5, True),
        (0.67, 0.4, 1, 0.65, 1.5, True),
    )[severity - 1]
    h, w, _ = image.shape
    x = image.astype(np.float32) / np.float32(255.0)
    liquid = _spatter_liquid(h, w, loc, scale, sigma, rng)
    liquid[liquid < threshold] = 0
    if not mud:
        layer = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
        not_edge = ~canny(layer, 50, 150)
        dist = np.minimum(ndimage.distance_transform_edt(not_edge), 20.0).astype(np.float32)
        dist = ndimage.uniform_filter(dist, 3, mode="mirror").astype(np.uint8)
        dist = equalize_hist(dist)
        dist = np.clip(np.round(ndimage.correlate(dist.astype(np.float64), _SPATTER_EMBOSS, mode="mirror")), 0, 255)
        dist = np.round(ndimage.uniform_filter(dist, 3, mode="mirror")).astype(np.float32)  # a box blur of a uint8 image
        m = layer.astype(np.float32) * dist
        top = float(m.max())
        if top <= 0:  # no drop survived the threshold (the reference yields NaN here)
            return image.copy()
        m = m / top * intensity
        return _finish01(x + m[..., None] * _WATER)
    m = _sk_gaussian((liquid > threshold).astype(np.float32), intensity)
    m[m < 0.8] = 0
    return _finish01(x * (1 - m[..., None]) + m[..., None] * _MUD)


# ----------------------------------------------------------------------------------------------------------
# digital


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _to01(image)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _finish01((x - mean) * factor + mean)


def saturate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the HSV saturation (severities 1–2 desaturate, 3–5 oversaturate)."""
    factor, offset = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]
    x = _to01(image)
    v, sat, g = _hsv_parts(x)
    sat2 = np.clip(sat * factor + offset, 0.0, 1.0)
    return _finish01(v[..., None] * (1.0 - sat2[..., None] * g))


def elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Resample at positions displaced by Gaussian-smoothed uniform noise (σ = 1 % of each side)."""
    alpha = 250 * (0.05, 0.065, 0.085, 0.1, 0.12)[severity - 1]
    h, w, _ = image.shape
    x = image.astype(np.float32) / np.float32(255.0)
    sigma = (h * 0.01, w * 0.01)
    max_d = h * 0.005  # both components use the height, as in the reference
    dx = (_sk_gaussian(rng.uniform(-max_d, max_d, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_sk_gaussian(rng.uniform(-max_d, max_d, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([yy + dy, xx + dx])
    out = np.stack([ndimage.map_coordinates(x[..., k], coords, order=1, mode="reflect") for k in range(3)], axis=-1)
    return _finish01(out)


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w, _ = image.shape
    small = Image.fromarray(image).resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST)).copy()


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


# ----------------------------------------------------------------------------------------------------------
# registry

COMMON: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = COMMON + EXTRA
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": COMMON[0:3],
    "blur": COMMON[3:7],
    "weather": COMMON[7:11],
    "digital": COMMON[11:15],
    "extra": EXTRA,
}
# Corruptions whose output does not depend on the generator.
DETERMINISTIC: frozenset[str] = frozenset(
    {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression", "gaussian_blur", "saturate"}
)

CORRUPTIONS: dict[str, CorruptionFn] = {name: globals()[name] for name in ALL}
