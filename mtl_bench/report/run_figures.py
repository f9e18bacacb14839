"""Figures of one run, drawn at its end from the data its diagnostics declare (:class:`~mtl_bench.diagnostics.base.
FigureSpec`): the one place where a run's figures are plotted.  A renderer is ``fn(data, path)``; register new ones
in :data:`RENDERERS` (or name ``"module:function"`` in a spec for a renderer outside mtl_bench).

* ``rau_heatmap`` (AU diagnostic): layers × tasks heatmap of the mean rAU, with the dominated fraction per layer;
* ``conflict_epochs`` / ``conflict_layers`` (conflict probe): inter-task vs inter-sample pair statistics over the
  epochs (mean and 2.5–97.5 % band) and per shared layer (last epoch).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mtl_bench.diagnostics.base import FigureSpec

CONFLICT_PREFIX = "conflict"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def rau_heatmap(data: Mapping[str, Any], path: Path) -> Path:
    stats, task_names = data["stats"], list(data["task_names"])
    layers = list(stats)
    matrix = [[stats[n]["mean_rau"][t] for t in task_names] for n in layers]
    fig, ax = _pyplot().subplots(figsize=(4.5 + 0.8 * len(task_names), 1.6 + 0.35 * len(layers)))
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(task_names)), task_names, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [f"{n}  (dom {stats[n]['dominated']:.2f})" for n in layers], fontsize=7)
    ax.set_title(f"mean rAU per shared layer ({data['kind']})", fontsize=10)
    fig.colorbar(im, ax=ax, label="mean rAU")
    return _save(fig, path, 120)


CONFLICT_ROWS = [("cos", "cosine similarity"), ("mag_sim", "magnitude similarity"), ("sign_conflict", "opposite-sign fraction")]
CONFLICT_COLUMNS = [("", "per-sample gradients"), ("_averaged", "averaged gradients (App. A5)")]
PAIR_COLORS = {"inter_task": "tab:red", "inter_sample": "tab:blue"}


def _epoch_band(ax: Any, history: Sequence[Mapping[str, Any]], metric: str, suffix: str) -> None:
    for base, color in PAIR_COLORS.items():
        key = f"{CONFLICT_PREFIX}/{base + suffix}/{metric}/all/"
        rows = [(h["epoch"], h["record"][key + "p2.5"], h["record"][key + "mean"], h["record"][key + "p97.5"])
                for h in history if key + "mean" in h["record"]]
        if not rows:
            continue
        e, lo, mean, hi = (np.array(col, dtype=float) for col in zip(*rows))
        ax.plot(e, mean, marker="o", ms=3, color=color, label=f"{base.replace('_', '-')}: mean, 2.5–97.5 %")
        ax.fill_between(e, lo, hi, color=color, alpha=0.2)


def conflict_epochs(data: Mapping[str, Any], path: Path) -> Path:
    fig, axes = _pyplot().subplots(len(CONFLICT_ROWS), len(CONFLICT_COLUMNS), figsize=(10, 8.5), sharex=True, squeeze=False)
    for r, (metric, label) in enumerate(CONFLICT_ROWS):
        for c, (suffix, title) in enumerate(CONFLICT_COLUMNS):
            ax = axes[r][c]
            _epoch_band(ax, data["history"], metric, suffix)
            if metric == "cos":
                ax.axhline(0.0, color="0.5", lw=0.8)
            if r == 0:
                ax.set_title(title, fontsize=10)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7, loc="best")
            if c == 0:
                ax.set_ylabel(label)
            if r == len(CONFLICT_ROWS) - 1:
                ax.set_xlabel("epoch")
    fig.suptitle(f"gradient conflicts: tasks vs samples (every {data['every']} steps, bn_mode={data['bn_mode']})", fontsize=11)
    return _save(fig, path, 110)


def conflict_layers(data: Mapping[str, Any], path: Path) -> Path:
    last = data["history"][-1]
    record, layers = last["record"], list(data["layers"])
    fig, axes = _pyplot().subplots(1, 2, figsize=(11, 1.8 + 0.3 * len(layers)), sharey=True, squeeze=False)
    y = np.arange(len(layers))
    for ax, metric in zip(axes[0], ("cos", "mag_sim")):
        for off, (ptype, color) in zip((-0.2, 0.2), PAIR_COLORS.items()):
            vals = [record.get(f"{CONFLICT_PREFIX}/{ptype}/{metric}/{layer}/mean", math.nan) for layer in layers]
            if all(v is None or math.isnan(v) for v in vals):
                continue
            ax.barh(y + off, [math.nan if v is None else v for v in vals], height=0.4, color=color, label=ptype.replace("_", "-"))
        ax.axvline(0.0, color="0.5", lw=0.8)
        ax.set_title(f"mean {metric} per shared layer (epoch {last['epoch']})", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0][0].set_yticks(y, layers, fontsize=7)
    axes[0][0].invert_yaxis()
    return _save(fig, path, 110)


RENDERERS: dict[str, Callable[[Mapping[str, Any], Path], Path]] = {
    "rau_heatmap": rau_heatmap, "conflict_epochs": conflict_epochs, "conflict_layers": conflict_layers,
}


def renderer(name: str) -> Callable[[Mapping[str, Any], Path], Path]:
    if name in RENDERERS:
        return RENDERERS[name]
    module, _, fn = name.partition(":")
    if not fn:
        raise KeyError(f"unknown figure renderer '{name}'; registered: {sorted(RENDERERS)} (or 'module:function')")
    return getattr(importlib.import_module(module), fn)


def render(specs: Sequence[FigureSpec], output_dir: str | Path) -> dict[str, Path]:
    """Draw every spec into ``output_dir``; ``{name: path}``."""
    out = Path(output_dir)
    if specs:
        out.mkdir(parents=True, exist_ok=True)
    return {spec.name: renderer(spec.renderer)(spec.data, out / spec.file) for spec in specs}
