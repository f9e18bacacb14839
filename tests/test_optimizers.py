"""Task-wise (AdaTask) optimizers and signSGD: equivalences with torch's optimizers, the per-task rule, loss-scale
invariance, weight decay, missing tasks, state round trips, schedulers and error messages.  CPU, float64."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.optim import build_optimizer, param_groups
from mtl_bench.optimizers import AdaTaskAdagrad, AdaTaskAdam, AdaTaskRMSprop, SignSGD, TaskWiseOptimizer, is_task_wise

DT = torch.float64
REPO = Path(__file__).resolve().parents[1]
ADATASK = [AdaTaskAdam, AdaTaskRMSprop, AdaTaskAdagrad]
TORCH_TWIN = {AdaTaskAdam: torch.optim.Adam, AdaTaskRMSprop: torch.optim.RMSprop, AdaTaskAdagrad: torch.optim.Adagrad}


def close(a, b, rtol=1e-12, atol=1e-14):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------- helpers
def make_model(k: int, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
    heads = {f"t{j}": nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)) for j in range(k)}
    return MultiTaskModel(encoder, heads).to(DT)


def make_data(k: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g, dtype=DT)
    ys = {f"t{j}": torch.randn(16, 1, generator=g, dtype=DT) * (j + 1) for j in range(k)}
    return x, ys


def per_task_grads(model: MultiTaskModel, x, ys, scales=None):
    """G (K×d over the shared parameters) and each head's gradient, of the losses c_k · L_k."""
    out = model(x)
    shared = model.shared_parameters()
    rows, heads = [], {}
    for j, t in enumerate(model.task_names):
        loss = nn.functional.mse_loss(out[t], ys[t]) * (1.0 if scales is None else scales[j])
        head = model.task_parameters(t)
        g = torch.autograd.grad(loss, shared + head, retain_graph=True)
        rows.append(torch.cat([v.reshape(-1) for v in g[: len(shared)]]))
        heads[t] = g[len(shared):]
    return torch.stack(rows), heads


def write_grads(params, flat):
    offset = 0
    for p in params:
        p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def train_step(model, opt, x, ys, scales=None, present=None):
    """One step as the engine feeds a task-wise optimizer (G + head .grad), or a plain one (Σ_k G_k in .grad)."""
    opt.zero_grad(set_to_none=True)
    G, heads = per_task_grads(model, x, ys, scales)
    for t, grads in heads.items():
        for p, g in zip(model.task_parameters(t), grads):
            p.grad = g
    if is_task_wise(opt):
        opt.set_task_gradients(G, present)
    else:
        write_grads(model.shared_parameters(), G.sum(0))
    opt.step()
    return G


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def shared_flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.shared_parameters()])


# ---------------------------------------------------------------------------------------------- K = 1: torch's twins
@pytest.mark.parametrize(
    "cls,kwargs,twin,twin_kwargs",
    [
        (AdaTaskAdam, dict(lr=1e-2), torch.optim.Adam, dict(lr=1e-2)),
        (AdaTaskAdam, dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1), torch.optim.AdamW,
         dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1)),
        (AdaTaskRMSprop, dict(lr=1e-2, alpha=0.9, eps=1e-3), torch.optim.RMSprop, dict(lr=1e-2, alpha=0.9, eps=1e-3)),
        (AdaTaskAdagrad, dict(lr=1e-1, eps=1e-3, initial_accumulator_value=0.1), torch.optim.Adagrad,
         dict(lr=1e-1, eps=1e-3, initial_accumulator_value=0.1)),
    ],
)
def test_single_task_equals_the_torch_optimizer_step_by_step(cls, kwargs, twin, twin_kwargs):
    x, ys = make_data(1)
    m_a, m_b = make_model(1), make_model(1)
    opt_a = cls(param_groups(m_a), **kwargs)
    opt_b = twin(param_groups(m_b), **twin_kwargs)
    for _ in range(8):
        train_step(m_a, opt_a, x, ys)
        train_step(m_b, opt_b, x, ys)
        for pa, pb in zip(m_a.parameters(), m_b.parameters()):
            close(pa, pb)
    assert not torch.equal(flat_params(m_a), flat_params(make_model(1)))  # it did move


