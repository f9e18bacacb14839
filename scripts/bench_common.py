"""What every ``scripts/bench_*.py`` does with its result: print it and, with ``--write``, append it to a
Markdown file (``docs/benchmarks.md``) under a dated heading."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path


def publish(title: str, head: str, table: str, write: str | os.PathLike | None, host: str | None = None) -> None:
    """Print ``head`` and ``table``; with ``write``, append ``### <title> — <date time>[, <host>]`` and both."""
    print(head)
    print(table)
    if write:
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(Path(write), "a", encoding="utf-8") as f:
            f.write(f"\n### {title} — {stamp}{f', {host}' if host else ''}\n\n{head}\n\n{table}\n")
        print(f"appended to {write}")
