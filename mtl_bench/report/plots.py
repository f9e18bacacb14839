"""PNG figures of a report (matplotlib's Agg canvas through ``Figure``; pyplot and its global state are not used).

* ``bars_<split>_<task>.png``: one panel per metric of the task, one bar per group (mean), error bars = sample std
  over the group's runs (none for a single run); the STL reference rows of the task (``STL <task>``) as dashed
  horizontal lines with a ±std band (as bars when the report has no other rows).
* ``pareto_<split>_<a>_vs_<b>.png``: every table run on two metrics (``--scatter``; default the first metric of the
  first two targets), coloured by group; the runs that are non-dominated **on these two metrics** are ringed and
  joined by the front's staircase; the STL reference means of the two metrics as dashed lines (vertical for the
  x metric's task, horizontal for the y metric's).

Exploded runs (:mod:`mtl_bench.report.exploded`) appear in no figure; labels are the plain group labels.
* ``conflicts.png``: where runs logged gradient conflicts, the mean cosine / magnitude similarity / opposite-sign
  fraction per pair type and group (error bars = std over runs).
* ``au_heatmap.png``: where runs have AU statistics, group × task mean rAU and the dominated fraction per group.
* ``delta_heatmap_<group>.png``: with transfer runs, per MTL group the corruption transferability δ per corruption
  (rows, standard order noise, blur, weather, digital) × severity (columns): the mean over tasks, plus one panel per
  task when the group has 2..4 tasks (:meth:`~mtl_bench.report.robustness.Robustness.panels`); diverging colours
  centred at 0 (blue: δ < 0, the MTL backbone degrades less), values annotated.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mtl_bench.report.au_plots import au_figures
from mtl_bench.report.build import CONFLICT_METRICS, GroupRow, Report
from mtl_bench.report.conflict_plots import conflict_distributions
from mtl_bench.report.pareto import pareto_optimal


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_")


def _err(std: float | None) -> float:
    return 0.0 if std is None or not math.isfinite(std) else std


def _arrow(hib: bool | None) -> str:
    return "" if hib is None else (" (↑ better)" if hib else " (↓ better)")


def _short(label: str) -> str:
    return label if len(label) <= 60 else label[:57] + "..."


def _labels(report: Report) -> tuple[dict[str, str], str]:
    """Group label → its plot label (the values only), and the axis title naming the keys."""
    return {row.group.label: _short(row.group.short) for row in report.rows}, " / ".join(report.group_keys) or "group"


def _yerr(errs: list[float]) -> list[float] | None:
    return errs if any(e > 0 for e in errs) else None


def _bar_and_line_rows(report: Report) -> tuple[list[GroupRow], list[GroupRow]]:
    """Rows drawn as bars (the methods; the STL rows when there is nothing else) and as reference lines."""
    methods = [row for row in report.rows if not row.group.reference]
    return (methods, [row for row in report.rows if row.group.reference]) if methods else (list(report.rows), [])


def _reference_lines(ax: Any, rows: list[GroupRow], key: str, vertical: bool = False) -> None:
    """A black line (dashed, dotted, ... by row) at each reference row's mean of ``key`` with a ±std band, labelled."""
    for k, row in enumerate(rows):
        s = row.stats.get(key)
        if s is None or not math.isfinite(s.mean):
            continue
        style = {"color": "black", "linestyle": ("--", ":", "-.")[k % 3], "linewidth": 1.1, "zorder": 2}
        (ax.axvline if vertical else ax.axhline)(s.mean, label=f"{row.group.label} (reference)", **style)
        if _err(s.std) > 0:
            (ax.axvspan if vertical else ax.axhspan)(s.mean - s.std, s.mean + s.std, color=style["color"], alpha=0.08,
                                                     zorder=0)