# ---------------------------------------------------------------------------------------------- K tasks: sum of K optimizers
def random_problem(k: int, steps: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    shared = [torch.randn(3, 4, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT)]
    heads = [torch.randn(2, 3, generator=g, dtype=DT) for _ in range(k)]
    d = sum(p.numel() for p in shared)
    Gs = [torch.randn(k, d, generator=g, dtype=DT) * torch.tensor([10.0**j for j in range(k)], dtype=DT)[:, None]
          for _ in range(steps)]
    Hs = [[torch.randn(2, 3, generator=g, dtype=DT) for _ in range(k)] for _ in range(steps)]
    return shared, heads, Gs, Hs


HYPER = {AdaTaskAdam: dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6), AdaTaskRMSprop: dict(lr=1e-2, alpha=0.9, eps=1e-6),
         AdaTaskAdagrad: dict(lr=1e-1, eps=1e-6, initial_accumulator_value=0.05)}


@pytest.mark.parametrize("blocks", ["one", "many"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("pattern", ["all", "zero", "skip"])
@pytest.mark.parametrize("cls", ADATASK)
def test_shared_update_is_the_sum_of_k_single_task_optimizers(cls, pattern, reduction, blocks):
    """Each task's share of the shared update equals a torch optimizer of the same family fed only that task's
    gradient (absent: fed a zero gradient under ``zero``, not stepped under ``skip``); the applied update is
    their sum (``mean``: divided by K); ``last_task_updates`` holds the shares; heads equal torch's optimizer.
    ``blocks="many"``: the CPU column blocking cuts the 17 shared scalars into 9 blocks."""
    k, steps = 3, 7
    shared, heads, Gs, Hs = random_problem(k, steps)
    presence = [[True] * k for _ in range(steps)]
    if pattern != "all":
        presence[2] = [True, False, True]
        presence[3] = [False, False, True]
        presence[5] = [True, False, False]
    missing = "skip" if pattern == "skip" else "zero"
    hyper = HYPER[cls]
    s_params = [nn.Parameter(p.clone()) for p in shared]
    h_params = [nn.Parameter(p.clone()) for p in heads]
    groups = [{"params": s_params, "name": "shared"}] + [{"params": [h], "name": f"head/t{j}"} for j, h in enumerate(h_params)]
    opt = cls(groups, reduction=reduction, missing_task=missing, **hyper)
    if blocks == "many":
        opt.cpu_block_elements = 2 * k
    twin = TORCH_TWIN[cls]
    refs = [nn.Parameter(torch.zeros(Gs[0].shape[1], dtype=DT)) for _ in range(k)]
    ref_opts = [twin([r], **hyper) for r in refs]
    ref_heads = [nn.Parameter(p.clone()) for p in heads]
    ref_head_opts = [twin([h], **hyper) for h in ref_heads]
    for t in range(steps):
        opt.record_task_updates = t_rec = t % 3 != 1  # also steps without recording (the scratch-buffer path)
        G = Gs[t].clone()
        absent = [j for j in range(k) if not presence[t][j]]
        for j in absent:
            G[j] = float("nan")  # rows of absent tasks are ignored
        before = torch.cat([p.detach().reshape(-1) for p in s_params])
        for j, h in enumerate(h_params):
            h.grad = Hs[t][j].clone()
        opt.set_task_gradients(G, torch.tensor(presence[t]))
        opt.step()
        applied = torch.cat([p.detach().reshape(-1) for p in s_params]) - before
        shares = []
        for j in range(k):
            r_before = refs[j].detach().clone()
            if presence[t][j] or missing == "zero":
                refs[j].grad = Gs[t][j].clone() if presence[t][j] else torch.zeros_like(Gs[t][j])
                ref_opts[j].step()
            shares.append(refs[j].detach() - r_before)
            ref_heads[j].grad = Hs[t][j].clone()
            ref_head_opts[j].step()
        shares = torch.stack(shares)
        expected = shares.sum(0) / (k if reduction == "mean" else 1)
        close(applied, expected)
        if t_rec:
            close(opt.last_task_updates, shares)
            close(opt.last_task_updates.sum(0) / (k if reduction == "mean" else 1), applied)
        else:
            assert opt.last_task_updates is None
        for h, rh in zip(h_params, ref_heads):
            close(h, rh)
    clock = opt.state[s_params[0]]["task_step"]
    if missing == "skip":
        assert clock == [sum(p[j] for p in presence) for j in range(k)]
    else:
        assert clock == [steps] * k


# ---------------------------------------------------------------------------------------------- loss-scale invariance
@pytest.mark.parametrize("cls", ADATASK)
def test_loss_scale_invariance_of_the_whole_trajectory(cls):
    """With ε = 0, multiplying task k's loss by c_k > 0 leaves every parameter's trajectory unchanged
    (per-task normalisation on shared parameters, single-task state on heads)."""
    k = 3
    x, ys = make_data(k)
    kw = dict(lr=1e-2, eps=0.0)
    m_a, m_b = make_model(k), make_model(k)
    opt_a, opt_b = cls(param_groups(m_a), **kw), cls(param_groups(m_b), **kw)
    for _ in range(10):
        train_step(m_a, opt_a, x, ys)
        train_step(m_b, opt_b, x, ys, scales=[1.0, 50.0, 0.02])
    close(flat_params(m_a), flat_params(m_b), rtol=1e-10, atol=1e-13)
    assert not torch.equal(flat_params(m_a), flat_params(make_model(k)))


def test_plain_adam_shared_update_is_not_loss_scale_invariant():
    """Control: plain Adam with ε = 0 keeps the heads' first update (Elich et al.) but not the shared one."""
    k = 3
    x, ys = make_data(k)
    m0, m_a, m_b = make_model(k), make_model(k), make_model(k)
    opt_a = torch.optim.Adam(param_groups(m_a), lr=1e-2, eps=0.0)
    opt_b = torch.optim.Adam(param_groups(m_b), lr=1e-2, eps=0.0)
    train_step(m_a, opt_a, x, ys)
    train_step(m_b, opt_b, x, ys, scales=[1.0, 50.0, 0.02])
    for t in m0.task_names:
        for pa, pb in zip(m_a.task_parameters(t), m_b.task_parameters(t)):
            close(pa, pb)
    da, db = shared_flat(m_a) - shared_flat(m0), shared_flat(m_b) - shared_flat(m0)
    assert (da - db).norm() > 0.1 * da.norm()


# ---------------------------------------------------------------------------------------------- weight decay
@pytest.mark.parametrize("cls", ADATASK)
def test_decoupled_weight_decay_is_applied_once_per_step(cls):
    k, lr, wd, eps = 3, 0.1, 0.2, 1e-3
    shared, heads, Gs, Hs = random_problem(k, 1)
    G, H = Gs[0], Hs[0][0]
    s = nn.Parameter(torch.cat([p.reshape(-1) for p in shared]).clone())
    h = nn.Parameter(heads[0].clone())
    opt = cls([{"params": [s], "name": "shared"}, {"params": [h], "name": "head/t0"}], lr=lr, eps=eps, weight_decay=wd)
    theta0, h0 = s.detach().clone(), h.detach().clone()
    h.grad = H.clone()
    opt.set_task_gradients(G)
    opt.step()

    def unit(g):  # the first step of each family, by hand
        if cls is AdaTaskAdam:
            b1, b2 = 0.9, 0.999
            m_hat = (1 - b1) * g / (1 - b1)
            v_hat = (1 - b2) * g * g / (1 - b2)
            return m_hat / (v_hat.sqrt() + eps)
        if cls is AdaTaskRMSprop:
            return g / ((0.01 * g * g).sqrt() + eps)
        return g / ((g * g).sqrt() + eps)

    close(s.detach(), theta0 * (1 - lr * wd) - lr * sum(unit(G[j]) for j in range(k)))
    close(h.detach(), h0 * (1 - lr * wd) - lr * unit(H))


# ---------------------------------------------------------------------------------------------- missing tasks by hand
@pytest.mark.parametrize("missing", ["zero", "skip"])
def test_absent_task_state_and_update_by_hand(missing):
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-8
    g1 = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=DT)
    g2 = torch.tensor([[-1.0, 4.0], [float("nan"), float("inf")]], dtype=DT)  # task 1 absent at step 2
    p = nn.Parameter(torch.zeros(2, dtype=DT))
    opt = AdaTaskAdam([{"params": [p], "name": "shared"}], lr=lr, betas=(b1, b2), eps=eps, missing_task=missing)
    opt.set_task_gradients(g1)
    opt.step()
    after1 = p.detach().clone()
    opt.set_task_gradients(g2, [True, False])
    opt.record_task_updates = True
    opt.step()
    st = opt.state[p]
    # task 0: a plain second Adam step
    m0 = b1 * (1 - b1) * g1[0] + (1 - b1) * g2[0]
    v0 = b2 * (1 - b2) * g1[0] ** 2 + (1 - b2) * g2[0] ** 2
    step0 = -lr * (m0 / (1 - b1**2)) / ((v0 / (1 - b2**2)).sqrt() + eps)
    close(st["task_exp_avg"][0], m0)
    close(st["task_exp_avg_sq"][0], v0)
    if missing == "zero":  # zero gradient: moments decay, clock advances, old momentum still moves θ
        m1 = b1 * (1 - b1) * g1[1]
        v1 = b2 * (1 - b2) * g1[1] ** 2
        step1 = -lr * (m1 / (1 - b1**2)) / ((v1 / (1 - b2**2)).sqrt() + eps)
        assert st["task_step"] == [2, 2]
        assert (step1.abs() > 0).all()
    else:  # skip: state and clock frozen, no contribution
        m1, v1 = (1 - b1) * g1[1], (1 - b2) * g1[1] ** 2
        step1 = torch.zeros(2, dtype=DT)
        assert st["task_step"] == [2, 1]
    close(st["task_exp_avg"][1], m1)
    close(st["task_exp_avg_sq"][1], v1)
    close(opt.last_task_updates, torch.stack([step0, step1]))
    close(p.detach() - after1, step0 + step1)
    if missing == "skip":  # the next time task 1 is present it is bias-corrected with its own clock t = 2
        g3 = torch.tensor([[0.5, 0.5], [-2.0, 1.0]], dtype=DT)
        opt.set_task_gradients(g3)
        opt.step()
        m1 = b1 * m1 + (1 - b1) * g3[1]
        v1 = b2 * v1 + (1 - b2) * g3[1] ** 2
        close(opt.last_task_updates[1], -lr * (m1 / (1 - b1**2)) / ((v1 / (1 - b2**2)).sqrt() + eps))
        assert st["task_step"] == [3, 2]


def test_absent_task_of_rmsprop_and_adagrad_contributes_no_step():
    g1 = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=DT)
    g2 = torch.tensor([[-1.0, 4.0], [float("nan"), 0.0]], dtype=DT)
    for cls in (AdaTaskRMSprop, AdaTaskAdagrad):
        for missing in ("zero", "skip"):
            p = nn.Parameter(torch.zeros(2, dtype=DT))
            opt = cls([{"params": [p], "name": "shared"}], lr=0.1, missing_task=missing)
            opt.record_task_updates = True
            opt.set_task_gradients(g1)
            opt.step()
            key = "task_square_avg" if cls is AdaTaskRMSprop else "task_sum"
            before = opt.state[p][key][1].clone()
            opt.set_task_gradients(g2, torch.tensor([True, False]))
            opt.step()
            assert torch.equal(opt.last_task_updates[1], torch.zeros(2, dtype=DT))
            after = opt.state[p][key][1]
            decays = cls is AdaTaskRMSprop and missing == "zero"
            close(after, before * 0.99 if decays else before)


