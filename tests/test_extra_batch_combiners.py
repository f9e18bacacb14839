"""Auto-Lambda and MoDo, the combiners that look at extra training batches (``extra_batches``, ``before_backward``):
hand-derived values, agreement with an exact second-order hypergradient and with TorchJD's MoDo, simplex properties,
stateless extra-batch draws and bit-identical kill-and-resume."""

from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtl_bench import distributed
from mtl_bench.combiners import auto_lambda as al
from mtl_bench.combiners.auto_lambda import AutoLambda
from mtl_bench.combiners.modo import MoDo
from mtl_bench.engine import GradientEngine
from mtl_bench.engine_steps import choose_strategy
from mtl_bench.errors import ConfigError, PreemptedError
from mtl_bench.step_context import StepContext, extra_indices
from mtl_bench.train import build_and_train
from tests.combiner_utils import TASKS3, tiny_context, train_step
from tests.helpers import tiny_batch, tiny_model
from tests.test_resume import _signal_at, assert_same_run


def mse(out, y):
    return {t: nn.functional.mse_loss(out[t], y[t]) for t in y}


# ---------------------------------------------------------------------- the stateless extra batches
def test_extra_batch_indices_are_a_function_of_seed_step_and_index_only():
    rng = torch.random.get_rng_state()
    a = extra_indices(100, 32, seed=7, step=3, i=0)
    assert torch.equal(a, extra_indices(100, 32, seed=7, step=3, i=0))
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global stream is not consumed
    assert a.unique().numel() == 32 and 0 <= int(a.min()) and int(a.max()) < 100
    for other in (extra_indices(100, 32, 8, 3, 0), extra_indices(100, 32, 7, 4, 0), extra_indices(100, 32, 7, 3, 1)):
        assert not torch.equal(a, other)
    assert sorted(extra_indices(5, 32, 7, 3, 0).tolist()) == [0, 1, 2, 3, 4]  # a split smaller than a batch


@pytest.mark.parametrize("name", ["auto_lambda", "modo"])
def test_killed_and_resumed_runs_equal_the_uninterrupted_run(make_cfg, monkeypatch, name):
    overrides = [f"combiner={name}", "trainer.epochs=2", "optimizer=sgd_momentum"]
    ref_cfg, cfg = make_cfg(*overrides), make_cfg(*overrides)
    build_and_train(ref_cfg)
    with monkeypatch.context() as m:
        _signal_at(m, 5, signal.SIGTERM)  # mid-epoch: the extra batches of the resumed steps are drawn again
        with pytest.raises(PreemptedError):
            build_and_train(cfg)
    summary = build_and_train(cfg)
    assert summary["resumed"][0]["global_step"] == 5
    assert_same_run(Path(ref_cfg.paths.output_dir), Path(cfg.paths.output_dir))


def test_extra_batch_combiners_refuse_torchrun(monkeypatch):
    class TwoRanks:
        enabled, world_size = True, 2

    monkeypatch.setattr(distributed, "_current", TwoRanks())
    for comb in (AutoLambda(), MoDo()):
        with pytest.raises(ConfigError, match=rf"combiner '{comb.name}' draws extra training batches .*torchrun \(world size 2\)"):
            comb.setup(list(TASKS3))


