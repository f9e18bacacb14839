"""SegNet "split" and SegNet-MTAN: the NYUv2/Cityscapes networks of the mtan → CAGrad → Nash-MTL → FAMO line.

Papers: Badrinarayanan et al., "SegNet" (TPAMI 2017) for the encoder–decoder; Liu, Johns, Davison, "End-to-End
Multi-Task Learning with Attention" (CVPR 2019) for the split baseline and MTAN.  Written from a reading of
``lorenmt/mtan`` ``im2im_pred/model_segnet_split.py`` / ``model_segnet_mtan.py`` and the identical
``AvivNavon/nash-mtl`` ``experiments/nyuv2/models.py`` (``SegNetSplit``, ``_SegNet``); no code was copied.

Architecture (default ``channels=(64, 128, 256, 512, 512)``, the paper's widths):

* every convolution unit is conv3×3 (with bias) → BatchNorm → ReLU; the encoder has 5 levels of
  (2, 2, 3, 3, 3) units (VGG-16's layout), each followed by a 2×2 max-pool that keeps its indices; the decoder
  mirrors it: max-unpool with the encoder's indices, then (2, 2, 3, 3, 3) units per level, the first one of a
  level mapping ``channels[l]`` to ``channels[l-1]``; the output is ``channels[0]`` (64) maps at full resolution;
* each task's prediction layer is conv3×3(64→64) → conv1×1(64→out) with biases and *no* nonlinearity in
  between (as in the official code);
* initialisation as in the official code: Xavier-normal conv weights, zero biases, BatchNorm weight 1 / bias 0.

Deviations from the official code (outputs are otherwise identical):

* the heads return raw outputs: the official models apply ``log_softmax`` to the segmentation logits and divide
  the normal prediction by its L2 norm inside the network.  Here the task's loss/metrics do both (softmax /
  cross-entropy on logits, normalisation of normals), so heads never normalise.
* max-unpooling is given the pre-pooling size and the attention path is resized to the size of the feature it
  meets (``interpolate(size=...)`` instead of ``scale_factor=2``; the same values when H and W are multiples of
  32, as for NYUv2 288×384 and Cityscapes 128×256), so other input sizes ≥ 32 also work.
* under ``torch.use_deterministic_algorithms(True)`` unpooling and the bilinear upsampling switch to equivalent
  written-out forms (``unpool_2x2``, ``resize_bilinear_aligned``), since the torch kernels refuse that mode.
* the official networks hard-code 3 tasks (NYUv2) or 2 (Cityscapes); here one head per task, any number.

Parameter counts (NYUv2, 13/1/3 output channels), measured against the official Nash-MTL models and pinned by
``tests/test_models_dense.py``; with the same weights both networks give bit-identical outputs (checked once
against the official file; the official code is not a dependency):

* SegNet split: shared 24,943,296 = the official ``SegNet.shared_parameters()`` (Nash-MTL ``segnet``, "24.9 M");
  heads 37,773 (seg) + 36,993 (depth) + 37,123 (normal) = the official ``pred_task*``; total 25,055,185.
* SegNet-MTAN: 44,229,073 in total, as the official model.  Here the split is: shared 35,163,456 (the SegNet
  above plus the paper's shared attention convolutions ``f``, 10,220,160) and per task 3,022,349 / 3,021,569 /
  3,021,699 (that task's 10 attention masks, 2,984,576, plus its prediction layer).  Nash-MTL/FAMO
  (``SegNetMtan.shared_parameters()``: every parameter without ``pred`` in its name) and LibMTL count the
  task attention masks as shared: 44,117,184 "shared" parameters, 8,953,728 of which are the three tasks' own
  masks, so their per-task gradient rows contain each task's own attention block and zeros for the others'.
  Here those masks are task (head) parameters and gradient aggregation sees only the genuinely shared 35.2 M.

MTAN in the encoder/head contract.  ``SegNetMTANEncoder`` returns the 20 intermediate shared feature maps the
attention modules read (per level: the first unit's output, the level's output, the decoder's unpooled input and
its output) and owns the paper's shared attention convolutions ``f``.  Its ``out_dim`` is an ``MTANFeatures``
spec (widths + a reference to those shared convolutions) and each ``MTANHead`` holds its task's attention masks
and prediction layer and *calls* the shared convolutions (which stay registered in, and counted with, the
encoder).  Consequences for gradient sources: a task loss's gradient w.r.t. the shared parameters is exact
through ``autograd.grad`` over the model (``grad_source=params`` with sequential per-task passes, ``last_shared``,
loss weightings).  Gradients taken at the representation are not: (1) the shared ``f`` convolutions sit *after*
the representation, so ``grad_source=representation`` and the vmapped encoder pass of
``per_task_backward=batched`` never reach them (``shared_modules_in_heads()`` lists them for the engine); (2) the
20 maps are nested (each is computed from earlier ones), so total derivatives w.r.t. them must not be pushed back
through the encoder together (they count the inner paths twice) unless the heads were applied to detached leaf
copies of the maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.tasks import Task

SEGNET_CHANNELS = (64, 128, 256, 512, 512)
UNITS_PER_LEVEL = (2, 2, 3, 3, 3)
MIN_SIDE = 2 ** len(UNITS_PER_LEVEL)  # five 2×2 poolings


def conv_unit(c_in: int, c_out: int) -> nn.Sequential:
    """SegNet's convolution unit: conv3×3 (with bias, as the official code) → BatchNorm → ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def attention_mask(c_in: int, c_out: int) -> nn.Sequential:
    """MTAN's task attention mask g: (conv1×1 → BN → ReLU) → (conv1×1 → BN → sigmoid), values in (0, 1)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 1), nn.BatchNorm2d(c_out), nn.Sigmoid(),
    )  # fmt: skip


def init_segnet(module: nn.Module) -> None:
    """The official initialisation: Xavier-normal conv weights, zero biases, BatchNorm weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def unpool_2x2(values: torch.Tensor, indices: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Invert ``max_pool2d(kernel_size=2, stride=2, return_indices=True)``: every pooled value returns to the
    position of its maximum, zeros elsewhere, in an output of ``size`` (H, W); i.e. ``F.max_unpool2d``.

    ``max_unpool2d`` raises under ``torch.use_deterministic_algorithms(True)`` (``trainer.deterministic``), although
    2×2 windows never collide; in that mode the same values are computed with ``where`` and ``pixel_shuffle``
    (deterministic, but ~9× slower than the kernel on CPU, hence not the default).
    """
    if not torch.are_deterministic_algorithms_enabled():
        return F.max_unpool2d(values, indices, kernel_size=2, stride=2, output_size=size)
    width = int(size[1])
    corner = indices // width % 2 * 2 + indices % width % 2  # which cell of its 2×2 window held the maximum
    zero = values.new_zeros(())
    cells = torch.where(corner.unsqueeze(2) == torch.arange(4, device=values.device).view(4, 1, 1), values.unsqueeze(2), zero)
    out = F.pixel_shuffle(cells.flatten(1, 2), 2)  # channel 4c + 2a + b → pixel (2i + a, 2j + b)
    pad_h, pad_w = int(size[0]) - out.shape[-2], width - out.shape[-1]  # odd sizes: the last row/column held no window
    return F.pad(out, (0, pad_w, 0, pad_h)) if pad_h or pad_w else out


def _linear_weights(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """The n_out×n_in matrix of 1-D linear interpolation with ``align_corners=True`` (hat-function weights)."""
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    dtype = torch.promote_types(like.dtype, torch.float32)  # no float64 unless the input is (MPS has none)
    src = torch.arange(n_out, device=like.device, dtype=dtype) * step
    grid = torch.arange(n_in, device=like.device, dtype=dtype)
    return (1 - (src[:, None] - grid[None, :]).abs()).clamp_min(0).to(like.dtype)


def resize_bilinear_aligned(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=True)``.

    Its CUDA backward raises under ``torch.use_deterministic_algorithms(True)``; in that mode the same map is
    computed as two matrix products (deterministic; the trainer sets ``CUBLAS_WORKSPACE_CONFIG``).
    """
    if not torch.are_deterministic_algorithms_enabled():
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    rows = _linear_weights(int(size[0]), x.shape[-2], x)
    cols = _linear_weights(int(size[1]), x.shape[-1], x)
    return rows @ x @ cols.transpose(0, 1)


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(c) for c in channels)
    if len(widths) != len(UNITS_PER_LEVEL) or any(c < 1 for c in widths):
        raise ConfigError(f"backbone.channels={list(channels)} is invalid; expected 5 positive widths, e.g. {list(SEGNET_CHANNELS)}")
    return widths


