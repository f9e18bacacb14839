"""Cost of one optimizer step, plain vs task-wise (AdaTask), measured side by side in one run.

The model is an MLP shared bottom (a few million shared parameters; the count is printed) with K small MLP
heads.  Gradients are random and fixed, so only the optimizer is timed: a task-wise optimizer receives a random
K×d per-task gradient matrix (``set_task_gradients`` + ``step``, both timed), a plain optimizer its sum in the
shared ``.grad`` (``step`` timed); heads get the same random ``.grad`` everywhere.  For each K every optimizer
has its own copy of the model and its steps are interleaved round-robin with the others (median over rounds).

Printed per optimizer and K:

* ``step (ms)``, ``× SGD`` — median step time and its ratio to plain SGD in the same rounds;
* ``× plain`` — AdaTask variants only: ratio to the plain counterpart (AdaTask-Adam / Adam, ...);
  ``× plain / K`` ≤ 1 means the shared update costs no more than K plain updates (the target);
* ``state / shared`` — optimizer-state bytes held for the shared parameters over the shared-parameter bytes
  (Adam 2, AdaTask-Adam 2K, ...; head state is not counted).

Plain optimizers run with torch's defaults (on CPU that is the per-parameter loop, on CUDA the foreach path).

    python scripts/bench_optimizers.py                                   # CPU, K = 2 3 10
    python scripts/bench_optimizers.py --device cuda --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
from pathlib import Path

import torch

from mtl_bench.data.synthetic import regression_task
from mtl_bench.models.backbones import MLPEncoder
from mtl_bench.models.heads import MLPHead
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.optim import param_groups
from mtl_bench.optimizers import AdaTaskAdagrad, AdaTaskAdam, AdaTaskRMSprop, SignSGD, is_task_wise
from mtl_bench.utils import markdown_table
from bench_common import publish, timed  # noqa: E402  (scripts/ is on sys.path when a script runs)

OPTIMIZERS = {
    "SGD": lambda g: torch.optim.SGD(g, lr=1e-2),
    "SGD+momentum": lambda g: torch.optim.SGD(g, lr=1e-2, momentum=0.9),
    "signSGD (Signum)": lambda g: SignSGD(g, lr=1e-3, momentum=0.9),
    "Adam": lambda g: torch.optim.Adam(g, lr=1e-3),
    "AdamW": lambda g: torch.optim.AdamW(g, lr=1e-3),
    "RMSprop": lambda g: torch.optim.RMSprop(g, lr=1e-2),
    "Adagrad": lambda g: torch.optim.Adagrad(g, lr=1e-2),
    "AdaTask-Adam": lambda g: AdaTaskAdam(g, lr=1e-3),
    "AdaTask-RMSprop": lambda g: AdaTaskRMSprop(g, lr=1e-2),
    "AdaTask-Adagrad": lambda g: AdaTaskAdagrad(g, lr=1e-2),
}
PLAIN = {"AdaTask-Adam": "Adam", "AdaTask-RMSprop": "RMSprop", "AdaTask-Adagrad": "Adagrad"}


def build(args, k: int) -> MultiTaskModel:
    torch.manual_seed(0)
    encoder = MLPEncoder((args.input_dim,), hidden=tuple(args.hidden))
    heads = {f"t{j}": MLPHead(encoder.out_dim, regression_task(f"t{j}"), hidden=(128,)) for j in range(k)}
    return MultiTaskModel(encoder, heads)


class Runner:
    def __init__(self, name, base, G, head_grads, device):
        self.model = copy.deepcopy(base).to(device)
        self.opt = OPTIMIZERS[name](param_groups(self.model))
        self.shared = self.model.shared_parameters()
        self.task_wise = is_task_wise(self.opt)
        self.G = G
        for t, grads in head_grads.items():
            for p, g in zip(self.model.task_parameters(t), grads):
                p.grad = g.clone()
        if not self.task_wise:
            flat, offset = G.sum(0), 0
            for p in self.shared:
                p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
                offset += p.numel()

    def step(self):
        if self.task_wise:
            self.opt.set_task_gradients(self.G)
        self.opt.step()

    def shared_state_bytes(self) -> int:
        ids = {id(p) for p in self.shared}
        total = 0
        for p, st in self.opt.state.items():
            if id(p) in ids:
                total += sum(v.numel() * v.element_size() for v in st.values() if isinstance(v, torch.Tensor))
        return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", type=int, nargs="+", default=[2, 3, 10], help="values of K")
    ap.add_argument("--input-dim", type=int, default=1024)
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024, 1024])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--write", type=Path, default=None, help="append the table to this Markdown file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rows, n_shared = [], 0
    for k in args.tasks:
        base = build(args, k)
        n_shared = sum(p.numel() for p in base.shared_parameters())
        g = torch.Generator().manual_seed(k)
        G = torch.randn(k, n_shared, generator=g).to(device)
        head_grads = {t: [torch.randn(p.shape, generator=g).to(device) for p in base.task_parameters(t)] for t in base.task_names}
        runners = {n: Runner(n, base, G, head_grads, device) for n in OPTIMIZERS}
        for r in runners.values():
            for _ in range(args.warmup):
                r.step()
        times = {n: [] for n in runners}
        for _ in range(args.repeats):
            for n, r in runners.items():
                times[n].append(timed(r.step, device))
        med = {n: statistics.median(v) for n, v in times.items()}
        shared_bytes = sum(p.numel() * p.element_size() for p in runners["SGD"].shared)
        for n, r in runners.items():
            plain = PLAIN.get(n)
            ratio = med[n] / med[plain] if plain else None
            rows.append((k, n, med[n] * 1e3, med[n] / med["SGD"], plain, ratio, r.shared_state_bytes() / shared_bytes))
        del runners

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    head = (
        f"device={device} ({dev_name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"MLP {args.input_dim}→{'→'.join(map(str, args.hidden))} ({n_shared / 1e6:.2f} M shared params, float32), "
        f"heads MLP(128) per task, K ∈ {args.tasks}, median of {args.repeats} interleaved rounds per K"
    )
    table = markdown_table(
        ["K", "optimizer", "step (ms)", "× SGD", "× plain", "× plain / K", "state / shared bytes"],
        ([k, n, f"{ms:.2f}", f"{rsgd:.2f}", "" if ratio is None else f"{ratio:.2f} (vs {plain})",
          "" if ratio is None else f"{ratio / k:.2f}", f"{mem:.2f}"] for k, n, ms, rsgd, plain, ratio, mem in rows),
        "rlrrrrr",
    )
    publish("bench_optimizers", head, table, args.write, host=platform.node() or "unknown host")


if __name__ == "__main__":
    main()
