"""Properties of the mixture-of-experts architectures beyond the common test (tests/test_architectures.py): CGC and PLE
(Tang et al., RecSys 2020) and DSelect-k (Hazimeh et al., NeurIPS 2021).

- PLE with one level is CGC with the same weights; CGC with no task experts on one task is MMoE's one-gate mixture;
- PLE's task experts before the last level reach every task (through the shared-branch gate), so they are shared;
- gate weights are a probability vector per example;
- DSelect-k: the smooth-step's pinned values and width γ (used in the forward pass, unlike LibMTL), at most k experts
  once the bits saturate and exactly the coded expert for k = 1, the entropy term's value, nothing backpropagated
  inside ``forward()``, and the refused configurations.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from mtl_bench.errors import ConfigError
from mtl_bench.models.backbones import MLPEncoder
from mtl_bench.models.cgc import CGC
from mtl_bench.models.dselect_k import DSelectK, smooth_step
from mtl_bench.models.mmoe import MMoE
from mtl_bench.models.ple import PLE

TASKS = ["a", "b"]
EXPERT = functools.partial(MLPEncoder, hidden=[6])
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbone"


def x_batch(n=8, d=5):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def seeded(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(input_shape=(5,), expert=EXPERT, **kw).double()


def test_ple_with_one_level_is_cgc_with_the_same_weights():
    cgc = seeded(CGC, task_names=TASKS, num_shared_experts=2, num_task_experts=2)
    ple = seeded(PLE, seed=1, task_names=TASKS, levels=1, num_shared_experts=2, num_task_experts=2)
    assert ple.levels[0].branch_gate is None  # the last (only) level has no shared-branch gate
    ple.load_state_dict({f"levels.0.{k}": v for k, v in cgc.state_dict().items()})
    x = x_batch()
    for got, want in zip(ple(x), cgc(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same float64 operations in the same order


def test_cgc_without_task_experts_on_one_task_is_a_plain_mixture_of_experts():
    cgc = seeded(CGC, task_names=["a"], num_shared_experts=3, num_task_experts=0)
    moe = seeded(MMoE, seed=1, task_names=["a"], num_experts=3)
    moe.load_state_dict({k.replace("shared_experts", "experts"): v for k, v in cgc.state_dict().items()})
    x = x_batch()
    torch.testing.assert_close(cgc(x)[0], moe(x)[0], rtol=1e-14, atol=1e-14)


def test_ple_task_experts_before_the_last_level_reach_every_task_so_they_are_shared():
    from mtl_bench.models.mtl_model import MultiTaskModel

    ple = seeded(PLE, task_names=TASKS, levels=2, num_shared_experts=1, num_task_experts=1)
    model = MultiTaskModel(ple, {t: torch.nn.Identity() for t in TASKS})
    early, late = ple.levels[0].task_experts["a"], ple.levels[1].task_experts["a"]
    loss_b = model(x_batch())["b"].pow(2).sum()
    g_early = torch.autograd.grad(loss_b, list(early.parameters()), retain_graph=True)
    assert max(float(g.abs().max()) for g in g_early) > 1e-6  # task a's level-0 expert moves task b's loss
    g_late = torch.autograd.grad(loss_b, list(late.parameters()), allow_unused=True)
    assert all(g is None or not g.any() for g in g_late)
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in early.parameters())
    assert not any(id(p) in shared for p in late.parameters())
    assert all(id(p) in shared for p in ple.levels[0].branch_gate.parameters())
    assert ple.sharing()["per_level"] == [
        {"shared_experts": "shared", "task_experts": "shared", "gates": "task-specific", "branch_gate": "shared"},
        {"shared_experts": "shared", "task_experts": "task-specific", "gates": "task-specific"}]


def test_ple_levels_as_a_list_of_expert_configs():
    cfg = yaml.safe_load((CONFIGS / "ple.yaml").read_text())
    cfg["levels"] = [dict(cfg["expert"], hidden=[7]), dict(cfg["expert"], hidden=[3])]
    ple = instantiate(cfg)(input_shape=(5,), task_names=TASKS)
    assert ple.out_dim == 3 and len(ple.levels) == 2
    assert ple.levels[1].shared_experts[0].net[0].in_features == 7  # level 2 reads level 1's width
    assert ple.levels[1].gates["a"].in_features == 7 and ple.levels[0].branch_gate.in_features == 5
    assert [r.shape for r in ple(x_batch().float())] == [torch.Size([8, 3])] * 2


def random_gates(model, scale):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.gates.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.mark.parametrize("cls,kw,scale", [(CGC, {"num_task_experts": 2}, 0.3),
                                           (DSelectK, {"num_experts": 8, "num_nonzeros": 3}, 0.03)])
def test_gate_weights_are_a_probability_vector_per_example(cls, kw, scale):
    model = seeded(cls, task_names=TASKS, **kw)
    random_gates(model, scale)  # not saturated: every weight strictly between 0 and 1
    for w in model.gate_weights(x_batch()).values():
        assert w.shape[0] == 8 and (w > 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-14)


def test_smooth_step_pinned_values_and_width():
    z = torch.tensor([-0.6, -0.5, -0.4, 0.0, 0.25, 0.4, 0.5, 0.6], dtype=torch.float64)
    # S_1(z) = −2z³ + 1.5z + 0.5 inside [−½, ½]: S(0.25) = −0.03125 + 0.375 + 0.5, S(0.4) = −0.128 + 0.6 + 0.5
    want = torch.tensor([0, 0, 0.028, 0.5, 0.84375, 0.972, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(smooth_step(z, 1.0), want, rtol=0, atol=1e-15)
    torch.testing.assert_close(smooth_step(z / 4, 0.25), want, rtol=0, atol=1e-15)  # S_γ(z) = S_1(z/γ)


def set_codes(model, bias):
    """Input-independent bits: z = bias (per selector, per bit), w = 0 (equal selector weights)."""
    with torch.no_grad():
        for gate in model.gates.values():
            gate.z_logits.weight.zero_()
            gate.z_logits.bias.copy_(torch.tensor(bias, dtype=torch.float64).reshape(-1))
            gate.w_logits.weight.zero_()
            gate.w_logits.bias.zero_()
    return [w[0] for w in model.gate_weights(x_batch()).values()]


def test_dselect_k_one_hot_for_k1_with_saturated_codes_and_gamma_used_in_the_forward():
    model = seeded(DSelectK, task_names=TASKS, num_experts=8, num_nonzeros=1, gamma=0.5)
    # bits (1, 1, 0), most significant first → expert 0b110 = 6; |z| = 0.4 ≥ γ/2 = 0.25 saturates
    w = set_codes(model, [[0.4, 0.4, -0.4]])[0]
    assert torch.equal(w, torch.nn.functional.one_hot(torch.tensor(6), 8).double())
    wide = seeded(DSelectK, task_names=TASKS, num_experts=8, num_nonzeros=1, gamma=1.0)
    w = set_codes(wide, [[0.4, 0.4, -0.4]])[0]  # γ = 1: not saturated, S(±0.4) = 0.972 / 0.028
    torch.testing.assert_close(w[6], torch.tensor(0.972**3, dtype=torch.float64), rtol=1e-14, atol=0)
    assert (w > 0).all()


def test_dselect_k_selects_at_most_k_experts_once_the_bits_saturate():
    model = seeded(DSelectK, task_names=TASKS, num_experts=8, num_nonzeros=3, gamma=1e-3)
    random_gates(model, 1.0)  # |z| ≥ γ/2 for every example and bit (checked below): input-dependent binary codes
    x = x_batch(32)
    for gate in model.gates.values():
        assert (gate.z_logits(x).abs() >= 5e-4).all()
        weights, selectors = gate(x)
        assert ((selectors == 0) | (selectors == 1)).all() and (selectors.sum(-1) == 1).all()  # one-hot selectors
        bits = (gate.z_logits(x) > 0).long().reshape(32, 3, 3)  # selector i picks the expert coded by sign(z_i)
        assert torch.equal(selectors.argmax(-1), bits[..., 0] * 4 + bits[..., 1] * 2 + bits[..., 2])
        used = (weights > 0).sum(-1)
        assert (used <= 3).all() and (used >= 1).all() and (used > 1).any()
        torch.testing.assert_close(weights.sum(-1), torch.ones(32, dtype=torch.float64), rtol=0, atol=1e-14)


def test_dselect_k_entropy_term_and_nothing_backpropagated_inside_forward():
    model = seeded(DSelectK, task_names=TASKS, num_experts=4, num_nonzeros=2)
    x = x_batch().requires_grad_()
    model(x)
    assert all(p.grad is None for p in model.parameters()) and x.grad is None
    set_codes(model, [[0.0, 0.0], [0.0, 0.0]])  # every bit ½: each selector is uniform over the 4 experts
    want = len(TASKS) * 8 * 2 * -math.log(0.25 + 1e-6)  # tasks × examples × selectors × H(uniform) with the official ε
    torch.testing.assert_close(model.selector_entropy(x_batch()), torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)
    set_codes(model, [[1.0, -1.0], [-1.0, -1.0]])  # saturated: one-hot selectors, H = −log(1 + ε) each
    want = len(TASKS) * 8 * 2 * -math.log(1 + 1e-6)
    torch.testing.assert_close(model.selector_entropy(x_batch()), torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=0)


@pytest.mark.parametrize("cls,kw,words", [
    (DSelectK, {"num_experts": 6}, "power of 2"),
    (DSelectK, {"num_experts": 4, "num_nonzeros": 5}, "num_nonzeros"),
    (DSelectK, {"entropy_reg": 1e-6}, "entropy_reg"),
    (DSelectK, {"gamma": 0.0}, "gamma"),
    (CGC, {"num_task_experts": -1}, "num_task_experts"),
    (CGC, {"num_shared_experts": 0}, "num_shared_experts"),
    (PLE, {"levels": 0}, "levels"),
    (PLE, {"levels": "two"}, "levels"),
])
def test_bad_configurations_are_refused_with_one_line(cls, kw, words):
    with pytest.raises(ConfigError, match=words):
        cls(input_shape=(5,), task_names=TASKS, expert=EXPERT, **kw)