def decoder_width(channels: Sequence[int], level: int) -> int:
    """Channels of the decoder's output at ``level`` (0 = full resolution): ``channels[level - 1]``, ``channels[0]`` at 0."""
    return channels[max(level - 1, 0)]


class _Level(nn.Module):
    """One SegNet level: a first unit ``c_in → c_out`` and ``units - 1`` more at ``c_out``."""

    def __init__(self, c_in: int, c_out: int, units: int):
        super().__init__()
        self.first = conv_unit(c_in, c_out)
        self.rest = nn.Sequential(*[conv_unit(c_out, c_out) for _ in range(units - 1)])


class SegNetEncoder(nn.Module):
    """The shared SegNet encoder–decoder of the "split" MTL baseline: N×channels[0]×H×W maps (``out_dim``, 64).

    Pair it with one ``SegNetHead`` per task (the official split model), or any dense head.  ``channels`` are the
    five level widths (the paper's by default; narrow ones such as ``(8, 16, 32, 64, 64)`` for CPU tests).
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = SEGNET_CHANNELS):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"backbone {type(self).__name__} needs image inputs (C, H, W), the dataset gives {tuple(input_shape)}")
        if min(int(input_shape[1]), int(input_shape[2])) < MIN_SIDE:
            raise ConfigError(
                f"backbone {type(self).__name__} needs H and W >= {MIN_SIDE} (five 2x2 poolings); input_shape={tuple(input_shape)}"
            )
        widths = _check_channels(channels)
        self.channels = widths
        ins = (int(input_shape[0]),) + widths[:-1]
        self.down = nn.ModuleList([_Level(c_in, c, n) for c_in, c, n in zip(ins, widths, UNITS_PER_LEVEL)])
        self.up = nn.ModuleList([_Level(widths[lv], decoder_width(widths, lv), n) for lv, n in enumerate(UNITS_PER_LEVEL)])
        self.out_dim: int = widths[0]
        init_segnet(self)

    def levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
        """Per level (index 0 = full resolution): encoder first-unit outputs, encoder outputs, decoder (unpooled)
        inputs and decoder outputs.  ``dec_out[0]`` is the split model's shared representation."""
        enc_first, enc_out, indices = [], [], []
        h = x
        for level in self.down:
            a = level.first(h)
            b = level.rest(a)
            h, idx = F.max_pool2d(b, kernel_size=2, stride=2, return_indices=True)
            enc_first.append(a)
            enc_out.append(b)
            indices.append(idx)
        dec_in, dec_out = [], []
        for lv in reversed(range(len(self.up))):
            u = unpool_2x2(h, indices[lv], enc_out[lv].shape[-2:])
            h = self.up[lv].rest(self.up[lv].first(u))
            dec_in.append(u)
            dec_out.append(h)
        return enc_first, enc_out, dec_in[::-1], dec_out[::-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(x)[3][0]

    def last_shared_module(self) -> nn.Module:
        """The decoder's last convolution unit (conv + BN), the official ``SegNet.last_shared_parameters()``."""
        return self.up[0].rest[-1]


class SegNetHead(nn.Module):
    """The official SegNet/MTAN task prediction layer: conv3×3(in→in) → conv1×1(in→task.out_dim), raw outputs."""

    def __init__(self, in_dim: int, task: Task):
        super().__init__()
        if not isinstance(in_dim, int):
            raise ConfigError(
                f"head SegNetHead for task '{task.name}' needs an encoder with one feature map (integer out_dim), got {in_dim!r}"
            )
        self.net = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, padding=1), nn.Conv2d(in_dim, task.out_dim, 1))
        init_segnet(self)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.net(rep)


