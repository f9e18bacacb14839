"""DDP (torchrun) without DistributedDataParallel: 2 gloo processes on the CPU give, step after step, the same
update as one process on the combined batch — for loss weightings, gradient aggregators over every supported
gradient source, and through the real Trainer (sharded loader, loss reduction, FAMO's post-step losses).

All multi-process scenarios run in *one* spawn of 2 processes (module fixture): the interpreter start-up is
the expensive part.  Results are compared in float64 with tight tolerances; the MGDA case over the representation,
whose min-norm solve and Adam amplify summation-order rounding, step by step against bounds derived from the
rounding (see "lockstep comparison").
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mtl_bench.combiners import COMBINERS
from mtl_bench.config.schema import TrainerConf
from mtl_bench.data.base import Benchmark, TensorDictDataset
from mtl_bench.data.synthetic import regression_task
from mtl_bench.distributed import NO_DIST, BatchShard, DistContext, cleanup, current, init_distributed, with_global_value
from mtl_bench.engine import GradientEngine
from mtl_bench.errors import ConfigError
from tests.helpers import tiny_batch, tiny_model

TASKS = ("a", "b", "c")
WORLD = 2
BATCH = 8  # global batch; 4 samples per rank
STEPS = 3
# (combiner, kwargs): loss weightings linear / nonlinear in the losses / learnable, and gradient aggregators
# over params (random and nonlinear in G), representation (Gramian path) and last_shared (GradNorm)
ENGINE_CASES = {
    "ew": ("ew", {}),
    "gls": ("gls", {}),
    "uw": ("uw", {"init_log_var": 0.3}),
    "rlw": ("rlw", {"seed": 5}),
    "pcgrad": ("pcgrad", {"seed": 3}),
    "upgrad": ("upgrad", {}),
    "upgrad_batched": ("upgrad", {}, "batched"),  # vmapped encoder pass for G
    "mgda_representation": ("mgda", {"grad_source": "representation"}),
    "upgrad_last_shared": ("upgrad", {"grad_source": "last_shared"}),
    "gradnorm_last_shared": ("gradnorm", {"grad_source": "last_shared", "lr": 0.05}),
}
TRAINER_CASES = ("ew", "pcgrad", "famo")
# Compared step by step from the same parameters, with bounds derived from the float64 rounding (see
# lockstep_ratios): MGDA's min-norm solve amplifies rounding, and Adam divides by √v + 1e-8, so where the
# exact update is 0 (a Pareto-stationary step) the computed one is the solve's rounding noise times lr/1e-8
# and whole trajectories may legitimately differ by ~1e-10 between summation orders.
LOCKSTEP = ("mgda_representation",)


# ---------------------------------------------------------------------- the runs (same code on 1 or 2 processes)
def global_batches(seed: int = 11):
    return [tiny_batch(n=BATCH, tasks=TASKS, seed=seed + s) for s in range(STEPS)]


def local_part(x, y, ctx: DistContext):
    if not ctx.enabled:
        return x, y
    b = BATCH // ctx.world_size
    sl = slice(ctx.rank * b, (ctx.rank + 1) * b)
    return x[sl], {t: v[sl] for t, v in y.items()}


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def engine_step(model, comb, engine, x, y, step: int, grams: list) -> dict[str, torch.Tensor]:
    """One GradientEngine backward on (x, y); what a lockstep comparison needs (``grams``: what the combiner's
    solver received, appended by :func:`record_gramians`)."""
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves, list(TASKS))
    losses = {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}
    result = engine.backward(losses, step, rep=rep, leaves=leaves)
    record = {"weights": result.weights.detach().clone(), "grad": flat_grad(model)}
    if grams:
        gram, seen_losses = grams[-1]
        record.update(gram=gram, losses=seen_losses, local_rows=result.grads.detach().clone())
    return record


def record_gramians(comb) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Wrap the combiner's solver so that every (Gramian, losses) it is handed — the reduced ones under DDP — is kept."""
    grams: list[tuple[torch.Tensor, torch.Tensor]] = []
    solve = comb.weights_from_gramian

    def recording(gramian, losses):
        grams.append((gramian.detach().clone(), losses.detach().clone()))
        return solve(gramian, losses)

    comb.weights_from_gramian = recording
    return grams


