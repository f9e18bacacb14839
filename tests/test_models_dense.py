"""Dense-prediction backbones and heads: timm encoders, SegNet split / MTAN, ASPP and conv heads."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.dense_heads import ASPPHead, ConvHead
from mtl_bench.models.heads import MLPHead
from mtl_bench.models.mtl_model import MultiTaskModel, build_model
from mtl_bench.models.segnet import (
    MTANFeatures,
    MTANHead,
    SegNetEncoder,
    SegNetHead,
    SegNetMTANEncoder,
    resize_bilinear_aligned,
    unpool_2x2,
)
from mtl_bench.models.timm_encoder import TimmEncoder
from mtl_bench.tasks import Task

NARROW = (4, 8, 8, 16, 16)


def _task(name: str, out_dim: int, kind: str) -> Task:
    return Task(name=name, loss=F.mse_loss, metrics=dict, out_dim=out_dim, kind=kind)


NYU = {"seg": _task("seg", 13, "segmentation"), "depth": _task("depth", 1, "depth"), "normal": _task("normal", 3, "normal")}


def _segnet(mtan: bool, input_shape=(3, 32, 64), channels=NARROW, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    if mtan:
        return build_model(partial(SegNetMTANEncoder, channels=channels), {t: MTANHead for t in NYU}, NYU, input_shape)
    return build_model(partial(SegNetEncoder, channels=channels), {t: SegNetHead for t in NYU}, NYU, input_shape)


def _timm_aspp(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    heads = {t: partial(ASPPHead, channels=8, rates=(1, 2, 3)) for t in NYU}
    return build_model(partial(TimmEncoder, model_name="test_resnet", output_stride=8), heads, NYU, (3, 64, 64))


# ---------------------------------------------------------------------------------------------- timm encoders


def _convs(module: nn.Module) -> dict[str, tuple]:
    return {
        n: (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.dilation, m.padding)
        for n, m in module.named_modules()
        if isinstance(m, nn.Conv2d)
    }


@pytest.mark.parametrize("output_stride, dilate", [(8, [False, True, True]), (16, [False, False, True]), (32, [False, False, False])])
def test_dilated_resnet50_has_torchvisions_stride_and_dilation_pattern(output_stride, dilate):
    with torch.device("meta"):  # structure only: no weights are initialised
        ours = TimmEncoder((3, 64, 64), model_name="resnet50", output_stride=output_stride)
        reference = torchvision.models.resnet50(replace_stride_with_dilation=dilate)
    assert _convs(ours.body) == _convs(reference)  # every conv by name: channels, kernel, stride, dilation, padding
    assert (ours.out_dim, ours.reduction) == (2048, output_stride)
    if output_stride == 8:  # the DeepLab pattern stated in the docstring
        assert [ours.body.layer3[i].conv2.dilation[0] for i in range(6)] == [1, 2, 2, 2, 2, 2]
        assert [ours.body.layer4[i].conv2.dilation[0] for i in range(3)] == [2, 4, 4]


def test_timm_encoder_feature_shapes_and_multi_level_output():
    x = torch.randn(2, 3, 64, 64)
    os8 = TimmEncoder((3, 64, 64), model_name="test_resnet", output_stride=8).eval()
    os32 = TimmEncoder((3, 64, 64), model_name="test_resnet", output_stride=32).eval()
    assert os8(x).shape == (2, os8.out_dim, 8, 8) and os8.reduction == 8
    assert os32(x).shape == (2, os32.out_dim, 2, 2) and os32.reduction == 32
    multi = TimmEncoder((3, 64, 64), model_name="test_resnet", output_stride=8, out_indices=(1, 4))
    feats = multi(x)
    assert isinstance(feats, tuple) and [f.shape[1:] for f in feats] == [
        (c, 64 // r, 64 // r) for c, r in zip(multi.feature_channels, multi.feature_reductions)
    ]
    assert multi.out_dim == multi.feature_channels[-1] == feats[-1].shape[1]
    # dense heads read the deepest level of a multi-level representation
    head = ConvHead(multi.out_dim, NYU["seg"], hidden=8)
    assert head(feats).shape == (2, 13, 8, 8)


def test_celeba_resnet18_pool_gives_the_mean_feature_for_linear_heads():
    torch.manual_seed(0)
    pooled = TimmEncoder((3, 64, 64), model_name="resnet18", output_stride=32, pool=True).eval()
    dense = TimmEncoder((3, 64, 64), model_name="resnet18", output_stride=32).eval()
    dense.load_state_dict(pooled.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        vec, fmap = pooled(x), dense(x)
    assert pooled.out_dim == 512 and vec.shape == (3, 512)
    torch.testing.assert_close(vec, fmap.mean(dim=(2, 3)))
    head = MLPHead(pooled.out_dim, _task("smiling", 1, "binary"), hidden=[])
    assert head(vec).shape == (3, 1) and len(head.net) == 1  # one linear layer per attribute


def test_torchvision_weights_file_loads_into_the_dilated_timm_encoder(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()  # stands in for the ImageNet checkpoint (same keys incl. fc.*)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    enc = TimmEncoder((3, 64, 64), model_name="resnet18", output_stride=8, pretrained_file=str(path))
    expected = reference.state_dict()
    loaded = enc.body.state_dict()
    assert set(loaded) == set(expected) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(v, expected[k]) for k, v in loaded.items())


def test_safetensors_weights_file_loads(tmp_path):
    torch.manual_seed(2)
    source = TimmEncoder((3, 64, 64), model_name="test_resnet", output_stride=8)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, str(path))
    torch.manual_seed(3)  # a different random init, overwritten by the file
    enc = TimmEncoder((3, 64, 64), model_name="test_resnet", output_stride=8, pretrained_file=str(path))
    assert all(torch.equal(p, q) for p, q in zip(enc.state_dict().values(), source.state_dict().values()))


def test_weights_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(ConfigError, match=f"pretrained_file='{missing}' does not exist"):
        TimmEncoder((3, 64, 64), model_name="test_resnet", pretrained_file=str(missing))
    sd = TimmEncoder((3, 64, 64), model_name="test_resnet").body.state_dict()
    foreign = tmp_path / "prefixed.pth"  # e.g. an MTL checkpoint's encoder: timm alone would load nothing and say nothing
    torch.save({f"encoder.{k}": v for k, v in sd.items()}, foreign)
    with pytest.raises(ConfigError, match=r"prefixed\.pth' has 90 weights that test_resnet does not have \(first: 'encoder\.conv1\."):
        TimmEncoder((3, 64, 64), model_name="test_resnet", pretrained_file=str(foreign))
    partial_file = tmp_path / "no_layer4.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer4.")}, partial_file)
    with pytest.raises(ConfigError, match=r"no_layer4\.pth' lacks \d+ of the 90 weights of test_resnet \(first: 'layer4\."):
        TimmEncoder((3, 64, 64), model_name="test_resnet", pretrained_file=str(partial_file))
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({**sd, "layer1.0.conv1.weight": torch.zeros(1, 1, 1, 1)}, wrong_shape)
    with pytest.raises(ConfigError, match=r"wrong_shape\.pth' does not fit test_resnet: .*size mismatch for layer1\.0\.conv1\.weight"):
        TimmEncoder((3, 64, 64), model_name="test_resnet", pretrained_file=str(wrong_shape))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(ConfigError, match="garbage.safetensors' could not be read"):
        TimmEncoder((3, 64, 64), model_name="test_resnet", pretrained_file=str(garbage))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model_name": "resnet_does_not_exist"}, "model_name='resnet_does_not_exist' is not a timm model"),
        ({"output_stride": 4}, r"output_stride=4 is invalid; choose one of \[8, 16, 32\]"),
        ({"out_indices": (1, 4), "pool": True}, r"pool=true pools a single feature map, but backbone.out_indices=\[1, 4\]"),
        ({"out_indices": (7,)}, r"out_indices=\[7\] is out of range"),
        ({"out_indices": ()}, "out_indices is empty"),
    ],
)
def test_timm_encoder_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TimmEncoder((3, 64, 64), **{"model_name": "test_resnet", **kwargs})


def test_timm_last_shared_module_is_the_last_conv_of_the_deepest_stage():
    with torch.device("meta"):
        enc = TimmEncoder((3, 64, 64), model_name="resnet18", output_stride=8)
    assert enc.last_shared_module() is enc.body.layer4[1].conv2


# ---------------------------------------------------------------------------------------------- dense heads


def test_aspp_head_structure_and_resolution():
    head = ASPPHead(32, NYU["seg"], channels=16, rates=(12, 24, 36))
    dilations = [b[0].dilation[0] for b in head.branches[1:4]]
    assert dilations == [12, 24, 36] and [b[0].padding[0] for b in head.branches[1:4]] == [12, 24, 36]
    assert head.project[0][0].in_channels == 5 * 16  # 1×1 + three atrous + image pooling
    assert isinstance(head.project[1], nn.Dropout) and head.project[1].p == 0.5
    out = head(torch.randn(2, 32, 9, 12))
    assert out.shape == (2, 13, 9, 12)  # stays at the feature resolution; the loss resizes


def test_aspp_head_computes_torchvisions_deeplab_head():
    # LibMTL's DeepLabHead has torchvision's structure; with the same weights the outputs must agree
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    torch.manual_seed(0)
    ours, reference = ASPPHead(16, NYU["seg"]).eval(), DeepLabHead(16, 13).eval()
    assert [v.shape for v in ours.state_dict().values()] == [v.shape for v in reference.state_dict().values()]
    ours.load_state_dict(dict(zip(ours.state_dict(), reference.state_dict().values())))
    x = torch.randn(2, 16, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_aspp_image_pooling_branch_is_constant_over_space():
    head = ASPPHead(8, NYU["depth"], channels=4, rates=(1,)).eval()
    pooled = head.branches[-1](torch.randn(2, 8, 5, 7))
    assert pooled.shape == (2, 4, 5, 7)
    torch.testing.assert_close(pooled, pooled[:, :, :1, :1].expand_as(pooled))


def test_dense_heads_reject_non_dense_inputs():
    with pytest.raises(ConfigError, match="head ASPPHead for task 'seg' needs an encoder with one feature map"):
        ASPPHead(MTANFeatures((4, 8, 8, 16, 16), nn.Identity()), NYU["seg"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"head ConvHead needs an N×C×h×w feature map, the encoder gave shape \(2, 16\)"):
        ConvHead(16, NYU["seg"], hidden=4)(torch.randn(2, 16))
    with pytest.raises(ConfigError, match=r"rates=\[0\]"):
        ASPPHead(16, NYU["seg"], rates=(0,))


def test_deeplab_model_outputs_one_eighth_resolution_maps():
    model = _timm_aspp()
    out = model(torch.randn(2, 3, 64, 64))
    assert {t: o.shape for t, o in out.items()} == {"seg": (2, 13, 8, 8), "depth": (2, 1, 8, 8), "normal": (2, 3, 8, 8)}


@pytest.mark.slow
def test_nyuv2_deeplab_resnet50_os8_forward():
    heads = {t: ASPPHead for t in NYU}
    model = build_model(partial(TimmEncoder, model_name="resnet50", output_stride=8), heads, NYU, (3, 288, 384)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 288, 384))
    assert out["seg"].shape == (1, 13, 36, 48) and out["normal"].shape == (1, 3, 36, 48)


# ---------------------------------------------------------------------------------------------- SegNet and MTAN


def _counts(model: MultiTaskModel) -> dict[str, int]:
    return model.parameter_counts()


def test_segnet_split_parameter_counts_match_the_official_model():
    with torch.device("meta"):
        model = _segnet(mtan=False, input_shape=(3, 288, 384), channels=(64, 128, 256, 512, 512))
    # Nash-MTL `SegNet`: shared_parameters() 24,943,296; pred_task1/2/3 37,773 / 36,993 / 37,123
    assert _counts(model) == {"shared": 24_943_296, "head/seg": 37_773, "head/depth": 36_993, "head/normal": 37_123}


def test_segnet_mtan_parameter_split_attention_masks_are_task_parameters():
    with torch.device("meta"):
        model = _segnet(mtan=True, input_shape=(3, 288, 384), channels=(64, 128, 256, 512, 512))
    counts = _counts(model)
    # shared: SegNet (24,943,296) + shared attention convolutions f (10,220,160); per task: masks (2,984,576) + prediction
    assert counts == {"shared": 35_163_456, "head/seg": 3_022_349, "head/depth": 3_021_569, "head/normal": 3_021_699}
    assert sum(p.numel() for p in model.encoder.attention.parameters()) == 10_220_160
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters()) == 44_229_073  # the official total
    # Nash-MTL's split ("shared" = everything but the prediction layers) for comparison
    preds = sum(p.numel() for h in model.heads.values() for p in h.pred.parameters())
    assert sum(counts.values()) - preds == 44_117_184


def test_shared_and_task_parameters_partition_segnet_models():
    for mtan in (False, True):
        model = _segnet(mtan)
        shared = {id(p) for p in model.shared_parameters()}
        heads = [{id(p) for p in model.task_parameters(t)} for t in model.task_names]
        assert shared.isdisjoint(set().union(*heads)) and all(a.isdisjoint(b) for a in heads for b in heads if a is not b)
        assert shared | set().union(*heads) == {id(p) for p in model.parameters()}
        # the state dict holds every tensor once (the heads' reference to the shared convolutions is not registered)
        assert not any(k.startswith("heads.") and ".attention." in k for k in model.state_dict())


@pytest.mark.parametrize("mtan", [False, True])
@pytest.mark.parametrize("hw", [(32, 64), (36, 52)])  # multiples of 32, and not (sizes are restored exactly)
def test_segnet_forward_shapes_for_three_tasks(mtan, hw):
    model = _segnet(mtan, input_shape=(3, *hw))
    x = torch.randn(2, 3, *hw)
    rep = model.encode(x)
    out = model.decode(rep)
    assert {t: o.shape for t, o in out.items()} == {"seg": (2, 13, *hw), "depth": (2, 1, *hw), "normal": (2, 3, *hw)}
    if mtan:
        assert isinstance(rep, tuple) and len(rep) == 20
        assert [r.shape[1] for r in rep] == [*NARROW, *NARROW, *NARROW, NARROW[0], *NARROW[:-1]]
        assert rep[15].shape == (2, NARROW[0], *hw)  # the decoder's full-resolution output
    else:
        assert rep.shape == (2, model.encoder.out_dim, *hw)


def test_segnet_heads_return_raw_outputs():
    model = _segnet(mtan=True)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 64))
    # no log-softmax on segmentation, no unit normals inside the network (the official models do both)
    assert not torch.allclose(out["seg"].exp().sum(1), torch.ones(2, 32, 64), atol=1e-3)
    assert not torch.allclose(out["normal"].norm(dim=1), torch.ones(2, 32, 64), atol=1e-3)


def test_mtan_task_gradient_does_not_reach_other_tasks_attention():
    model = _segnet(mtan=True)
    out = model(torch.randn(2, 3, 32, 64))
    loss = out["seg"].square().mean()
    depth, normal = model.task_parameters("depth"), model.task_parameters("normal")
    own, shared_f = model.task_parameters("seg"), list(model.encoder.attention.parameters())
    grads = torch.autograd.grad(loss, [*depth, *normal, *own, *shared_f], allow_unused=True)
    n_other = len(depth) + len(normal)
    assert all(g is None for g in grads[:n_other])  # not even in the graph of another task's loss
    own_grads, f_grads = grads[n_other : n_other + len(own)], grads[n_other + len(own) :]
    assert all(g is not None for g in own_grads) and sum(g.abs().sum() for g in own_grads) > 0
    assert all(g is not None and g.abs().sum() > 0 for g in f_grads[::3])  # shared f: conv weights of every level get signal


def test_mtan_shared_convolutions_stay_shared_after_deepcopy_and_to():
    model = _segnet(mtan=True)
    clone = copy.deepcopy(model).to(torch.float64)
    assert all(h.features.shared is clone.encoder.attention for h in clone.heads.values())
    assert clone.encoder.attention is not model.encoder.attention
    assert clone.encoder.shared_modules_in_heads() == [clone.encoder.attention]


def test_segnet_last_shared_module_produces_the_representation():
    model = _segnet(mtan=False)
    seen = []
    model.encoder.last_shared_module().register_forward_hook(lambda m, i, o: seen.append(o))
    rep = model.encode(torch.randn(2, 3, 32, 64))
    assert len(seen) == 1 and seen[0] is rep
    assert [id(p) for p in model.last_shared_parameters()] == [id(p) for p in model.encoder.up[0].rest[-1].parameters()]


def test_segnet_config_errors():
    with pytest.raises(ConfigError, match=r"needs H and W >= 32 \(five 2x2 poolings\); input_shape=\(3, 16, 64\)"):
        SegNetEncoder((3, 16, 64))
    with pytest.raises(ConfigError, match=r"backbone.channels=\[8, 16\] is invalid; expected 5 positive widths"):
        SegNetMTANEncoder((3, 32, 32), channels=(8, 16))
    with pytest.raises(ConfigError, match="head MTANHead for task 'seg' needs the SegNetMTANEncoder backbone, got in_dim=64"):
        MTANHead(64, NYU["seg"])  # type: ignore[arg-type]
    enc = SegNetMTANEncoder((3, 32, 32), channels=NARROW)
    match = r"head SegNetHead for task 'depth' needs an encoder with one feature map .*, got MTANFeatures\(channels=\(4, 8, 8, 16, 16\)\)$"
    with pytest.raises(ConfigError, match=match):
        SegNetHead(enc.out_dim, NYU["depth"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- deterministic mode


@pytest.fixture
def deterministic_algorithms():
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield lambda on: torch.use_deterministic_algorithms(on)
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@pytest.mark.parametrize("hw", [(8, 12), (9, 13)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_written_out_unpool_and_resize_equal_the_torch_kernels(deterministic_algorithms, hw, memory_format):
    x = torch.randn(2, 3, *hw).contiguous(memory_format=memory_format)
    values, indices = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
    small = torch.randn(2, 3, 5, 3, dtype=torch.float64)
    deterministic_algorithms(False)
    unpooled, resized = unpool_2x2(values, indices, hw), resize_bilinear_aligned(small, hw)
    deterministic_algorithms(True)
    assert torch.equal(unpool_2x2(values, indices, hw), unpooled)
    torch.testing.assert_close(resize_bilinear_aligned(small, hw), resized, rtol=0, atol=1e-12)


def test_mtan_trains_under_deterministic_algorithms(deterministic_algorithms):
    # torch's max_unpool2d raises in this mode (trainer.deterministic=true), even on CPU
    model = _segnet(mtan=True)
    x = torch.randn(2, 3, 36, 52)

    def step() -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model(x)
        sum(o.square().mean() for o in out.values()).backward()
        return {t: o.detach() for t, o in out.items()}, [p.grad.clone() for p in model.parameters()]

    deterministic_algorithms(False)
    ref_out, ref_grads = step()
    deterministic_algorithms(True)
    out, grads = step()
    for t in ref_out:
        torch.testing.assert_close(out[t], ref_out[t])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- memory format, autocast


def _models() -> dict[str, tuple[MultiTaskModel, tuple[int, int]]]:
    return {"segnet": (_segnet(False), (32, 64)), "mtan": (_segnet(True), (32, 64)), "deeplab": (_timm_aspp(), (64, 64))}


@pytest.mark.parametrize("name", ["segnet", "mtan", "deeplab"])
def test_channels_last_matches_contiguous(name):
    model, hw = _models()[name]
    model.eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for t in ref:
        torch.testing.assert_close(out[t], ref[t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, min_cosine", [("segnet", 0.5), ("mtan", 0.5), ("deeplab", 0.999)])
def test_bf16_autocast_on_cpu(name, min_cosine):
    model, hw = _models()[name]
    model.eval()
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    for t in ref:
        assert out[t].dtype == torch.bfloat16 and out[t].shape == ref[t].shape and torch.isfinite(out[t]).all()
        # the same function up to bf16 rounding; SegNet only loosely, since rounding can flip max-pool winners and
        # unpooling then moves values (over 20 inputs its cosine stays above 0.87, DeepLab's above 0.99999)
        assert F.cosine_similarity(out[t].float().flatten(), ref[t].flatten(), dim=0) > min_cosine
