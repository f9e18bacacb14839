"""Cross-stitch (``mtl_bench.models.cross_stitch``) and MTAN on ResNet (``mtl_bench.models.mtan_resnet``): properties
beyond the common architecture test (tests/test_architectures.py)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.backbones import ConvEncoder, MLPEncoder
from mtl_bench.models.cross_stitch import CrossStitch, column_stages
from mtl_bench.models.mtan_resnet import MTANResNet
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.models.timm_encoder import TimmEncoder

TASKS = ["a", "b", "c"]


def stitch(**kw) -> CrossStitch:
    torch.manual_seed(0)
    return CrossStitch((5,), TASKS, partial(MLPEncoder, hidden=[6, 5, 4]), **kw).double()


def x_vec() -> torch.Tensor:
    return torch.rand(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def grads(loss: torch.Tensor, module: nn.Module) -> list[torch.Tensor]:
    ps = list(module.parameters())
    gs = torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, ps)]


def nonzero(gs: list[torch.Tensor]) -> bool:
    return any(torch.count_nonzero(g) > 0 for g in gs)


def test_paper_init_rows_sum_to_one_and_ones_is_libmtl():
    alpha = stitch().units[0].alpha.detach()
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]], dtype=torch.float64)
    torch.testing.assert_close(alpha, expected, rtol=2**-24, atol=0)  # α is initialised in float32 (default dtype)
    assert torch.equal(stitch(init="ones").units[1].alpha.detach(), torch.ones(3, 3, dtype=torch.float64))
    assert len(stitch().units) == 2  # 3 stages, a unit after each but the last


def test_identity_units_give_independent_single_task_columns():
    model = stitch(alpha_self=1.0)
    x = x_vec()
    out = model(x)
    for t, col in enumerate(model.columns):
        torch.testing.assert_close(out[t], nn.Sequential(*col)(x), rtol=0, atol=0)  # column t alone
        loss = out[t].square().sum()
        for j, other in enumerate(model.columns):
            assert nonzero(grads(loss, other)) == (j == t), (t, j)


def test_units_mix_the_columns_as_written():
    """Column t's next stage reads Σ_j α[t, j] h_j (paper: 0.9 h_t + 0.05 Σ_{j≠t} h_j); with ones, the same sum Σ_j h_j."""
    for init in ("ones", "paper", "asymmetric"):
        model = stitch(init="ones" if init == "asymmetric" else init)
        if init == "asymmetric":  # rows ≠ columns: catches a transposed mix
            with torch.no_grad():
                model.units[0].alpha.copy_(torch.arange(9.0).reshape(3, 3) / 10)
        alpha = model.units[0].alpha.detach()  # checked against 1 / (0.9, 0.05) above
        x = x_vec()
        h0 = [col[0](x) for col in model.columns]
        seen: list[torch.Tensor] = []
        hooks = [col[1].register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0])) for col in model.columns]
        model(x)
        for h in hooks:
            h.remove()
        for t in range(3):
            # float64: three products and two sums of O(1) terms, rounding ≲ 1e-16 relative
            torch.testing.assert_close(seen[t], sum(alpha[t, j] * h0[j] for j in range(3)), rtol=1e-14, atol=1e-15)
        if init == "ones":
            assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])


@pytest.mark.parametrize("task_specific_last_stage", [False, True])
def test_every_task_reaches_every_column_but_the_other_columns_last_stage(task_specific_last_stage):
    """Before the last unit, each task's loss has a non-zero gradient on every column and unit (all shared, as LibMTL);
    column j's last stage feeds task j only, and ``task_specific_last_stage`` moves exactly it to task j."""
    model = stitch(task_specific_last_stage=task_specific_last_stage)
    full = MultiTaskModel(model, {t: nn.Identity() for t in TASKS})
    out = model(x_vec())
    for t in range(3):
        loss = (out[t] - 0.3).square().sum()
        assert all(nonzero(grads(loss, u)) for u in model.units)
        for j, col in enumerate(model.columns):
            assert all(nonzero(grads(loss, stage)) for stage in col[:-1]), (t, j)
            assert nonzero(grads(loss, col[-1])) == (j == t), (t, j)
    for t, col in zip(TASKS, model.columns):
        owned = full.encoder_task_parameters(t)
        assert [id(p) for p in owned] == ([id(p) for p in col[-1].parameters()] if task_specific_last_stage else [])
    n_last = sum(p.numel() for col in model.columns for p in col[-1].parameters())
    n_shared = sum(p.numel() for p in full.shared_parameters())
    assert n_shared == sum(p.numel() for p in model.parameters()) - (n_last if task_specific_last_stage else 0)
    assert full.sharing()["task_specific_last_stage"] is task_specific_last_stage and full.sharing()["units_shared"]