def engine_run(name: str, kwargs: dict, per_task_backward: str = "sequential", *, ctx: DistContext,
               lockstep: bool = False) -> dict[str, torch.Tensor]:
    """STEPS Adam steps through GradientEngine on this rank's part of each global batch.  With ``lockstep`` (a
    Gramian weighting) it also returns, per step, the parameters before the step (``lockstep.pre``), the Gramian
    and losses the solver saw, the weights, every ``.grad`` and this rank's block of representation rows
    (``rank_local.rows``: differs between ranks)."""
    model = tiny_model(TASKS)
    comb = COMBINERS[name](**kwargs)
    comb.setup(list(TASKS))
    comb.double()
    grams = record_gramians(comb) if lockstep else []
    opt = torch.optim.Adam([*model.parameters(), *comb.parameters()], lr=0.05)
    engine = GradientEngine(model, comb, TASKS, per_task_backward=per_task_backward, dist=ctx)
    weights, steps = [], []
    for step, (x, y) in enumerate(global_batches()):
        x, y = local_part(x, y, ctx)
        opt.zero_grad(set_to_none=True)
        pre = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        record = engine_step(model, comb, engine, x, y, step, grams)
        weights.append(record["weights"])
        steps.append({"pre": pre, **record})
        opt.step()
        comb.after_step(None)
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"combiner.{k}": v.detach().clone() for k, v in comb.state_dict().items() if isinstance(v, torch.Tensor)})
    state["weights"] = torch.stack(weights)
    if grams:
        for key in ("pre", "gram", "weights", "grad", "losses"):
            state[f"lockstep.{key}"] = torch.stack([s[key] for s in steps])
        state["rank_local.rows"] = torch.stack([s["local_rows"] for s in steps])
    return state


def make_trainer(name: str, out_dir: Path):
    from mtl_bench.loggers.run_logger import RunLogger
    from mtl_bench.selection import ModelSelector
    from mtl_bench.trainer import Trainer, metric_directions

    tasks = {t: regression_task(t) for t in TASKS}
    x, y = tiny_batch(n=3 * BATCH + 3, tasks=TASKS, seed=21)  # 3 full global batches and a remainder
    xv, yv = tiny_batch(n=6, tasks=TASKS, seed=22)
    splits = {"train": TensorDictDataset(x, y), "val": TensorDictDataset(xv, yv), "test": TensorDictDataset(xv, yv)}
    bench = Benchmark("toy", tasks, splits, (5,))
    model = tiny_model(TASKS)
    comb = COMBINERS[name]()
    comb.setup(list(TASKS))
    comb.double()
    opt = torch.optim.Adam([*model.parameters(), *comb.parameters()], lr=0.05)
    settings = TrainerConf(epochs=2, batch_size=BATCH, device="cpu", log_every_n_steps=1, progress_bar=False, checkpoint_every=0)
    return Trainer(
        model=model, benchmark=bench, tasks=tasks, combiner=comb, optimizer=opt, scheduler=None, settings=settings,
        selector=ModelSelector("last", "val/loss", "auto", 1, metric_directions(tasks)), logger=RunLogger(out_dir, {}),
        output_dir=out_dir, device=torch.device("cpu"), seed=7,
    )


def trainer_run(name: str, out_dir: Path) -> dict[str, torch.Tensor]:
    """Two epochs of Trainer.train_epoch (3 steps each: the remainder batch is dropped) on its own loader."""
    trainer = make_trainer(name, out_dir)
    epoch_losses = []
    for epoch in (1, 2):
        trainer.epoch = epoch
        epoch_losses.append(torch.tensor(list(trainer.train_epoch().values()), dtype=torch.float64))
        trainer.combiner.on_epoch_end(epoch, {})
    state = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    state["epoch_losses"] = torch.stack(epoch_losses)
    state["val_loss"] = torch.tensor(trainer.evaluate("val")["val/loss"], dtype=torch.float64)
    return state


def collectives(ctx: DistContext) -> dict[str, torch.Tensor]:
    """The context's helpers on rank-dependent inputs."""
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(ctx.rank))
    ctx.average_buffers(bn)
    grads = torch.nn.Linear(2, 1)
    for p in grads.parameters():
        p.grad = torch.full_like(p, float(ctx.rank + 1))
    ctx.average_grads(grads.parameters())
    (means,) = ctx.stack_means([torch.tensor(1.0 + ctx.rank, dtype=torch.float64), torch.tensor(float(ctx.rank))])
    return {
        "running_mean": bn.running_mean.clone(), "grad": grads.weight.grad.clone(), "stack_means": means,
        "agree": torch.tensor(ctx.agree(ctx.rank == 1, False)),
        "broadcast": torch.tensor(ctx.broadcast_object(ctx.rank + 10)),
    }


