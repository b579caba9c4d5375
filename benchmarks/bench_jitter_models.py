"""Speed of the jitter_models core, printed as tables with the targets beside them.

    .venv/bin/python benchmarks/bench_jitter_models.py [--check]

1. Schedule generation (iid) against numpy's raw sampler for the same family, side by
   side in one run: target ratio <= 2.
2. expected_max at n = 10^6: target < 50 ms a call.
3. sample_max, 10^6 draws of the max of n = 10^6: target < 0.5 s, mixtures included.

Times are the median of several repeats (wall clock, perf_counter). ``--check`` exits 1
if any target is missed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

import jitter_models as jm


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm caches and lazy imports
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(title: str, head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


# (schedule dist, numpy's raw sampler for the same family)
RAW: list[tuple[str, Callable[[np.random.Generator, int], np.ndarray]]] = [
    ("uniform(low=0us, high=40us)", lambda g, n: g.uniform(0.0, 40e-6, n)),
    ("normal(mean=50us, std=10us)", lambda g, n: g.normal(50e-6, 10e-6, n)),
    ("lognormal(median=50us, sigma=0.8)", lambda g, n: g.lognormal(math.log(50e-6), 0.8, n)),
    ("exponential(20us)", lambda g, n: g.exponential(20e-6, n)),
    ("gamma(shape=2.0, mean=30us)", lambda g, n: g.gamma(2.0, 15e-6, n)),
    ("weibull(shape=0.7, scale=20us)", lambda g, n: g.weibull(0.7, n)),
    ("pareto(alpha=2.5, scale=10us)", lambda g, n: g.pareto(2.5, n)),
]


def bench_schedules(steps: int, sites: int, repeats: int) -> list[bool]:
    rows, ok = [], []
    n = steps * sites
    for spec, raw in RAW:
        sched = jm.parse_schedule(spec)
        # The same stream construction as Schedule.delays (a SeedSequence per call).
        t_raw = median_time(lambda raw=raw: raw(np.random.default_rng(np.random.SeedSequence(
            [0, 0, 0, 3])), n), repeats)
        t_sched = median_time(lambda s=sched: s.delays(0, 3, 0, 8, steps, sites), repeats)
        ratio = t_sched / t_raw
        ok.append(ratio <= 2.0)
        rows.append([spec, f"{n}", f"{t_raw * 1e3:.2f}", f"{t_sched * 1e3:.2f}", f"{ratio:.2f}",
                     "ok" if ratio <= 2.0 else "MISS"])
    table(f"Schedule.delays ({steps} steps x {sites} sites) vs numpy's raw sampler "
          "(target ratio <= 2)", ["family", "draws", "numpy_ms", "schedule_ms", "ratio", ""],
          rows)
    return ok


DISTS = ["exponential(20us)", "lognormal(median=50us, sigma=0.8)", "pareto(alpha=1.5, scale=7us)",
         "normal(mean=30us, std=10us)", "gamma(shape=0.5, mean=20us)",
         "mixture(0.99*constant(5us), 0.01*constant(2ms))",
         "mixture(0.99*lognormal(median=10us, sigma=0.5), 0.01*constant(2ms))",
         "clip(dist=pareto(alpha=1.2, scale=5us), max=10ms)",
         "shifted(offset=5us, dist=weibull(shape=0.7, scale=20us))"]


def bench_order_stats(repeats: int) -> list[bool]:
    rows, ok = [], []
    n = 10**6
    for spec in DISTS:
        d = jm.parse(spec)
        t_e = median_time(lambda d=d: jm.expected_max(d, n), repeats)
        t_s = median_time(lambda d=d: jm.sample_max(d, n, np.random.default_rng(1), 10**6),
                          max(3, repeats // 3))
        good = t_e < 0.050 and t_s < 0.5
        ok.append(good)
        rows.append([spec, f"{jm.expected_max(d, n) * 1e6:.2f}", f"{t_e * 1e3:.2f}",
                     f"{t_s * 1e3:.0f}", "ok" if good else "MISS"])
    table("Order statistics at n = 10^6 (targets: expected_max < 50 ms; "
          "sample_max of 10^6 draws < 500 ms)",
          ["distribution", "E[max]_us", "expected_max_ms", "sample_max_ms", ""], rows)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--sites", type=int, default=160)
    args = p.parse_args()
    ok = bench_schedules(args.steps, args.sites, args.repeats) + bench_order_stats(args.repeats)
    print(f"\n{sum(ok)}/{len(ok)} rows meet their targets")
    return 0 if (all(ok) or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
