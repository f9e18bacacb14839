"""Image corruptions (ImageNet-C, Hendrycks & Dietterich 2019) for robustness and transferability studies.

The 15 common corruptions (noise: ``gaussian_noise``, ``shot_noise``, ``impulse_noise``; blur:
``defocus_blur``, ``glass_blur``, ``motion_blur``, ``zoom_blur``; weather: ``snow``, ``frost``, ``fog``,
``brightness``; digital: ``contrast``, ``elastic_transform``, ``pixelate``, ``jpeg_compression``) and the 4
extra ones (``speckle_noise``, ``gaussian_blur``, ``spatter``, ``saturate``) at severities 1..5, applied to
``uint8`` H×W×3 RGB images *before* normalisation.  Labels are never touched.

* :func:`corrupt` / :func:`corrupt_tensor`: one image (numpy H×W×3 / torch 3×H×W, ``uint8``), all randomness
  from the ``rng`` argument;
* :func:`describe`: backend and versions for run summaries (backends ``mtl_bench``, our own, and
  ``imagecorruptions``, the ``imagecorruptions-imaug`` fork when installed);
* :func:`corrupted_split_cache`, :class:`CorruptedDataset`, :func:`corrupted_sets`: evaluation splits
  corrupted once and cached on disk under a content hash;
* :class:`RandomCorruption`, :class:`RandomlyCorruptedDataset`: a random corruption and severity per training
  sample.

See ``docs/corruptions.md`` for the definitions, the backend choice and the deviations from ImageNet-C.
"""

from mtl_bench.corruptions.adapters import chw_to_hwc, float_to_uint8_hwc, hwc_to_chw, uint8_hwc_to_float
from mtl_bench.corruptions.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    SEVERITIES,
    available_backends,
    corrupt,
    corrupt_tensor,
    describe,
    get_backend,
    names,
)
from mtl_bench.corruptions.cache import (
    cache_key,
    corrupt_indexed,
    corrupted_split_cache,
    fingerprint_images,
    image_seed,
)
from mtl_bench.corruptions.datasets import (
    CleanImages,
    CorruptedDataset,
    RandomCorruption,
    RandomlyCorruptedDataset,
    StagedImageDataset,
    corrupted_sets,
    dataset_fingerprint,
    load_clean_images,
)
from mtl_bench.corruptions.ops import ALL, COMMON, CORRUPTIONS, DETERMINISTIC, EXTRA, FAMILIES, IMPLEMENTATION_VERSION

__all__ = [
    "ALL", "BACKENDS", "COMMON", "CORRUPTIONS", "DEFAULT_BACKEND", "DETERMINISTIC", "EXTRA", "FAMILIES",
    "IMPLEMENTATION_VERSION", "SEVERITIES",
    "CleanImages", "CorruptedDataset", "RandomCorruption", "RandomlyCorruptedDataset", "StagedImageDataset",
    "available_backends", "cache_key", "chw_to_hwc", "corrupt", "corrupt_indexed", "corrupt_tensor", "corrupted_sets",
    "corrupted_split_cache", "dataset_fingerprint", "describe", "fingerprint_images", "float_to_uint8_hwc", "get_backend",
    "hwc_to_chw", "image_seed", "load_clean_images", "names", "uint8_hwc_to_float",
]  # fmt: skip
