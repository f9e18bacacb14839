"""Shared encoders from timm: dilated ResNets (DeepLab, output stride 8) and plain ResNets (CelebA).

``TimmEncoder`` wraps ``timm.create_model(model_name, features_only=True, output_stride=..., out_indices=...)``.

* **Dilated ResNet-50/101, output stride 8** (the DeepLab setup of LibMTL's NYUv2/Cityscapes examples and of
  Elich et al.): timm removes the strides of ``layer3``/``layer4`` and dilates their 3×3 convolutions
  (``layer3``: 1, 2, 2, …; ``layer4``: 2, 4, 4), exactly like torchvision's
  ``resnet50(replace_stride_with_dilation=[False, True, True])`` and LibMTL's ``LibMTL/model/resnet_dilated.py``
  (``_nostride_dilate`` with ``dilate_scale=8``); ``tests/test_models_dense.py`` checks it module by module.
  Per-task ``ASPPHead`` s (``mtl_bench.models.dense_heads``) read the 2048-channel 1/8-resolution map.
* **ResNet-18/34** with output stride 32 (or 8), and ``pool=True`` for "ResNet-18 + one linear layer per
  attribute" on CelebA (Elich et al.; Kurin et al., "In Defense of the Unitary Scalarization"): the feature
  map is global-average-pooled to an N×C vector that ``mtl_bench.models.heads.MLPHead(hidden=[])`` reads.
* timm's ``test_resnet`` (0.37 M parameters) for CPU tests.

Pretrained ImageNet weights come **only from a local file** (``pretrained_file``: a ``.pth``/``.pt`` state dict
or a ``.safetensors`` file); nothing is downloaded.  timm and torchvision ResNets have identical state-dict
keys, so torchvision's ImageNet checkpoints load as they are.  The file is read with
``timm.models.load_state_dict`` (which also unwraps ``state_dict``/``model`` entries and strips a DDP
``module.`` prefix) and handed to timm through ``pretrained_cfg_overlay=dict(state_dict=...)`` (timm's
highest-priority weight source; ``dict(file=...)`` reads a file the same way, but the key checks below need the
state dict), so timm drops the classifier and adapts the stem to ``in_chans`` as usual.  Deviation from plain timm: timm loads
``features_only`` weights non-strictly (missing keys are only logged at INFO level, so a checkpoint with
foreign key names would silently leave the encoder random, and a ResNet-34 file would silently fill a ResNet-18);
here every weight of the encoder must be in the file and every weight in the file must exist in ``model_name``
(the classifier included), otherwise a ``ConfigError`` names the file and the first offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import timm
import torch
from safetensors import SafetensorError
from torch import nn

from mtl_bench.errors import ConfigError, check_choice

OUTPUT_STRIDES = (8, 16, 32)


def load_weights_file(path: str | Path, model_name: str) -> dict[str, torch.Tensor]:
    """Read a local state dict (``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``, or ``.safetensors``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"backbone.pretrained_file='{path}' does not exist; expected a local .pth or .safetensors state dict "
            f"of {model_name} (weights are never downloaded)"
        )
    try:
        return timm.models.load_state_dict(str(file))
    except (RuntimeError, SafetensorError, OSError) as e:  # torch.load refused/failed, bad safetensors header, I/O
        raise ConfigError(f"backbone.pretrained_file='{path}' could not be read as a state dict: {' '.join(str(e).split())}") from e


def check_no_foreign_weights(state_dict: dict[str, torch.Tensor], path: str, model_name: str) -> None:
    """Refuse a file with weights the full ``model_name`` network does not have (e.g. a ResNet-34 file for a
    ResNet-18: timm's non-strict ``features_only`` load would silently take the matching subset)."""
    with torch.device("meta"):  # key names only: nothing is allocated or initialised
        known = set(timm.create_model(model_name).state_dict())
    foreign = [k for k in state_dict if k not in known]
    if foreign:
        raise ConfigError(
            f"backbone.pretrained_file='{path}' has {len(foreign)} weights that {model_name} does not have "
            f"(first: '{foreign[0]}'); is it the checkpoint of another model?"
        )


