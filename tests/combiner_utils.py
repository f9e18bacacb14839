"""Shared fixtures for combiner property tests: seeded float64 gradient matrices and engine runs."""

from __future__ import annotations

import torch

from mtl_bench.combiners.base import Combiner
from mtl_bench.engine import GradientEngine
from mtl_bench.step_context import StepContext
from tests.helpers import tiny_batch, tiny_model

TASKS3 = ("a", "b", "c")


def random_grads(k: int = 3, d: int = 50, seed: int = 0, scales=None, dtype=torch.float64) -> torch.Tensor:
    """K×d Gaussian gradient matrix; ``scales`` multiplies row k (loss-scale imbalance)."""
    g = torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if scales is not None:
        g = g * torch.as_tensor(scales, dtype=dtype).unsqueeze(1)
    return g


def conflicting_grads(d: int = 20, cos: float = -0.6, ratio: float = 5.0, seed: int = 0) -> torch.Tensor:
    """Two rows with a prescribed negative cosine and norm ratio ‖g1‖/‖g0‖ = ratio."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen, dtype=torch.float64))
    u, v = q[:, 0], q[:, 1]
    g0 = u
    g1 = ratio * (cos * u + (1 - cos * cos) ** 0.5 * v)
    return torch.stack([g0, g1])


def losses_for(k: int = 3, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(k, generator=torch.Generator().manual_seed(seed + 100), dtype=dtype) + 0.5


def engine_update(combiner: Combiner, tasks=TASKS3, seed: int = 0, steps: int = 1, lr: float = 1e-2) -> torch.Tensor:
    """Train the tiny float64 model ``steps`` Adam steps with ``combiner`` and return the flat vector of
    all parameter gradients of the last step (the update the optimizer saw)."""
    model = tiny_model(tasks, seed=seed)
    combiner.setup(list(tasks))
    engine = GradientEngine(model, combiner, tasks)
    opt = torch.optim.Adam(list(model.parameters()) + [p for p in combiner.parameters() if p.requires_grad], lr=lr)
    flat = None
    for step in range(steps):
        flat = train_step(engine, opt, step, tasks, batch_seed=seed + step)
    return flat


def tiny_context(engine: GradientEngine, opt, step: int, batch, losses, batch_seed: int) -> StepContext:
    """The step context the trainer builds, for the tiny model: MSE losses, extra batches seeded by (batch_seed, i)."""
    tasks = engine.task_names

    def loss_fn(out, y):
        return {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in tasks}

    def draw(i: int):
        return tiny_batch(tasks=tasks, seed=1000 * (batch_seed + 1) + i)

    return StepContext(model=engine.model, optimizer=opt, engine=engine, task_names=list(tasks), step=step, batch=batch,
                       losses=losses, loss_fn=loss_fn, draw=draw)


def train_step(engine: GradientEngine, opt: torch.optim.Optimizer, step: int, tasks=TASKS3, batch_seed: int = 0) -> torch.Tensor:
    """One step as the trainer takes it (backward, optimizer step, the combiner's post-step hook) on the
    tiny batch ``batch_seed``; returns the flat vector of all parameter gradients of the step."""
    model, combiner = engine.model, engine.combiner
    x, y = tiny_batch(tasks=tasks, seed=batch_seed)
    opt.zero_grad(set_to_none=True)
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    losses = {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in tasks}
    if combiner.extra_batches:  # Auto-Lambda, MoDo: extra batch i of this step is tiny batch (batch_seed, i)
        combiner.before_backward(tiny_context(engine, opt, step, (x, y), losses, batch_seed))
    engine.backward(losses, step, rep=rep, leaves=leaves)
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    opt.step()
    post = None
    if combiner.needs_post_step_losses:
        with torch.no_grad():
            out = model(x)
            post = torch.stack([torch.nn.functional.mse_loss(out[t], y[t]) for t in tasks])
    combiner.after_step(post)
    return flat
