"""Throughput of the ImageNet-C corruptions and of the corrupted-split cache.

1. Images/s of every corruption (the 15 common ones and the 4 extra) at severities 3 and 5, at the NYUv2
   (288×384) and Cityscapes (128×256) resolutions, on a synthetic scene with edges and texture; each setting
   is timed ``--repeats`` times (fresh generators) after one warm-up call and the median is reported.  With
   ``--backends mtl_bench,imagecorruptions`` the fork is timed alongside when it is installed.
2. Cold vs cached preparation of a small corrupted split (``--split-size`` images at 288×384, the 15 common
   corruptions at severity 3): the first :func:`corrupted_split_cache` call computes and writes the set,
   the second finds it (with the fingerprint known, and including the fingerprint pass over the clean images).

    python scripts/bench_corruptions.py                        # print the tables
    python scripts/bench_corruptions.py --write docs/benchmarks.md

``--write`` replaces the section ``## Corruptions (`scripts/bench_corruptions.py`)`` of that file (appending it
the first time) and leaves every other section alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtl_bench.corruptions.adapters import reference_scene
from mtl_bench.corruptions import ALL, COMMON, EXTRA, available_backends, corrupt, corrupted_split_cache, describe, fingerprint_images
from mtl_bench.utils import markdown_table

SECTION = "## Corruptions (`scripts/bench_corruptions.py`)"
RESOLUTIONS = {"NYUv2 288×384": (288, 384), "Cityscapes 128×256": (128, 256)}


def time_one(image: np.ndarray, name: str, severity: int, backend: str, repeats: int) -> float:
    """Median seconds per call."""
    corrupt(image, name, severity, 0, backend=backend)  # warm-up (numba JIT for the fork's glass blur)
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        corrupt(image, name, severity, r + 1, backend=backend)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def throughput(backends: list[str], severities: list[int], repeats: int) -> tuple[list[str], list[list[str]]]:
    images = {label: reference_scene(*hw) for label, hw in RESOLUTIONS.items()}
    header = ["corruption"] + [f"{label.split()[0]} s{s}{'' if len(backends) == 1 else ' ' + b}"
                               for label in RESOLUTIONS for s in severities for b in backends]
    rows = []
    common_seconds = [0.0] * (len(header) - 1)
    for name in ALL:
        row = [name + (" (extra)" if name in EXTRA else "")]
        k = 0
        for label in RESOLUTIONS:
            for s in severities:
                for b in backends:
                    seconds = time_one(images[label], name, s, b, repeats)
                    row.append(f"{1.0 / seconds:.0f}")
                    if name in COMMON:
                        common_seconds[k] += seconds
                    k += 1
        rows.append(row)
        print(" | ".join(row), flush=True)
    rows.append(["**15 common: mean ms/image**"] + [f"**{1000 * t / len(COMMON):.1f}**" for t in common_seconds])
    return header, rows


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cache_timing(n: int, severity: int, workers: int) -> tuple[list[str], list[list[str]], str]:
    images = np.stack([reference_scene(288, 384, seed=i) for i in range(n)])
    t = time.perf_counter()
    fp = fingerprint_images(images)
    t_fp = time.perf_counter() - t
    rows = []
    total_cold = total_hit = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in COMMON:
            t = time.perf_counter()
            corrupted_split_cache(images, name, severity, 0, tmp, fp, workers=workers)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            corrupted_split_cache(images, name, severity, 0, tmp, fp)
            hit = time.perf_counter() - t
            total_cold += cold
            total_hit += hit
            rows.append([name, f"{cold:.2f}", f"{hit * 1000:.1f}", f"{n / cold:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
    rows.append(["**all 15**", f"**{total_cold:.1f}**", f"**{total_hit * 1000:.0f}**", f"{15 * n / total_cold:.0f}"])
    note = (f"{n} images of 288×384 (a {n * 288 * 384 * 3 / 2**20:.0f} MiB split), severity {severity}, workers={workers}; "
            f"fingerprint of the clean split (BLAKE2b over all bytes): {t_fp * 1000:.1f} ms, paid once per dataset object")
    return ["corruption", "cold (s)", "cached (ms)", "cold images/s"], rows, note


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """The first column names the row; the others are numbers."""
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def replace_section(path: Path, text: str) -> None:
    """Replace this script's ``## `` section of ``path`` (up to the next ``## `` heading) or append it."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="mtl_bench", help="comma-separated backends (mtl_bench, imagecorruptions)")
    ap.add_argument("--severities", default="3,5")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (zoom blur uses torch)")
    ap.add_argument("--split-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="worker processes for the cold cache fill")
    ap.add_argument("--write", type=Path, default=None, help="replace this script's section of this Markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    present = available_backends()
    backends = [b for b in wanted if b in present]
    for b in set(wanted) - set(backends):
        print(f"skipping backend {b}: not available here")
    severities = [int(s) for s in args.severities.split(",")]

    started = time.perf_counter()
    header, rows = throughput(backends, severities, args.repeats)
    c_header, c_rows, c_note = cache_timing(args.split_size, 3, args.workers)
    elapsed = time.perf_counter() - started

    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    impl = "; ".join(", ".join(f"{k} {v}" for k, v in describe(b).items()) for b in backends)
    machine = f"{cpu_name()}, {os.cpu_count()} CPUs ({platform.machine()}, shared), Python {platform.python_version()}"
    text = f"""{SECTION}

Per-image cost of the corruptions (`mtl_bench.corruptions`, docs/corruptions.md) on a synthetic scene with edges
and texture: images/s of one process, the median of {args.repeats} calls after a warm-up call (higher is better).
Cold vs cached: preparing corrupted copies of a small evaluation split with `corrupted_split_cache`.

### CPU — {stamp}, {machine}

`python scripts/bench_corruptions.py --backends {','.join(backends)} --repeats {args.repeats} --threads {args.threads}` \
(torch {torch.__version__}, {args.threads} thread(s); {impl}; total {elapsed:.0f} s)

{markdown(header, rows)}

Cache, {c_note}:

{markdown(c_header, c_rows)}
"""
    print(text)
    if args.write:
        replace_section(args.write, text)
        print(f"wrote the section to {args.write}")


if __name__ == "__main__":
    main()
