"""``kind: invariance`` — how far does a method's result move when the losses are transformed or rescaled?

DiBS-MTL's claim (invariance to monotone transforms of the task losses) and Elich et al.'s (Adam is partially
invariant to loss scales) as a number.  ``axis`` is the config key that applies the transformation (e.g.
``loss_transforms`` or ``loss_scale``), ``reference`` its untransformed value (e.g. ``none`` or ``1``).  For the
runs of side ``a`` and one seed,

    movement = mean over the other levels v of |q(v) − q(reference)| / |q(reference)|     (relative: true, default)

(without the division for ``relative: false``).  The effect is ``movement(a)`` — with ``expect: equal`` and a
``margin`` "moves by at most margin" — or, with a side ``b``, ``movement(a) − movement(b)`` paired over seeds
("a moves less than b": ``expect: less``).  The extra table rows (``by``: a config key, e.g. ``combiner``) give
the movement of every value of that key at every level: the study's invariance measure per method.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mtl_bench.report.claims.base import Claim
from mtl_bench.report.claims.difference import compare
from mtl_bench.report.claims.quantities import Context, SideSpec, per_seed, side_runs
from mtl_bench.report.claims.stats import t_interval
from mtl_bench.report.grouping import canonical, lookup


class Invariance(Claim):
    kind = "invariance"
    extra_fields = ("axis", "reference", "a", "b", "by", "relative")

    def parse_fields(self) -> None:
        self.axis = str(self.spec_field("axis"))
        self.reference = canonical(self.spec_field("reference"))
        self.a = SideSpec.parse(self.spec_field("a"), f"claim '{self.claim_id}'.a")
        b = self.spec_field("b", None)
        self.b = None if b is None else SideSpec.parse(b, f"claim '{self.claim_id}'.b")
        self.by = self.spec_field("by", None)
        self.relative = bool(self.spec_field("relative", True))

    def movements(self, ctx: Context, runs: list, what: str, notes: list[str]) -> dict[str, dict[Any, float]]:
        """``{level: {seed: |q(level) − q(ref)| (/|q(ref)|)}}`` over the non-reference levels."""
        levels: dict[str | None, list] = {}
        for run in runs:
            levels.setdefault(lookup(run, self.axis), []).append(run)
        if self.reference not in levels:
            notes.append(f"{what}: no run at the reference {self.axis}={self.reference}")
            return {}
        ref = per_seed(ctx, levels.pop(self.reference), self.quantity, self.split, f"{what} (reference)", notes)
        out: dict[str, dict[Any, float]] = {}
        for level, members in sorted(levels.items(), key=lambda kv: str(kv[0])):
            vals = per_seed(ctx, members, self.quantity, self.split, f"{what} ({self.axis}={level})", notes)
            out[str(level)] = {s: abs(v - ref[s]) / (abs(ref[s]) if self.relative else 1.0)
                               for s, v in vals.items() if s in ref and (ref[s] != 0 or not self.relative)}
        return out

    def side_movement(self, ctx: Context, side: SideSpec, what: str, notes: list[str]) -> dict[Any, float]:
        per_level = self.movements(ctx, side_runs(ctx, side), what, notes)
        seeds = set.intersection(*(set(v) for v in per_level.values())) if per_level else set()
        return {s: statistics.fmean(v[s] for v in per_level.values()) for s in seeds}

    def table(self, ctx: Context) -> list[dict[str, Any]]:
        if not self.by:
            return []
        runs = side_runs(ctx, SideSpec({}))
        rows = []
        for value in sorted({lookup(r, self.by) for r in runs}, key=str):
            scratch: list[str] = []
            for level, vals in self.movements(ctx, [r for r in runs if lookup(r, self.by) == value], "", scratch).items():
                v = list(vals.values())
                rows.append({self.by: value, self.axis: level, "mean": statistics.fmean(v) if v else math.nan,
                             "std": statistics.stdev(v) if len(v) > 1 else math.nan, "n": len(v)})
        return rows

    def evaluate_effect(self, ctx: Context, notes: list[str]):
        kind = "relative" if self.relative else "absolute"
        a = self.side_movement(ctx, self.a, "a", notes)
        if self.b is None:
            label = f"{kind} movement of {self.quantity}[a] over {self.axis} ≠ {self.reference}"
            return label, t_interval(list(a.values()), method="one-sample t"), a, self.table(ctx)
        b = self.side_movement(ctx, self.b, "b", notes)
        interval, diffs = compare(a, b, True, notes)
        label = f"{kind} movement of {self.quantity}[a] − [b] over {self.axis} ≠ {self.reference}"
        return label, interval, diffs, self.table(ctx)
