"""Layout and dtype adapters between the corruption API and the datasets.

The corruption functions take and return ``uint8`` **H×W×3 numpy** arrays (RGB, before normalisation), the
layout of the reference implementations.  Datasets in ``mtl_bench.data`` produce float32 **3×H×W torch**
tensors in [0, 1] before normalisation; torchvision uses ``uint8`` 3×H×W tensors.
"""

from __future__ import annotations

import numpy as np
import torch


def chw_to_hwc(image: torch.Tensor) -> np.ndarray:
    """``uint8`` 3×H×W tensor → contiguous ``uint8`` H×W×3 array (a copy)."""
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))}"
        raise ValueError(f"expected a torch.uint8 tensor of shape (3, H, W), got {got}")
    return np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())


def hwc_to_chw(image: np.ndarray) -> torch.Tensor:
    """``uint8`` H×W×3 array → contiguous ``uint8`` 3×H×W tensor (a copy)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 numpy array of shape (H, W, 3), got {getattr(image, 'dtype', type(image))} "
                         f"{tuple(getattr(image, 'shape', ()))}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def float_to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """A float 3×H×W image in [0, 1] (a dataset sample *before* normalisation) → ``uint8`` H×W×3.

    Values are rounded to the nearest of the 256 levels (clamped to [0, 255]): exact for images decoded from
    8-bit files (CelebA), a quantisation of at most 0.5/255 for images stored as floats (the mtan ``.npy``
    copies of NYUv2 and Cityscapes, which were resized in float).
    """
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.ndim != 3 or image.shape[0] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))}"
        raise ValueError(f"expected a float tensor of shape (3, H, W) in [0, 1] (before normalisation), got {got}")
    u8 = image.detach().cpu().float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(u8.permute(1, 2, 0).numpy())


def uint8_hwc_to_float(image: np.ndarray) -> torch.Tensor:
    """``uint8`` H×W×3 → float32 3×H×W tensor in [0, 1] (``x / 255``, as torchvision's ``ToTensor``)."""
    return hwc_to_chw(image).float().div_(255.0)


def reference_scene(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB scene with hard edges (a disc, a square), stripes and mild texture (uint8 H×W×3):
    something for blurs to blur and noise to hide, used by the tests and the throughput benchmark."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([0.25 + 0.5 * x / w, 0.3 + 0.4 * y / h, 0.5 + 0.2 * np.sin(3 * np.pi * x / w) * np.cos(2 * np.pi * y / h)], -1)
    img[(x - 0.62 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.22 * min(h, w)) ** 2] = (0.85, 0.2, 0.15)
    img[int(0.6 * h) : int(0.85 * h), int(0.1 * w) : int(0.35 * w)] = (0.1, 0.12, 0.2)
    stripes = (np.floor(x / 3) % 2 == 0) & (y < 0.25 * h) & (x < 0.5 * w)
    img[stripes] = img[stripes] * 0.4 + 0.55
    img += np.random.default_rng(seed).normal(0, 0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
