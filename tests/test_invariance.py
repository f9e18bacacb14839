"""Loss-scale and monotone-transform invariance studies (Elich et al.; DiBS-MTL), float64 on CPU.

Each test trains a tiny two-task network twice — with task losses as they are and with one task's loss
scaled (or transformed) — and compares the trajectories, as the theory says: equal (to rounding, with
ε → 0) where the method/optimizer is invariant, visibly different where it is not."""

from __future__ import annotations

import pytest
import torch

from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.combiners.uw_o import OptimalUncertaintyWeighting
from mtl_bench.engine import GradientEngine
from mtl_bench.train import build_and_train
from tests.helpers import tiny_batch, tiny_model

TASKS = ("a", "b")
SCALES = {"a": 10.0, "b": 0.1}  # the Elich et al. App. A2 setting (×10 / ×0.1)


def trajectory(optimizer_factory, combiner_factory, scales=None, freeze_backbone=False, steps=25, seed=0):
    model = tiny_model(TASKS, seed=seed)
    if freeze_backbone:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    comb = combiner_factory()
    comb.setup(list(TASKS))
    engine = GradientEngine(model, comb, TASKS)
    opt = optimizer_factory([p for p in model.parameters() if p.requires_grad])
    for step in range(steps):
        x, y = tiny_batch(tasks=TASKS, seed=100 + step)
        opt.zero_grad(set_to_none=True)
        out = model(x)
        losses = {t: torch.nn.functional.mse_loss(out[t], y[t]) * (scales or {}).get(t, 1.0) for t in TASKS}
        engine.backward(losses, step)
        opt.step()
    heads = torch.cat([p.detach().reshape(-1) for t in TASKS for p in model.heads[t].parameters()])
    backbone = torch.cat([p.detach().reshape(-1) for p in model.encoder.parameters()])
    return heads, backbone


def rel(a, b):
    return float((a - b).norm() / b.norm())


ADAM = lambda ps: torch.optim.Adam(ps, lr=1e-2, eps=1e-30)  # noqa: E731  (ε → 0)
SGD = lambda ps: torch.optim.SGD(ps, lr=1e-2)  # noqa: E731


def test_adam_head_updates_are_scale_invariant_with_a_frozen_backbone_and_sgd_are_not():
    base, _ = trajectory(ADAM, EqualWeighting, freeze_backbone=True)
    scaled, _ = trajectory(ADAM, EqualWeighting, SCALES, freeze_backbone=True)
    assert rel(scaled, base) < 1e-12
    sgd_base, _ = trajectory(SGD, EqualWeighting, freeze_backbone=True)
    sgd_scaled, _ = trajectory(SGD, EqualWeighting, SCALES, freeze_backbone=True)
    assert rel(sgd_scaled, sgd_base) > 1e-2


def test_adam_is_not_invariant_once_the_backbone_trains():
    h0, b0 = trajectory(ADAM, EqualWeighting)
    h1, b1 = trajectory(ADAM, EqualWeighting, SCALES)
    assert rel(b1, b0) > 1e-2 and rel(h1, h0) > 1e-3


def test_adam_with_zero_betas_is_not_invariant_with_a_training_backbone():
    """Elich et al. (App. A1) claim full invariance for β1 = β2 = 0; it fails when the backbone trains:
    the sign of Σ_k α_k g_k depends on α.  This test keeps that overstatement from coming back."""
    zero_betas = lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.0, 0.0), eps=1e-30)  # noqa: E731
    h0, b0 = trajectory(zero_betas, EqualWeighting)
    h1, b1 = trajectory(zero_betas, EqualWeighting, SCALES)
    assert rel(b1, b0) > 1e-2
    # ... while with a frozen backbone the heads are invariant (sign-like head updates)
    f0, _ = trajectory(zero_betas, EqualWeighting, freeze_backbone=True)
    f1, _ = trajectory(zero_betas, EqualWeighting, SCALES, freeze_backbone=True)
    assert rel(f1, f0) < 1e-12


@pytest.mark.parametrize("opt", [ADAM, SGD], ids=["adam", "sgd"])
def test_analytic_uw_is_invariant_for_all_parameters_under_any_optimizer(opt):
    h0, b0 = trajectory(opt, OptimalUncertaintyWeighting)
    h1, b1 = trajectory(opt, OptimalUncertaintyWeighting, SCALES)
    assert rel(h1, h0) < 1e-12 and rel(b1, b0) < 1e-12


# ---------------------------------------------------------------------- monotone transforms through the trainer
def final_params(make_cfg, tmp_path, name, *overrides):
    from mtl_bench.checkpoint import load_checkpoint

    build_and_train(make_cfg(*overrides, "trainer.epochs=2", "trainer.selection.rule=last"), output_dir=tmp_path / name)
    state = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
    return torch.cat([v.reshape(-1).double() for v in state.values()])


@pytest.mark.parametrize("name,invariant", [("dibs_mtl", True), ("dibs_mtl_multi", True), ("ew", False), ("mgda", False)])
def test_strictly_increasing_transforms_leave_dibs_unchanged_but_not_ew_or_mgda(make_cfg, tmp_path, name, invariant):
    plain = final_params(make_cfg, tmp_path, "plain", f"combiner={name}")
    transformed = final_params(make_cfg, tmp_path, "transformed", f"combiner={name}",
                               "+loss_transforms.t1={kind: power, exponent: 3.0}", "+loss_transforms.t0={kind: log, eps: 1.0e-6}")
    if invariant:
        assert rel(transformed, plain) < 1e-5  # float32 training: equal up to rounding
    else:
        assert rel(transformed, plain) > 1e-3


def test_adatask_adam_makes_the_whole_network_scale_invariant():
    """Per-task moments on the shared parameters (AdaTask): the full trajectory — backbone and heads — is
    unchanged by per-task loss scaling (ε → 0), through the engine's task-wise path."""
    from mtl_bench.optim import param_groups
    from mtl_bench.optimizers.adatask import AdaTaskAdam

    def run(scales):
        model = tiny_model(TASKS)
        comb = EqualWeighting()
        comb.setup(list(TASKS))
        opt = AdaTaskAdam(param_groups(model), lr=1e-2, eps=1e-30)  # ε → 0 (exactly 0 gives 0/0 on dead units)
        engine = GradientEngine(model, comb, TASKS, task_sink=opt.set_task_gradients)
        for step in range(25):
            x, y = tiny_batch(tasks=TASKS, seed=100 + step)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            engine.backward({t: torch.nn.functional.mse_loss(out[t], y[t]) * (scales or {}).get(t, 1.0) for t in TASKS}, step)
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert rel(run(SCALES), run(None)) < 1e-12
    # plain Adam on the same problem is not invariant (the backbone mixes the tasks' scales)
    _, b0 = trajectory(ADAM, EqualWeighting)
    _, b1 = trajectory(ADAM, EqualWeighting, SCALES)
    assert rel(b1, b0) > 1e-2
