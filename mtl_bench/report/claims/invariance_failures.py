"""``kind: invariance_with_failures`` — :mod:`~mtl_bench.report.claims.invariance`, counting the runs that broke down.

A loss transform can make a method diverge: with SGD, scaling one task's loss by c multiplies that task's learning
rate by c (Elich et al., "Examining Common Paradigms in Multi-Task Learning", GCPR 2024, Sec. 3.1), so a rate tuned
at c = 1 overflows at c = 100.  A run that diverged has no result, and the ``invariance`` kind, which reads completed
runs only, leaves it out: the levels where a method broke down drop out of its movement and it looks *more*
invariant than one that finished everywhere.  This kind scores such a run with ``failed_value``, a value of the
claim's quantity declared up front (``0`` for a task's ``r2``: the constant predictor, which flatters a diverged
model), and otherwise computes exactly what ``invariance`` computes (same fields, movement, interval and table).

Counted as broken down: runs whose ``summary.json`` says ``diverged`` (a NaN/inf loss stopped them) and completed runs
the report flagged as exploded (:mod:`mtl_bench.report.exploded`).  Other failures (a crash, a bad config) say
nothing about the method and stay left out.  The verdict's notes give the number of runs scored this way per side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mtl_bench.report.claims.invariance import Invariance
from mtl_bench.report.claims.quantities import Context, side_runs
from mtl_bench.report.runs import ReportError, Run


def broken_runs(report: Any) -> frozenset[str]:
    """Paths of the report's runs that diverged (status) or exploded (completed, flagged by the report)."""
    exploded = report.exploded
    return frozenset(str(r.path) for r in report.runs
                     if r.status == "diverged" or (r.completed and str(r.path) in exploded))


@dataclass
class FailureContext(Context):
    """The report's context in which the broken runs are present and take the value ``failed_value``."""

    failed_value: float = math.nan
    broken: frozenset[str] = field(default_factory=frozenset)

    def runs(self) -> list[Run]:
        return [*super().runs(), *(r for r in self.report.runs if str(r.path) in self.broken)]

    def value(self, run: Run, quantity: str, split: str = "test") -> float:
        if str(run.path) in self.broken:
            return self.failed_value
        return super().value(run, quantity, split)


class InvarianceWithFailures(Invariance):
    kind = "invariance_with_failures"
    extra_fields = (*Invariance.extra_fields, "failed_value")

    def parse_fields(self) -> None:
        super().parse_fields()
        value = self.spec_field("failed_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReportError(f"claim '{self.claim_id}' ({self.kind}): failed_value must be a finite number "
                              f"(the {self.quantity} a diverged run counts with), got {value!r}")
        self.failed_value = float(value)

    def evaluate_effect(self, ctx: Context, notes: list[str]):
        fctx = FailureContext(ctx.report, failed_value=self.failed_value, broken=broken_runs(ctx.report))
        for name, side in (("a", self.a), ("b", self.b)):
            n = sum(str(r.path) in fctx.broken for r in side_runs(fctx, side)) if side is not None else 0
            if n:
                notes.append(f"{name}: {n} run(s) diverged or exploded; scored {self.quantity} = {self.failed_value:g}")
        return super().evaluate_effect(fctx, notes)