# ---------------------------------------------------------------------------------------------- state, schedulers
def _make(kind, model, **kw):
    if kind is SignSGD:
        return SignSGD(param_groups(model), lr=1e-2, **kw)
    return kind(param_groups(model), lr=1e-2, **kw)


@pytest.mark.parametrize("kind", [*ADATASK, SignSGD])
def test_state_dict_round_trip_mid_run_reproduces_the_next_steps(kind):
    k = 3
    x, ys = make_data(k)
    kw = {} if kind is SignSGD else dict(missing_task="skip", weight_decay=0.01)
    present = [None, [True, False, True], None, [False, True, True]]
    model = make_model(k)
    opt = _make(kind, model, **kw)
    for t in range(3):
        train_step(model, opt, x, ys, present=present[t] if kind is not SignSGD else None)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = make_model(k, seed=99)
    model2.load_state_dict(ckpt["model"])
    opt2 = _make(kind, model2, **kw)
    opt2.load_state_dict(ckpt["opt"])
    if kind is not SignSGD:
        assert opt2.num_tasks == k and opt2.state[model2.shared_parameters()[0]]["task_step"] == [3, 2, 3]
    for t in range(3):
        pr = present[3] if t == 0 and kind is not SignSGD else None
        train_step(model, opt, x, ys, present=pr)
        train_step(model2, opt2, x, ys, present=pr)
        assert torch.equal(flat_params(model), flat_params(model2))


