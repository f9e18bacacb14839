"""What every ``scripts/bench_*.py`` does with its result: lay it out as a Markdown table, print it and, with
``--write``, append it to a Markdown file (``docs/benchmarks.md``) under a dated heading."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Iterable, Sequence

_ALIGN = {"l": "---", "r": "---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> str:
    """A Markdown table: ``| a | b |`` lines, cells through ``str``; ``align`` has one letter per column,
    ``l`` (left) or ``r`` (right, for numbers)."""
    if len(align) != len(header) or set(align) - set(_ALIGN):
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(header)} columns), got {align!r}")
    body = [header, *rows]
    for row in body:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells, the header {len(header)}: {list(row)}")
    lines = ["| " + " | ".join(map(str, row)) + " |" for row in body]
    lines.insert(1, "|" + "|".join(_ALIGN[a] for a in align) + "|")
    return "\n".join(lines)


def publish(title: str, head: str, table: str, write: str | os.PathLike | None, host: str | None = None) -> None:
    """Print ``head`` and ``table``; with ``write``, append ``### <title> — <date time>[, <host>]`` and both."""
    print(head)
    print(table)
    if write:
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(Path(write), "a", encoding="utf-8") as f:
            f.write(f"\n### {title} — {stamp}{f', {host}' if host else ''}\n\n{head}\n\n{table}\n")
        print(f"appended to {write}")
