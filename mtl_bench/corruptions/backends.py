"""Corruption backends and the public ``corrupt`` entry point.

Two backends implement the same 19 names with the same severity tables:

* ``"mtl_bench"`` (default, always available): :mod:`mtl_bench.corruptions.ops`, written for this project on
  NumPy, SciPy and Pillow only; every random draw comes from the ``numpy.random.Generator`` passed
  in, so all 19 corruptions are reproducible; frost uses a procedural texture.
* ``"imagecorruptions"``: the ``imagecorruptions`` import of the ``imagecorruptions-imaug`` fork (1.1.5) when
  it is installed (``pip install imagecorruptions-imaug==1.1.5``; pulls numba, opencv-python and
  scikit-image).  Use it to compare with numbers computed with the bethgelab package (its frost photographs
  included).  Our wrapper seeds it from ``rng``: it reseeds NumPy's *global* generator with a value drawn
  from ``rng`` (restoring the previous global state afterwards) and passes the same value as ``seed`` to
  ``impulse_noise`` and ``glass_blur``, the two functions that ignore the global generator (scikit-image's
  and numba's own generators).  That makes the fork reproducible too, but not thread-safe (processes, such
  as DataLoader workers, are fine).

``describe(backend)`` returns the provenance to store in run summaries and in cache keys.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from mtl_bench.corruptions.adapters import chw_to_hwc, hwc_to_chw
from mtl_bench.corruptions.ops import ALL, COMMON, CORRUPTIONS, EXTRA, FAMILIES, IMPLEMENTATION_VERSION
from mtl_bench.errors import ConfigError

BACKENDS = ("mtl_bench", "imagecorruptions")
DEFAULT_BACKEND = "mtl_bench"
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32
FORK_DISTRIBUTION = "imagecorruptions-imaug"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_name(name: str) -> str:
    if name not in CORRUPTIONS:
        raise ConfigError(f"corruption={name!r} is not valid; expected one of {list(ALL)}")
    return name


def check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ConfigError(f"corruption severity={severity!r} is not valid; expected an int in {list(SEVERITIES)}")
    return int(severity)


def check_image(image: Any) -> np.ndarray:
    """Validate a ``uint8`` H×W×3 image with both sides ≥ 32 (the input contract of every backend)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))}"
        raise ValueError(f"corruptions take a uint8 numpy array of shape (H, W, 3) (RGB, before normalisation), got {got}; "
                         "use corrupt_tensor for 3×H×W torch tensors")
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ValueError(f"corruptions need images of at least {MIN_SIDE}×{MIN_SIDE} pixels, got {image.shape[0]}×{image.shape[1]}")
    return image


def names(subset: str = "common") -> tuple[str, ...]:
    """Corruption names: ``common`` (the 15 of ImageNet-C), ``extra`` (the 4 held-out ones), ``all``, or a
    family (``noise``, ``blur``, ``weather``, ``digital``)."""
    table = {"common": COMMON, "extra": EXTRA, "all": ALL, **FAMILIES}
    if subset not in table:
        raise ConfigError(f"corruption subset={subset!r} is not valid; expected one of {list(table)}")
    return table[subset]


@dataclass(frozen=True)
class Backend:
    """A named implementation: ``apply(image, name, severity, rng)`` on validated arguments."""

    name: str
    apply: Callable[[np.ndarray, str, int, np.random.Generator], np.ndarray]
    info: dict[str, str]


