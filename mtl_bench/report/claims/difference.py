"""``kind: difference`` — is side ``a`` larger / smaller than side ``b`` (or a constant), or within a margin of it?

Effect: ``q(a) − q(b)`` where ``q`` is the claim's quantity (or each side's own ``quantity``), e.g. Adam's Δm minus
SGD's, the inter-task cosine of MTL runs minus the inter-sample cosine of STL runs, AdaTask's dominated fraction
minus Adam's.  ``b`` may be a number (``b: 0.5``) or omitted (0): a one-sample claim about ``a``.

Seeds: when both sides have values for at least two common seeds the effect is **paired** (one difference per
seed, paired t interval over the seeds both have; seeds only one side has are named and left out), otherwise the
sides are independent samples (Welch).  ``paired: false`` forces Welch.
"""

from __future__ import annotations

from typing import Any

from mtl_bench.report.claims.base import Claim
from mtl_bench.report.claims.quantities import Context, SideSpec, order_seeds, per_seed, side_runs, tune
from mtl_bench.report.claims.stats import Interval, t_interval, welch_interval


def describe_tuning(what: str, keys: list[str], tuned: Any, select_on: str) -> str:
    cands = ", ".join(f"{'/'.join(str(v) for v in c)}: {s:.4g} ({n} runs)" for c, (s, n) in tuned.scores.items())
    chosen = "/".join(str(v) for v in tuned.chosen) if tuned.chosen else "none (no validation values)"
    return f"{what}: {','.join(keys)} = {chosen} chosen on val {select_on} [{cands}]"


def side_values(claim: Claim, ctx: Context, side: SideSpec, what: str, notes: list[str]) -> dict[Any, float]:
    """``{seed: value}`` of one side after its ``where`` filter and validation tuning."""
    quantity = side.quantity or claim.quantity
    runs = side_runs(ctx, side)
    if not runs:
        notes.append(f"{what} ({side.describe()}): no completed run matches")
        return {}
    if side.tune:
        select_on = claim.select_on or quantity
        tuned = tune(ctx, runs, side.tune, select_on, claim.select_mode)
        notes.append(describe_tuning(what, side.tune, tuned, select_on))
        runs = tuned.runs
    return per_seed(ctx, runs, quantity, side.split or claim.split, what, notes)


def compare(a: dict[Any, float], b: dict[Any, float] | float, paired: bool,
            notes: list[str]) -> tuple[Interval, dict[Any, float]]:
    """The interval of ``a − b`` (paired by seed where possible) and the per-seed values it used."""
    if isinstance(b, float):
        diffs = {s: v - b for s, v in a.items()}
        return t_interval(list(diffs.values()), method="one-sample t"), diffs
    common = [s for s in order_seeds(a) if s in b]
    if paired and len(common) >= 2:
        only = order_seeds(set(a) ^ set(b))
        if only:
            notes.append(f"seeds {only} are on one side only: left out of the paired comparison")
        diffs = {s: a[s] - b[s] for s in common}
        return t_interval(list(diffs.values())), diffs
    if paired and a and b:
        notes.append("the sides share fewer than two seeds: compared as independent samples (Welch)")
    return welch_interval(list(a.values()), list(b.values())), {}


class Difference(Claim):
    kind = "difference"
    extra_fields = ("a", "b", "paired")

    def parse_fields(self) -> None:
        self.a = SideSpec.parse(self.spec_field("a"), f"claim '{self.claim_id}'.a")
        self.b = SideSpec.parse(self.spec_field("b", 0.0), f"claim '{self.claim_id}'.b")
        self.paired = bool(self.spec_field("paired", True))

    def evaluate_effect(self, ctx: Context, notes: list[str]):
        a = side_values(self, ctx, self.a, "a", notes)
        b: dict[Any, float] | float = self.b.value if self.b.value is not None else side_values(self, ctx, self.b, "b", notes)
        interval, diffs = compare(a, b, self.paired, notes)
        qa, qb = self.a.quantity or self.quantity, self.b.quantity or self.quantity
        label = f"{qa}[a] − {qb if self.b.value is None else self.b.describe()}" + ("[b]" if self.b.value is None else "")
        return label, interval, diffs, []