def test_deepcopy_keeps_a_working_optimizer():
    model = make_model(2)
    opt = AdaTaskAdam(param_groups(model))
    x, ys = make_data(2)
    train_step(model, opt, x, ys)
    clone_model = copy.deepcopy(model)
    opt2 = AdaTaskAdam(param_groups(clone_model))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    copy.deepcopy(opt)
    train_step(model, opt, x, ys)
    train_step(clone_model, opt2, x, ys)
    assert torch.equal(flat_params(model), flat_params(clone_model))


@pytest.mark.parametrize("cls", ADATASK)
def test_lr_scheduler_changes_the_lr_used(cls):
    k = 2
    x, ys = make_data(k)
    models = [make_model(k) for _ in range(3)]
    opts = [cls(param_groups(m), lr=1e-2) for m in models]
    sched = torch.optim.lr_scheduler.MultiStepLR(opts[0], milestones=[2], gamma=0.1)
    for step in range(4):
        for m, o in zip(models, opts):
            train_step(m, o, x, ys)
        sched.step()
        if step == 1:
            for g in opts[1].param_groups:  # the same schedule by hand
                g["lr"] = 1e-3
    assert all(math.isclose(g["lr"], 1e-3) for g in opts[0].param_groups)
    assert torch.equal(flat_params(models[0]), flat_params(models[1]))
    assert not torch.allclose(flat_params(models[0]), flat_params(models[2]))