# ---------------------------------------------------------------------- Auto-Lambda
class Scalar(nn.Module):
    """One task, one parameter: output θ·x, so ½-MSE against c on x = 1 is ½(θ − c)²."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x, tasks):
        return {t: self.theta * x for t in tasks}


def scalar_context(model, opt, c_train: float, c_val: float) -> StepContext:
    def half_mse(out, y):
        return {"t": 0.5 * ((out["t"] - y["t"]) ** 2).mean()}

    one = torch.ones(1, dtype=torch.float64)
    batch = (one, {"t": torch.full((1,), c_train, dtype=torch.float64)})
    return StepContext(model=model, optimizer=opt, engine=None, task_names=["t"], step=0, batch=batch,
                       losses=half_mse(model(one, ["t"]), batch[1]), loss_fn=half_mse,
                       draw=lambda i: (one, {"t": torch.full((1,), c_val, dtype=torch.float64)}))


@pytest.mark.parametrize("momentum, buf, wd, expected", [
    # θ = 1, c_train = 0, c_val = 2, α = 0.1, λ = 0.1: θ′ = θ − α(μ·buf + λ(θ − 0) + wd·θ) and
    # ∂L_val(θ′)/∂λ = (θ′ − 2)·(−α(θ − 0)):  θ′ = 0.99 → 0.101;  θ′ = 1 − 0.1(0.45 + 0.1 + 0.1) = 0.935 → 0.1065
    (0.0, None, 0.0, 0.101),
    (0.9, 0.5, 0.1, 0.1065),
])
def test_auto_lambda_hypergradient_pinned_on_a_quadratic(momentum, buf, wd, expected):
    model = Scalar()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    if buf is not None:
        opt.state[model.theta]["momentum_buffer"] = torch.full((1,), buf, dtype=torch.float64)
    comb = AutoLambda()
    comb.setup(["t"])
    ctx = scalar_context(model, opt, c_train=0.0, c_val=2.0)
    h = comb.hypergradient(ctx)  # the central difference of a quadratic is exact: rounding error only
    assert h.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    comb.before_backward(ctx)
    # positive hypergradient (a larger λ pulls θ away from the val optimum): λ falls by about meta_lr (Adam's first step)
    assert comb.lambdas.item() == pytest.approx(0.1 - 1e-4 * expected / (expected + 1e-8), rel=0, abs=1e-15)
    assert torch.equal(model.theta.detach(), torch.ones(1, dtype=torch.float64))  # the model is not moved


def val_after_virtual_step(model, opt, lam, batches, primary, lrs):
    """L_val(θ′(λ)) with θ′ = θ − α(μ·buf + ∇_θ Σλ_k L_k + wd·θ) per group (as the method), differentiable in λ."""
    (x, y), (xv, yv) = batches
    named = list(model.named_parameters())
    train = torch.stack(list(mse(model(x), y).values()))
    grads = torch.autograd.grad((lam * train).sum(), [p for _, p in named], create_graph=True)
    moved = {}
    for (n, p), g, lr in zip(named, grads, lrs):
        grp = next(gr for gr in opt.param_groups if any(q is p for q in gr["params"]))
        moved[n] = p.detach() - lr * (grp["momentum"] * opt.state[p]["momentum_buffer"] + g + grp["weight_decay"] * p.detach())
    return (primary * torch.stack(list(mse(functional_call(model, moved, (xv,)), yv).values()))).sum()


@pytest.mark.parametrize("targets", [None, ["a"]])
def test_auto_lambda_finite_difference_equals_the_exact_second_order_hypergradient(monkeypatch, targets):
    model = tiny_model(TASKS3)
    shared = [p for n, p in model.named_parameters() if n.startswith("encoder")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("encoder")]
    opt = torch.optim.SGD([{"params": shared, "lr": 0.05}, {"params": heads, "lr": 0.2}], momentum=0.9, weight_decay=1e-3)
    x, y = tiny_batch(seed=1)
    sum(mse(model(x), y).values()).backward()
    opt.step()  # momentum buffers exist
    comb = AutoLambda()
    comb.setup(list(TASKS3))
    if targets is not None:
        comb.set_roles(targets)
    comb.lambdas = torch.tensor([0.1, 0.3, -0.2], dtype=torch.float64)
    ctx = tiny_context(GradientEngine(model, comb, TASKS3), opt, 0, (x, y), mse(model(x), y), batch_seed=4)
    batches = ((x, y), ctx.extra_batch(0))
    lrs = [0.05 if n.startswith("encoder") else 0.2 for n, _ in model.named_parameters()]
    primary = torch.tensor([1.0, 1.0, 1.0] if targets is None else [1.0, 0.0, 0.0], dtype=torch.float64)
    lam = comb.lambdas.clone().requires_grad_(True)
    exact = torch.autograd.grad(val_after_virtual_step(model, opt, lam, batches, primary, lrs), lam)[0]  # double backward
    estimates = {}
    for radius in (0.01, 0.02):
        monkeypatch.setattr(al, "FD_RADIUS", radius)
        estimates[radius] = comb.hypergradient(ctx)
    # central difference at radius r: exact + c·r² + O(r⁴) (float64 rounding, ~1e-16/r, is far below): the error is
    # 4× larger at 2r, and Richardson's (4·h(r) − h(2r))/3 cancels the r² term, leaving O(r⁴), ≥ 100× smaller
    error = float((estimates[0.01] - exact).abs().max())
    assert 0 < error < 1e-3 * float(exact.abs().max())
    assert 3.5 < float((estimates[0.02] - exact).abs().max()) / error < 4.5
    richardson = (4 * estimates[0.01] - estimates[0.02]) / 3
    assert float((richardson - exact).abs().max()) < error / 100
    # a small step of λ against the hypergradient lowers the primary loss after the virtual step
    with torch.no_grad():
        lowered = comb.lambdas - 1e-3 * exact / exact.norm()
    lowered_loss = val_after_virtual_step(model, opt, lowered, batches, primary, lrs).item()
    assert lowered_loss < val_after_virtual_step(model, opt, comb.lambdas, batches, primary, lrs).item()


def test_auto_lambda_takes_adam_steps_on_the_hypergradients(monkeypatch):
    comb = AutoLambda(meta_lr=0.01)
    comb.setup(list(TASKS3))
    hypers = iter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    monkeypatch.setattr(comb, "hypergradient", lambda ctx: next(hypers))
    ref = torch.full((3,), 0.1, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([ref], lr=0.01)
    for h in torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64):
        comb.before_backward(None)
        ref.grad = h
        adam.step()
        assert torch.allclose(comb.lambdas, ref.detach(), rtol=0, atol=1e-15)
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    objective, w = comb.combine(losses)
    assert torch.equal(w, comb.lambdas) and torch.equal(objective, (comb.lambdas * losses).sum())  # Σ λ_k L_k


# ---------------------------------------------------------------------- MoDo
def test_modo_lambda_update_equals_torchjd_modo():
    from torchjd.aggregation import MoDoWeighting

    ours, theirs = MoDo(gamma=0.3, rho=0.05), MoDoWeighting(gamma=0.3, rho=0.05)
    ours.setup(["a", "b", "c", "d"])
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        cross = torch.randn(4, 7, generator=g, dtype=torch.float64) @ torch.randn(7, 4, generator=g, dtype=torch.float64)
        assert torch.allclose(ours.update(cross), theirs(cross), rtol=0, atol=1e-14)


def test_modo_pinned_step_and_simplex():
    comb = MoDo()
    comb.setup(["a", "b"])
    # λ = (½, ½), A = diag(2, 0): λ − 0.1(Aλ + 0.1λ) = (0.395, 0.495); the projection adds 0.055 to both
    assert torch.allclose(comb.update(torch.diag(torch.tensor([2.0, 0.0]))), torch.tensor([0.45, 0.55], dtype=torch.float64),
                          rtol=0, atol=1e-15)
    comb.setup(list(TASKS3))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        lam = comb.update(10 * torch.randn(3, 3, generator=g, dtype=torch.float64))
        assert (lam >= 0).all() and abs(float(lam.sum()) - 1) < 1e-12


def test_modo_step_equals_torchjd_two_batch_recipe():
    """Our trainer path (engine + before_backward) against TorchJD's two-batch example on the same batches, mapped
    to the project: J over the shared parameters, the update the mean of both batches' λ-weighted losses."""
    from torchjd.aggregation import MoDoWeighting
    from torchjd.autojac import jac

    model = tiny_model(TASKS3)
    ref = copy.deepcopy(model)
    comb = MoDo()
    comb.setup(list(TASKS3))
    engine = GradientEngine(model, comb, TASKS3)
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    weighting = MoDoWeighting(gamma=0.1, rho=0.1)
    for step in range(3):
        ours = train_step(engine, opt, step, batch_seed=step)
        ref_opt.zero_grad()
        stacked = []
        for seed in (step, 1000 * (step + 1)):  # the step's batch, then extra batch 0 (tests/combiner_utils.tiny_context)
            x, y = tiny_batch(seed=seed)
            stacked.append(torch.stack(list(mse(ref(x), y).values())))
        jacs = [torch.cat([j.flatten(1) for j in jac(s, ref.shared_parameters(), retain_graph=True)], dim=1) for s in stacked]
        weights = weighting(jacs[0] @ jacs[1].T)
        ((stacked[0] + stacked[1]) / 2).backward(weights)
        theirs = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
        ref_opt.step()
        assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-14), f"step {step}"
        assert torch.allclose(comb.lambdas, weights, rtol=0, atol=1e-14)


def test_modo_refuses_a_task_wise_optimizer_and_a_missing_second_batch():
    with pytest.raises(ConfigError, match="task-wise optimizer .* combiner 'modo'"):
        choose_strategy(MoDo(), task_wise=True)
    comb = MoDo()
    comb.setup(list(TASKS3))
    with pytest.raises(RuntimeError, match="before_backward"):
        comb.combine(torch.ones(3))
