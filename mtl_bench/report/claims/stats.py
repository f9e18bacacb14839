"""Intervals over seeds and the verdict rule shared by every claim kind.

**Intervals.**  A claim's effect is estimated from one value per seed (a paired design: every arm of a study runs
the same seeds) or, when the two sides do not share seeds, from two independent samples.  With 3–5 seeds a
percentile bootstrap has too few distinct resamples to be trusted, so the intervals are Student-t intervals:

* paired / one sample: ``mean ± t_{1−α/2, n−1} · s / √n`` (``s``: sample std, ddof = 1);
* two samples: Welch's interval, ``(ā − b̄) ± t_{1−α/2, ν} · √(s_a²/n_a + s_b²/n_b)`` with the
  Welch–Satterthwaite ``ν``.

Fewer than two values on a side give no interval (``lo = hi = NaN``) and the verdict ``inconclusive``.  Values that
are all equal give a zero-width interval: a deterministic effect (e.g. a method that is exactly invariant) is then
decided by its value alone.

**Verdict** (:func:`decide`), with the interval ``[lo, hi]`` and the claim's margin ``m ≥ 0``:

=========  ==========================  ==========================  ====================
expect     supported                   not supported               otherwise
=========  ==========================  ==========================  ====================
greater    lo > m                      hi ≤ m                      inconclusive
less       hi < −m                     lo ≥ −m                     inconclusive
equal      −m ≤ lo and hi ≤ m          lo > m or hi < −m           inconclusive
=========  ==========================  ==========================  ====================

``greater`` with ``m = 0`` reads "the effect is positive": supported when the whole interval is above 0, not
supported when the whole interval is at or below 0, inconclusive when it straddles 0.  ``equal`` is an equivalence
test (is the effect within ±m?), decided with the same 95 % interval (more conservative than TOST's 90 %).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _scipy_stats

EXPECTATIONS = ("greater", "less", "equal")
VERDICTS = ("supported", "not supported", "inconclusive")


@dataclass(frozen=True)
class Interval:
    """An effect estimate and its two-sided ``level`` interval; ``n`` seeds (pairs) or ``n_a``/``n_b`` samples."""

    estimate: float
    lo: float
    hi: float
    n: int
    method: str  # "paired t", "one-sample t", "Welch t", "none"
    level: float = 0.95

    @property
    def finite(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


def _t(level: float, df: float) -> float:
    return float(_scipy_stats.t.ppf(0.5 + level / 2, df))


def t_interval(values: Sequence[float], level: float = 0.95, method: str = "paired t") -> Interval:
    """Student-t interval of the mean of ``values`` (NaN bounds for fewer than two values)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none", level)
    mean = math.fsum(vals) / n
    if n < 2 or not all(math.isfinite(v) for v in vals):
        return Interval(mean, math.nan, math.nan, n, "none", level)
    half = _t(level, n - 1) * statistics.stdev(vals) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, method, level)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Welch's interval of ``mean(a) − mean(b)`` for independent samples (NaN bounds if a side has < 2 values)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    n = min(len(a), len(b))
    if not a or not b:
        return Interval(math.nan, math.nan, math.nan, n, "none", level)
    diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2 or not all(math.isfinite(v) for v in (*a, *b)):
        return Interval(diff, math.nan, math.nan, n, "none", level)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Interval(diff, diff, diff, n, "Welch t", level)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = _t(level, df) * se
    return Interval(diff, diff - half, diff + half, n, "Welch t", level)


def decide(interval: Interval, expect: str, margin: float = 0.0) -> str:
    """``supported`` / ``not supported`` / ``inconclusive`` by the table in the module docstring."""
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect must be one of {EXPECTATIONS}, got {expect!r}")
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be finite and >= 0, got {margin!r}")
    if not interval.finite:
        return "inconclusive"
    lo, hi, m = interval.lo, interval.hi, margin
    if expect == "greater":
        return "supported" if lo > m else "not supported" if hi <= m else "inconclusive"
    if expect == "less":
        return "supported" if hi < -m else "not supported" if lo >= -m else "inconclusive"
    if -m <= lo and hi <= m:
        return "supported"
    return "not supported" if lo > m or hi < -m else "inconclusive"
