"""Percentiles as jitterlab reports them: nearest rank, with distribution-free intervals.

Nearest rank: the p-th percentile of n values is the ceil(p/100 * n)-th smallest (p = 0:
the smallest), always a value that was observed. Its 95% confidence interval comes from
binomial order statistics: [x_(l), x_(u)] covers the true quantile with probability >=
95% whatever the distribution, or is open (None) where n is too small to say.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

PERCENTILES: dict[str, float] = {"p50": 50, "p90": 90, "p99": 99, "p999": 99.9}
"""Every percentile jitterlab reports of a latency (key prefix -> p)."""


def nearest_rank(values: Any, p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 <= p <= 100) of ``values``."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"p must be in [0, 100], got {p!r}")
    k = max(1, math.ceil(p / 100 * x.size - 1e-9))  # -1e-9: 99/100*100 must not become 100
    return float(x[k - 1])


def quantile_interval(values: Any, p: float, level: float = 0.95
                      ) -> tuple[float | None, float | None]:
    """Distribution-free ``level`` interval for the ``p``-th percentile: order statistics
    x_(l) <= x_(u) with P(x_(l) <= q_p <= x_(u)) >= level. An end is None when even the
    extreme order statistic does not reach the required coverage on that side."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, q = x.size, p / 100
    if n == 0:
        raise ValueError("interval of no values")
    tail = (1 - level) / 2
    # #{x_i <= q_p} ~ Binomial(n, q): x_(l) <= q_p iff at least l values are <= q_p.
    l = int(stats.binom.ppf(tail, n, q))          # P(B <= l-1) <= tail
    u = int(stats.binom.ppf(1 - tail, n, q)) + 1  # P(B <= u-1) >= 1 - tail
    while l >= 1 and stats.binom.cdf(l - 1, n, q) > tail:
        l -= 1
    lo = float(x[l - 1]) if l >= 1 else None
    hi = float(x[u - 1]) if u <= n else None
    return lo, hi
