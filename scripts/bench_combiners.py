"""Cost of one training step of every registered combiner, as ratios measured side by side in one run.

For a backbone, input size and number of tasks K, every method gets its own copy of the same model and
its own Adam optimizer; one training step (forward, per-task losses, engine backward, optimizer step) of
each method is timed in turn, round-robin, so that drifts of the machine affect all methods alike.
Printed per method (median over repetitions):

* ``× EW``   — step time over the equal-weighting step (one backward pass);
* ``× LB``   — step time over the lower bound for exact per-task gradients, measured in the same rounds:
  one forward + K backward passes of the shared part (each task's backward also yields its head's
  gradient) + the optimizer step, i.e. the unavoidable work of any method that needs ``G`` over the shared
  parameters;
* ``solver`` — time of ``combiner.aggregate(G, losses)`` alone (weights/direction from a fixed ``G``);
* ``(step − solver) / LB`` — the engine overhead the targets are about.

Targets (issue 3): loss-weighting methods ≤ 1.05× EW; exact per-task-gradient methods ≤ 1.10× LB plus their
solver time; representation-gradient methods ≤ 1.2× EW.

    python scripts/bench_combiners.py                       # CPU, small CNN, K=3
    python scripts/bench_combiners.py --device cuda --batch 64 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtl_bench.combiners import COMBINERS, GradientAggregator, LossWeighting
from mtl_bench.data.synthetic import regression_task
from mtl_bench.engine import GradientEngine
from mtl_bench.models.backbones import ConvEncoder, MLPEncoder
from mtl_bench.models.heads import MLPHead
from mtl_bench.models.mtl_model import MultiTaskModel
from mtl_bench.step_context import StepContext
from mtl_bench.utils import markdown_table
from bench_common import publish, timed  # noqa: E402  (scripts/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]


def build(args, tasks):
    torch.manual_seed(0)
    specs = {t: regression_task(t) for t in tasks}
    if args.backbone == "convnet":
        encoder = ConvEncoder((3, args.image_size, args.image_size))
        shape = (args.batch, 3, args.image_size, args.image_size)
    else:
        encoder = MLPEncoder((args.input_dim,), hidden=(1024, 1024))
        shape = (args.batch, args.input_dim)
    heads = {t: MLPHead(encoder.out_dim, specs[t], hidden=(128,)) for t in tasks}
    return MultiTaskModel(encoder, heads), shape


def load_combiner(name: str, tasks):
    cfg = OmegaConf.load(REPO / "configs" / "combiner" / f"{name}.yaml")
    comb = instantiate(cfg)
    comb.setup(list(tasks))
    set_roles = getattr(comb, "set_roles", None)
    if set_roles is not None:  # auxiliary-task combiners (aux_weight, gcs, ol_aux): task 0 the target, the rest auxiliaries
        set_roles(list(tasks)[:1])
    return comb


class Runner:
    """One method's model, optimizer and engine; ``step()`` is one full training step."""

    def __init__(self, name, base_model, tasks, x, y, device, per_task_backward):
        self.name = name
        self.tasks = tasks
        self.model = copy.deepcopy(base_model).to(device)
        self.comb = load_combiner(name, tasks).to(device) if name not in ("LB",) else None
        params = list(self.model.parameters())
        if self.comb is not None:
            params += [p for p in self.comb.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=1e-4)
        self.x, self.y = x, y
        if self.comb is not None:
            self.engine = GradientEngine(self.model, self.comb, tasks, per_task_backward=per_task_backward)
        self.shared = self.model.shared_parameters()
        self.last_grads = None

    def losses(self, out):
        return {t: torch.nn.functional.mse_loss(out[t], self.y[t]) for t in self.tasks}

    def context(self, losses):
        """The step context of an extra-batch combiner; extra batch i is the step's batch rolled by i + 1 samples."""
        def draw(i):
            return self.x.roll(i + 1, 0), {t: v.roll(i + 1, 0) for t, v in self.y.items()}

        def loss_fn(out, y):
            return {t: torch.nn.functional.mse_loss(out[t], y[t]) for t in self.tasks}

        return StepContext(model=self.model, optimizer=self.opt, engine=self.engine, task_names=list(self.tasks), step=0,
                           batch=(self.x, self.y), losses=losses, loss_fn=loss_fn, draw=draw)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        rep = self.model.encode(self.x)
        leaves = self.engine.leaves(rep) if self.comb is not None else rep
        losses = self.losses(self.model.decode(leaves))
        if self.comb is None:  # the lower bound: K per-task backward passes, then the optimizer step
            loss_list = list(losses.values())
            for k, (t, loss) in enumerate(losses.items()):
                grads = torch.autograd.grad(loss, self.shared + self.model.task_parameters(t), retain_graph=k < len(loss_list) - 1)
                for p, g in zip(self.shared + self.model.task_parameters(t), grads):
                    p.grad = g if p.grad is None else p.grad + g
        else:
            if self.comb.extra_batches:  # Auto-Lambda, MoDo: the extra batches are fixed other batches of the same shape
                self.comb.before_backward(self.context(losses))
            res = self.engine.backward(losses, 0, rep=rep, leaves=leaves)
            self.last_grads = (res.grads, torch.stack([v.detach() for v in losses.values()]))
        self.opt.step()
        if self.comb is not None:
            post = None
            if self.comb.needs_post_step_losses:
                with torch.no_grad():
                    post = torch.stack(list(self.losses(self.model(self.x)).values()))
            self.comb.after_step(post)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=["convnet", "mlp"], default="convnet")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--input-dim", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--per-task-backward", choices=["sequential", "batched"], default="sequential")
    ap.add_argument("--methods", nargs="*", default=None, help="registered names (default: all)")
    ap.add_argument("--write", type=Path, default=None, help="append the table to this Markdown file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tasks = [f"t{k}" for k in range(args.tasks)]
    base, shape = build(args, tasks)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g).to(device)
    y = {t: torch.randn(args.batch, 1, generator=g).to(device) for t in tasks}
    names = args.methods or sorted(COMBINERS)
    if "ew" not in names:
        names = ["ew", *names]
    runners = {n: Runner(n, base, tasks, x, y, device, args.per_task_backward) for n in ["LB", *names]}

    for r in runners.values():
        for _ in range(args.warmup):
            r.step()
    times = {n: [] for n in runners}
    for _ in range(args.repeats):
        for n, r in runners.items():
            times[n].append(timed(r.step, device))
    med = {n: statistics.median(v) for n, v in times.items()}

    solver = {}
    for n, r in runners.items():
        if r.comb is not None and isinstance(r.comb, GradientAggregator) and r.last_grads[0] is not None:
            grads, losses = r.last_grads
            def solve(comb=r.comb, grads=grads, losses=losses):
                return comb.aggregate(grads, losses)

            samples = [timed(solve, device) for _ in range(max(5, args.repeats // 2))]
            solver[n] = statistics.median(samples)

    ew, lb = med["ew"], med["LB"]
    rows = []
    for n in names:
        comb = runners[n].comb
        kind = "loss" if isinstance(comb, LossWeighting) else f"grad/{comb.grad_source}"
        s = solver.get(n)
        over = (med[n] - s) / lb if s is not None else None
        rows.append((n, kind, med[n] * 1e3, med[n] / ew, med[n] / lb, None if s is None else s * 1e3, over))
    n_shared = sum(p.numel() for p in base.shared_parameters())
    head = (
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, backbone={args.backbone} "
        f"({n_shared / 1e6:.2f} M shared params), input={shape}, K={args.tasks}, per_task_backward={args.per_task_backward}, "
        f"median of {args.repeats} interleaved rounds; EW step {ew * 1e3:.1f} ms, LB {lb * 1e3:.1f} ms ({lb / ew:.2f}× EW)"
    )
    table = markdown_table(
        ["method", "kind", "step (ms)", "× EW", "× LB", "solver (ms)", "(step − solver) / LB"],
        ([n, kind, f"{ms:.1f}", f"{rew:.2f}", f"{rlb:.2f}", "" if sol is None else f"{sol:.2f}",
          "" if over is None else f"{over:.2f}"] for n, kind, ms, rew, rlb, sol, over in rows),
        "llrrrrr",
    )
    publish("bench_combiners", head, table, args.write)


if __name__ == "__main__":
    main()
