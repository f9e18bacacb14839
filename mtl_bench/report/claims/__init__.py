"""Verdicts: the claims a study tests, evaluated on its runs (effect, 95 % interval over seeds, verdict).

A study preset declares its claims under ``study.claims`` (see :mod:`~mtl_bench.report.claims.base` for the
fields, the kinds' modules for theirs); every run records its resolved config, so the report reads the claims from
the runs (or from ``--claims FILE.yaml``) and evaluates them — the verdict is computed from the runs, never written.
The kinds are registered in :data:`CLAIM_KINDS` (one module each); a new kind is one module plus one entry, and
``tests/test_claims.py`` checks every registered kind's shared properties.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mtl_bench.report.claims.base import Claim, Verdict
from mtl_bench.report.claims.difference import Difference
from mtl_bench.report.claims.invariance import Invariance
from mtl_bench.report.claims.invariance_failures import InvarianceWithFailures
from mtl_bench.report.claims.pooled import PooledDifference
from mtl_bench.report.claims.quantities import Context
from mtl_bench.report.claims.spread import Spread
from mtl_bench.report.grouping import canonical
from mtl_bench.report.runs import ReportError, Run

CLAIM_KINDS: dict[str, type[Claim]] = {k.kind: k for k in (Difference, PooledDifference, Spread, Invariance,
                                                             InvarianceWithFailures)}

__all__ = ["CLAIM_KINDS", "Claim", "Verdict", "parse_claims", "study_claims", "claims_file", "evaluate_claims"]


def parse_claims(specs: Mapping[str, Any]) -> list[Claim]:
    """Claims from ``{id: spec}`` (the ``study.claims`` mapping); a spec set to null is skipped (a derived preset
    can drop an inherited claim with ``study.claims.<id>: null``)."""
    if not isinstance(specs, Mapping):
        raise ReportError("study.claims must map claim ids to claim specs")
    claims = []
    for claim_id, spec in specs.items():
        if spec is None:
            continue
        if not isinstance(spec, Mapping):
            raise ReportError(f"claim '{claim_id}' must be a mapping with a 'kind'")
        kind = spec.get("kind")
        if kind not in CLAIM_KINDS:
            raise ReportError(f"claim '{claim_id}': kind '{kind}' is unknown; valid kinds: {sorted(CLAIM_KINDS)}")
        claims.append(CLAIM_KINDS[kind].from_spec(str(claim_id), spec))
    return claims


def study_claims(runs: Sequence[Run], notes: list[str], section: str = "claims") -> dict[str, Any]:
    """The ``study.<section>`` mapping the runs recorded (the most common one, with a note when runs disagree)."""
    seen: dict[str, tuple[dict[str, Any], int]] = {}
    for run in runs:
        study = run.config().get("study")
        claims = study.get(section) if isinstance(study, dict) else None
        if isinstance(claims, dict) and claims:
            key = canonical(claims)
            seen[key] = (claims, seen.get(key, (claims, 0))[1] + 1)
    if not seen:
        return {}
    ranked = sorted(seen.values(), key=lambda cv: -cv[1])
    if len(ranked) > 1:
        notes.append(f"the runs record {len(ranked)} different study.{section} sets; the most common one "
                     f"({ranked[0][1]} runs) is evaluated")
    return ranked[0][0]


def claims_file(path: Path) -> dict[str, Any]:
    """``{id: spec}`` from a YAML file holding either that mapping or ``study: {claims: ...}``."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"--claims {path}: {e}".splitlines()[0]) from None
    if isinstance(data, dict) and isinstance(data.get("study"), dict):
        data = data["study"].get("claims")
    if isinstance(data, dict) and isinstance(data.get("claims"), dict):
        data = data["claims"]
    if not isinstance(data, dict):
        raise ReportError(f"--claims {path}: expected a mapping of claim ids to specs (or study.claims)")
    return data


def evaluate_claims(report: Any, specs: Mapping[str, Any]) -> list[Verdict]:
    """Every claim of ``specs`` evaluated on ``report``'s runs."""
    ctx = Context(report)
    return [claim.evaluate(ctx) for claim in parse_claims(specs)]
