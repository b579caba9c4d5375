"""Analysis cost: step latency, its statistics and the decomposition for one point of
8 ranks x 1000 steps x 160 sites (1.28 M records), from synthetic records.

    .venv/bin/python benchmarks/bench_analysis.py [--check]

Target: under 5 s and under 1 GB (peak resident memory of this process).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.analysis import (  # noqa: E402
    decompose,
    latency_stats,
    measured_site_max_us,
    step_latencies,
)


def synthetic(ranks: int, steps: int, sites: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(ranks):
        compute = rng.integers(20_000, 30_000, (steps, sites))
        delay = rng.exponential(20_000, (steps, sites)).astype(np.int64)
        coll = rng.integers(5_000, 8_000, (steps, sites))
        per_site = compute + delay + coll
        start = np.zeros((steps, sites), dtype=np.int64)
        start[:, 1:] = np.cumsum(per_site, axis=1)[:, :-1]
        base = (np.arange(steps) * 10_000_000)[:, None]
        t_start = base + start
        t_arrive = t_start + compute + delay
        t_done = t_arrive + coll
        step_rows = {"step": np.arange(steps), "site": np.full(steps, -1),
                     "t_start_ns": base[:, 0], "t_done_ns": t_done[:, -1]}
        cols = {"step": np.repeat(np.arange(steps), sites), "site": np.tile(np.arange(sites),
                steps), "t_start_ns": t_start.ravel(), "t_arrive_ns": t_arrive.ravel(),
                "t_done_ns": t_done.ravel(), "delay_ns": delay.ravel(),
                "delay_req_ns": delay.ravel()}
        table = {k: np.concatenate([cols[k], step_rows.get(k, np.zeros(steps, np.int64))])
                 for k in cols}
        for k in ("op", "bytes"):
            table[k] = np.zeros(table["step"].size, dtype=np.int64)
        tables.append(table)
    return tables


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    tables = synthetic(8, 1000, 160)
    n = sum(t["step"].size for t in tables)
    t0 = time.perf_counter()
    stats = latency_stats(step_latencies(tables))
    dec = decompose(tables, [0] * len(tables))
    site = measured_site_max_us(tables)
    dt = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    ok = dt < 5 and peak_gb < 1
    print(f"{'records':>10}{'seconds':>10}{'peak_GB':>10}{'p99_step_us':>13}"
          f"{'skew_wait_us':>14}{'site_max_us':>13}  target: < 5 s, < 1 GB")
    print(f"{n:>10}{dt:>10.2f}{peak_gb:>10.2f}{stats['p99_us']:>13.1f}"
          f"{dec['skew_wait_us']:>14.1f}{site['requested_us']:>13.1f}  "
          f"{'ok' if ok else 'MISS'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