def run_all(ctx: DistContext, out_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    results = {"collectives": collectives(ctx)}
    results.update({f"engine/{case}": engine_run(*ENGINE_CASES[case], ctx=ctx, lockstep=case in LOCKSTEP) for case in ENGINE_CASES})
    for name in TRAINER_CASES:
        results[f"trainer/{name}"] = trainer_run(name, out_dir / f"{name}_rank{ctx.rank}")
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_distributed(TrainerConf(device="cpu", batch_size=BATCH))
    try:
        assert ctx.enabled and ctx.backend == "gloo" and current() is ctx
        torch.save(run_all(ctx, Path(out_dir)), Path(out_dir) / f"rank{rank}.pt")
    finally:
        cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    procs = mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="spawn", join=False)
    deadline = time.monotonic() + 240
    while not procs.join(timeout=1):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the 2-process gloo run did not finish in 240 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single_results(tmp_path_factory):
    torch.set_num_threads(1)
    return run_all(NO_DIST, tmp_path_factory.mktemp("single"))


def assert_states_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        rtol = 1e-6 if k == "epoch_losses" else 1e-9  # the trainer's logged losses are float32
        torch.testing.assert_close(got[k], ref[k], rtol=rtol, atol=1e-11, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------------- lockstep comparison with rounding bounds
# The 2-rank Gramian fl(Σ_r G_r G_rᵀ)/W² and the single-process fl(G Gᵀ) sum the same d = B·h products in a
# different order, so they differ by a few ulp of Σ|terms|; the min-norm solve maps that to weights through its
# conditioning, and Adam (update ≈ lr·g/1e-8 where the exact g is 0) turns weight noise at a Pareto-stationary
# step into parameter differences of ~1e-10 two steps later.  No fixed tolerance on the trajectory separates
# that from a wrong update, so LOCKSTEP cases are compared *step by step from the same parameters* (the DDP
# run's own, recorded before each step), each quantity against a bound computed from the step's actual values:
#
#  rounding model: a value computed by a chain of sums is within γ_N·(its absolute chain) of the exact one
#    (Higham, Accuracy and Stability, §3.1–3.5; first order in u), where the absolute chain is the same
#    computation on |inputs| and |parameters| with the real ReLU masks (abs_chains) and N counts the roundings
#    along the longest chain (rounding_depth);
#  rows (per-sample ∂L_k/∂rep, no sum over samples): |Ĝ_ddp − G| ≤ 2γ_N·R, R the rows' absolute chain;
#  Gramian: each run is fl(ĜĜᵀ) with a d-term sum, so |M_ddp − M| ≤ 2(γ_d + 2γ_N)·R Rᵀ =: β;
#  weights (MGDA: w* = argmin_{w ∈ simplex} wᵀMw): if M is λ-strongly convex on 1⊥ (λ = smallest eigenvalue
#    of M on the simplex's tangent space, the solve's conditioning), the optimality conditions of the two
#    problems give ‖w*(M₁) − w*(M₂)‖ ≤ ‖(M₁ − M₂)w*(M₂)‖/λ₁ ≤ ‖β‖_F/λ; each solver output is within
#    min_norm_error of its own exact w* (an a-posteriori bound from the Frank–Wolfe gap: the solver is not under
#    test, its input is) — and the DDP weights must be exactly what the solver returns for the reduced Gramian;
#  .grad (Σ_k w_k ∇L_k, encoder through the representation, heads directly): linear in w, so
#    |Δgrad| ≤ Σ_k (τ_w + γ_N(|w_ddp,k| + |w_k|))·A_k, A_k task k's absolute chain of its gradient.
# A missing rank, a wrong reduction or a wrong scale moves the Gramian by O(|M|) against β ≈ 1e-13·|M|: see
# test_the_lockstep_bounds_reject_a_wrong_reduction.
U = 2.0**-53  # unit roundoff of float64


def gamma(n: int) -> float:
    """Higham's γ_n = n·u/(1 − n·u): a sum of n terms, in any order, is within γ_n·Σ|terms| of the exact sum."""
    return n * U / (1 - n * U)


def rounding_depth(model) -> int:
    """N: the roundings along the longest dependency chain of one engine step, so that every value is within
    γ_N × its absolute chain of the exact one.  Each Linear layer of the encoder and a head (fan_in products,
    the bias, the ReLU mask: fan_in + 2), once forward and once backward; the sum over the B samples of a
    parameter gradient; the K-term wᵀG and the heads' gradients times w_k (2K); the residual 2(out − y)/B, the
    2-rank average and the Gramian's division by W² (a power of two, exact) — 4 more."""
    linears = [m for m in (*model.encoder.net, *model.heads[TASKS[0]].net) if isinstance(m, torch.nn.Linear)]
    return 2 * sum(m.in_features + 2 for m in linears) + BATCH + 2 * len(TASKS) + 4


def abs_chains(model, x, y, n_round: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The absolute ('shadow') run of one step at the model's parameters: inputs and parameters replaced by their
    absolute values, each ReLU by the real pass's mask, so every shadow value bounds Σ|terms| of the real one.
    Returns R (K × B·h: the rows ∂L_k/∂rep) and A (K × P, parameters in ``model.parameters()`` order: ∇L_k).
    The loss's residual |2(out − y)/B| is bounded by 2(|out|-chain + |y|)/B.  Fails if a ReLU input lies within
    rounding of its kink: the two runs could then branch differently, which no rounding bound covers."""
    absolute = {p: p.detach().abs().requires_grad_(True) for p in model.parameters()}

    def run(layers, real, shadow):
        for layer in layers:
            if isinstance(layer, torch.nn.Linear):
                real = layer(real).detach()
                shadow = shadow @ absolute[layer.weight].T + absolute[layer.bias]
            else:
                assert isinstance(layer, torch.nn.ReLU), f"abs_chains handles Linear and ReLU layers, not {layer}"
                assert not bool((real.abs() <= 2 * gamma(n_round) * shadow.detach()).any()), \
                    "a ReLU input is within rounding of 0: the runs may branch differently; use other test data"
                real, shadow = real.clamp_min(0), shadow * (real > 0)
        return real, shadow

    rep, rep_abs = run(model.encoder.net, x, x.abs())
    params = list(absolute.values())
    rows, grads = [], []
    for t in TASKS:
        out, out_abs = run(model.heads[t].net, rep, rep_abs)
        seed = 2 / BATCH * (out_abs.detach() + y[t].abs())
        g = torch.autograd.grad((seed * out_abs).sum(), [rep_abs, *params], allow_unused=True, retain_graph=True)
        rows.append(g[0].reshape(-1))
        grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g[1:], params)]))
    return torch.stack(rows).detach(), torch.stack(grads).detach()


def min_norm_error(m: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(e, λ): e bounds ‖w − w*‖₂ for solver weights w on the Gramian m (w* = argmin_{simplex} vᵀmv); λ is the
    smallest eigenvalue of m on 1⊥, the tangent space of the simplex (w* is unique iff λ > 0).

    f(v) = vᵀmv is λ-strongly convex along 1⊥ and ∇f(w*)ᵀ(v − w*) ≥ 0 on the simplex, so
    f(v) − f(w*) ≥ λ‖v − w*‖²; the Frank–Wolfe gap 2(vᵀmv − min_j (mv)_j) bounds f(v) − f(w*) from above.
    With v = w/Σw (on the simplex, ‖w − v‖ ≤ |Σw − 1|·‖v‖ + u‖v‖) and the computed gap's own rounding
    (≤ 4γ_{2K}·(|v|ᵀ|m||v| + max_j (|m||v|)_j)): e = √((gap + rounding)/λ) + ‖w − v‖.  λ is lowered by
    eigvalsh's backward error (≤ 4K·u·‖m‖_F)."""
    k = len(w)
    total = math.fsum(w)
    v = w / total
    mv = m @ v
    gap = 2 * (v @ mv - mv.min())
    gap += 4 * gamma(2 * k) * (np.abs(v) @ np.abs(m) @ np.abs(v) + (np.abs(m) @ np.abs(v)).max())
    basis = np.linalg.svd(np.ones((1, k)))[2][1:].T  # orthonormal basis of 1⊥
    lam = np.linalg.eigvalsh(basis.T @ m @ basis)[0] - 4 * k * U * np.linalg.norm(m)
    assert lam > 0, f"the task gradients are affinely dependent (λ = {lam:.3g}): MGDA's weights are not unique; use other test data"
    return math.sqrt(max(gap, 0.0) / lam) + (abs(total - 1) + U) * float(np.linalg.norm(v)), lam


def exceed(diff: torch.Tensor, bound: torch.Tensor) -> float:
    """max diff/bound (0/0 counts as 0, x/0 as inf): ≤ 1 where the bound holds."""
    diff, bound = diff.abs().double(), bound.double().expand_as(diff)
    ratio = torch.where(bound > 0, diff / bound.clamp_min(torch.finfo(torch.float64).tiny), torch.where(diff > 0, math.inf, 0.0))
    return float(ratio.max())


def lockstep_ratios(ddp: dict[str, torch.Tensor], local_rows: Sequence[torch.Tensor], case: str) -> dict[str, float]:
    """Rerun every step of the DDP run on one process from the DDP run's own parameters before that step and
    return, per quantity, the largest (DDP − single)/bound over the steps (≤ 1: within the rounding bounds
    derived above); ``solve`` is inf unless the DDP weights are the solver's exact output on the reduced Gramian."""
    name, kwargs = ENGINE_CASES[case][:2]
    worst = dict.fromkeys(("rows", "gram", "solve", "weights", "grad"), 0.0)
    for step, (x, y) in enumerate(global_batches()):
        model = tiny_model(TASKS)
        torch.nn.utils.vector_to_parameters(ddp["lockstep.pre"][step], model.parameters())
        comb = COMBINERS[name](**kwargs)
        comb.setup(list(TASKS))
        comb.double()
        ref = engine_step(model, comb, GradientEngine(model, comb, TASKS, dist=NO_DIST), x, y, step, record_gramians(comb))
        n_round = rounding_depth(model)
        rows_abs, grad_abs = abs_chains(model, x, y, n_round)
        assert bool((ref["local_rows"].abs() <= rows_abs * (1 + gamma(n_round))).all()), "the absolute chain must bound the rows"
        rows = torch.cat([r[step] for r in local_rows], dim=1) / WORLD  # the ranks' blocks of the global G
        beta = 2 * (gamma(rows.shape[1]) + 2 * gamma(n_round)) * rows_abs @ rows_abs.T
        gram, w = ddp["lockstep.gram"][step], ddp["lockstep.weights"][step]
        e_ddp, _ = min_norm_error(gram.numpy(), w.numpy())
        e_ref, lam = min_norm_error(ref["gram"].numpy(), ref["weights"].numpy())
        tau_w = float(torch.linalg.norm(beta)) / lam + e_ddp + e_ref
        tau_grad = (tau_w + gamma(n_round) * (w.abs() + ref["weights"].abs())) @ grad_abs
        resolved = COMBINERS[name](**kwargs)
        resolved.setup(list(TASKS))
        ratios = {
            "rows": exceed(rows - ref["local_rows"], 2 * gamma(n_round) * rows_abs),
            "gram": exceed(gram - ref["gram"], beta),
            "solve": 0.0 if torch.equal(w, resolved.weights_from_gramian(gram, ddp["lockstep.losses"][step])) else math.inf,
            "weights": float(torch.linalg.norm(w - ref["weights"])) / tau_w,
            "grad": exceed(ddp["lockstep.grad"][step] - ref["grad"], tau_grad),
        }
        worst = {k: max(worst[k], ratios[k]) for k in worst}
    return worst


# ---------------------------------------------------------------------- the equality tests
@pytest.mark.parametrize("case", [*(f"engine/{c}" for c in ENGINE_CASES), *(f"trainer/{c}" for c in TRAINER_CASES)])
def test_two_gloo_processes_give_the_single_process_update_on_the_combined_batch(case, ddp_results, single_results):
    rank0, rank1 = (r[case] for r in ddp_results)
    for k in rank0:  # the ranks hold bit-identical models (the same reduced values, the same combiner decisions)
        if not k.startswith("rank_local."):
            assert torch.equal(rank0[k], rank1[k]), f"{case}: ranks differ in {k}"
    if case.removeprefix("engine/") in LOCKSTEP:
        ratios = lockstep_ratios(rank0, [rank0["rank_local.rows"], rank1["rank_local.rows"]], case.removeprefix("engine/"))
        assert all(r <= 1 for r in ratios.values()), f"{case}: DDP − single exceeds its rounding bound (ratio > 1): {ratios}"
    else:
        assert_states_close(rank0, single_results[case])


def test_collective_helpers(ddp_results):
    for r in ddp_results:
        got = r["collectives"]
        assert got["running_mean"].tolist() == [0.5, 0.5] and got["grad"].tolist() == [[1.5, 1.5]]
        assert got["stack_means"].dtype == torch.float32 and got["stack_means"].tolist() == [1.5, 0.5]
        assert got["agree"].tolist() == [True, False] and int(got["broadcast"]) == 10


def test_the_comparison_is_not_vacuous(single_results):
    """Training on rank 0's halves without communication gives another model: the equality needs the reductions."""
    model = tiny_model(TASKS)
    comb = COMBINERS["pcgrad"](seed=3)
    comb.setup(list(TASKS))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    engine = GradientEngine(model, comb, TASKS, dist=NO_DIST)
    for step, (x, y) in enumerate(global_batches()):
        x, y = local_part(x, y, DistContext(world_size=WORLD, rank=0))
        opt.zero_grad(set_to_none=True)
        out = model(x)
        engine.backward({t: torch.nn.functional.mse_loss(out[t], y[t]) for t in TASKS}, step)
        opt.step()
    full = single_results["engine/pcgrad"]
    assert any(not torch.allclose(v, full[f"model.{k}"]) for k, v in model.state_dict().items())


def test_the_lockstep_bounds_reject_a_wrong_reduction(ddp_results):
    """The rounding bounds are ~1e-13 relative: a Gramian missing one rank's block, or parameter gradients summed
    instead of averaged over the ranks, exceed them by orders of magnitude."""
    case = "mgda_representation"
    rank0, rank1 = (r[f"engine/{case}"] for r in ddp_results)
    rows = [rank0["rank_local.rows"], rank1["rank_local.rows"]]
    missing = dict(rank0)
    missing["lockstep.gram"] = rows[0] @ rows[0].transpose(1, 2) / WORLD**2  # rank 1's Σ G_1 G_1ᵀ left out
    assert lockstep_ratios(missing, rows, case)["gram"] > 1e6
    summed = dict(rank0)
    summed["lockstep.grad"] = rank0["lockstep.grad"] * WORLD
    assert lockstep_ratios(summed, rows, case)["grad"] > 1e6


# ---------------------------------------------------------------------- single-process unit tests
def test_without_torchrun_the_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(TrainerConf(batch_size=3))
    assert ctx is NO_DIST and not ctx.enabled and ctx.is_main and current() is NO_DIST
    t = torch.tensor([1.0, 2.0])
    ctx.average_(t)
    assert t.tolist() == [1.0, 2.0] and ctx.agree(True, False) == (True, False)
    ds = TensorDictDataset(torch.zeros(4, 1), {})
    assert ctx.shard_dataset(ds, 3) is ds


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (TrainerConf(device="cpu", batch_size=7), r"trainer.batch_size=7 .*divisible by the world size 2"),
        (TrainerConf(device="cuda:1", batch_size=8), r"trainer.device=cuda:1 would put every rank on one GPU"),
        (TrainerConf(device="mps", batch_size=8), r"trainer.device=mps is not supported under torchrun"),
    ],
)
def test_invalid_distributed_settings_fail_before_joining(monkeypatch, settings, match):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match=match):
        init_distributed(settings)
    assert not torch.distributed.is_initialized() and current() is NO_DIST


