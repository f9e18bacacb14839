"""The claim interface: a spec from the study's config, evaluated on a report's runs into a :class:`Verdict`.

A study preset lists its claims under ``study.claims.<id>`` (a mapping, so a derived preset can override one
claim); every claim has

* ``kind`` — which effect it computes (the registry in :mod:`mtl_bench.report.claims`: ``difference``, ``spread``,
  ``invariance``);
* ``text`` — the claim in words, ``source`` — the paper and section it comes from;
* ``quantity`` and ``split`` (default ``test``) — see :mod:`~mtl_bench.report.claims.quantities`;
* ``expect`` (``greater`` | ``less`` | ``equal``) and ``margin`` (default 0) — the verdict rule of
  :func:`~mtl_bench.report.claims.stats.decide`;
* the kind's own fields (sides ``a``/``b``, axes, reference levels).

Evaluation never raises for missing data: a claim whose runs are absent gets the verdict ``inconclusive`` with the
reason; a malformed spec is a :class:`~mtl_bench.report.runs.ReportError` (one line, naming the claim and field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from mtl_bench.report.claims.quantities import Context
from mtl_bench.report.claims.stats import EXPECTATIONS, Interval, decide
from mtl_bench.report.runs import ReportError

COMMON_FIELDS = ("kind", "text", "source", "quantity", "split", "expect", "margin", "select_on", "select_mode", "note")


@dataclass
class Verdict:
    """One row of the verdict table."""

    claim_id: str
    text: str
    source: str
    effect: str  # what the number is, e.g. "Δm(a) − Δm(b)"
    interval: Interval
    expect: str
    margin: float
    verdict: str
    per_seed: dict[Any, float] = field(default_factory=dict)  # the values the interval is built from
    details: list[str] = field(default_factory=list)  # tuning choices, runs left out, ...
    table: list[dict[str, Any]] = field(default_factory=list)  # extra rows (e.g. movement per method and level)

    def expectation(self) -> str:
        sign = {"greater": ">", "less": "<", "equal": "≈"}[self.expect]
        if self.expect == "equal":
            return f"|effect| ≤ {self.margin:g}"
        return f"effect {sign} {'−' if self.expect == 'less' and self.margin else ''}{self.margin:g}"


@dataclass
class Claim:
    """Fields every kind shares; subclasses add theirs and implement :meth:`evaluate_effect`."""

    kind: ClassVar[str] = ""
    extra_fields: ClassVar[tuple[str, ...]] = ()

    claim_id: str
    text: str
    source: str
    quantity: str
    split: str
    expect: str
    margin: float
    select_on: str | None
    select_mode: str | None
    spec: Mapping[str, Any]

    @classmethod
    def from_spec(cls, claim_id: str, spec: Mapping[str, Any]) -> "Claim":
        unknown = set(spec) - set(COMMON_FIELDS) - set(cls.extra_fields)
        if unknown:
            raise ReportError(f"claim '{claim_id}' ({cls.kind}): unknown field(s) {sorted(unknown)}; valid: "
                              f"{sorted({*COMMON_FIELDS, *cls.extra_fields})}")
        expect = str(spec.get("expect", "greater"))
        if expect not in EXPECTATIONS:
            raise ReportError(f"claim '{claim_id}': expect must be one of {list(EXPECTATIONS)}, got '{expect}'")
        margin = float(spec.get("margin", 0.0))
        if not (math.isfinite(margin) and margin >= 0):
            raise ReportError(f"claim '{claim_id}': margin must be a number >= 0, got {spec.get('margin')!r}")
        if "quantity" not in spec:
            raise ReportError(f"claim '{claim_id}': 'quantity' is required (e.g. delta_m or t0/mse)")
        split = str(spec.get("split", "test"))
        if split not in ("test", "val"):
            raise ReportError(f"claim '{claim_id}': split must be test or val, got '{split}'")
        claim = cls(claim_id, str(spec.get("text", claim_id)), str(spec.get("source", "")), str(spec["quantity"]),
                    split, expect, margin, spec.get("select_on"), spec.get("select_mode"), spec)
        claim.parse_fields()
        return claim

    def parse_fields(self) -> None:
        """Read and check the kind's own fields (``self.spec``); raise ReportError naming the claim and field."""

    def spec_field(self, name: str, default: Any = ...) -> Any:
        if name not in self.spec:
            if default is ...:
                raise ReportError(f"claim '{self.claim_id}' ({self.kind}): field '{name}' is required")
            return default
        return self.spec[name]

    def evaluate(self, ctx: Context) -> Verdict:
        notes: list[str] = []
        effect, interval, values, table = self.evaluate_effect(ctx, notes)
        verdict = decide(interval, self.expect, self.margin)
        if not interval.finite:
            notes.insert(0, f"no interval: {interval.n} seed(s) with values" if interval.n < 2 else "no interval")
        return Verdict(self.claim_id, self.text, self.source, effect, interval, self.expect, self.margin, verdict,
                       values, notes, table)

    def evaluate_effect(self, ctx: Context, notes: list[str]) -> tuple[str, Interval, dict[Any, float], list[dict[str, Any]]]:
        """``(effect label, interval, per-seed values, extra table rows)``; append reasons and choices to ``notes``."""
        raise NotImplementedError
