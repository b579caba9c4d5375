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

Scaling. With ``share(N)`` the fraction of the N = 1 compute one rank does at N (1/N under
strong scaling, 1 for a bulk-synchronous code whose per-rank work is fixed), the useful
work done per unit time at N relative to N = 1 is the speedup S(N) = N share(N) T(1) /
T(N), and the efficiency E(N) = S(N) / N. Strong scaling: S = T(1)/T(N); weak scaling:
S = N T(1)/T(N) (scaled speedup). Both from the mean step and, as a tail view, from the
p99. Useful parallelism: the largest N with E(N) >= threshold over the N simulated;
N_opt: the N with the smallest p99 step latency per unit of work, T_p99(N) / (N share(N)).
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


def quantile_se(sorted_x: np.ndarray, p: float, inflation: float) -> float:
    """SE of the nearest-rank p-quantile from the width of its binomial interval."""
    n = sorted_x.size
    if n < 2:
        return 0.0
    half = _Z * np.sqrt(n * p * (1 - p))
    k = int(np.ceil(p * n)) - 1
    lo = sorted_x[max(int(np.floor(k - half)), 0)]
    hi = sorted_x[min(int(np.ceil(k + half)), n - 1)]
    return float((hi - lo) / (2 * _Z) * np.sqrt(inflation))


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
        out[f"{name}_se_us"] = quantile_se(s, p, inflation) * 1e6
    return out


def scaling(rows: Sequence[dict[str, Any]], share: Callable[[int], float],
            threshold: float = 0.5) -> dict[str, Any]:
    """Adds ``speedup``, ``efficiency`` (mean) and ``efficiency_p99`` to each row of one
    schedule (rows with ``world_size``, ``mean_us``, ``p99_us``; N = 1 among them) and
    returns ``useful_parallelism`` and ``n_opt``."""
    base = next((r for r in rows if r["world_size"] == 1), None)
    if base is None:
        raise ValueError("scaling: needs the N = 1 row (the efficiency baseline)")
    for r in rows:
        n = r["world_size"]
        work = n * share(n)
        r["speedup"] = work * base["mean_us"] / r["mean_us"] if r["mean_us"] > 0 else None
        r["efficiency"] = r["speedup"] / n if r["speedup"] is not None else None
        r["efficiency_p99"] = (work * base["p99_us"] / r["p99_us"] / n
                               if r["p99_us"] > 0 else None)
    good = [r["world_size"] for r in rows
            if r["efficiency"] is not None and r["efficiency"] >= threshold]
    per_work = {r["world_size"]: r["p99_us"] / (r["world_size"] * share(r["world_size"]))
                for r in rows}
    return {"useful_parallelism": max(good) if good else None,
            "n_opt": min(per_work, key=per_work.__getitem__), "threshold": threshold}