# ---------------------------------------------------------------------------------------------- errors
def test_a_shared_group_is_required():
    model = make_model(2)
    heads_only = [g for g in param_groups(model) if g["name"] != "shared"]
    with pytest.raises(ConfigError, match=r"exactly one parameter group named 'shared'.*\['head/t0', 'head/t1'\]"):
        AdaTaskAdam(heads_only)
    with pytest.raises(ConfigError, match=r"\['<unnamed #0>'\]"):
        AdaTaskRMSprop(model.parameters())
    twice = param_groups(model) + [{"params": [nn.Parameter(torch.zeros(2, dtype=DT))], "name": "shared"}]
    with pytest.raises(ConfigError, match="exactly one"):
        AdaTaskAdagrad(twice)


def test_step_without_task_gradients_is_an_error_when_shared_grads_exist():
    model = make_model(2)
    opt = AdaTaskAdam(param_groups(model))
    x, ys = make_data(2)
    sum(nn.functional.mse_loss(o, ys[t]) for t, o in model(x).items()).backward()
    before = flat_params(model)
    with pytest.raises(RuntimeError, match=r"set_task_gradients\(\) was not called.*never falls back to the summed gradient"):
        opt.step()
    assert torch.equal(flat_params(model), before)
    # a step that only has head gradients is fine: the shared parameters stay put
    for p in model.shared_parameters():
        p.grad = None
    opt.step()
    assert torch.equal(shared_flat(model), before[: shared_flat(model).numel()])