class MTANSharedAttention(nn.Module):
    """The shared convolutions ``f`` of MTAN's attention modules (one per level, encoder and decoder side).

    Encoder level l maps ``channels[l]`` to ``channels[l+1]`` (the last keeps its width); decoder level l maps
    ``channels[l]`` to the decoder width of that level.  Every task's attention path applies the same ``f``.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        last = len(channels) - 1
        self.down = nn.ModuleList([conv_unit(channels[lv], channels[min(lv + 1, last)]) for lv in range(len(channels))])
        self.up = nn.ModuleList([conv_unit(channels[lv], decoder_width(channels, lv)) for lv in range(len(channels))])


@dataclass(frozen=True)
class MTANFeatures:
    """``SegNetMTANEncoder.out_dim``: what an ``MTANHead`` is built from.

    ``channels`` are the five level widths; ``shared`` is the encoder's ``MTANSharedAttention`` (a reference:
    heads call it but do not register it, so its parameters stay shared and are counted once, in the encoder).
    """

    channels: tuple[int, ...]
    shared: MTANSharedAttention = field(repr=False)


class SegNetMTANEncoder(SegNetEncoder):
    """SegNet-MTAN's shared part: the SegNet encoder–decoder plus the shared attention convolutions ``f``.

    ``forward`` returns a tuple of 20 feature maps, ``enc_first[0..4] + enc_out[0..4] + dec_in[0..4] +
    dec_out[0..4]`` (see ``SegNetEncoder.levels``; level 0 = full resolution).  ``out_dim`` is an ``MTANFeatures``;
    build the heads with ``MTANHead``.  See the module docstring for the parameter split and gradient sources.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = SEGNET_CHANNELS):
        super().__init__(input_shape, channels)
        self.attention = MTANSharedAttention(self.channels)
        init_segnet(self.attention)
        self.out_dim: MTANFeatures = MTANFeatures(self.channels, self.attention)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        enc_first, enc_out, dec_in, dec_out = self.levels(x)
        return (*enc_first, *enc_out, *dec_in, *dec_out)

    def shared_modules_in_heads(self) -> list[nn.Module]:
        """Shared modules (registered here, counted as shared) that the heads apply after the representation."""
        return [self.attention]


