"""MTAN on a ResNet encoder (Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019), in
the variant of LibMTL's ``architecture/MTAN.py`` (written from a reading of it; no code copied).  Our SegNet-MTAN
(``backbone=mtan``, ``mtl_bench.models.segnet``) is the paper's own network.

Images only: the input must be (C, H, W) — e.g. ``dataset=synthetic_images`` / ``synthetic_scenes`` with
``heads=conv`` (dense maps), or ``pool: true`` with ``heads=linear`` for vector heads.  The synthetic default
(``dataset=synthetic``, vector input) cannot feed a conv net and is refused with one line.

The shared backbone is a timm ResNet (``model_name``: ``resnet18``/``resnet50``/``test_resnet`` …; weights only
from a local ``pretrained_file``, as ``TimmEncoder``): the stem, then each stage ``i`` (``layer1``–``layer4``) split
into its blocks but the last (output ``p_i``) and its last block (output ``s_i``).  Per task ``t`` and stage ``i``:

* mask ``m = g_t,i(p_i)`` at stage 0 and ``g_t,i([p_i; a_t,i−1])`` after, where ``g`` is
  1×1 conv–BN–ReLU–1×1 conv–BN–sigmoid (hidden width ``C_i / expansion``, output ``C_i``);
* ``a_t,i = m ⊙ s_i``, then — for the first three stages — ``encoder_block_att[i]`` (a residual block of the
  backbone's kind, ``C_i → C_i+1``, stride 1, 1×1 conv–BN shortcut);
* task ``t``'s representation is ``a_t,3`` (``C_3`` channels at the backbone's output stride; pooled to a vector
  with ``pool: true``).

Sharing (``summary.json["sharing"]``): the backbone and ``encoder_block_att`` are shared; the attention modules
``g_t,·`` are task ``t``'s (declared via ``task_modules``: the combiner does not see them, they get task ``t``'s
gradient like a head).  LibMTL's ``get_share_params`` returns the backbone only, so its ``encoder_block_att``,
which every task passes through, bypasses the gradient combiner and receives the plain sum of the task gradients;
here it counts as shared (``block_att_shared: true``) and the combiner sees it.  (Older LibMTL versions built each
stage's attention list as ``[module] * task_num``, one module shared by all tasks; later versions build one per
task, as here.)

Deviations from LibMTL:

* any timm ResNet, not only torchvision ResNet-18/34/50 with 64·2^i channels: widths are read from the blocks.
  When a stage has a single block (``test_resnet``), ``p_i`` is the stage's input; when ``p_i`` and ``s_i`` (or
  ``a_t,i−1`` and ``s_i``) differ in size, the former is max-pooled to ``s_i``'s size (``adaptive_max_pool2d``:
  LibMTL's 2×2 max-pool whenever the size halves exactly; LibMTL pools ``a_t,0`` unconditionally after stage 0 and
  later ones when the sizes differ, which gives the same maps for its ResNets);
* ``encoder_block_att`` is timm's ``BasicBlock``/``Bottleneck`` (the kind of the next stage's last block) with
  PyTorch's default initialisation; attention convolutions keep their biases, as LibMTL.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.cross_stitch import resnet_parts
from mtl_bench.models.mtl_model import TaskAwareEncoder
from mtl_bench.models.timm_encoder import TimmEncoder


def out_channels(block: nn.Module) -> int:
    """Output channels of a ResNet block (its last convolution; the shortcut's has the same width)."""
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def expansion(block: nn.Module) -> int:
    if isinstance(block, Bottleneck):
        return Bottleneck.expansion
    if isinstance(block, BasicBlock):
        return BasicBlock.expansion
    raise ConfigError(
        f"backbone mtan_resnet needs BasicBlock/Bottleneck stages, got {type(block).__name__}; use e.g. resnet18, resnet50 or test_resnet"
    )


def block_att(c_in: int, c_out: int, kind: nn.Module) -> nn.Module:
    """LibMTL's ``encoder_block_att``: a stride-1 residual block ``c_in → c_out`` with a 1×1 conv–BN shortcut."""
    cls = Bottleneck if isinstance(kind, Bottleneck) else BasicBlock
    shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
    return cls(c_in, c_out // cls.expansion, downsample=shortcut)


def attention(c_gate: int, hidden: int, c_out: int) -> nn.Sequential:
    """1×1 conv–BN–ReLU–1×1 conv–BN–sigmoid from ``c_gate`` to ``c_out`` channels through ``hidden``."""
    return nn.Sequential(
        nn.Conv2d(c_gate, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, c_out, 1), nn.BatchNorm2d(c_out), nn.Sigmoid(),
    )  # fmt: skip


def fit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` max-pooled to ``like``'s spatial size (unchanged if it already has it)."""
    return x if x.shape[-2:] == like.shape[-2:] else F.adaptive_max_pool2d(x, like.shape[-2:])


class MTANResNet(TaskAwareEncoder):
    def __init__(self, input_shape: Sequence[int], task_names: Sequence[str], model_name: str = "test_resnet",
                 output_stride: int = 32, pretrained_file: str | None = None, pool: bool = False):
        super().__init__(task_names)
        if len(input_shape) != 3:
            raise ConfigError(
                f"backbone mtan_resnet needs image inputs (C, H, W), the dataset gives {tuple(input_shape)}; "
                "use e.g. dataset=synthetic_images (the vector dataset=synthetic cannot feed a ResNet)"
            )
        backbone = TimmEncoder(input_shape, model_name, output_stride, pretrained_file, out_indices=(4,))
        stem, layers = resnet_parts(backbone)
        self.stem = stem
        self.pre = nn.ModuleList(layer[:-1] for layer in layers)  # a stage's blocks but the last (may be empty)
        self.last = nn.ModuleList(layer[-1] for layer in layers)
        ch = [out_channels(b) for b in self.last]
        pre_ch = [next(m for m in b.modules() if isinstance(m, nn.Conv2d)).in_channels for b in self.last]
        self.block_att = nn.ModuleList(block_att(ch[i], ch[i + 1], self.last[i + 1]) for i in range(3))
        self.attention = nn.ModuleDict({
            t: nn.ModuleList(attention(pre_ch[i] + (ch[i] if i else 0), ch[i] // expansion(self.last[i]), ch[i]) for i in range(4))
            for t in self.task_names
        })  # fmt: skip
        self.pool = bool(pool)
        self.model_name = model_name
        self.out_dim: Any = ch[3]
        self.reduction = backbone.reduction

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.stem(x)
        feats: list[torch.Tensor | None] = [None] * len(self.task_names)
        for i in range(4):
            p = self.pre[i](h)
            h = self.last[i](p)
            p = fit(p, h)
            for k, t in enumerate(self.task_names):
                prev = feats[k]
                gate_in = p if prev is None else torch.cat((p, fit(prev, h)), dim=1)
                a = self.attention[t][i](gate_in) * h
                feats[k] = self.block_att[i](a) if i < 3 else a
        out = [f for f in feats if f is not None]
        return tuple(f.mean(dim=(2, 3)) for f in out) if self.pool else tuple(out)

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.attention[task]]

    def last_shared_module(self) -> nn.Module:
        """The last convolution of ``layer4``'s last block (every task's representation is a mask times its output)."""
        return [m for m in self.last[3].modules() if isinstance(m, nn.Conv2d)][-1]

    def sharing(self) -> dict[str, Any]:
        return {"architecture": "mtan_resnet", "model_name": self.model_name, "attention": "task-specific",
                "block_att_shared": True}
