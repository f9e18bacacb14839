"""Overhead of the gradient-conflict probe on total training time, measured side by side in one run.

Two settings:

* ``mlp``: the synthetic MMoE benchmark (K = 2, 100-d inputs, 8192 training samples) with the default MLP
  (shared 64-64 ReLU bottom, one 32-unit head per task), batch 128;
* ``cnn``: a small BatchNorm CNN (``ConvEncoder`` with channels 16-32-64 and a 64-unit FC layer) on random
  3×32×32 images with 3 regression tasks, batch 32 and 128 (the probe's cost is fixed by ``max_samples``, the
  step's grows with the batch).

For each setting a full ``Trainer.fit()`` (training epochs, per-epoch validation, checkpoint, final
evaluation; equal weighting + Adam, CPU fp32) runs without the probe and with each probe configuration, in
interleaved repetitions (baseline, probe configs, baseline, ...) from the same seed; the median wall time of
each is reported with the overhead relative to the baseline.  ``train s`` is the sum of the training epochs'
``time/train_epoch_s`` (the training loop: every per-step cost of the probe), ``total s`` the whole ``fit()``
(plus evaluation, checkpoint, per-epoch aggregation and the figures, whose one-off rendering time is shown as
``figures s``); ``ms/probe`` = (train-time difference) / number of probe steps.  Because run-to-run noise on
a shared machine is large, the cost is also *attributed within each run*: ``own ms/probe`` is the mean time
inside the probe's ``observe_batch`` (per-sample gradients, pair metrics, the batch-averaged gradients when the
probe computes them), ``engine ms/probe`` the extra time of the engine's backward on the steps where the probe
asked it for per-task gradients (K extra backward passes under a loss weighting such as EW) over its median on
the other steps, and ``attributed %`` = (own + engine) / (training time − own − engine), median over the
repetitions.  Target: < 10 % at the default cadence (every 5 steps, 8 samples, 8 tasks).

    python scripts/bench_conflicts.py                      # CPU, both settings, 5 repetitions
    python scripts/bench_conflicts.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mtl_bench.combiners.ew import EqualWeighting
from mtl_bench.config.schema import TrainerConf
from mtl_bench.data.base import Benchmark, TensorDictDataset
from mtl_bench.data.synthetic import build_synthetic, regression_task
from mtl_bench.diagnostics.conflicts import ConflictProbe
from mtl_bench.loggers.run_logger import RunLogger
from mtl_bench.models.backbones import ConvEncoder, MLPEncoder
from mtl_bench.models.heads import MLPHead
from mtl_bench.models.mtl_model import build_model
from mtl_bench.optim import build_optimizer
from mtl_bench.selection import ModelSelector
import mtl_bench.trainer as trainer_module
from mtl_bench.report import run_figures
from mtl_bench.trainer import Trainer, metric_directions
from mtl_bench.utils import markdown_table
from bench_common import publish  # noqa: E402  (scripts/ is on sys.path when a script runs)

PROBES = {  # label -> ConflictProbe kwargs (None: the baseline without the probe)
    "no probe": None,
    "probe (defaults)": {},
    "probe, averaged=false": {"averaged": False},
    "probe, averaged_every_n_steps=25": {"averaged_every_n_steps": 25},
    "probe, bn_mode=batch": {"bn_mode": "batch"},
}


def mlp_setting(args):
    bench = build_synthetic(num_tasks=2, n_train=args.mlp_train, n_val=1024, n_test=1024)
    factory = lambda input_shape: MLPEncoder(input_shape, hidden=(64, 64))  # noqa: E731
    heads = {t: (lambda in_dim, task: MLPHead(in_dim, task, hidden=(32,))) for t in bench.tasks}
    return bench, factory, heads, 128


def cnn_setting(args, batch):
    gen = torch.Generator().manual_seed(0)
    names = ["t0", "t1", "t2"]
    tasks = {t: regression_task(t) for t in names}
    size = args.image_size

    def split(n):
        return TensorDictDataset(torch.randn(n, 3, size, size, generator=gen),
                                 {t: torch.randn(n, 1, generator=gen) for t in names})

    bench = Benchmark("random_images", tasks, {"train": split(args.cnn_steps * batch), "val": split(128), "test": split(128)},
                      (3, size, size))
    factory = lambda input_shape: ConvEncoder(input_shape, channels=(16, 32, 64), fc=64)  # noqa: E731
    heads = {t: (lambda in_dim, task: MLPHead(in_dim, task, hidden=())) for t in names}
    return bench, factory, heads, batch


def run(bench, factory, heads, batch, probe_kwargs, epochs, out: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(factory, heads, bench.tasks, bench.input_shape)
    comb = EqualWeighting()
    comb.setup(list(bench.tasks))
    opt = build_optimizer(lambda groups: torch.optim.Adam(groups, lr=1e-3), model, comb)
    monitors, own, spent = [], [], []
    trainer_module.render = run_figures.render
    if probe_kwargs is not None:
        probe = ConflictProbe(**probe_kwargs)
        probe.bind(model, bench.tasks, model.shared_named_parameters(), combiner=comb)
        monitors.append(probe)
        probe.observe_batch = _timed(probe.observe_batch, own, lambda step, *_: probe.probe(step))
        trainer_module.render = _timed(run_figures.render, spent)  # the run's figures, drawn at its end
    settings = TrainerConf(epochs=epochs, batch_size=batch, device="cpu", progress_bar=False, log_every_n_steps=50,
                           checkpoint_every=0)
    sel = ModelSelector("last", "val/loss", "auto", 1, metric_directions(bench.tasks))
    trainer = Trainer(model=model, benchmark=bench, tasks=bench.tasks, combiner=comb, optimizer=opt, scheduler=None,
                      settings=settings, selector=sel, logger=RunLogger(out, {}), output_dir=out, device=torch.device("cpu"),
                      seed=0, diagnostics=monitors)
    engine_times: list[tuple[int, float]] = []
    backward = trainer.engine.backward

    def timed_backward(losses, step, **kw):
        t = time.perf_counter()
        result = backward(losses, step, **kw)
        engine_times.append((step, time.perf_counter() - t))
        return result

    trainer.engine.backward = timed_backward
    t0 = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - t0
    trainer.logger.finish(0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = sum(r["time/train_epoch_s"] for r in records if r["type"] == "epoch")
    info = {"total": total, "train": train, "steps": trainer.global_step}
    if monitors:
        probe = monitors[0]
        # the engine's extra work for the probe (per-task gradients under a loss weighting): engine time on the
        # steps where the probe asked for gradients minus the median engine time of the other steps (step 0 excluded)
        asked = [t for s, t in engine_times if s > 0 and probe.wants_grads(s)]
        other = [t for s, t in engine_times if s > 0 and not probe.wants_grads(s)]
        engine_extra = (statistics.mean(asked) - statistics.median(other)) * len(asked) if asked else 0.0
        attributed = sum(own) + engine_extra
        info.update(probes=probe.probe_steps, method=probe.method, figures=sum(spent), own=sum(own) / max(len(own), 1),
                    engine=engine_extra / max(probe.probe_steps, 1), attributed=100 * attributed / (train - attributed))
    return info


def _timed(fn, sink: list, when=lambda *a: True):
    def wrapper(*args):
        t = time.perf_counter()
        result = fn(*args)
        if when(*args):
            sink.append(time.perf_counter() - t)
        return result

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="*", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    ap.add_argument("--cnn-batches", nargs="*", type=int, default=[32, 128], help="CNN batch sizes (one setting each)")
    ap.add_argument("--probes", nargs="*", default=list(PROBES), choices=list(PROBES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--mlp-train", type=int, default=8192)
    ap.add_argument("--cnn-steps", type=int, default=20, help="training steps per CNN epoch")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--write", type=Path, default=None, help="append the table to this Markdown file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "no probe" not in args.probes:
        args.probes.insert(0, "no probe")
    settings = {}
    for name in args.settings:
        if name == "mlp":
            settings["mlp"] = lambda: mlp_setting(args)
        else:
            for b in args.cnn_batches:
                settings[f"cnn B={b}"] = lambda b=b: cnn_setting(args, b)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in settings.items():
            bench, factory, heads, batch = build()
            run(bench, factory, heads, batch, {}, 1, Path(tmp) / f"{name.replace(' ', '_')}_warmup")  # warm-up (imports, allocator)
            results: dict[str, list[dict]] = {p: [] for p in args.probes}
            for rep in range(args.repeats):
                for label in args.probes:
                    results[label].append(run(bench, factory, heads, batch, PROBES[label], args.epochs,
                                              Path(tmp) / f"{name}_{rep}_{label}".replace(" ", "_").replace(",", "").replace("=", "")))
            base_train = statistics.median(r["train"] for r in results["no probe"])
            base_total = statistics.median(r["total"] for r in results["no probe"])
            steps = results["no probe"][0]["steps"]
            for label in args.probes:
                train = statistics.median(r["train"] for r in results[label])
                total = statistics.median(r["total"] for r in results[label])
                probes = results[label][0].get("probes")
                per_probe = f"{(train - base_train) / probes * 1e3:.1f}" if probes else ""
                med = {k: statistics.median(r.get(k, 0.0) for r in results[label]) for k in ("figures", "own", "engine", "attributed")}
                rows.append([name, label, f"{1e3 * base_train / steps:.1f}", f"{train:.2f}", f"{100 * (train / base_train - 1):+.1f}",
                             f"{med['attributed']:.1f}" if probes else "", str(probes or ""), per_probe,
                             f"{med['own'] * 1e3:.1f}" if probes else "", f"{med['engine'] * 1e3:.1f}" if probes else "",
                             results[label][0].get("method") or "", f"{total:.2f}", f"{100 * (total / base_total - 1):+.1f}",
                             f"{med['figures']:.2f}" if probes else ""])
    head = (f"{dt.datetime.now():%Y-%m-%d}, {platform.machine()} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}; "
            f"EW + Adam, fp32, {args.epochs} epochs per run, median of {args.repeats} interleaved repetitions; "
            f"mlp: synthetic K=2, {args.mlp_train} train samples, MLP 64-64 + 32-unit heads, batch 128; "
            f"cnn: ConvEncoder 16-32-64 + FC 64 with BatchNorm, K=3, random 3×{args.image_size}×{args.image_size} images, "
            f"{args.cnn_steps} steps per epoch; "
            "probe every 5 steps, 8 samples, 8 tasks unless stated")
    table = markdown_table(["setting", "run", "base ms/step", "train s", "**train overhead %**", "attributed %", "probe steps",
                            "ms/probe", "own ms/probe", "engine ms/probe", "per-sample", "total s", "total overhead %",
                            "figures s"], rows, "llrrrrrrrrlrrr")
    publish("bench_conflicts", head, table, args.write)


if __name__ == "__main__":
    main()
