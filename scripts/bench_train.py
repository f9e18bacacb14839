"""Training throughput (images/s) of the real training step for NYUv2-shaped input, per precision.

Builds the NYUv2 DeepLab setup — dilated ResNet-50 (output stride 8) + one ASPP head per task (seg 13
classes, depth, normals), equal weighting, Adam — and times ``Trainer.train_step`` (autocast, losses,
gradient engine, optimizer step; data loading excluded: one batch resident on the device) for each
configuration, round-robin, so drifts of the machine affect all alike.  Median over rounds.

    python scripts/bench_train.py --device cuda                     # fp32, bf16, bf16+channels_last, fp16
    python scripts/bench_train.py --device cuda --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.config.schema import TrainerConf
from mtl_bench.data.base import Benchmark, TensorDictDataset
from mtl_bench.loggers.run_logger import RunLogger
from mtl_bench.models.dense_heads import ASPPHead
from mtl_bench.models.mtl_model import build_model
from mtl_bench.models.timm_encoder import TimmEncoder
from mtl_bench.optim import build_optimizer
from mtl_bench.selection import ModelSelector
from mtl_bench.task_library import depth_task, normal_task, segmentation_task
from mtl_bench.trainer import Trainer, metric_directions
from mtl_bench.utils import markdown_table
from bench_common import publish  # noqa: E402  (scripts/ is on sys.path when a script runs)


def nyuv2_shaped(n: int, h: int, w: int, gen: torch.Generator) -> TensorDictDataset:
    normals = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=gen), dim=1)
    return TensorDictDataset(
        torch.rand(n, 3, h, w, generator=gen),
        {"seg": torch.randint(-1, 13, (n, h, w), generator=gen), "depth": torch.rand(n, 1, h, w, generator=gen) * 10, "normal": normals},
    )


def make_trainer(args, precision: str, channels_last: bool, base_model, tasks, bench, out: Path) -> Trainer:
    model = copy.deepcopy(base_model)
    comb = EqualWeighting("sum")
    comb.setup(list(tasks))
    settings = TrainerConf(epochs=1, batch_size=args.batch, device=args.device, precision=precision, channels_last=channels_last,
                           check_finite=True, progress_bar=False)
    device = torch.device(args.device)
    model.to(device)
    opt = build_optimizer(lambda groups: torch.optim.Adam(groups, lr=1e-4), model, comb)
    sel = ModelSelector("last", "val/loss", "auto", 1, metric_directions(tasks))
    return Trainer(model=model, benchmark=bench, tasks=tasks, combiner=comb, optimizer=opt, scheduler=None, settings=settings,
                   selector=sel, logger=RunLogger(out / f"{precision}_{channels_last}", {}), output_dir=out, device=device, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--configs", nargs="*", default=["fp32", "bf16", "bf16+cl", "fp16"],
                    help="precision[+cl] (cl = channels_last)")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    tasks = {"seg": segmentation_task("seg", 13), "depth": depth_task("depth"), "normal": normal_task("normal", median="histogram")}
    ds = nyuv2_shaped(args.batch, args.height, args.width, gen)
    bench = Benchmark("nyuv2_shaped", tasks, {"train": ds, "val": ds, "test": ds}, (3, args.height, args.width))
    torch.manual_seed(0)
    base = build_model(lambda input_shape: TimmEncoder(input_shape, args.model, output_stride=8),
                       {t: (lambda in_dim, task: ASPPHead(in_dim, task)) for t in tasks}, tasks, (3, args.height, args.width))
    n_params = sum(p.numel() for p in base.parameters())
    batch = ds[list(range(args.batch))]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for c in args.configs:
            precision, _, cl = c.partition("+")
            trainers[c] = make_trainer(args, precision, cl == "cl", base, tasks, bench, Path(tmp))
        inputs = {c: t._to_device(batch) for c, t in trainers.items()}
        for c, t in trainers.items():
            for _ in range(args.warmup):
                t.train_step(*inputs[c])
        times = {c: [] for c in trainers}
        for _ in range(args.rounds):
            for c, t in trainers.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    t.train_step(*inputs[c])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[c].append((time.perf_counter() - t0) / args.steps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    head = (f"device={name}, torch {torch.__version__}, {args.model} OS8 + 3 ASPP heads ({n_params / 1e6:.1f} M params), "
            f"EW + Adam, batch {args.batch} of 3×{args.height}×{args.width}, median of {args.rounds} rounds × {args.steps} steps; "
            f"peak memory (all configurations resident) {peak:.1f} GiB")
    fp32 = statistics.median(times[args.configs[0]])
    medians = {c: statistics.median(ts) for c, ts in times.items()}
    table = markdown_table(["configuration", "step (ms)", "images/s", "× first"],
                           ([c, f"{m * 1e3:.1f}", f"{args.batch / m:.1f}", f"{fp32 / m:.2f}"] for c, m in medians.items()), "lrrr")
    publish("bench_train", head, table, args.write)


if __name__ == "__main__":
    main()