def test_set_task_gradients_checks_shapes():
    model = make_model(2)
    opt = AdaTaskAdam(param_groups(model))
    d = shared_flat(model).numel()
    with pytest.raises(ValueError, match=rf"has {d + 1} columns but the 'shared' group has d = {d}"):
        opt.set_task_gradients(torch.zeros(2, d + 1, dtype=DT))
    with pytest.raises(ValueError, match="must be a K×d tensor"):
        opt.set_task_gradients(torch.zeros(d, dtype=DT))
    with pytest.raises(ValueError, match="torch.float32 on cpu, the shared parameters are torch.float64"):
        opt.set_task_gradients(torch.zeros(2, d))
    with pytest.raises(ValueError, match="present has 3 entries, expected K = 2"):
        opt.set_task_gradients(torch.zeros(2, d, dtype=DT), [True, True, False])
    with pytest.raises(ValueError, match="bool vector"):
        opt.set_task_gradients(torch.zeros(2, d, dtype=DT), torch.ones(2))
    opt.set_task_gradients(torch.ones(2, d, dtype=DT))
    opt.step()
    with pytest.raises(ValueError, match=r"K = 3 tasks, but the optimizer state holds 2 tasks"):
        opt.set_task_gradients(torch.ones(3, d, dtype=DT))


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (AdaTaskAdam, dict(lr=0.0), "optimizer.lr must be a positive number, got 0.0"),
        (AdaTaskAdam, dict(lr=-1e-3), "optimizer.lr must be a positive number, got -0.001"),
        (AdaTaskAdam, dict(betas=(0.9, 1.0)), "optimizer.betas must be two numbers in [0, 1), got (0.9, 1.0)"),
        (AdaTaskAdam, dict(betas=(0.9,)), "optimizer.betas must be two numbers in [0, 1), got (0.9,)"),
        (AdaTaskAdam, dict(eps=-1e-8), "optimizer.eps must be a number >= 0.0, got -1e-08"),
        (AdaTaskAdam, dict(weight_decay=-0.1), "optimizer.weight_decay must be a number >= 0.0, got -0.1"),
        (AdaTaskAdam, dict(reduction="avg"), "optimizer.reduction='avg' is invalid; choose one of ['sum', 'mean']"),
        (AdaTaskRMSprop, dict(missing_task="drop"), "optimizer.missing_task='drop' is invalid; choose one of ['zero', 'skip']"),
        (AdaTaskRMSprop, dict(alpha=1.0), "optimizer.alpha must be a number in [0.0, 1.0), got 1.0"),
        (AdaTaskAdagrad, dict(initial_accumulator_value=-1.0), "optimizer.initial_accumulator_value must be a number >= 0.0, got -1.0"),
        (SignSGD, dict(momentum=1.0), "optimizer.momentum must be a number in [0.0, 1.0), got 1.0"),
        (SignSGD, dict(lr=0.0), "optimizer.lr must be a positive number, got 0.0"),
    ],
)
def test_invalid_hyper_parameters_raise_one_line_config_errors(cls, kwargs, message):
    with pytest.raises(ConfigError) as info:
        cls(param_groups(make_model(2)), **kwargs)
    assert str(info.value) == message


