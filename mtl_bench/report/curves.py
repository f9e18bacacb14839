"""Study curves: a quantity against a numeric config key, one line per method, mean and 95 % interval over seeds.

A study preset declares ``study.curves.<id>`` with

* ``x`` — a numeric config key (e.g. ``combiner.weights.aux`` for ForkMerge's λ-sweep, ``loss_transforms.t1.factor``
  for a loss-scale study), ``log_x`` for a log axis;
* ``y`` — a claim quantity (:mod:`~mtl_bench.report.claims.quantities`), ``split`` (default ``test``);
* ``by`` — an optional config key: one line per value (e.g. ``optimizer``); ``where`` — which runs (key → value(s));
* ``reference`` — optional ``{where: {...}}``: runs drawn as a horizontal band (e.g. the STL runs), mean ± 95 % CI;
* ``title``.

Each point is the mean over seeds with its Student-t 95 % interval (:func:`~mtl_bench.report.claims.stats.t_interval`).
The report draws ``curve_<id>.png`` and a Markdown table with the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mtl_bench.report.claims.quantities import Context, SideSpec, per_seed, side_runs
from mtl_bench.report.claims.stats import Interval, t_interval
from mtl_bench.report.grouping import lookup
from mtl_bench.report.runs import ReportError

CURVE_FIELDS = ("x", "y", "split", "by", "where", "reference", "log_x", "title")


@dataclass
class Curve:
    curve_id: str
    title: str
    x: str
    y: str
    split: str
    log_x: bool
    lines: dict[str, list[tuple[float, Interval]]] = field(default_factory=dict)  # line label -> [(x, interval)]
    reference: Interval | None = None
    notes: list[str] = field(default_factory=list)


def _x_value(run: Any, key: str) -> float:
    value = lookup(run, key)
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan


def build_curve(ctx: Context, curve_id: str, spec: Mapping[str, Any]) -> Curve:
    unknown = set(spec) - set(CURVE_FIELDS)
    if unknown or "x" not in spec or "y" not in spec:
        raise ReportError(f"curve '{curve_id}': needs x and y; unknown field(s) {sorted(unknown)}; valid: {list(CURVE_FIELDS)}")
    curve = Curve(curve_id, str(spec.get("title", curve_id)), str(spec["x"]), str(spec["y"]), str(spec.get("split", "test")),
                  bool(spec.get("log_x", False)))
    runs = side_runs(ctx, SideSpec.parse({"where": spec.get("where") or {}}, f"curve '{curve_id}'"))
    by = spec.get("by")
    lines: dict[str, dict[float, list]] = {}
    for run in runs:
        x = _x_value(run, curve.x)
        if math.isfinite(x):
            label = f"{by}={lookup(run, str(by))}" if by else curve.y
            lines.setdefault(label, {}).setdefault(x, []).append(run)
    for label, points in sorted(lines.items()):
        curve.lines[label] = [(x, t_interval(list(per_seed(ctx, members, curve.y, curve.split, f"{label} at {x:g}",
                                                              curve.notes).values()), method="t"))
                              for x, members in sorted(points.items())]
    if spec.get("reference"):
        ref_runs = side_runs(ctx, SideSpec.parse(spec["reference"], f"curve '{curve_id}'.reference"))
        curve.reference = t_interval(list(per_seed(ctx, ref_runs, curve.y, curve.split, "reference", curve.notes).values()),
                                     method="t")
    if not curve.lines:
        curve.notes.append(f"no completed run has a numeric {curve.x}")
    return curve


def build_curves(report: Any, specs: Mapping[str, Any]) -> list[Curve]:
    ctx = Context(report)
    return [build_curve(ctx, str(cid), spec) for cid, spec in specs.items() if spec is not None]


def _fmt(iv: Interval) -> str:
    if not iv.finite:
        return f"{iv.estimate:.4g} (n={iv.n})"
    return f"{iv.estimate:.4g} [{iv.lo:.4g}, {iv.hi:.4g}] (n={iv.n})"


def curve_markdown(curves: list[Curve]) -> list[str]:
    out: list[str] = []
    for c in curves:
        out += [f"## Curve {c.curve_id}: {c.title}", "", f"{c.split} {c.y} against {c.x}: mean [95 % CI] over seeds.", "",
                f"| line | {c.x} | {c.y} |", "|---|---|---|"]
        out += [f"| {label} | {x:g} | {_fmt(iv)} |" for label, pts in c.lines.items() for x, iv in pts]
        if c.reference is not None:
            out.append(f"| reference | - | {_fmt(c.reference)} |")
        out += [*(f"- {n}" for n in c.notes), ""]
    return out


def plot_curve(curve: Curve, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for j, (label, pts) in enumerate(curve.lines.items()):
        xs = [x for x, _ in pts]
        means = [iv.estimate for _, iv in pts]
        ax.plot(xs, means, "o-", color=f"C{j % 10}", label=label)
        lo = [iv.lo if iv.finite else iv.estimate for _, iv in pts]
        hi = [iv.hi if iv.finite else iv.estimate for _, iv in pts]
        ax.fill_between(xs, lo, hi, color=f"C{j % 10}", alpha=0.15)
    ref = curve.reference
    if ref is not None and math.isfinite(ref.estimate):
        ax.axhline(ref.estimate, color="black", ls="--", lw=1, label="reference")
        if ref.finite:
            ax.axhspan(ref.lo, ref.hi, color="black", alpha=0.08)
    if curve.log_x and all(x > 0 for pts in curve.lines.values() for x, _ in pts):
        ax.set_xscale("log")
    ax.set_xlabel(curve.x)
    ax.set_ylabel(f"{curve.split}/{curve.y}")
    ax.set_title(f"{curve.title} (mean, 95 % CI over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"curve_{curve.curve_id}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