def bar_charts(report: Report, out: Path) -> list[Path]:
    files = []
    names, axis = _labels(report)
    bar_rows, line_rows = _bar_and_line_rows(report)
    labels = [names[row.group.label] for row in bar_rows]
    by_task: dict[tuple[str, str], list[str]] = {}
    for key in report.metric_keys:
        split, task, _ = key.split("/")
        by_task.setdefault((split, task), []).append(key)
    for (split, task), keys in by_task.items():
        fig = Figure(figsize=(max(4.0, 0.5 * len(labels) + 2.5) * len(keys), 4.2), layout="constrained")
        for i, key in enumerate(keys):
            ax = fig.add_subplot(1, len(keys), i + 1)
            stats = [row.stats.get(key) for row in bar_rows]
            means = [s.mean if s else math.nan for s in stats]
            errs = [_err(s.std) if s else 0.0 for s in stats]
            ax.bar(range(len(labels)), means, yerr=_yerr(errs), capsize=3, color=[f"C{j % 10}" for j in range(len(labels))])
            _reference_lines(ax, line_rows, key)
            if any(key in row.stats for row in line_rows):
                ax.legend(fontsize=7, loc="best")
            ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
            ax.set_xlabel(axis, fontsize=8)
            ax.set_title(key.split("/")[-1] + _arrow(report.directions.get(f"{task}/{key.split('/')[-1]}")), fontsize=9)
        fig.suptitle(f"{split}: task {task} (mean ± sample std over seeds)", fontsize=10)
        path = out / f"bars_{_safe(split)}_{_safe(task)}.png"
        fig.savefig(path, dpi=110)
        files.append(path)
    return files


def pareto_scatter(report: Report, out: Path) -> Path | None:
    if not report.scatter:
        return None
    split = report.options.pareto_split
    a, b = report.scatter
    hib = [report.directions[a], report.directions[b]]
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    names, axis = _labels(report)
    points: list[tuple[float, float]] = []
    for j, row in enumerate(r for r in report.rows if not r.group.reference):
        xs, ys = [], []
        for run in row.used:
            res = run.results(report.options.source)
            x, y = res.get(f"{split}/{a}", math.nan), res.get(f"{split}/{b}", math.nan)
            if math.isfinite(x) and math.isfinite(y):
                xs.append(x)
                ys.append(y)
                points.append((x, y))
        ax.scatter(xs, ys, color=f"C{j % 10}", label=names[row.group.label], s=28, zorder=3)
    if not points:
        return None
    front = sorted({p for p, ok in zip(points, pareto_optimal(points, hib)) if ok})
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=110, facecolors="none", edgecolors="black", linewidths=1.4,
               zorder=4, label="Pareto front (these two metrics)")
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=0.8, zorder=2)
    references = [row for row in report.rows if row.group.reference]
    _reference_lines(ax, references, f"{split}/{a}", vertical=True)
    _reference_lines(ax, references, f"{split}/{b}")
    ax.set_xlabel(f"{split}/{a}{_arrow(hib[0])}")
    ax.set_ylabel(f"{split}/{b}{_arrow(hib[1])}")
    ax.legend(fontsize=7, loc="best", title=axis, title_fontsize=7)
    ax.grid(alpha=0.3)
    path = out / f"pareto_{_safe(split)}_{_safe(a)}_vs_{_safe(b)}.png"
    fig.savefig(path, dpi=110)
    return path


