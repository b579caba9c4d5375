"""What the simulator reports for one (schedule, N): the step latency's mean and tails with
their Monte Carlo standard errors, and the scaling figures against N = 1.

Standard errors. Simulated steps are not independent when the schedule has temporal
structure or detours (time carries from one step to the next), so:

- the mean's SE is the batch-means SE over ``BATCHES`` consecutive batches (the plain iid
  SE when there are fewer than 2 * BATCHES steps);
- a percentile's SE is the distribution-free one from binomial order statistics (the
  order statistics k +- z sqrt(n p (1 - p)) around the nearest rank, halved, over z =
  1.96), times sqrt of the batch-means variance ratio of the mean (an effective sample
  size correction for dependence; 1 for iid steps, never below 1).

Scaling. With ``work(N)`` the useful work of one step at N relative to N = 1
(``useful_work``: 1 under strong scaling, where N ranks share one step's work, as
tensor-parallel decode does; N under weak scaling, where each rank's work is fixed, as in
a bulk-synchronous code), the speedup is S(N) = work(N) T(1) / T(N) and the efficiency
E(N) = S(N) / N. Strong scaling: S = T(1)/T(N) (ARCHITECTURE.md); weak scaling:
S = N T(1)/T(N) (scaled speedup). Both from the mean step and, as a tail view, from the
p99. Useful parallelism: the largest N with E(N) >= threshold over the N simulated; N_opt =
argmin over N of the p99 step latency (ARCHITECTURE.md; under weak scaling that is N = 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))
BATCHES = 20
_Z = 1.959963984540054


def batch_ratio(x: np.ndarray) -> tuple[float, float]:
    """(SE of the mean, variance inflation over iid) for the series ``x``."""
    n = x.size
    iid = float(np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    if n < 2 * BATCHES:
        return iid, 1.0
    size = n // BATCHES
    means = x[: size * BATCHES].reshape(BATCHES, size).mean(axis=1)
    se = float(np.std(means, ddof=1) / np.sqrt(BATCHES))
    ratio = (se / iid) ** 2 if iid > 0 else 1.0
    return max(se, iid), max(ratio, 1.0)


def quantile_se(sorted_x: np.ndarray, p: float, inflation: float) -> float | None:
    """SE of the nearest-rank p-quantile from the width of its binomial interval; None
    where the interval runs off either end of the sample (too few steps for that tail:
    about 4 / (1 - p) are needed), rather than a width that would be too small."""
    n = sorted_x.size
    half = _Z * np.sqrt(n * p * (1 - p))
    k = int(np.ceil(p * n)) - 1
    lo, hi = int(np.floor(k - half)), int(np.ceil(k + half))
    if n < 2 or lo < 0 or hi > n - 1:
        return None
    return float((sorted_x[hi] - sorted_x[lo]) / (2 * _Z) * np.sqrt(inflation))


def nearest_rank(sorted_x: np.ndarray, p: float) -> float:
    """The nearest-rank percentile (ARCHITECTURE.md's definition)."""
    k = max(int(np.ceil(p * sorted_x.size)) - 1, 0)
    return float(sorted_x[k])


def summarize(latency_s: np.ndarray) -> dict[str, float]:
    """mean, p50 .. p999 (µs) and their SEs, of one point's step latencies (seconds)."""
    x = np.asarray(latency_s, dtype=np.float64)
    se, inflation = batch_ratio(x)
    s = np.sort(x)
    out = {"steps": int(x.size), "mean_us": float(x.mean()) * 1e6, "mean_se_us": se * 1e6}
    for name, p in PERCENTILES:
        out[f"{name}_us"] = nearest_rank(s, p) * 1e6
        se_p = quantile_se(s, p, inflation)
        out[f"{name}_se_us"] = None if se_p is None else se_p * 1e6
    return out


def useful_work(share: Callable[[float], float]) -> Callable[[int], float]:
    """``work(N)`` from a workload's compute share (``Workload.compute_share``): a share
    that stays 1 (each rank's compute does not shrink with N) is weak scaling, work N;
    any other is strong scaling (the step's work split over N ranks), work 1."""
    weak = share(2) == share(1) == 1.0
    return (lambda n: float(n)) if weak else (lambda n: 1.0)


def scaling(rows: Sequence[dict[str, Any]], work: Callable[[int], float],
            threshold: float = 0.5) -> dict[str, Any]:
    """Adds ``speedup``, ``efficiency`` (mean) and ``efficiency_p99`` to each row of one
    schedule (rows with ``world_size``, ``mean_us``, ``p99_us``; N = 1 among them) and
    returns ``useful_parallelism`` and ``n_opt``."""
    base = next((r for r in rows if r["world_size"] == 1), None)
    if base is None:
        raise ValueError("scaling: needs the N = 1 row (the efficiency baseline)")
    for r in rows:
        n = r["world_size"]
        w = work(n)
        r["speedup"] = w * base["mean_us"] / r["mean_us"] if r["mean_us"] > 0 else None
        r["efficiency"] = r["speedup"] / n if r["speedup"] is not None else None
        r["efficiency_p99"] = (w * base["p99_us"] / r["p99_us"] / n
                               if r["p99_us"] > 0 else None)
    good = [r["world_size"] for r in rows
            if r["efficiency"] is not None and r["efficiency"] >= threshold]
    return {"useful_parallelism": max(good) if good else None,
            "n_opt": min(rows, key=lambda r: r["p99_us"])["world_size"],
            "threshold": threshold}
