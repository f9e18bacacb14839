"""Loader throughput of the real-dataset readers: samples/s through ``torch.utils.data.DataLoader``.

For NYUv2 and Cityscapes (mtan ``.npy`` layout) and CelebA (official JPEG release) the script builds the
training split and iterates it with :func:`mtl_bench.data.base.make_loader` (the trainer's loader: seeded
shuffling, fork workers, persistent workers) at ``num_workers`` 0 and 2, with and without the mtan #34
augmentation (none exists for CelebA).  Each setting runs one warm-up epoch (worker start-up, page cache);
then the settings are timed round-robin (``--rounds`` rounds of whole epochs, at least ``--min-samples``
samples each) and the median rate is reported, so that load changes on a shared machine hit all settings
alike.  Without ``--root`` it writes fixtures at the real resolutions to a temporary folder, so the figures
measure reading, conversion, checks, augmentation and collation from a warm page cache, not disk bandwidth.

    python scripts/bench_data.py --threads 1              # fixtures in a temp dir
    python scripts/bench_data.py --root /data --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mtl_bench.data.base import make_loader
from mtl_bench.data.celeba import CelebADataset
from mtl_bench.data.fixtures import write_fixtures
from mtl_bench.data.mtan_npy import CityscapesDataset, NYUv2Dataset
from mtl_bench.utils import markdown_table
from bench_common import publish  # noqa: E402  (scripts/ is on sys.path when a script runs)


class Setting:
    """One dataset × augmentation × worker count, with its loader kept alive (persistent workers)."""

    def __init__(self, name: str, dataset: Dataset, augment: bool, workers: int, batch_size: int):
        self.name, self.dataset, self.augment, self.workers, self.batch_size = name, dataset, augment, workers, batch_size
        gen = torch.Generator().manual_seed(0)
        self.loader = make_loader(dataset, batch_size, shuffle=True, generator=gen, num_workers=workers)
        self.rates: list[float] = []

    def epoch(self) -> tuple[int, float]:
        """Load one epoch; returns (samples, seconds)."""
        seen, start = 0, time.perf_counter()
        for image, _ in self.loader:
            seen += image.shape[0]
        return seen, time.perf_counter() - start

    def measure(self, min_samples: int) -> None:
        seen, elapsed = 0, 0.0
        while seen < min_samples:
            n, t = self.epoch()
            seen, elapsed = seen + n, elapsed + t
        self.rates.append(seen / elapsed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="folder with nyuv2/, cityscapes/, celeba/ (default: write fixtures)")
    ap.add_argument("--n", type=int, default=32, help="fixture samples per folder (NYUv2/Cityscapes)")
    ap.add_argument("--celeba-n", type=int, default=500, help="fixture CelebA images")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of the fixture .npy arrays")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--min-samples", type=int, default=64, help="samples timed per setting and round (CelebA: 4x)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median rate is reported")
    ap.add_argument("--batch", type=int, default=8, help="batch size for NYUv2/Cityscapes (CelebA: 64)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the main process (workers always use 1)")
    ap.add_argument("--write", type=Path, default=None, help="append the table to this Markdown file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="mtl_bench_data_") as tmp:
        if args.root is None:
            roots = write_fixtures(tmp, n_train=args.n, n_test=1, celeba_n=args.celeba_n, dtype=args.dtype)
            source = f"fixtures ({args.n} samples/folder, {args.dtype}; CelebA {args.celeba_n} images 178×218)"
        else:
            roots = {"nyuv2": args.root / "nyuv2", "cityscapes": args.root / "cityscapes", "celeba": args.root / "celeba"}
            source = f"data under {args.root}"
        builders = [
            ("NYUv2", lambda aug: NYUv2Dataset(roots["nyuv2"], "train", augment=aug), args.batch, (False, True), args.min_samples),
            ("Cityscapes (7)", lambda aug: CityscapesDataset(roots["cityscapes"], "train", augment=aug), args.batch, (False, True),
             args.min_samples),
            ("CelebA (40)", lambda aug: CelebADataset(roots["celeba"], "train"), 64, (False,), 4 * args.min_samples),
        ]
        settings = []
        for name, build, batch, augments, min_samples in builders:
            for aug in augments:
                dataset = build(aug)
                settings += [(Setting(name, dataset, aug, w, batch), min_samples) for w in args.workers]
        for setting, _ in settings:  # warm-up: worker start-up, page cache
            setting.epoch()
        for r in range(args.rounds):  # round-robin, so that load changes on the machine hit all settings alike
            for setting, min_samples in settings:
                setting.measure(min_samples)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        rows = []
        for setting, _ in settings:
            ds = setting.dataset
            size = "×".join(str(v) for v in (ds.size if isinstance(ds, CelebADataset) else ds.image_size))
            rate = statistics.median(setting.rates)
            rows.append((setting.name, size, "yes" if setting.augment else "no", setting.workers, setting.batch_size, rate))
        del settings  # stops the persistent workers before the fixtures are deleted

    head = (
        f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"main-process threads={torch.get_num_threads()}; {source}; warm page cache; median of {args.rounds} interleaved rounds"
    )
    table = markdown_table(["dataset", "H×W", "augment", "workers", "batch", "samples/s", "ms/sample"],
                           ([n, s, a, w, b, f"{r:.1f}", f"{1e3 / r:.2f}"] for n, s, a, w, b, r in rows), "lllrrrr")
    publish("bench_data", head, table, args.write)


if __name__ == "__main__":
    main()
