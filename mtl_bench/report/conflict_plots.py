"""``conflict_distributions.png``: the distributions of Elich et al.'s gradient-pair statistics, tasks vs samples,
MTL and STL runs side by side.

Elich et al. ("Examining Common Paradigms in Multi-Task Learning", GCPR 2024, §4, Fig. 4) compare the *spread* of
the cosine and the magnitude similarity between tasks with the spread between samples, not only the means (a mean
cosine near 0 hides whether pairs conflict often and strongly or rarely).  Every run probed by
:class:`~mtl_bench.diagnostics.conflicts.ConflictProbe` records fixed-bin histograms of the per-pair values over the
whole run (``summary["conflicts"]["histograms"]``); this figure draws them:

* one row of panels per **setting**: the probe's ``label`` (a study's arm, e.g. "images, depth loss x10"; the MTL
  and STL arms of a setting share it), else the dataset;
* one panel per statistic: ``cos`` on [−1, 1], ``mag_sim`` on [0, 1];
* in a panel, one mirrored histogram ("violin" of binned densities, each scaled to the same maximal width) per
  **series**: ``MTL: inter-task`` and ``MTL: inter-sample`` pairs of the MTL runs, ``STL <task>: inter-sample`` pairs
  of each task's STL runs.  Histograms pool the pairs of all runs (seeds) of a series;
* on each, the mean over runs of the run means (``conflict/<pair>/<metric>``, what the claims compare) as a dot
  with its 95 % Student-t interval over runs (no interval for one run), and under the axis the number of runs and
  pairs.

When a setting holds several MTL configurations (the report's groups), each gets its own series, named by its group.
Exploded runs (:mod:`mtl_bench.report.exploded`) and runs without histograms are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mtl_bench.report.build import Report, conflict_stats
from mtl_bench.report.claims.stats import t_interval
from mtl_bench.report.runs import Run

METRICS = ("cos", "mag_sim")
PAIRS = ("inter_task", "inter_sample")
COLOURS = {"inter_task": "tab:red", "inter_sample": "tab:blue", "stl": "tab:green"}


@dataclass
class Series:
    """The pooled histogram counts and the per-run means of one series (per statistic)."""

    name: str
    colour: str
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    means: dict[str, list[float]] = field(default_factory=dict)
    runs: int = 0

    def add(self, histograms: dict[str, Any], means: dict[str, float]) -> None:
        self.runs += 1
        for metric in METRICS:
            hist = histograms.get(metric)
            if not isinstance(hist, dict) or not isinstance(hist.get("counts"), list):
                continue
            counts = np.asarray(hist["counts"], dtype=float)
            prev = self.counts.get(metric)
            if prev is not None and prev.shape != counts.shape:
                continue  # a run with other bins cannot be pooled: left out of this histogram
            self.counts[metric] = counts if prev is None else prev + counts
            self.ranges.setdefault(metric, (float(hist["range"][0]), float(hist["range"][1])))
            if math.isfinite(means.get(metric, math.nan)):
                self.means.setdefault(metric, []).append(float(means[metric]))


def setting_of(run: Run) -> str:
    """The probe's ``label`` of the run, else its dataset."""
    conf = run.summary.get("conflicts")
    label = conf.get("settings", {}).get("label") if isinstance(conf, dict) else None
    return str(label) if label else f"dataset {run.dataset or '?'}"


def _histograms(run: Run) -> dict[str, Any]:
    conf = run.summary.get("conflicts")
    hists = conf.get("histograms") if isinstance(conf, dict) else None
    return hists if isinstance(hists, dict) else {}


def collect(report: Report) -> dict[str, dict[str, Series]]:
    """``{setting: {series name: Series}}`` of the report's completed, non-exploded runs with histograms."""
    runs = [r for r in report.runs if r.completed and str(r.path) not in report.exploded and _histograms(r)]
    mtl_groups: dict[str, set[str]] = {}
    for run in runs:
        if not run.is_stl:
            mtl_groups.setdefault(setting_of(run), set()).add(report.group_of(run))
    out: dict[str, dict[str, Series]] = {}
    for run in runs:
        setting, hists, means = setting_of(run), _histograms(run), conflict_stats(run)
        if run.is_stl:
            owner, pairs = f"STL {'/'.join(run.tasks)}", ("inter_sample",)
        else:
            owner = "MTL" if len(mtl_groups[setting]) == 1 else (report.group_of(run) or "MTL")
            pairs = PAIRS
        for pair in pairs:
            if pair not in hists:
                continue
            name = f"{owner}: {pair.replace('_', '-')}"
            colour = COLOURS["stl"] if run.is_stl else COLOURS[pair]
            series = out.setdefault(setting, {}).setdefault(name, Series(name, colour))
            series.add(hists[pair], means.get(pair, {}))
    return {s: dict(sorted(v.items(), key=_order)) for s, v in out.items()}


def _order(item: tuple[str, Series]) -> tuple[bool, bool, str]:
    """MTL series first, inter-task before inter-sample, then by name."""
    name = item[0]
    return name.startswith("STL "), not name.endswith("inter-task"), name


def _violin(ax: Any, x: float, series: Series, metric: str) -> None:
    counts = series.counts[metric]
    lo, hi = series.ranges[metric]
    width = (hi - lo) / len(counts)
    centres = lo + width * (np.arange(len(counts)) + 0.5)
    half = 0.4 * counts / counts.max() if counts.max() > 0 else counts
    ax.barh(centres, 2 * half, left=x - half, height=width, color=series.colour, alpha=0.45, linewidth=0)
    means = series.means.get(metric, [])
    if not means:
        return
    iv = t_interval(means, method="t")
    err = [[iv.estimate - iv.lo], [iv.hi - iv.estimate]] if iv.finite else None
    ax.errorbar([x], [iv.estimate], yerr=err, fmt="o", color="black", markerfacecolor="white", markersize=4,
                capsize=3, linewidth=1.0, zorder=3)


def _panel(ax: Any, setting: str, metric: str, series: list[Series]) -> None:
    shown = [s for s in series if metric in s.counts]
    for x, s in enumerate(shown):
        _violin(ax, x, s, metric)
    labels = [f"{s.name}\n{s.runs} runs, {int(s.counts[metric].sum())} pairs" for s in shown]
    ax.set_xticks(range(len(shown)), labels, fontsize=6.5, rotation=20, ha="right")
    ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
    ax.set_ylim(*(shown[0].ranges[metric] if shown else (0.0, 1.0)))
    if metric == "cos":
        ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_title(f"{setting}: {metric}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def conflict_distributions(report: Report, out: Path) -> Path | None:
    """Write ``conflict_distributions.png`` (module docstring) when runs recorded histograms; else ``None``."""
    data = collect(report)
    if not data:
        return None
    width = max(5.0, 1.3 * max(len(v) for v in data.values()) + 1.5)
    fig = Figure(figsize=(width * len(METRICS), 3.6 * len(data)), layout="constrained")
    axes = fig.subplots(len(data), len(METRICS), squeeze=False)
    for row, (setting, series) in enumerate(data.items()):
        for col, metric in enumerate(METRICS):
            _panel(axes[row][col], setting, metric, list(series.values()))
    fig.suptitle("gradient-pair distributions, tasks vs samples (pooled over seeds; dot: mean of run means, "
                 "bar: 95 % t interval over runs)", fontsize=10)
    path = out / "conflict_distributions.png"
    fig.savefig(path, dpi=110)
    return path
