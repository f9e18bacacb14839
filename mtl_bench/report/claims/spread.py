"""``kind: spread`` — does axis ``axes[0]`` move the quantity more than axis ``axes[1]``?

Elich et al.'s "the optimizer matters more than the weighting method" as a number: the runs matching ``where``
form a grid of cells (one value of each axis, e.g. optimizer × combiner); in each cell the ``tune`` keys (e.g.
``optimizer.lr``) are chosen on validation, separately per cell — every cell gets the same tuning budget.  For one
seed, with ``q(x, y)`` the cell values,

    spread₀ = mean over y of (max_x q(x, y) − min_x q(x, y))      (how far the first axis moves q)
    spread₁ = mean over x of (max_y q(x, y) − min_y q(x, y))

and the effect is ``spread₀ − spread₁`` (paired t interval over the seeds every cell has).  The verdict table's
extra rows give every cell's mean, std and tuned choice — for an optimizer × combiner grid tuned on
``optimizer.lr`` that is the "best learning rate per optimizer and method" table.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mtl_bench.report.claims.base import Claim
from mtl_bench.report.claims.difference import describe_tuning
from mtl_bench.report.claims.quantities import Context, SideSpec, order_seeds, per_seed, side_runs, tune
from mtl_bench.report.claims.stats import t_interval
from mtl_bench.report.grouping import lookup
from mtl_bench.report.runs import ReportError


def _range(values: list[float]) -> float:
    return max(values) - min(values)


class Spread(Claim):
    kind = "spread"
    extra_fields = ("axes", "where", "tune")

    def parse_fields(self) -> None:
        axes = self.spec_field("axes")
        if not isinstance(axes, (list, tuple)) or len(axes) != 2:
            raise ReportError(f"claim '{self.claim_id}' (spread): axes must be two config keys, e.g. [optimizer, combiner]")
        self.axes = [str(a) for a in axes]
        self.side = SideSpec.parse({"where": self.spec_field("where", {}), "tune": self.spec_field("tune", [])},
                                   f"claim '{self.claim_id}'")

    def cells(self, ctx: Context, notes: list[str]) -> tuple[dict[tuple[str | None, str | None], dict[Any, float]],
                                                           dict[tuple[str | None, str | None], str]]:
        """``({cell: {seed: value}}, {cell: chosen tuned value(s)})``."""
        runs = side_runs(ctx, self.side)
        grid: dict[tuple[str | None, str | None], list] = {}
        for run in runs:
            grid.setdefault((lookup(run, self.axes[0]), lookup(run, self.axes[1])), []).append(run)
        out, chosen = {}, {}
        for cell, members in sorted(grid.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
            what = f"{self.axes[0]}={cell[0]}, {self.axes[1]}={cell[1]}"
            if self.side.tune:
                select_on = self.select_on or self.quantity
                tuned = tune(ctx, members, self.side.tune, select_on, self.select_mode)
                notes.append(describe_tuning(what, self.side.tune, tuned, select_on))
                members = tuned.runs
                chosen[cell] = "/".join(str(v) for v in tuned.chosen) or "-"
            out[cell] = per_seed(ctx, members, self.quantity, self.split, what, notes)
        return out, chosen

    def evaluate_effect(self, ctx: Context, notes: list[str]):
        cells, chosen = self.cells(ctx, notes)
        xs = sorted({c[0] for c in cells}, key=str)
        ys = sorted({c[1] for c in cells}, key=str)
        label = f"spread over {self.axes[0]} − spread over {self.axes[1]} of {self.quantity}"
        tuned_key = f"{','.join(self.side.tune)} (val-chosen)"
        table = [{self.axes[0]: x, self.axes[1]: y, **({tuned_key: chosen.get((x, y), "-")} if self.side.tune else {}),
                  "mean": statistics.fmean(v.values()) if v else math.nan,
                  "std": statistics.stdev(v.values()) if len(v) > 1 else math.nan, "n": len(v)}
                 for (x, y), v in cells.items()]
        missing = [f"{x}/{y}" for x in xs for y in ys if not cells.get((x, y))]
        if missing or len(xs) < 2 or len(ys) < 2:
            notes.append(f"the grid needs >= 2 values on each axis and every cell; missing cells: {missing}")
            return label, t_interval([]), {}, table
        seeds = [s for s in order_seeds(s for v in cells.values() for s in v) if all(s in v for v in cells.values())]
        effects = {}
        for s in seeds:
            spread0 = statistics.fmean(_range([cells[(x, y)][s] for x in xs]) for y in ys)
            spread1 = statistics.fmean(_range([cells[(x, y)][s] for y in ys]) for x in xs)
            effects[s] = spread0 - spread1
        return label, t_interval(list(effects.values())), effects, table