def test_per_group_overrides_are_validated_and_named():
    groups = param_groups(make_model(2))
    groups[1]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"optimizer.lr must be a positive number, got -1.0 \(param group 'head/t0'\)"):
        AdaTaskAdam(groups)
    for cls in ADATASK:  # ε = 0 is allowed (invariance tests)
        cls(param_groups(make_model(2)), eps=0.0)


# ---------------------------------------------------------------------------------------------- signSGD
def test_signsgd_moves_every_coordinate_by_lr():
    lr, wd = 0.05, 0.1
    p = nn.Parameter(torch.tensor([1.0, 2.0, -3.0, 4.0], dtype=DT))
    opt = SignSGD([p], lr=lr, momentum=0.0)
    assert not is_task_wise(opt) and not opt.state
    p.grad = torch.tensor([3.0, -0.5, 0.0, 1e-12], dtype=DT)
    opt.step()
    close(p.detach(), torch.tensor([1.0 - lr, 2.0 + lr, -3.0, 4.0 - lr], dtype=DT))
    assert not opt.state  # plain signSGD keeps no state
    q = nn.Parameter(torch.tensor([1.0, -2.0], dtype=DT))
    opt = SignSGD([q], lr=lr, momentum=0.0, weight_decay=wd)
    q.grad = torch.tensor([-7.0, -7.0], dtype=DT)
    opt.step()
    close(q.detach(), torch.tensor([1.0, -2.0], dtype=DT) * (1 - lr * wd) + lr)


def test_signum_follows_the_sign_of_the_momentum():
    lr, beta = 0.1, 0.9
    p = nn.Parameter(torch.zeros(2, dtype=DT))
    opt = SignSGD([p], lr=lr, momentum=beta)
    p.grad = torch.tensor([1.0, -1.0], dtype=DT)
    opt.step()
    close(p.detach(), torch.tensor([-lr, lr], dtype=DT))
    close(opt.state[p]["momentum_buffer"], torch.tensor([0.1, -0.1], dtype=DT))
    p.grad = torch.tensor([-0.5, 0.5], dtype=DT)  # momentum 0.04, -0.04: keeps the old sign against the gradient
    opt.step()
    close(opt.state[p]["momentum_buffer"], torch.tensor([0.04, -0.04], dtype=DT))
    close(p.detach(), torch.tensor([-2 * lr, 2 * lr], dtype=DT))
    p.grad = torch.tensor([-1.0, 1.0], dtype=DT)  # momentum -0.064, 0.064: now it turns
    opt.step()
    close(p.detach(), torch.tensor([-lr, lr], dtype=DT))


# ---------------------------------------------------------------------------------------------- configs
CONFIGS = {
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "signsgd": SignSGD,
    "adatask_adam": AdaTaskAdam,
    "adatask_rmsprop": AdaTaskRMSprop,
    "adatask_adagrad": AdaTaskAdagrad,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_build_the_documented_optimizer_with_its_defaults(name):
    import inspect

    cfg = OmegaConf.load(REPO / "configs" / "optimizer" / f"{name}.yaml")
    model = make_model(2)
    opt = build_optimizer(instantiate(cfg), model)
    cls = CONFIGS[name]
    assert type(opt) is cls
    defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items() if k in cfg and k != "params"}
    for key, value in defaults.items():
        got = opt.defaults[key]
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, key
    x, ys = make_data(2)
    train_step(model, opt, x, ys)
    assert is_task_wise(opt) == issubclass(cls, TaskWiseOptimizer)
