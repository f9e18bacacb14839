"""Joint augmentation of an image and its dense targets, and image normalisation.

The training augmentation of the NYUv2/Cityscapes benchmarks is the one credited to Jialong Wu in
lorenmt/mtan issue #34 and copied verbatim into LibMTL (``examples/nyu/create_dataset.py``), CAGrad,
Nash-MTL and FAMO (``experiments/cityscapes/data.py``):

1. draw a scale ``s`` uniformly from ``{1.0, 1.2, 1.5}``; the crop window is ``h = int(H / s)`` by
   ``w = int(W / s)`` at a uniformly random position (top in ``0..H-h``, left in ``0..W-w``, both inclusive);
2. resize the window back to ``H×W``: bilinear with ``align_corners=True`` for the image and the surface
   normals, PyTorch's ``nearest`` (source index ``floor(dst · h / H)``) for segmentation labels and depth;
3. divide depth by ``s`` (zooming in by ``s`` brings the scene ``s`` times closer);
4. with probability 0.5 flip horizontally and negate the x-component (channel 0) of the normals.

Deviations from the official code, all numerically negligible or opt-in:

* randomness comes from a private, seeded ``torch.Generator`` instead of Python's ``random`` and the global
  torch RNG (see :class:`RandomScaleCropFlip` for how DataLoader workers get distinct streams);
* samples are converted to float32 *before* the resize (the official code resizes whatever dtype the ``.npy``
  holds, then casts), a difference of float32 rounding;
* when ``s = 1`` the crop is the whole image and the resize is skipped; PyTorch's resize to the same size is
  the identity for both modes, so the result is bit-identical;
* ``renormalize_normals=True`` re-normalises the bilinearly resized normals to unit length (pixels that stay
  all-zero stay invalid); the official code does not, and neither do we by default.  Without it, normals next
  to invalid (all-zero) pixels come out shorter than 1 after blending and count as valid.

The Cityscapes copies divide the stored *inverse* depth by ``s`` as well; that is physically the wrong
direction (disparity should be multiplied), but it is what every published Cityscapes number used, so we
keep it (``depth`` kind) for comparability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
import torch.nn.functional as F
from torch.utils.data import get_worker_info

from mtl_bench.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = (None, "imagenet")

# How each target is resized: "label" nearest, "depth" nearest and divided by s, "normal" bilinear with
# the x-component negated on flips.  Keys are the task names of the shared data contract.
TARGET_KINDS: dict[str, str] = {"seg": "label", "depth": "depth", "normal": "normal"}
_KINDS = ("label", "depth", "normal")

DEFAULT_SCALES = (1.0, 1.2, 1.5)


def check_normalize(normalize: str | None) -> str | None:
    """Validate an image normalisation option (``None`` = raw [0, 1] floats, ``"imagenet"``)."""
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize={normalize!r} is not supported; expected one of {list(NORMALIZATIONS)}")
    return normalize


def normalize_image(image: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """Apply the normalisation to a C×H×W float image in [0, 1]; ``None`` returns it unchanged."""
    if normalize is None:
        return image
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


class StagedImages(Dataset):
    """Base of the image datasets: ``__getitem__`` is ``raw_sample`` → ``augment_sample`` → ``normalize_sample``.

    The stages are public so that :mod:`mtl_bench.corruptions` can corrupt the ``uint8``-representable image
    between the raw sample and the normalisation.  Subclasses implement ``raw_sample(index, with_image=True)``
    (float32 3×H×W in [0, 1] or ``None``, targets) and override the other two stages where needed."""

    normalize: str | None = None

    def raw_sample(self, index: int, with_image: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def augment_sample(self, image: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training augmentation; the inputs unchanged by default."""
        return image, targets

    def normalize_sample(self, image: torch.Tensor) -> torch.Tensor:
        """The configured normalisation of a float [0, 1] image (the last stage of ``__getitem__``)."""
        return normalize_image(image, self.normalize)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, targets = self.raw_sample(index)
        image, targets = self.augment_sample(image, targets)
        return self.normalize_sample(image), targets


@dataclass(frozen=True)
class ScaleCropParams:
    """One draw of the augmentation: scale, crop window origin and whether to flip."""

    scale: float
    top: int
    left: int
    flip: bool