class MTANHead(nn.Module):
    """One task's MTAN branch: its attention masks on every encoder and decoder level, and its prediction layer.

    Encoder level l: mask ``g([enc_first[l], previous])`` multiplies ``enc_out[l]``, then the shared ``f`` and a
    2×2 max-pool; decoder level l: bilinear ×2 upsampling (``align_corners=True``), the shared ``f``, the mask
    ``g([dec_in[l], ·])`` multiplies ``dec_out[l]``.  The attended full-resolution map feeds ``SegNetHead``'s
    prediction layer; the output is raw (logits / unnormalised normals).
    """

    def __init__(self, in_dim: MTANFeatures, task: Task):
        super().__init__()
        if not isinstance(in_dim, MTANFeatures):
            raise ConfigError(f"head MTANHead for task '{task.name}' needs the SegNetMTANEncoder backbone, got in_dim={in_dim!r}")
        self.features = in_dim  # a plain attribute: the shared convolutions are not registered here
        c = in_dim.channels
        self.down_masks = nn.ModuleList([attention_mask(c[0], c[0])] + [attention_mask(2 * c[lv], c[lv]) for lv in range(1, len(c))])
        self.up_masks = nn.ModuleList([attention_mask(c[lv] + decoder_width(c, lv), decoder_width(c, lv)) for lv in range(len(c))])
        init_segnet(self)
        self.pred = SegNetHead(c[0], task)

    def forward(self, rep: Sequence[torch.Tensor]) -> torch.Tensor:
        n = len(self.down_masks)
        enc_first, enc_out, dec_in, dec_out = (rep[i * n : (i + 1) * n] for i in range(4))
        shared = self.features.shared
        h: torch.Tensor | None = None
        for lv in range(n):
            gate_in = enc_first[lv] if h is None else torch.cat((enc_first[lv], h), dim=1)
            h = F.max_pool2d(shared.down[lv](self.down_masks[lv](gate_in) * enc_out[lv]), kernel_size=2, stride=2)
        for lv in reversed(range(n)):
            h = resize_bilinear_aligned(h, dec_in[lv].shape[-2:])
            h = shared.up[lv](h)
            h = self.up_masks[lv](torch.cat((dec_in[lv], h), dim=1)) * dec_out[lv]
        return self.pred(h)