class TimmEncoder(nn.Module):
    """A timm feature extractor as the shared encoder (see the module docstring for the benchmark setups).

    Args:
        input_shape: ``(C, H, W)`` of the dataset's images (``C`` becomes timm's ``in_chans``).
        model_name: any timm model that supports ``features_only`` (``resnet50``, ``resnet101``, ``resnet18``,
            ``resnet34``, ``test_resnet``, ...).
        output_stride: 8, 16 or 32; below 32, the last stages are dilated instead of strided (ResNets).
        pretrained_file: local ImageNet weights (timm or torchvision key names), or ``None`` for random init.
        out_indices: the feature levels returned (timm's indices; ResNet level 4 is ``layer4``).  One index
            gives a tensor, several a tuple (shallow to deep) whose last element is what dense heads read.  The
            levels of a tuple are nested (deeper ones are computed from shallower ones): gradients taken at the
            representation must then be taken w.r.t. detached leaf copies, not pushed back through all levels.
        pool: global-average-pool the (single) feature map to an N×C vector for linear/MLP heads.

    ``out_dim`` is the channel count of the last returned feature, ``reduction`` its stride w.r.t. the input,
    ``feature_channels``/``feature_reductions`` describe every returned level.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        model_name: str = "resnet50",
        output_stride: int = 8,
        pretrained_file: str | None = None,
        out_indices: Sequence[int] = (4,),
        pool: bool = False,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"backbone TimmEncoder needs image inputs (C, H, W), the dataset gives {tuple(input_shape)}")
        if not timm.is_model(model_name):
            raise ConfigError(f"backbone.model_name='{model_name}' is not a timm model; e.g. resnet50, resnet18, test_resnet")
        check_choice("backbone.output_stride", output_stride, OUTPUT_STRIDES)
        indices = tuple(int(i) for i in out_indices)
        if not indices:
            raise ConfigError("backbone.out_indices is empty; give at least one feature level, e.g. [4]")
        if pool and len(indices) != 1:
            raise ConfigError(f"backbone.pool=true pools a single feature map, but backbone.out_indices={list(indices)}")

        kwargs: dict = {"features_only": True, "out_indices": indices, "in_chans": int(input_shape[0])}
        if output_stride != 32:  # models without dilation support reject the argument even at its default
            kwargs["output_stride"] = output_stride
        state_dict = None
        if pretrained_file is not None:
            state_dict = load_weights_file(pretrained_file, model_name)
            check_no_foreign_weights(state_dict, pretrained_file, model_name)
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict})
        try:
            self.body = timm.create_model(model_name, **kwargs)
        except TypeError as e:
            raise ConfigError(f"backbone.model_name='{model_name}' does not support output_stride={output_stride}: {e}") from e
        except IndexError as e:
            raise ConfigError(f"backbone.out_indices={list(indices)} is out of range for '{model_name}'") from e
        except RuntimeError as e:
            if state_dict is None:
                raise
            raise ConfigError(f"backbone.pretrained_file='{pretrained_file}' does not fit {model_name}: {' '.join(str(e).split())}") from e
        if state_dict is not None:
            missing = [k for k in self.body.state_dict() if k not in state_dict and not k.endswith("num_batches_tracked")]
            if missing:
                n_total = len(self.body.state_dict())
                raise ConfigError(
                    f"backbone.pretrained_file='{pretrained_file}' lacks {len(missing)} of the {n_total} weights of "
                    f"{model_name} (first: '{missing[0]}'); expected timm/torchvision key names"
                )

        self.model_name = model_name
        self.pool = pool
        self.feature_channels: tuple[int, ...] = tuple(self.body.feature_info.channels())
        self.feature_reductions: tuple[int, ...] = tuple(self.body.feature_info.reduction())
        self.out_dim: int = self.feature_channels[-1]
        self.reduction: int = self.feature_reductions[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        features = self.body(x)
        if self.pool:
            return features[-1].mean(dim=(2, 3))
        return features[0] if len(features) == 1 else tuple(features)

    def last_shared_module(self) -> nn.Module:
        """The last convolution of the deepest stage used (as ``ConvEncoder``; for ResNets ``layerK[-1].conv3/conv2``)."""
        return [m for m in self.body.modules() if isinstance(m, nn.Conv2d)][-1]
