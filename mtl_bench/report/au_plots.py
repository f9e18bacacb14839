"""Figures of task dominance across a study's runs: rAU per shared layer and rAU over training.

Yang et al., "AdaTask: A Task-Aware Adaptive Learning Rate Approach to Multi-Task Learning" (AAAI 2023, arXiv
2211.15055) show the relative accumulated update rAU of every task per shared layer (with Adam one task takes
most of the higher layers; with AdaTask the shares are even) and how it evolves during training.  From the runs'
``summary["au"]`` (:mod:`mtl_bench.diagnostics.au`: ``layers`` and ``history``) the report draws

* ``au_layers.png`` — per shared layer, the mean rAU of every task (bars) and the fraction of dominated
  parameters (black diamonds); mean and Student-t 95 % interval over seeds (error bars);
* ``au_training.png`` — the mean rAU of every task over all shared parameters (solid) and the dominated fraction
  (black, dashed) against the epoch; mean and 95 % band over seeds.

Both are grids: one row per value of ``panels`` (e.g. the dataset arm), one column per value of ``by`` (e.g. Adam |
AdaTask side by side).  The cells come from the study's ``study.au_plots`` spec, recorded in every run's config::

    study:
      au_plots:
        panels: dataset             # config key: one row per value (optional)
        by: optimizer               # config key: one column per value (optional)
        where: {key: value(s)}      # which runs (optional)
        tune: [optimizer.lr]        # per cell, the value with the best mean validation select_on (as a claim side)
        select_on: summary/selected.val/loss   # default; any claim quantity
        select_mode: min            # max | min; default the quantity's direction

so the figures show the runs the claims compare (the learning rate chosen per optimizer on validation).  Without a
spec, one row holds the table's groups that have AU statistics (the first :data:`MAX_CELLS`).  Exploded runs are
left out, like everywhere in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from mtl_bench.report.claims import study_claims
from mtl_bench.report.claims.quantities import Context, SideSpec, side_runs, tune
from mtl_bench.report.claims.stats import Interval, t_interval
from mtl_bench.report.grouping import lookup
from mtl_bench.report.runs import ReportError, Run

SPEC_FIELDS = ("panels", "by", "where", "tune", "select_on", "select_mode")
DEFAULT_SELECT = ("summary/selected.val/loss", "min")
MAX_CELLS = 8
STACK_LAYERS = 8  # more shared layers than this: au_layers.png stacks its panels (one per row)


@dataclass
class Cell:
    """The runs of one (row, column) of the grid, e.g. dataset=synthetic_imbalanced × optimizer=adam."""

    row: str
    column: str
    runs: list[Run]
    chosen: str = ""  # the tuned values, e.g. "optimizer.lr=0.004"
    tasks: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        """Two lines: the row's value, then the column's with the tuned values and the number of runs."""
        second = ", ".join(x for x in (self.column, self.chosen) if x)
        return "\n".join(x for x in (self.row, f"{second} (n={len(self.runs)})") if x)


def au_of(run: Run) -> Mapping[str, Any] | None:
    """``summary["au"]`` when it has per-layer statistics by task name (``layer_max_share`` marks that format; runs
    of older versions, whose ``layers`` were per tensor with unnamed shares, are skipped)."""
    au = run.summary.get("au")
    ok = isinstance(au, Mapping) and isinstance(au.get("layers"), Mapping) and isinstance(au.get("layer_max_share"), Mapping)
    return au if ok and au["layers"] else None


def _check(spec: Mapping[str, Any]) -> None:
    unknown = set(spec) - set(SPEC_FIELDS)
    if unknown:
        raise ReportError(f"study.au_plots: unknown field(s) {sorted(unknown)}; valid: {list(SPEC_FIELDS)}")


def _tuned(ctx: Context, cell: Cell, spec: Mapping[str, Any]) -> Cell:
    keys = spec.get("tune") or []
    keys = [str(k) for k in (keys if isinstance(keys, (list, tuple)) else [keys])]
    if not keys:
        return cell
    select_on = str(spec.get("select_on") or DEFAULT_SELECT[0])
    mode = spec.get("select_mode") or (DEFAULT_SELECT[1] if select_on == DEFAULT_SELECT[0] else None)
    best = tune(ctx, cell.runs, keys, select_on, mode)
    cell.runs = best.runs
    cell.chosen = ", ".join(f"{k}={v}" for k, v in zip(keys, best.chosen))
    return cell


def cells(report: Any) -> list[Cell]:
    """The grid's cells in row order, then column order (values sorted), each with runs that have AU statistics."""
    spec = study_claims([r for r in report.runs if r.completed], [], "au_plots")
    if not spec:
        rows = [row for row in report.rows if not row.group.reference]
        found = [Cell("", row.group.short, [r for r in row.used if au_of(r)]) for row in rows]
        return [c for c in found if c.runs][:MAX_CELLS]
    _check(spec)
    ctx = Context(report)
    runs = [r for r in side_runs(ctx, SideSpec.parse({"where": spec.get("where") or {}}, "study.au_plots")) if au_of(r)]
    keys = [spec.get("panels"), spec.get("by")]
    grid: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        at = tuple(f"{k}={lookup(run, str(k))}" if k else "" for k in keys)
        grid.setdefault(at, []).append(run)
    return [_tuned(ctx, Cell(r, c, members), spec) for (r, c), members in sorted(grid.items())]


