"""Thread defaults on a shared machine: training-epoch time of `make train`'s default experiment (synthetic MMoE,
MLP, EW, Adam) under three thread settings, on an idle machine and with all but one core kept busy by other
processes (the situation of a laptop or CI box doing other work).

Settings (each a fresh process, since OpenMP reads its environment once):
- ``torch default``: torch's own thread count (the machine's cores), what `make train` used before
  ``trainer.num_threads`` defaulted to the idle CPUs;
- ``mtl_bench default``: ``trainer.num_threads`` unset: the CPUs available to the process minus those other work
  keeps busy when the run starts (``mtl_bench.utils.resolve_num_threads``);
- ``1 thread``: ``trainer.num_threads=1``.

Rounds alternate the settings; the figure is the median over rounds of each run's median training-epoch time
(``time/train_epoch_s`` in ``metrics.jsonl``; the first epoch, with its warm-up, is left out).

    python scripts/bench_threads.py --rounds 3 --epochs 10 [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from bench_common import publish  # noqa: E402

from mtl_bench.utils import available_cpus, markdown_table  # noqa: E402

# name -> (extra overrides, environment)
SETTINGS = {
    "torch default": (["trainer.num_threads=" + str(os.cpu_count() or 1)], {}),
    "mtl_bench default": ([], {}),
    "1 thread": (["trainer.num_threads=1"], {}),
}


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` processes that keep a core busy each, for the block."""
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(1.0 if n else 0.0)  # let them take their cores
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def epoch_time(extra: list[str], env: dict[str, str], epochs: int, folder: Path) -> float:
    """Median training-epoch time (s) of one run, its first epoch left out."""
    cmd = [sys.executable, "-m", "mtl_bench.train", "logger=none", f"trainer.epochs={epochs}", f"hydra.run.dir={folder}", *extra]
    run_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    subprocess.run(cmd, cwd=REPO, env={**run_env, **env}, check=True, capture_output=True)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    times = [r["time/train_epoch_s"] for r in records if r.get("type") == "epoch"]
    return statistics.median(times[1:] if len(times) > 1 else times)


def measure(rounds: int, epochs: int, busy: int, root: Path) -> dict[str, float]:
    out: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with busy_cores(busy):
        for r in range(rounds):
            for name, (extra, env) in SETTINGS.items():
                out[name].append(epoch_time(extra, env, epochs, root / f"busy{busy}_r{r}_{name.replace(' ', '_')}"))
    return {name: statistics.median(v) for name, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--write", default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    cpus = available_cpus()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        conditions = [(0, "idle"), *([(cpus - 1, f"{cpus - 1} of {cpus} cores busy")] if cpus > 1 else [])]
        for busy, label in conditions:
            times = measure(args.rounds, args.epochs, busy, Path(tmp))
            one = times["1 thread"]
            rows.extend([label, name, f"{t * 1000:.0f}", f"{t / one:.2f}"] for name, t in times.items())
    head = (f"`python scripts/bench_threads.py --rounds {args.rounds} --epochs {args.epochs}`: {cpus} CPUs available, "
            f"{platform.machine()}, Python {platform.python_version()}; median training epoch (ms) of the default "
            f"experiment and the ratio to one thread in the same condition.")
    table = markdown_table(["machine", "threads", "epoch (ms)", "× 1 thread"], rows, align="llrr")
    publish("Thread defaults on a shared machine", head, table, args.write, host=platform.node())


if __name__ == "__main__":
    main()