def crop_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The crop window ``(int(H / s), int(W / s))`` of the official code."""
    return int(height / scale), int(width / scale)


def scale_crop_flip(
    image: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    params: ScaleCropParams,
    kinds: Mapping[str, str] = TARGET_KINDS,
    renormalize_normals: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Apply one fixed draw of the augmentation (deterministic; see the module docstring).

    ``image`` is float C×H×W; targets: ``label`` H×W class ids (any dtype, −1 = ignore), float ``depth`` 1×H×W,
    float ``normal`` 3×H×W.  Returns tensors of the same shapes and dtypes (possibly views of the inputs when
    ``s = 1`` and no flip is drawn).
    """
    height, width = image.shape[-2:]
    h, w = crop_size(height, width, params.scale)
    top, left = params.top, params.left
    if not (0 <= top <= height - h and 0 <= left <= width - w):
        raise ValueError(f"crop window {h}x{w} at ({top}, {left}) does not fit in a {height}x{width} image")
    resize = (h, w) != (height, width)

    def window(t: torch.Tensor, mode: str) -> torch.Tensor:
        t = t[..., top : top + h, left : left + w]
        if not resize:
            return t
        extra = {"align_corners": True} if mode == "bilinear" else {}
        return F.interpolate(t.unsqueeze(0), size=(height, width), mode=mode, **extra).squeeze(0)

    out_image = window(image, "bilinear")
    out: dict[str, torch.Tensor] = {}
    for name, t in targets.items():
        kind = kinds.get(name)
        if kind not in _KINDS:
            raise ValueError(f"no augmentation rule for target '{name}' (kind {kind!r}); expected kinds {_KINDS}")
        if kind == "label":
            r = window(t.unsqueeze(0).to(torch.float32), "nearest").squeeze(0).to(t.dtype)
        elif kind == "depth":
            r = window(t, "nearest") / params.scale
        else:
            r = window(t, "bilinear")
            if renormalize_normals and resize:
                r = r / r.norm(dim=0, keepdim=True).clamp_min(1e-12)
        out[name] = r
    if params.flip:
        out_image = out_image.flip(-1)
        for name, t in out.items():
            t = t.flip(-1)
            if kinds[name] == "normal":
                t[0] = -t[0]
            out[name] = t
    return out_image, out


class RandomScaleCropFlip:
    """The mtan #34 augmentation with its own seeded random stream.

    Reproducibility: in the main process (``num_workers=0``) the parameters are drawn from a
    ``torch.Generator`` seeded with ``seed``, so the sequence of augmentations is a function of ``seed`` and of
    the order in which samples are requested; the global torch/numpy/Python RNGs are never touched.  Inside a
    DataLoader worker the generator is re-seeded on first use from ``(seed, worker_info.seed)``; PyTorch sets
    ``worker_info.seed = base_seed + worker_id`` with ``base_seed`` drawn from the DataLoader's own
    ``generator``.  Workers therefore get distinct streams, and a loader with a seeded generator reproduces the
    same augmentations run after run for a fixed ``num_workers`` (the streams differ between worker counts).
    Non-persistent workers draw a new ``base_seed`` every epoch; persistent workers continue their streams.
    """

    def __init__(
        self,
        scales: Sequence[float] = DEFAULT_SCALES,
        flip_prob: float = 0.5,
        seed: int = 0,
        kinds: Mapping[str, str] = TARGET_KINDS,
        renormalize_normals: bool = False,
    ):
        scales = tuple(float(s) for s in scales)
        if not scales or any(not s >= 1.0 for s in scales):
            raise ConfigError(f"augmentation scales must be a non-empty list of values >= 1, got {list(scales)}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"augmentation flip_prob must lie in [0, 1], got {flip_prob}")
        self.scales = scales
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.kinds = dict(kinds)
        self.renormalize_normals = bool(renormalize_normals)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._stream: tuple[int, int] | None = None  # (worker id, worker seed) the generator was seeded for

    def _rng(self) -> torch.Generator:
        info = get_worker_info()
        if info is not None and (info.id, info.seed) != self._stream:
            # Each worker holds its own copy of this object; seed it once per worker (and per base seed).
            mixed = np.random.SeedSequence([self.seed % 2**64, info.seed % 2**64]).generate_state(1, np.uint64)[0]
            self._generator = torch.Generator().manual_seed(int(mixed) % 2**63)
            self._stream = (info.id, info.seed)
        return self._generator

    def sample_params(self, height: int, width: int) -> ScaleCropParams:
        """Draw the scale, the crop origin and the flip for an ``height × width`` sample."""
        g = self._rng()
        scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=g))]
        h, w = crop_size(height, width, scale)
        top = int(torch.randint(height - h + 1, (1,), generator=g))
        left = int(torch.randint(width - w + 1, (1,), generator=g))
        flip = bool(torch.rand(1, generator=g) < self.flip_prob)
        return ScaleCropParams(scale=scale, top=top, left=left, flip=flip)

    def __call__(
        self, image: torch.Tensor, targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params = self.sample_params(*image.shape[-2:])
        return scale_crop_flip(image, targets, params, self.kinds, self.renormalize_normals)