# ------------------------------------------------------------------------------------------------- statistics


def _interval(values: Sequence[float]) -> Interval:
    return t_interval([v for v in values if isinstance(v, (int, float)) and math.isfinite(v)])


def _tasks(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(t for r in runs for t in (au_of(r) or {}).get("mean_rau", {})))


def layer_table(runs: Sequence[Run]) -> dict[str, dict[str, Interval]]:
    """``{layer: {task: interval of its mean rAU, "dominated": interval}}`` over the runs (seeds)."""
    layers = list(dict.fromkeys(layer for r in runs for layer in au_of(r)["layers"]))
    out: dict[str, dict[str, Interval]] = {}
    for layer in layers:
        stats = [au_of(r)["layers"].get(layer) or {} for r in runs]
        row = {t: _interval([(s.get("mean_rau") or {}).get(t, math.nan) for s in stats]) for t in _tasks(runs)}
        row["dominated"] = _interval([s.get("dominated", math.nan) for s in stats])
        out[layer] = row
    return out


def history_table(runs: Sequence[Run]) -> dict[str, list[tuple[float, Interval]]]:
    """``{task or "dominated": [(epoch, interval over the runs that recorded that epoch)]}``."""
    per_epoch: dict[float, list[Mapping[str, Any]]] = {}
    for run in runs:
        for entry in au_of(run).get("history") or []:
            if isinstance(entry, Mapping) and isinstance(entry.get("epoch"), (int, float)):
                per_epoch.setdefault(float(entry["epoch"]), []).append(entry)
    series: dict[str, list[tuple[float, Interval]]] = {}
    for epoch, entries in sorted(per_epoch.items()):
        for t in _tasks(runs):
            series.setdefault(t, []).append((epoch, _interval([(e.get("mean_rau") or {}).get(t, math.nan) for e in entries])))
        series.setdefault("dominated", []).append((epoch, _interval([e.get("dominated", math.nan) for e in entries])))
    return series


# ---------------------------------------------------------------------------------------------------- figures