def _own_apply(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    return CORRUPTIONS[name](image, severity, rng)


def _own_backend() -> Backend:
    import PIL
    import scipy

    info = {
        "backend": "mtl_bench",
        "version": IMPLEMENTATION_VERSION,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pillow": PIL.__version__,
    }
    return Backend("mtl_bench", _own_apply, info)


_FORK_LOCK = threading.Lock()
_FORK_SEEDED = ("impulse_noise", "glass_blur")


def _fork_backend() -> Backend:
    version = _version(FORK_DISTRIBUTION)
    try:
        module = importlib.import_module("imagecorruptions")
    except ImportError as e:  # also the original package's pkg_resources failure on setuptools >= 81
        raise ConfigError(f"corruption backend 'imagecorruptions' needs `pip install {FORK_DISTRIBUTION}==1.1.5` ({e})") from None
    if version is None:
        original = _version("imagecorruptions")
        raise ConfigError(f"corruption backend 'imagecorruptions' expects the {FORK_DISTRIBUTION} fork; found the package "
                          f"'imagecorruptions' {original}, whose glass_blur/gaussian_blur/fog fail on numpy 2 and scikit-image >= 0.19")
    corrupt_fn = module.corrupt

    def apply(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
        seed = int(rng.integers(2**32))
        kwargs = {"seed": seed} if name in _FORK_SEEDED else {}
        with _FORK_LOCK:
            saved = np.random.get_state()
            np.random.seed(seed)
            try:
                out = corrupt_fn(image, severity=severity, corruption_name=name, **kwargs)
            finally:
                np.random.set_state(saved)
        return np.ascontiguousarray(out, dtype=np.uint8)

    info = {"backend": "imagecorruptions", "version": f"{FORK_DISTRIBUTION} {version}"}
    for dist in ("numba", "scikit-image", "opencv-python", "opencv-python-headless", "scipy", "numpy", "Pillow"):
        v = _version(dist)
        if v is not None:
            info[dist.lower()] = v
    return Backend("imagecorruptions", apply, info)


_BACKENDS: dict[str, Backend] = {}


def get_backend(name: str = DEFAULT_BACKEND) -> Backend:
    """The backend called ``name`` (built once per process)."""
    if name not in BACKENDS:
        raise ConfigError(f"corruption backend={name!r} is not valid; expected one of {list(BACKENDS)}")
    if name not in _BACKENDS:
        _BACKENDS[name] = _own_backend() if name == "mtl_bench" else _fork_backend()
    return _BACKENDS[name]


def available_backends() -> list[str]:
    """The backends that can be used in this environment."""
    out = ["mtl_bench"]
    try:
        get_backend("imagecorruptions")
        out.append("imagecorruptions")
    except ConfigError:
        pass
    return out


def describe(backend: str = DEFAULT_BACKEND) -> dict[str, str]:
    """Provenance for run summaries and cache keys: ``{"backend", "version", <library>: <version>, ...}``."""
    return dict(get_backend(backend).info)


def as_generator(rng: np.random.Generator | int | np.random.SeedSequence | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ValueError("corrupt needs an explicit rng (a numpy Generator, a SeedSequence or an int seed) for reproducibility")
    return np.random.default_rng(rng)


def corrupt(
    image: np.ndarray,
    name: str,
    severity: int,
    rng: np.random.Generator | int | np.random.SeedSequence,
    backend: str = DEFAULT_BACKEND,
) -> np.ndarray:
    """Corrupt a ``uint8`` H×W×3 RGB image (before any normalisation); returns a new array of the same shape.

    ``rng`` supplies all randomness: the same generator state (or int seed) gives identical bytes.
    """
    check_image(image)
    name = check_name(name)
    severity = check_severity(severity)
    out = get_backend(backend).apply(image, name, severity, as_generator(rng))
    if out.shape != image.shape or out.dtype != np.uint8:  # a backend bug, never a user error
        raise RuntimeError(f"corruption {name} (backend {backend}) returned {out.dtype} {out.shape} for a {image.shape} image")
    return out


def corrupt_tensor(
    image: torch.Tensor,
    name: str,
    severity: int,
    rng: np.random.Generator | int | np.random.SeedSequence,
    backend: str = DEFAULT_BACKEND,
) -> torch.Tensor:
    """:func:`corrupt` for a ``torch.uint8`` 3×H×W tensor (torchvision's layout); returns a new 3×H×W uint8 tensor."""
    return hwc_to_chw(corrupt(chw_to_hwc(image), name, severity, rng, backend))
