"""How a benchmark looks to the optimizer at initialisation: task-loss scales and per-sample gradient alignment.

Run ``python -m mtl_bench.data.gradient_alignment dataset=<name> [other Hydra overrides] [--samples N]``: it
composes ``configs/train.yaml`` with the overrides (the dataset's default backbone and heads unless overridden),
builds the model with ``seed`` (default 0) and prints, on the first ``N`` training samples (default 32):

* **loss scales** — each task's loss at initialisation on those samples as one batch (training mode, as the first
  step sees them), and the norm of its gradient w.r.t. the shared parameters;
* **inter-sample alignment** — per-sample gradients ``g_i = ∇_φ Σ_t L_t(x_i)`` of the shared parameters ``φ`` (the
  whole encoder, and its first layer with parameters alone), BatchNorm in eval mode so that a sample's gradient
  does not depend on the others (the ``bn_mode="eval"`` convention of :mod:`mtl_bench.diagnostics.conflicts`);
  reported: the mean ``|cos(g_i, g_j)|`` and mean ``cos`` over the ``N(N−1)/2`` pairs ``i < j``, for the summed
  loss and for each task's loss alone;
* **inter-task alignment** — the mean ``cos`` between two tasks' gradients on the same sample.

Orthogonal per-sample gradients (mean ``|cos|`` ≈ 0) mean that samples hardly interact through the shared
parameters; large values mean shared structure (common image statistics, a bias every sample's loss pulls in the
same direction).  Random unit vectors in ``d`` dimensions give mean ``|cos|`` ≈ ``sqrt(2 / (π d))``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import mtl_bench.config.schema  # noqa: F401  (registers the schemas before composing)
from mtl_bench.data.base import Benchmark
from mtl_bench.models.mtl_model import MultiTaskModel, build_model

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class Alignment:
    """The figures of :func:`measure` (see the module docstring)."""

    loss_at_init: dict[str, float]
    grad_norm_at_init: dict[str, float]  # ||∇_φ L_t|| of the batch loss
    abs_cos: dict[str, float]  # mean |cos| of per-sample gradients over sample pairs: "all" (summed loss) and per task
    cos: dict[str, float]  # mean signed cos, same keys
    first_layer_abs_cos: float  # "all", first layer with parameters of the encoder only
    inter_task_cos: dict[str, float]  # "a|b": mean cos of tasks a and b on the same sample
    num_params: int
    num_samples: int


def compose_config(overrides: Sequence[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build(cfg: DictConfig) -> tuple[Benchmark, MultiTaskModel]:
    """The benchmark and the initial model of a composed config (as the trainer builds them)."""
    from mtl_bench.build import head_factories, instantiate_checked

    benchmark: Benchmark = instantiate_checked(cfg.dataset, "dataset")
    torch.manual_seed(int(cfg.seed))
    tasks = benchmark.tasks
    model = build_model(instantiate_checked(cfg.backbone, "backbone"), head_factories(cfg.heads, list(tasks), list(tasks)),
                        tasks, benchmark.input_shape)
    return benchmark, model


def _batch(benchmark: Benchmark, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    split = benchmark.splits["train"]
    n = min(n, len(split))
    if getattr(split, "batch_indexing", False):
        return split[list(range(n))]
    items = [split[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), {t: torch.stack([y[t] for _, y in items]) for t in items[0][1]}


def _pair_stats(g: torch.Tensor) -> tuple[float, float]:
    """Mean |cos| and mean cos over the rows' pairs i < j."""
    unit = torch.nn.functional.normalize(g, dim=1)
    c = unit @ unit.T
    iu = torch.triu_indices(len(g), len(g), 1)
    pairs = c[iu[0], iu[1]]
    return float(pairs.abs().mean()), float(pairs.mean())


def measure(benchmark: Benchmark, model: MultiTaskModel, num_samples: int = 32) -> Alignment:
    x, y = _batch(benchmark, num_samples)
    tasks = list(benchmark.tasks)
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm running statistics are restored below
    out = model(x)
    losses = {t: benchmark.tasks[t].loss(out[t], y[t]) for t in tasks}
    loss_at_init = {t: float(v.detach()) for t, v in losses.items()}
    grad_norm = {}
    for t in tasks:
        g = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        grad_norm[t] = float(torch.sqrt(sum((gi.double() ** 2).sum() for gi in g if gi is not None)))
    model.load_state_dict(state)
    first = next(m for m in model.encoder.modules() if any(True for _ in m.parameters(recurse=False)))
    first_ids = {id(p) for p in first.parameters(recurse=False)}
    first_mask = torch.cat([torch.full((p.numel(),), id(p) in first_ids) for p in params])
    model.eval()  # BatchNorm running statistics: per-sample gradients independent of the other samples
    grads = {t: [] for t in tasks}
    for i in range(len(x)):
        out = model(x[i : i + 1])
        for t in tasks:
            loss = benchmark.tasks[t].loss(out[t], y[t][i : i + 1])
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads[t].append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g, params)]))
    per_task = {t: torch.stack(v) for t, v in grads.items()}
    total = sum(per_task.values())
    abs_cos, cos = {}, {}
    for key, g in {"all": total, **per_task}.items():
        abs_cos[key], cos[key] = _pair_stats(g)
    inter = {}
    for a_i, a in enumerate(tasks):
        for b in tasks[a_i + 1:]:
            inter[f"{a}|{b}"] = float(torch.nn.functional.cosine_similarity(per_task[a], per_task[b], dim=1).mean())
    return Alignment(loss_at_init, grad_norm, abs_cos, cos, _pair_stats(total[:, first_mask])[0], inter,
                     int(total.shape[1]), int(total.shape[0]))


def report(name: str, a: Alignment) -> str:
    chance = math.sqrt(2 / (math.pi * a.num_params))
    lines = [f"{name}: {a.num_samples} samples, {a.num_params} shared parameters (random directions: mean |cos| ~ {chance:.4f})",
             "  loss at init: " + ", ".join(f"{t}={v:.4g}" for t, v in a.loss_at_init.items()),
             "  shared-gradient norm at init: " + ", ".join(f"{t}={v:.4g}" for t, v in a.grad_norm_at_init.items()),
             "  per-sample gradients, mean |cos| (mean cos): "
             + ", ".join(f"{k}={a.abs_cos[k]:.3f} ({a.cos[k]:+.3f})" for k in a.abs_cos),
             f"  first shared layer only, summed loss: mean |cos|={a.first_layer_abs_cos:.3f}"]
    if a.inter_task_cos:
        lines.append("  inter-task cos (same sample): " + ", ".join(f"{k}={v:+.3f}" for k, v in a.inter_task_cos.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=synthetic_scenes")
    args = parser.parse_args(argv)
    cfg = compose_config(["logger=none", *args.overrides])
    benchmark, model = build(cfg)
    print(report(f"{benchmark.name} ({cfg.backbone._target_.rsplit('.', 1)[-1]})", measure(benchmark, model, args.samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Alignment", "build", "compose_config", "measure", "report"]