def _grid(found: list[Cell], width: float, height: float, stack: bool = False) -> tuple[Figure, dict[int, Any]]:
    """The figure and each cell's axes; ``stack``: one cell per row (wide panels of deep networks)."""
    if stack:
        return _stacked(found, width, height)
    rows = list(dict.fromkeys(c.row for c in found))
    columns = list(dict.fromkeys(c.column for c in found))
    fig = Figure(figsize=(0.8 + width * len(columns), 0.9 + height * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False, sharey=True)
    return fig, {i: axes[rows.index(c.row)][columns.index(c.column)] for i, c in enumerate(found)}


def _stacked(found: list[Cell], width: float, height: float) -> tuple[Figure, dict[int, Any]]:
    fig = Figure(figsize=(0.8 + width, 0.9 + height * len(found)), layout="constrained")
    axes = fig.subplots(len(found), 1, squeeze=False, sharey=True)
    return fig, {i: axes[i][0] for i in range(len(found))}


def short_layers(layers: Sequence[str]) -> list[str]:
    """Layer names without the dotted prefix they all share (``encoder.net.0`` → ``net.0`` next to ``encoder.net.2``)."""
    parts = [layer.split(".") for layer in layers]
    common = 0
    while len(layers) > 1 and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return [".".join(p[common:]) for p in parts]


def _half(iv: Interval) -> tuple[float, float]:
    return (iv.estimate - iv.lo, iv.hi - iv.estimate) if iv.finite else (0.0, 0.0)


def _layer_panel(ax: Any, cell: Cell) -> None:
    table = layer_table(cell.runs)
    tasks, layers = _tasks(cell.runs), list(table)
    width = 0.8 / max(len(tasks), 1)
    for j, task in enumerate(tasks):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(layers))]
        ivs = [table[layer][task] for layer in layers]
        err = list(zip(*[_half(iv) for iv in ivs]))
        ax.bar(xs, [iv.estimate for iv in ivs], width, yerr=err, capsize=2, color=f"C{j % 10}", label=f"rAU {task}")
    dom = [table[layer]["dominated"] for layer in layers]
    ax.errorbar(range(len(layers)), [iv.estimate for iv in dom], yerr=list(zip(*[_half(iv) for iv in dom])), fmt="D",
                color="black", ms=4, capsize=2, label="dominated fraction")
    if tasks:
        ax.axhline(1.0 / len(tasks), color="grey", ls=":", lw=1, label="1/K (balanced)")
    ax.set_xticks(range(len(layers)), short_layers(layers), rotation=30 if len(layers) <= STACK_LAYERS else 60, ha="right",
                  fontsize=7 if len(layers) <= STACK_LAYERS else 5)
    ax.set_ylim(0.0, 1.05)
    ax.set_title(cell.title, fontsize=7)


def _training_panel(ax: Any, cell: Cell) -> None:
    for j, (name, points) in enumerate(history_table(cell.runs).items()):
        style = {"color": "black", "ls": "--"} if name == "dominated" else {"color": f"C{j % 10}", "ls": "-"}
        xs = [x for x, _ in points]
        ax.plot(xs, [iv.estimate for _, iv in points], label="dominated fraction" if name == "dominated" else f"rAU {name}",
                **style)
        lo = [iv.lo if iv.finite else iv.estimate for _, iv in points]
        hi = [iv.hi if iv.finite else iv.estimate for _, iv in points]
        ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_title(cell.title, fontsize=7)


def _draw(found: list[Cell], path: Path, panel: Any, size: tuple[float, float], ylabel: str, title: str,
          stack: bool = False) -> Path:
    fig, axes = _grid(found, *size, stack=stack)
    for i, cell in enumerate(found):
        panel(axes[i], cell)
    first = axes[0]
    first.set_ylabel(ylabel, fontsize=8)
    first.legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    return path


def au_figures(report: Any, out: Path) -> list[Path]:
    """``au_layers.png`` and ``au_training.png`` when runs have per-layer AU statistics; the files written."""
    found = cells(report)
    if not found:
        return []
    n = max(len(layer_table(c.runs)) for c in found)
    stack = n > STACK_LAYERS  # a deep encoder: one wide panel per cell, one below the other
    files = [_draw(found, out / "au_layers.png", _layer_panel, (min(1.5 + 0.4 * n, 16.0) if stack else 0.9 + 0.9 * n, 2.8),
                   "mean rAU / dominated fraction", "rAU per shared layer (mean, 95 % t interval over seeds)", stack)]
    if any(au_of(r).get("history") for c in found for r in c.runs):
        files.append(_draw(found, out / "au_training.png", _training_panel, (3.6, 2.6), "mean rAU (all shared) / dominated",
                           "rAU over training (mean, 95 % band over seeds)"))
    return files
