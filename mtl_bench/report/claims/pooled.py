"""``kind: pooled_difference`` — a ``difference`` whose sides may hold several runs per seed, averaged per seed.

Elich et al. ("Examining Common Paradigms in Multi-Task Learning", GCPR 2024, §4) compare gradient pairs between
tasks (one MTL network) with pairs between samples *pooled over the tasks*.  Its single-task analogue is one STL run
per task and seed, so the STL side of such a claim matches K runs per seed, which ``difference`` refuses (it needs one
run per seed and side).  Here a side's value for a seed is the **mean over its runs with that seed** (equal weight per
run, e.g. per STL task), after which the effect, the pairing by seed and the interval are ``difference``'s
(:func:`~mtl_bench.report.claims.difference.compare`).  A side matching one run per seed gives exactly
``difference``'s result.

Fields: ``a``, ``b`` (``where``, optionally their own ``quantity``/``split``; ``b`` may be a number), ``paired``.
``tune`` is refused: choose one configuration per side with ``where``.  Seeds where a side has fewer runs than it
has for other seeds are named in the notes (a missing task would change what the mean is over).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from mtl_bench.report.claims.difference import Difference, compare
from mtl_bench.report.claims.quantities import Context, SideSpec, order_seeds, side_runs
from mtl_bench.report.runs import ReportError


def pooled_values(ctx: Context, side: SideSpec, quantity: str, split: str, what: str,
                  notes: list[str]) -> dict[Any, float]:
    """``{seed: mean over the side's runs with that seed}`` of the finite values; runs without one are named."""
    groups: dict[Any, list[float]] = {}
    runs = side_runs(ctx, side)
    if not runs:
        notes.append(f"{what} ({side.describe()}): no completed run matches")
    for run in runs:
        value = ctx.value(run, quantity, split)
        if not math.isfinite(value):
            notes.append(f"{what}: {run.name} has no finite {quantity} ({split}); left out")
            continue
        groups.setdefault(run.seed, []).append(value)
    sizes = Counter(len(v) for v in groups.values())
    if len(sizes) > 1:
        usual = sizes.most_common(1)[0][0]
        odd = [s for s in order_seeds(groups) if len(groups[s]) != usual]
        notes.append(f"{what}: seeds {odd} pool a different number of runs than the others ({usual})")
    if groups:
        notes.append(f"{what}: {max(sizes)} run(s) pooled per seed")
    return {s: math.fsum(groups[s]) / len(groups[s]) for s in order_seeds(groups)}


class PooledDifference(Difference):
    kind = "pooled_difference"

    def parse_fields(self) -> None:
        super().parse_fields()
        for name, side in (("a", self.a), ("b", self.b)):
            if side.tune:
                raise ReportError(f"claim '{self.claim_id}' (pooled_difference).{name}: 'tune' is not supported; "
                                  "select one configuration with 'where'")

    def evaluate_effect(self, ctx: Context, notes: list[str]):
        a = pooled_values(ctx, self.a, self.a.quantity or self.quantity, self.a.split or self.split, "a", notes)
        b: dict[Any, float] | float
        if self.b.value is not None:
            b = self.b.value
        else:
            b = pooled_values(ctx, self.b, self.b.quantity or self.quantity, self.b.split or self.split, "b", notes)
        interval, diffs = compare(a, b, self.paired, notes)
        qa, qb = self.a.quantity or self.quantity, self.b.quantity or self.quantity
        label = f"{qa}[a] − " + (f"{qb}[b]" if self.b.value is None else self.b.describe()) + " (per-seed means of each side)"
        return label, interval, diffs, []