def test_sync_bn_needs_cuda(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    settings = TrainerConf(device="cpu", batch_size=8)
    settings.sync_bn = True  # type: ignore[attr-defined]  (trainer.sync_bn, see docs/distributed.md)
    with pytest.raises(ConfigError, match="trainer.sync_bn=true needs CUDA"):
        init_distributed(settings)


@pytest.mark.parametrize("name", ["pcgrad", "graddrop", "nash_mtl", "aligned_mtl"])
def test_representation_source_is_refused_for_aggregators_that_need_the_per_sample_gradients(name):
    comb = COMBINERS[name](grad_source="representation")
    comb.setup(list(TASKS))
    with pytest.raises(ConfigError, match=rf"combiner '{name}' with grad_source=representation is not exact under DDP.*'params'"):
        GradientEngine(tiny_model(TASKS), comb, TASKS, dist=DistContext(world_size=2))
    GradientEngine(tiny_model(TASKS), comb, TASKS, dist=NO_DIST)  # fine on one process


class PerSample(torch.utils.data.Dataset):
    """A dataset without batch indexing: the DataLoader loads samples one by one and collates them."""

    def __len__(self):
        return 13

    def __getitem__(self, i):
        return torch.tensor([float(i)]), {"a": torch.tensor([2.0 * i])}


def test_batch_shard_gives_each_rank_its_contiguous_slice_of_the_global_batch():
    x = torch.arange(10.0).unsqueeze(1)
    ds = TensorDictDataset(x, {"a": x * 2})
    indices = [7, 1, 4, 0, 9, 3]
    parts = [BatchShard(ds, 6, r, 3)[indices] for r in range(3)]
    assert torch.cat([p[0] for p in parts]).flatten().tolist() == [float(i) for i in indices]
    assert torch.equal(parts[1][1]["a"], torch.tensor([[8.0], [0.0]]))
    samples = BatchShard(PerSample(), 6, 2, 3).__getitems__(indices)  # the DataLoader's batched fetch
    assert [float(s[0]) for s in samples] == [9.0, 3.0] and [float(s[1]["a"]) for s in samples] == [18.0, 6.0]
    with pytest.raises(RuntimeError, match="global batches of 6"):
        BatchShard(ds, 6, 0, 3)[[1, 2]]
    with pytest.raises(ConfigError, match="divisible by the world size 4"):
        BatchShard(ds, 6, 0, 4)


@pytest.mark.parametrize("kind", ["batch_indexed", "per_sample"])
def test_the_ranks_loaders_split_the_single_process_batches(kind):
    """Same seed, every epoch: rank 0's and rank 1's batches concatenate to the single-process batch."""
    from mtl_bench.data.base import make_loader

    ds = TensorDictDataset(torch.arange(13.0).unsqueeze(1), {"a": torch.zeros(13, 1)}) if kind == "batch_indexed" else PerSample()

    def loader(view):
        return make_loader(view, 4, shuffle=True, generator=torch.Generator().manual_seed(3), drop_last=True)

    single = loader(ds)
    ranks = [loader(DistContext(world_size=2, rank=r).shard_dataset(ds, 4)) for r in range(2)]
    for _ in range(3):  # (each loader runs to its end, as in training: exhausting the sampler draws from the generator)
        batches, *rank_batches = list(single), *(list(r) for r in ranks)
        assert len(batches) == 3 and all(len(r) == 3 for r in rank_batches)
        for full, *halves in zip(batches, *rank_batches):
            assert torch.equal(full[0], torch.cat([h[0] for h in halves])) and halves[0][0].shape[0] == 2


def test_with_global_value_routes_the_gradient_to_the_local_losses():
    local = torch.tensor([1.0, 4.0], requires_grad=True)
    mixed = with_global_value(local, torch.tensor([2.0, 3.0]))
    assert mixed.tolist() == [2.0, 3.0]
    (mixed**2).sum().backward()  # d/dlocal of f evaluated at the global value: 2 · global
    assert local.grad.tolist() == [4.0, 6.0]


def test_torchrun_entry_point_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m mtl_bench.train` end to end: rank 0 writes the one summary, whose
    metrics equal a single-process run's on the same global batches (float32 rounding)."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    args = ["logger=none", "trainer.device=cpu", "trainer.batch_size=64", "trainer.epochs=1", "dataset.n_train=512",
            "dataset.n_val=128", "dataset.n_test=128", "combiner=pcgrad", "trainer.num_threads=1"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                          "-m", "mtl_bench.train", *args, f"hydra.run.dir={tmp_path / 'ddp'}"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "mtl_bench.train", *args, f"hydra.run.dir={tmp_path / 'one'}"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    b = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert a["distributed"]["world_size"] == 2 and b["distributed"]["world_size"] == 1
    assert a["global_steps"] == b["global_steps"] == 512 // 64
    for key, value in b["final"].items():
        assert a["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # only rank 0 wrote: one metrics file whose step records are not duplicated
    steps = [json.loads(line)["global_step"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "step"]
    assert len(steps) == len(set(steps))