def conflicts_plot(report: Report, out: Path) -> Path | None:
    if not report.conflicts:
        return None
    groups = list(report.conflicts)
    names, axis = _labels(report)
    pairs = list(dict.fromkeys(p for g in groups for p in report.conflicts[g]))
    metrics = [m for m in CONFLICT_METRICS if any(m in s for g in groups for s in report.conflicts[g].values())]
    fig = Figure(figsize=(max(4.5, 1.2 * len(groups) + 2.5) * len(metrics), 4.2), layout="constrained")
    width = 0.8 / max(1, len(pairs))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for k, pair in enumerate(pairs):
            stats = [report.conflicts[g].get(pair, {}).get(metric) for g in groups]
            ax.bar([j + (k - (len(pairs) - 1) / 2) * width for j in range(len(groups))],
                   [s.mean if s else math.nan for s in stats], width, yerr=_yerr([_err(s.std) if s else 0.0 for s in stats]),
                   capsize=2, label=pair, color=f"C{k % 10}")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xticks(range(len(groups)), [names[g] for g in groups], rotation=35, ha="right", fontsize=7)
        ax.set_xlabel(axis, fontsize=8)
        ax.set_title(metric, fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("gradient conflicts: mean over the run (error bars: std over runs)", fontsize=10)
    path = out / "conflicts.png"
    fig.savefig(path, dpi=110)
    return path


def au_heatmap(report: Report, out: Path) -> Path | None:
    if not report.au:
        return None
    groups = list(report.au)
    tasks = list(dict.fromkeys(t for a in report.au.values() for t in a["mean_rau"]))
    rau = [[(report.au[g]["mean_rau"][t].mean if t in report.au[g]["mean_rau"] else math.nan) for t in tasks] for g in groups]
    dom = [[report.au[g]["dominated"].mean] for g in groups]
    fig = Figure(figsize=(2.0 + 1.1 * (len(tasks) + 1) + 2.5, 1.2 + 0.45 * len(groups)), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[len(tasks), 1])
    for ax, data, cols, title in ((ax1, rau, tasks, "mean rAU"), (ax2, dom, ["dominated"], "dominated fraction")):
        im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_title(title, fontsize=9)
        for i, values in enumerate(data):
            for j, v in enumerate(values):
                ax.text(j, i, "nan" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if not math.isnan(v) and v < 0.6 else "black")
    names, axis = _labels(report)
    ax1.set_yticks(range(len(groups)), [names[g] for g in groups], fontsize=7)
    ax1.set_ylabel(axis, fontsize=8)
    ax2.set_yticks([])
    fig.colorbar(im, ax=ax2)
    path = out / "au_heatmap.png"
    fig.savefig(path, dpi=110)
    return path


def delta_heatmaps(report: Report, out: Path) -> list[Path]:
    """One ``delta_heatmap_<group>.png`` per MTL group of the corruption transferability δ."""
    rob = report.robustness
    if rob is None or not rob.corruptions or not rob.severities:
        return []
    files: list[Path] = []
    used: set[str] = set()
    for g in rob.groups:
        panels = rob.panels(g)
        finite = [abs(v) for _, m in panels for row in m for v in row if math.isfinite(v)]
        if not finite:
            continue
        lim = max(max(finite), 1e-12)
        fig = Figure(figsize=(1.2 + 0.75 * len(rob.severities) * len(panels) + 1.2, 1.4 + 0.32 * len(rob.corruptions)),
                     layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        marks = [rob.significance(g, task) for _, task in rob.panel_tasks(g)]
        for k, (ax, (title, matrix)) in enumerate(zip(axes, panels)):
            im = ax.imshow(matrix, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(len(rob.severities)), [str(s) for s in rob.severities], fontsize=7)
            ax.set_xlabel("severity", fontsize=8)
            ax.set_yticks(range(len(rob.corruptions)), rob.corruptions if k == 0 else [""] * len(rob.corruptions), fontsize=7)
            ax.set_title(title, fontsize=9)
            for i, row in enumerate(matrix):
                for j, v in enumerate(row):
                    iv = marks[k][i][j]
                    star = "*" if iv.finite and (iv.lo > 0 or iv.hi < 0) else ""
                    ax.text(j, i, "" if math.isnan(v) else f"{v:+.3f}{star}", ha="center", va="center", fontsize=6,
                            color="white" if math.isfinite(v) and abs(v) > 0.6 * lim else "black")
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="δ  (< 0: MTL degrades less)")
        fig.suptitle(f"corruption transferability δ: {_short(g.group.label)}  (* = 95 % interval over seed-paired "
                     "MTL − STL differences excludes 0)", fontsize=8)
        name = _safe(g.group.short) or "group"
        stem, i = name, 2
        while name in used:
            name, i = f"{stem}_{i}", i + 1
        used.add(name)
        path = out / f"delta_heatmap_{name}.png"
        fig.savefig(path, dpi=110)
        files.append(path)
    return files


def write_plots(report: Report, out: Path) -> list[Path]:
    """All figures that apply to ``report``; returns the files written."""
    if not report.rows:
        return delta_heatmaps(report, out)
    files = bar_charts(report, out)
    files += [p for p in (pareto_scatter(report, out), conflicts_plot(report, out), au_heatmap(report, out)) if p is not None]
    files += au_figures(report, out)  # rAU per shared layer and over training (mtl_bench/report/au_plots.py)
    files += [p for p in (conflict_distributions(report, out),) if p is not None]  # mtl_bench/report/conflict_plots.py
    return files + delta_heatmaps(report, out)
