"""Properties of the mixture-of-experts architectures beyond the common test (tests/test_architectures.py): CGC and PLE
(Tang et al., RecSys 2020) and DSelect-k (Hazimeh et al., NeurIPS 2021).

- PLE with one level is CGC with the same weights; CGC with no task experts on one task is MMoE's one-gate mixture;
- PLE's task experts before the last level reach every task (through the shared-branch gate), so they are shared;
- gate weights are a probability vector per example;
- DSelect-k: the smooth-step's pinned values and width γ (used in the forward pass, unlike LibMTL), at most k experts
  once the bits saturate and exactly the coded expert for k = 1, the entropy term's value, nothing backpropagated
  inside ``forward()``, and the refused configurations;
- DSelect-k's regularization (the trainer's model-regularizer hook): hand-derived values of the entropy term and of
  the unused-code term for E = 3 and 5, the E = 3 gate is the E = 4 gate without its last (unused) code, and one
  trainer step's ``.grad`` is the engine's gradient plus the autograd gradient of an independent float64
  implementation of the regulariser (a loss weighting and a gradient aggregator); a plain model's step is
  bit-identical with and without the hook's code path.
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
    (DSelectK, {"num_experts": 1}, "num_experts"),
    (DSelectK, {"num_experts": 4, "num_nonzeros": 5}, "num_nonzeros"),
    (DSelectK, {"entropy_reg": -1e-6}, "entropy_reg"),
    (DSelectK, {"gamma": 0.0}, "gamma"),
    (CGC, {"num_task_experts": -1}, "num_task_experts"),
    (CGC, {"num_shared_experts": 0}, "num_shared_experts"),
    (PLE, {"levels": 0}, "levels"),
    (PLE, {"levels": "two"}, "levels"),
])
def test_bad_configurations_are_refused_with_one_line(cls, kw, words):
    with pytest.raises(ConfigError, match=words):
        cls(input_shape=(5,), task_names=TASKS, expert=EXPERT, **kw)


# ---------------------------------------------------------------------- DSelect-k regularization (the trainer's hook)


def reg_with_codes(bias, **kw):
    model = seeded(DSelectK, task_names=TASKS, num_nonzeros=len(bias), **kw)
    set_codes(model, bias)
    return model, model.regularization(x_batch())


N = len(TASKS) * 8  # tasks × examples: every selector has the same input-independent bits below


def test_dselect_k_regularization_pinned_values():
    eps = 1e-6
    model, reg = reg_with_codes([[0.0, 0.0]], num_experts=4)
    assert reg is None  # λ = 0 and E a power of 2: nothing to add
    # entropy, E = 4, bits ½: uniform selectors, H = −log(¼ + ε); saturated (one-hot): H = −log(1 + ε)
    _, reg = reg_with_codes([[0.0, 0.0], [0.0, 0.0]], num_experts=4, entropy_reg=0.1)
    torch.testing.assert_close(reg, torch.tensor(0.1 * N * 2 * -math.log(0.25 + eps), dtype=torch.float64), rtol=1e-14, atol=0)
    _, reg = reg_with_codes([[1.0, -1.0], [-1.0, -1.0]], num_experts=4, entropy_reg=0.1)
    torch.testing.assert_close(reg, torch.tensor(0.1 * N * 2 * -math.log(1 + eps), dtype=torch.float64), rtol=1e-9, atol=0)
    # E = 3 (codes 00, 01, 10; 11 unused): bits ½ → r = (¼, ¼, ¼), s = ¾, 1/s = 4/3
    _, reg = reg_with_codes([[0.0, 0.0]], num_experts=3)
    torch.testing.assert_close(reg, torch.tensor(N * 4 / 3, dtype=torch.float64), rtol=1e-14, atol=0)
    _, reg = reg_with_codes([[0.0, 0.0]], num_experts=3, entropy_reg=0.1)  # both terms; H over the 3 used codes
    want = N * (4 / 3 + 0.1 * -3 * 0.25 * math.log(0.25 + eps))
    torch.testing.assert_close(reg, torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)
    # E = 3, both bits S(0.25) = 0.84375: s = 1 − 0.84375²
    _, reg = reg_with_codes([[0.25, 0.25]], num_experts=3)
    torch.testing.assert_close(reg, torch.tensor(N / (1 - 0.84375**2), dtype=torch.float64), rtol=1e-13, atol=0)
    # E = 5 (000..100 used): bits ½ → s = 5/8; MSB S(0.25) = a, others ½ → s = (1 − a) + a·¼ (codes 0xx and 100)
    _, reg = reg_with_codes([[0.0, 0.0, 0.0]], num_experts=5)
    torch.testing.assert_close(reg, torch.tensor(N * 8 / 5, dtype=torch.float64), rtol=1e-14, atol=0)
    _, reg = reg_with_codes([[0.25, 0.0, 0.0]], num_experts=5)
    torch.testing.assert_close(reg, torch.tensor(N / (1 - 0.84375 * 0.75), dtype=torch.float64), rtol=1e-13, atol=0)
    # saturated on a used code: 1 per selector and example, no gradient; on the unused code: the 1e-6 floor
    model, reg = reg_with_codes([[1.0, -1.0]], num_experts=3)
    grads = torch.autograd.grad(reg, list(model.gates.parameters()), allow_unused=True)  # w: unused by this term
    assert float(reg.detach()) == N and not any(g is not None and g.any() for g in grads)
    _, reg = reg_with_codes([[1.0, 1.0]], num_experts=3)
    torch.testing.assert_close(reg, torch.tensor(N * 1e6, dtype=torch.float64), rtol=1e-12, atol=0)


def test_dselect_k_with_unused_codes_is_the_power_of_2_gate_without_them():
    x = x_batch()
    three = seeded(DSelectK, task_names=TASKS, num_experts=3, num_nonzeros=2)
    four = seeded(DSelectK, seed=1, task_names=TASKS, num_experts=4, num_nonzeros=2)
    random_gates(three, 0.05)  # unsaturated: the unused code 11 has weight > 0
    four.gates.load_state_dict(three.gates.state_dict())  # same z/w maps (m = 2 bits either way)
    for w3, w4 in zip(three.gate_weights(x).values(), four.gate_weights(x).values()):
        torch.testing.assert_close(w3, w4[:, :3], rtol=0, atol=0)  # the same products, the unused code dropped
        assert (w4[:, 3] > 1e-3).all()
        torch.testing.assert_close(w3.sum(-1), 1 - w4[:, 3], rtol=0, atol=1e-15)  # missing mass = unused code
    # saturated bits on used codes (10 and 01): the weights sum to 1 and the unused code gets 0
    w = set_codes(three, [[1.0, -1.0], [-1.0, 1.0]])[0]
    assert torch.equal(w, torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    assert torch.equal(set_codes(four, [[1.0, -1.0], [-1.0, 1.0]])[0][3], torch.tensor(0.0, dtype=torch.float64))
    # the term moves the gate off the unused code: gradient steps on it alone raise the used codes' mass
    random_gates(three, 0.05)
    before = [w.sum(-1) for w in three.gate_weights(x).values()]
    opt = torch.optim.SGD(three.gates.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        three.regularization(x).backward()
        opt.step()
    for b, a in zip(before, (w.sum(-1) for w in three.gate_weights(x).values())):
        assert (a > b).all()


def reference_regularizer(model: DSelectK, x: torch.Tensor, lam: float) -> torch.Tensor:
    """An independent float64 implementation from the formulas: per selector i and expert e (integer code), the product
    over the m bits of S or 1 − S, then λ·Σ H(r_i) + Σ 1/Σ_e r_i(e) when E < 2^m."""
    num_experts = len(model.experts)
    m = max(1, (num_experts - 1).bit_length())
    total = torch.zeros((), dtype=torch.float64)
    for gate in model.gates.values():
        z = x.flatten(1) @ gate.z_logits.weight.T + gate.z_logits.bias  # B × (k·m)
        half = gate.gamma / 2
        cubic = -2 * z**3 / gate.gamma**3 + 1.5 * z / gate.gamma + 0.5
        s = torch.where(z >= half, torch.ones_like(z), torch.where(z <= -half, torch.zeros_like(z), cubic))
        s = s.reshape(len(x), -1, m)
        for i in range(s.shape[1]):
            r = torch.stack([math.prod(s[:, i, j] if (e >> (m - 1 - j)) & 1 else 1 - s[:, i, j] for j in range(m))
                             for e in range(num_experts)], dim=1)
            total = total - lam * (r * torch.log(r + 1e-6)).sum()
            if num_experts < 2**m:
                total = total + (1 / r.sum(1)).sum()
    return total


def tiny_trainer(tmp_path, tag, encoder, combiner):
    from mtl_bench.config.schema import TrainerConf
    from mtl_bench.data.base import Benchmark, TensorDictDataset
    from mtl_bench.data.synthetic import regression_task
    from mtl_bench.loggers.run_logger import RunLogger
    from mtl_bench.models.heads import MLPHead
    from mtl_bench.models.mtl_model import MultiTaskModel
    from mtl_bench.optim import build_optimizer
    from mtl_bench.selection import ModelSelector
    from mtl_bench.trainer import Trainer, metric_directions

    tasks = {t: regression_task(t) for t in TASKS}
    g = torch.Generator().manual_seed(5)
    ds = TensorDictDataset(torch.randn(16, 5, generator=g, dtype=F64), {t: torch.randn(16, 1, generator=g, dtype=F64) for t in tasks})
    bench = Benchmark("toy", tasks, {"train": ds, "val": ds, "test": ds}, (5,))
    torch.manual_seed(1)
    model = MultiTaskModel(encoder, {t: MLPHead(encoder.out_dim, tasks[t], hidden=(4,), activation="tanh") for t in tasks}).double()
    combiner.setup(list(tasks))
    opt = build_optimizer(lambda groups: torch.optim.SGD(groups, lr=0.1), model, combiner)
    settings = TrainerConf(epochs=1, batch_size=8, device="cpu", progress_bar=False)
    return Trainer(model=model, benchmark=bench, tasks=tasks, combiner=combiner, optimizer=opt, scheduler=None,
                   settings=settings, selector=ModelSelector("last", "val/loss", "auto", 1, metric_directions(tasks)),
                   logger=RunLogger(tmp_path / tag, {}), output_dir=tmp_path / tag, device=torch.device("cpu"), seed=0)


F64 = torch.float64


def step_grads(trainer, x, y):
    trainer.model.train()
    trainer.train_step(x, y)
    return [p.grad.clone() for p in trainer.model.parameters()]


def batch():
    g = torch.Generator().manual_seed(11)
    return torch.randn(8, 5, generator=g, dtype=F64), {t: torch.randn(8, 1, generator=g, dtype=F64) for t in TASKS}


@pytest.mark.parametrize("kind,shared_gates", [("ew", False), ("aggregator", True)])
def test_a_trainer_step_adds_the_regularizer_gradient_to_the_engine_s(tmp_path, kind, shared_gates):
    """.grad after one step = the engine's gradient (same step, the hook returning None) + ∇ of the independent
    float64 regulariser; E = 3 with λ = 0.05, so both terms are on and their gradient is far above the tolerance."""
    from mtl_bench.combiners.ew import EqualWeighting
    from tests.helpers import SumOfGradients

    combiner = EqualWeighting if kind == "ew" else SumOfGradients
    lam, (x, y) = 0.05, batch()
    encoders = [seeded(DSelectK, task_names=TASKS, num_experts=3, num_nonzeros=2, entropy_reg=lam, shared_gates=shared_gates)
                for _ in range(3)]
    for e in encoders:
        random_gates(e, 0.1)
    on, off = (tiny_trainer(tmp_path, tag, e, combiner()) for tag, e in zip(("on", "off"), encoders))
    off.model.encoder.regularization = lambda x: None  # the same step without a model term: the engine's gradient
    reference = reference_regularizer(encoders[2], x, lam)
    reg_grads = torch.autograd.grad(reference, list(encoders[2].gates.parameters()), allow_unused=True)
    # both terms read the selectors r_i only: the z maps get a gradient, the selector weights w none
    assert [g is None for g in reg_grads] == ["w_logits" in n for n, _ in encoders[2].gates.named_parameters()]
    reg_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(encoders[2].gates.parameters(), reg_grads)]
    got, engine = step_grads(on, x, y), step_grads(off, x, y)
    assert off.regularizer_value is None
    torch.testing.assert_close(on.regularizer_value, reference.float().reshape(1), rtol=1e-6, atol=0)
    gate_ids = {id(p): g for p, g in zip(encoders[0].gates.parameters(), reg_grads)}
    assert min(float(g.abs().max()) for g in reg_grads if g.any()) > 1e-2  # far above the tolerance below
    for p, g, e in zip(on.model.parameters(), got, engine):
        # float64, a few hundred operations: agreement to ~1e-14 relative; 1e-12 leaves margin
        torch.testing.assert_close(g, e + gate_ids.get(id(p), torch.zeros_like(e)), rtol=1e-12, atol=1e-13)


def test_a_plain_model_step_is_bit_identical_without_the_hook_code_path(tmp_path, monkeypatch):
    from mtl_bench.combiners.ew import EqualWeighting
    from mtl_bench.trainer import Trainer

    x, y = batch()
    torch.manual_seed(0)
    with_hook = tiny_trainer(tmp_path, "a", MLPEncoder((5,), hidden=[6]), EqualWeighting())
    assert with_hook.model.regularization(x) is None
    got = step_grads(with_hook, x, y)
    monkeypatch.setattr(Trainer, "_regularize", lambda self, x, scale: None)
    torch.manual_seed(0)
    want = step_grads(tiny_trainer(tmp_path, "b", MLPEncoder((5,), hidden=[6]), EqualWeighting()), x, y)
    assert with_hook.regularizer_value is None
    assert all(torch.equal(a, b) for a, b in zip(got, want))