@pytest.mark.parametrize(
    "encoder,shape",
    [
        (partial(MLPEncoder, hidden=[6, 5], dropout=0.0), (2, 3)),
        (partial(ConvEncoder, channels=(4, 6), fc=5), (3, 8, 8)),
        (partial(TimmEncoder, model_name="test_resnet", output_stride=32, pool=True), (3, 32, 32)),
        (partial(TimmEncoder, model_name="test_resnet", output_stride=8, pool=False), (3, 32, 32)),
    ],
)
def test_column_stages_compose_to_the_encoder(encoder, shape):
    """The stage cut neither drops nor repeats a module: the stages in sequence are the encoder."""
    torch.manual_seed(0)
    enc = encoder(input_shape=shape).eval()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(2))
    stages = column_stages(enc)
    assert len(stages) == (4 if isinstance(enc, TimmEncoder) else 2 + isinstance(enc, ConvEncoder))
    torch.testing.assert_close(nn.Sequential(*stages)(x), enc(x), rtol=0, atol=0)


def mtan(**kw) -> MTANResNet:
    torch.manual_seed(0)
    return MTANResNet((3, 32, 32), TASKS, model_name="test_resnet", output_stride=32, **kw)


def force_masks_to_one(model: MTANResNet) -> None:
    with torch.no_grad():
        for masks in model.attention.values():
            for att in masks:
                bn = att[-2]  # the BatchNorm before the sigmoid: output 50 → sigmoid(50) = 1 − 2e-22 = 1.0 in float32
                bn.weight.zero_()
                bn.bias.fill_(50.0)


def test_mtan_with_masks_at_one_is_the_shared_backbone_and_reads_it_through_block_att():
    model = mtan().eval()
    torch.manual_seed(0)  # MTANResNet builds its TimmEncoder first: same seed, same backbone weights
    backbone = TimmEncoder((3, 32, 32), "test_resnet", 32, out_indices=(4,)).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(model(x)[0], backbone(x))  # real masks do change the features
    force_masks_to_one(model)
    gate_inputs: list[torch.Tensor] = []
    hook = model.attention["b"][2].register_forward_pre_hook(lambda m, args: gate_inputs.append(args[0]))
    out = model(x)
    hook.remove()
    for t in range(3):
        torch.testing.assert_close(out[t], backbone(x), rtol=0, atol=0)
    # stage 2's gate reads [p_2; block_att[1](s_1)] — the shared features, through encoder_block_att (pooled to s_2's size)
    body = backbone.body
    s1 = body.layer2(body.layer1(body.maxpool(body.act1(body.bn1(body.conv1(x))))))
    s2 = body.layer3(s1)
    att = torch.nn.functional.adaptive_max_pool2d(model.block_att[1](s1), s2.shape[-2:])
    p2 = torch.nn.functional.adaptive_max_pool2d(s1, s2.shape[-2:])  # test_resnet: one block per stage, p_2 = its input
    torch.testing.assert_close(gate_inputs[0], torch.cat((p2, att), dim=1), rtol=0, atol=0)


def test_mtan_block_att_is_shared_and_reached_by_every_task_attention_is_task_specific():
    model = mtan().double()
    full = MultiTaskModel(model, {t: nn.Identity() for t in TASKS})
    shared = {id(p) for p in full.shared_parameters()}
    assert {id(p) for p in model.block_att.parameters()} <= shared  # LibMTL leaves it out of get_share_params
    assert {id(p) for p in model.stem.parameters()} <= shared
    out = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    for k, t in enumerate(TASKS):
        assert [id(p) for p in full.encoder_task_parameters(t)] == [id(p) for p in model.attention[t].parameters()]
        loss = (out[k] - 0.2).square().sum()
        assert all(nonzero(grads(loss, b)) for b in model.block_att), t
        for other in TASKS:
            assert nonzero(grads(loss, model.attention[other])) == (other == t)
    assert full.sharing()["block_att_shared"] and full.sharing()["attention"] == "task-specific"


def test_bad_configurations_are_one_line_errors():
    with pytest.raises(ConfigError, match="at least two"):
        CrossStitch((5,), TASKS, partial(MLPEncoder, hidden=[6]))
    with pytest.raises(ConfigError, match="backbone.init"):
        CrossStitch((5,), TASKS, partial(MLPEncoder, hidden=[6, 6]), init="identity")
    with pytest.raises(ConfigError, match="cannot be cut into stages"):
        CrossStitch((5,), TASKS, lambda input_shape: nn.Linear(5, 3))
    with pytest.raises(ConfigError, match="dataset=synthetic_images"):
        MTANResNet((5,), TASKS)
