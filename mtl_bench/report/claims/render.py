"""The verdict table as text (terminal), Markdown, CSV rows and a figure (effect and interval per claim)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from mtl_bench.report.claims.base import Verdict

VERDICT_COLOURS = {"supported": "tab:green", "not supported": "tab:red", "inconclusive": "tab:gray"}


def fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def interval_text(v: Verdict) -> str:
    iv = v.interval
    if not iv.finite:
        return f"{fmt(iv.estimate)} (no interval)"
    return f"{fmt(iv.estimate)} [{fmt(iv.lo)}, {fmt(iv.hi)}]"


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per claim: id, verdict, effect with its 95 % interval, seed count, expectation."""
    lines = []
    for v in verdicts:
        lines.append(f"[{v.verdict}] {v.claim_id}: {v.text} — {v.effect} = {interval_text(v)}, "
                     f"{v.interval.n} seed(s), {v.interval.method}; claim: {v.expectation()}")
    return lines


def _cell(value: Any) -> str:
    return fmt(value) if isinstance(value, float) else str(value)


def verdict_markdown(verdicts: Sequence[Verdict]) -> list[str]:
    """The verdict table, then per claim its tuning choices / notes and extra rows."""
    if not verdicts:
        return []
    out = ["## Verdicts", "",
           "Each claim's effect with its 95 % interval over seeds (Student t; paired by seed where the sides share "
           "seeds) and the verdict computed from it (rule: docs/studies.md).", "",
           "| claim | source | effect | estimate [95 % CI] | seeds | claim holds if | verdict |",
           "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        out.append(f"| {v.claim_id}: {v.text} | {v.source or '-'} | {v.effect} | {interval_text(v)} | {v.interval.n} | "
                   f"{v.expectation()} | **{v.verdict}** |")
    for v in verdicts:
        if not (v.details or v.table):
            continue
        out += ["", f"**{v.claim_id}**", ""]
        out += [f"- {d}" for d in v.details]
        if v.table:
            keys = list(v.table[0])
            out += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            out += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in v.table]
    return out + [""]


def write_verdicts_csv(verdicts: Sequence[Verdict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["claim", "text", "source", "effect", "estimate", "ci_lo", "ci_hi", "n", "method", "expect", "margin",
                    "verdict"])
        for v in verdicts:
            iv = v.interval
            w.writerow([v.claim_id, v.text, v.source, v.effect, iv.estimate, iv.lo, iv.hi, iv.n, iv.method, v.expect,
                        v.margin, v.verdict])


def plot_verdicts(verdicts: Sequence[Verdict], path: Path) -> Path | None:
    """One row per claim on its own scale: per-seed values (dots), estimate and 95 % interval, the claim's
    threshold (0 or ±margin, shaded for equivalence claims), coloured by verdict."""
    if not verdicts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(verdicts), 1, figsize=(8, 1.1 * len(verdicts) + 0.6), squeeze=False)
    for ax, v in zip(axes[:, 0], verdicts):
        colour = VERDICT_COLOURS.get(v.verdict, "black")
        iv = v.interval
        if v.expect == "equal":
            ax.axvspan(-v.margin, v.margin, color="tab:green", alpha=0.12)
        threshold = {"greater": v.margin, "less": -v.margin}.get(v.expect, 0.0)
        ax.axvline(threshold, color="black", lw=0.8, ls="--")
        if v.per_seed:
            ax.plot(list(v.per_seed.values()), [0.0] * len(v.per_seed), "o", color=colour, alpha=0.35, ms=4)
        if iv.finite:
            ax.errorbar([iv.estimate], [0.0], xerr=[[iv.estimate - iv.lo], [iv.hi - iv.estimate]], fmt="D", color=colour,
                        capsize=4)
        elif math.isfinite(iv.estimate):
            ax.plot([iv.estimate], [0.0], "D", color=colour)
        ax.set_yticks([])
        ax.set_title(f"{v.claim_id}: {v.verdict} (n={iv.n})", fontsize=8, loc="left", color=colour)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel(v.effect, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
