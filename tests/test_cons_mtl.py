"""ConsMTL (Qin, Wang, Yan, CVPR 2025): a hand-derived step on a two-parameter model, and the engine's step against an
independent autograd implementation of the method for a shared tensor (MLP), per-task representations (MMoE, gates
upstream of the representation) and a tuple every head reads (SegNet-MTAN, shared convolutions inside the heads)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mtl_bench.combiners.cons_mtl import CLIP_EPS, ConsMTL
from mtl_bench.engine import GradientEngine
from mtl_bench.engine_steps import HeadTermAggregationStep
from mtl_bench.errors import ConfigError
from mtl_bench.models.mtl_model import MultiTaskModel
from tests.helpers import tiny_batch, tiny_model

TASKS = ("a", "b", "c")


def engine_step(model, comb, tasks, x, y, loss_fn, loss_scale=None):
    comb.setup(list(tasks))
    comb.double()
    engine = GradientEngine(model, comb, list(tasks))
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    return engine, engine.backward({t: loss_fn(t, out[t], y[t]) for t in tasks}, 0, rep=rep, leaves=leaves, loss_scale=loss_scale)


# ---------------------------------------------------------------------- hand-derived case
class Diagonal(nn.Module):
    """z = s ⊙ x (two shared parameters)."""

    out_dim = 2

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor([0.5, 1.5], dtype=torch.float64))

    def forward(self, x):
        return x * self.s


class Pick(nn.Module):
    """Head o = h · z_i (one parameter)."""

    def __init__(self, i, h):
        super().__init__()
        self.i = i
        self.h = nn.Parameter(torch.tensor([h], dtype=torch.float64))

    def forward(self, z):
        return z[:, self.i : self.i + 1] * self.h


def test_hand_derived_step_orthogonal_gradients():
    """One sample x = (1, 2), z = s ⊙ x = (0.5, 3); head a reads z_1 (h_a = 2), head b reads z_2 (h_b = −1);
    L_k = (o_k − y_k)², r_k = o_k − y_k.  Then g_a = (2 r_a h_a x_1, 0) ⊥ g_b = (0, 2 r_b h_b x_2), so the α = 2
    equation (G Gᵀ w)_k = w_k^{−1/2} decouples: w_k = ‖g_k‖^{−4/3}.  δ_a = (2 r_a h_a, 0) ⊥ δ_b, so
    ⟨δ_a, δ⟩ = w_a (2 r_a h_a) · c_a with c_a = 2 r_a h_a detached, and with ∂(r h)/∂h = z_1 h + r the extra
    gradient is e_a = −λ w_a c_a · 2 (z_1 h_a + r_a) = −4 λ w_a r_a h_a (z_1 h_a + r_a); the ordinary head
    gradient is 2 r_a z_1.  y_a = 1.97 makes |e_a| < 0.1 |2 r_a z_1| (head a unclipped), y_b = 1 clips head b;
    the shared update K wᵀG is clipped."""
    model = MultiTaskModel(Diagonal(), {"a": Pick(0, 2.0), "b": Pick(1, -1.0)})
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = {"a": torch.tensor([[1.97]], dtype=torch.float64), "b": torch.tensor([[1.0]], dtype=torch.float64)}
    _, res = engine_step(model, ConsMTL(), ("a", "b"), x, y, lambda t, o, yy: ((o - yy) ** 2).mean())

    x1, x2, z1, z2, ha, hb = 1.0, 2.0, 0.5, 3.0, 2.0, -1.0
    ra, rb = z1 * ha - 1.97, z2 * hb - 1.0  # −0.97, −4
    ga, gb = 2 * ra * ha * x1, 2 * rb * hb * x2
    wa, wb = abs(ga) ** (-4 / 3), abs(gb) ** (-4 / 3)
    torch.testing.assert_close(res.weights, torch.tensor([wa, wb], dtype=torch.float64), rtol=1e-10, atol=0)
    d = [2 * wa * ga, 2 * wb * gb]  # K = 2
    norm = math.hypot(*d)
    assert norm > 1.0  # the clipping is active
    expected = torch.tensor([v * min(1.0, 1.0 / (norm + CLIP_EPS)) for v in d], dtype=torch.float64)
    torch.testing.assert_close(model.encoder.s.grad, expected, rtol=1e-10, atol=0)
    assert float(model.encoder.s.grad.norm()) <= 1.0

    def head(w, r, h, z):
        ordinary, extra = 2 * r * z, -w * 4 * r * h * (z * h + r)
        return ordinary, extra, ordinary + extra * min(1.0, 0.1 * abs(ordinary) / (abs(extra) + CLIP_EPS))

    oa, ea, head_a = head(wa, ra, ha, z1)
    ob, eb, head_b = head(wb, rb, hb, z2)
    assert abs(ea) < 0.1 * abs(oa) and abs(eb) > 0.1 * abs(ob)  # one unclipped and one clipped head
    assert model.heads["a"].h.grad.item() == pytest.approx(head_a, rel=1e-10)
    assert model.heads["b"].h.grad.item() == pytest.approx(head_b, rel=1e-10)


# ---------------------------------------------------------------------- the independent implementation
def reference(model, tasks, x, y, loss_fn, w, lambda_=1.0, max_norm=1.0):
    """ConsMTL written out with autograd on the attached graph: G = ∇_shared L_k, the clipped K wᵀG, and for each
    head ∇L_k + clip(∇_{θ_k}(−λ⟨δ_k, δ⟩)) with δ_k the partials at the head's input (detached leaf copies);
    upstream task parameters (inside the encoder) get ∇L_k.  Returns {parameter id: expected gradient}."""
    shared = model.shared_parameters()
    out = model(x)
    losses = [loss_fn(t, out[t], y[t]) for t in tasks]
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses])
    d = len(tasks) * (w @ rows)
    d = d * min(1.0, max_norm / (float(d.norm()) + CLIP_EPS))
    expected, offset = {}, 0
    for p in shared:
        expected[id(p)] = d[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    rep = model.encode(x)
    reps = rep if isinstance(rep, tuple) else (rep,)
    leaves = [r.detach().requires_grad_(True) for r in reps]
    out = model.decode(tuple(leaves) if isinstance(rep, tuple) else leaves[0])
    per_task = getattr(model, "per_task_rep", False)
    deltas = []
    for k, t in enumerate(tasks):
        z = [leaves[k]] if per_task else leaves
        deltas.append(torch.autograd.grad(loss_fn(t, out[t], y[t]), z, create_graph=True))
    consensus = [sum(w[k] * deltas[k][i].detach() for k in range(len(tasks))) for i in range(len(deltas[0]))]
    for k, t in enumerate(tasks):
        own = [p for p in model.heads[t].parameters()]
        ordinary = torch.autograd.grad(losses[k], own, retain_graph=True)
        extra = torch.autograd.grad(-lambda_ * sum((a * b).sum() for a, b in zip(deltas[k], consensus)), own)
        n_o = float(torch.cat([g.reshape(-1) for g in ordinary]).norm())
        n_e = float(torch.cat([g.reshape(-1) for g in extra]).norm())
        factor = min(1.0, 0.1 * n_o / (n_e + CLIP_EPS))
        expected.update({id(p): g + e * factor for p, g, e in zip(own, ordinary, extra)})
        upstream = [p for p in model.task_parameters(t) if all(p is not q for q in own)]
        if upstream:
            expected.update({id(p): g for p, g in zip(upstream, torch.autograd.grad(losses[k], upstream, retain_graph=True))})
    return expected, rows


def check_against_reference(model, tasks, x, y, loss_fn):
    ref_model = copy.deepcopy(model)
    _, res = engine_step(model, ConsMTL(), tasks, x, y, loss_fn)
    expected, rows = reference(ref_model, tasks, x, y, loss_fn, res.weights)
    w = res.weights
    assert bool((w > 0).all())
    gram = rows @ rows.T
    # FairGrad's optimality at α = 2 (solved to a relative residual of 1e-12)
    torch.testing.assert_close(gram @ w, w.rsqrt(), rtol=1e-10, atol=0)
    torch.testing.assert_close(res.grads, rows, rtol=1e-10, atol=1e-13)
    shared = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
    assert float(shared.norm()) <= 1.0
    ref_params = dict(zip([id(p) for p in model.parameters()], ref_model.parameters()))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[id(ref_params[id(p)])], rtol=1e-9, atol=1e-13, msg=name)
    return res


def mse(t, out, y):
    return torch.nn.functional.mse_loss(out, y)


def test_step_equals_the_independent_implementation_on_a_shared_representation():
    x, y = tiny_batch(tasks=TASKS)
    check_against_reference(tiny_model(TASKS), TASKS, x, y, mse)


def test_per_task_representations_and_upstream_gates():
    """MMoE: z_k = task k's gated mixture (δ = Σ_k w_k δ_k over same-shaped per-task tensors, the official
    NYUv2 reading), the gates (task parameters inside the encoder) get their ordinary gradient."""
    from functools import partial

    from mtl_bench.data.synthetic import regression_task
    from mtl_bench.models.backbones import MLPEncoder
    from mtl_bench.models.heads import MLPHead
    from mtl_bench.models.mmoe import MMoE
    from mtl_bench.models.mtl_model import build_model

    torch.manual_seed(0)
    specs = {t: regression_task(t) for t in TASKS}
    enc = partial(MMoE, expert=partial(MLPEncoder, hidden=(6,)), num_experts=3)
    model = build_model(enc, {t: partial(MLPHead, hidden=(4,)) for t in TASKS}, specs, (5,)).double()
    assert model.per_task_rep and all(model.encoder_task_parameters(t) for t in TASKS)
    x, y = tiny_batch(tasks=TASKS)
    check_against_reference(model, TASKS, x, y, mse)


def test_tuple_representation_read_by_every_head_segnet_mtan():
    """SegNet-MTAN: 20 nested shared maps (δ_k their partials) and shared attention convolutions applied inside
    the heads (their gradient is part of G)."""
    from tests.test_engine import _dense_model

    model, tasks, x, y = _dense_model("mtan")
    model.train()
    check_against_reference(model, tuple(tasks), x, y, lambda t, out, yy: tasks[t].loss(out, yy))


def test_declared_capability_chooses_the_step_and_refusals():
    model = tiny_model(TASKS)
    comb = ConsMTL()
    comb.setup(list(TASKS))
    engine = GradientEngine(model, comb, TASKS)
    assert isinstance(engine.strategy, HeadTermAggregationStep) and engine.needs_leaves
    with pytest.raises(ConfigError, match="does not support grad_source='representation'; supported: \\['params'\\]"):
        ConsMTL(grad_source="representation")
    with pytest.raises(ConfigError, match="a task-wise optimizer needs per-task weights"):
        GradientEngine(model, comb, TASKS, task_sink=lambda g, present: None)
    engine.dist = SimpleNamespace(enabled=True, world_size=2, average_=lambda t: None)
    x, y = tiny_batch(tasks=TASKS)
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    with pytest.raises(ConfigError, match=r"combiner 'cons_mtl' .* not exact under DDP \(world size 2\)"):
        engine.backward({t: mse(t, out[t], y[t]) for t in TASKS}, 0, rep=rep, leaves=leaves)


def test_loss_scale_scales_every_gradient_and_nothing_else():
    """fp16 path in float64: losses ×8 for differentiation; the combiner sees true G and δ, so every .grad is
    exactly 8× the unscaled step's (powers of two: no rounding)."""
    x, y = tiny_batch(tasks=TASKS)
    plain, scaled = tiny_model(TASKS), tiny_model(TASKS)
    engine_step(plain, ConsMTL(), TASKS, x, y, mse)
    engine_step(scaled, ConsMTL(), TASKS, x, y, mse, loss_scale=8.0)
    for (name, p), q in zip(plain.named_parameters(), scaled.parameters()):
        torch.testing.assert_close(q.grad, 8.0 * p.grad, rtol=1e-12, atol=0, msg=name)
