"""Pareto dominance between runs, direction-aware.

Definitions (``higher_is_better[i]`` gives the direction of metric ``i``; "at least as good" means ``≥`` for a
higher-is-better metric and ``≤`` otherwise):

* **dominates** — run *a* dominates run *b* (``a ≻ b``) iff *a* is at least as good as *b* on **every** metric and
  strictly better on **at least one**.  Identical points (ties on every metric) do not dominate each other, and no
  run dominates itself.
* **Pareto-optimal** — a run is Pareto-optimal in a pool iff no run of the pool dominates it.  All tied copies of a
  non-dominated point are therefore Pareto-optimal.
* **Against a reference set R** (Elich et al., Table 2 style), for each run *g* of a group G:
  *not dominated by R* iff no r ∈ R dominates g; *dominates R* iff g dominates at least one r ∈ R.  The report
  counts both per group (``x / n``).  A run of R compared with R itself is never dominated by itself.

Points with a non-finite coordinate are not comparable: the callers leave such runs out of the pool and report
them as n/a.
"""

from __future__ import annotations

from typing import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point, higher_is_better: Sequence[bool]) -> bool:
    """``a ≻ b``: at least as good on every metric and strictly better on one (see the module docstring)."""
    if not (len(a) == len(b) == len(higher_is_better)):
        raise ValueError(f"dominates: lengths differ ({len(a)}, {len(b)}, {len(higher_is_better)})")
    strictly = False
    for x, y, hib in zip(a, b, higher_is_better):
        if hib:
            x, y = -x, -y  # compare as lower-is-better
        if x > y:
            return False
        if x < y:
            strictly = True
    return strictly


def pareto_optimal(points: Sequence[Point], higher_is_better: Sequence[bool]) -> list[bool]:
    """For each point: is it dominated by no point of ``points``?  (O(n²), fine for sweep sizes.)"""
    return [not any(dominates(q, p, higher_is_better) for q in points) for p in points]


def against_reference(group: Sequence[Point], reference: Sequence[Point], higher_is_better: Sequence[bool]) -> tuple[int, int]:
    """``(not_dominated, dominating)``: how many points of ``group`` no reference point dominates, and how many
    dominate at least one reference point."""
    not_dominated = sum(1 for g in group if not any(dominates(r, g, higher_is_better) for r in reference))
    dominating = sum(1 for g in group if any(dominates(g, r, higher_is_better) for r in reference))
    return not_dominated, dominating
