"""Shared by the ``scripts/bench_*.py``: timing on a device (``sync``, ``timed``) and what every script does with
its result (a Markdown table from :func:`mtl_bench.utils.markdown_table`): print it and, with ``--write``, append
it to a Markdown file (``docs/benchmarks.md``) under a dated heading."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes on ``device``, its queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def publish(title: str, head: str, table: str, write: str | os.PathLike | None, host: str | None = None) -> None:
    """Print ``head`` and ``table``; with ``write``, append ``### <title> — <date time>[, <host>]`` and both."""
    print(head)
    print(table)
    if write:
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(Path(write), "a", encoding="utf-8") as f:
            f.write(f"\n### {title} — {stamp}{f', {host}' if host else ''}\n\n{head}\n\n{table}\n")
        print(f"appended to {write}")
