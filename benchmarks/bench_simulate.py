"""How fast the simulator is. Prints one table:

(a) native collectives, max sampling: 160 sites x 1000 steps x N = 2^0 .. 2^20 x 5
    distributions (target: under 30 s);
(b) ring all-reduce with per-hop (link-scoped) jitter, ONE collective at N = 4096:
    2 (N - 1) steps of N messages = 33.5 M hop updates (target: draws + recurrence under
    1 s on a 2-core machine; LogGOPSim reports about 1e6 events per second, the aim for
    the recurrence is 1e8 hop updates per second), with bulk draws and with the exact
    per-link streams real ranks use;
(c) tree and recursive doubling all-reduce with per-hop jitter, one collective at
    N = 2**20, bulk draws (target: under 5 s each, setup included).

setup = building the pattern's arrays (``compile_algorithm``, cached across calls in a
run) and the hop times (once per network and message size); total = draws + recurrence.

    python benchmarks/bench_simulate.py [--quick]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from jitter_models import parse_schedule
from jitter_models.network import Network, Tier
from jitter_models.pattern_sim import (
    compile_algorithm,
    finish,
    hop_times,
    link_delays_bulk,
    link_delays_exact,
)

NET = Network(inter=Tier(alpha_s=5e-6, bandwidth_Bps=50e9),
              intra=Tier(alpha_s=1e-6, bandwidth_Bps=450e9), ranks_per_node=8)
LINK = "lognormal(median=2us, sigma=0.5); scope=link"
MESSAGE_BYTES = 16384
HEADER = ("case", "N", "hop updates (M)", "setup (s)", "draws (s)", "recurrence (s)",
          "total (s)", "recurrence (M updates/s)", "target")


DISTS = ("exponential(20us)", "lognormal(median=16us, sigma=0.67)",
         "clip(dist=pareto(alpha=1.5, scale=7us), max=10ms)", "normal(mean=20us, std=5us)",
         "mixture(0.99*constant(5us), 0.01*constant(2ms))")


def bench_native(steps: int = 1000, top: int = 20) -> list[tuple]:
    """(a) native collectives by max sampling: 160 sites of 16 KiB x ``steps`` steps at
    N = 2^0 .. 2^top, for each of 5 distributions; rows as ``HEADER`` (the "hop updates"
    column counts site maxima drawn)."""
    from jitter_models.simulate import Site, simulate

    sites = tuple(Site(compute_s=20e-6, message_bytes=MESSAGE_BYTES) for _ in range(160))
    rows, t_all = [], time.perf_counter()
    for text in DISTS:
        schedule = parse_schedule(text)
        t0 = time.perf_counter()
        for k in range(top + 1):
            out = simulate(schedule, 2**k, sites, network=NET, steps=steps, seed=0)
            assert out.method == "max-sampling"
        dt = time.perf_counter() - t0
        m = (top + 1) * steps * len(sites)
        rows.append((f"(a) native, {text.split('(')[0]}", f"2^0..2^{top}", m / 1e6, 0.0, dt,
                     0.0, dt, m / dt / 1e6, ""))
    total = time.perf_counter() - t_all
    rows.append(("(a) native, all 5", f"2^0..2^{top}", 5 * m / 1e6, 0.0, total, 0.0, total,
                 5 * m / total / 1e6, "total < 30 s"))
    return rows


def bench_pattern(algorithm: str, n: int, draws: str, target: str) -> tuple:
    """One collective of ``algorithm`` with per-hop jitter on ``n`` ranks; ``draws``:
    "bulk" (one Generator, the link law, drawn step by step inside the recurrence; the
    recurrence is also timed alone on the same draws held in memory, and the draws' column
    is the total less it) or "exact" (one stream per link, drawn before the recurrence)."""
    schedule = parse_schedule(LINK)
    t0 = time.perf_counter()
    compiled = compile_algorithm(algorithm, "all_reduce", n, NET.ranks_per_node)
    hops = hop_times(compiled, NET, MESSAGE_BYTES)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    if draws == "bulk":
        held = list(link_delays_bulk(schedule, np.random.default_rng(0), compiled))
        t0 = time.perf_counter()
        finish(compiled, np.zeros(n), hops, held)
        rec = time.perf_counter() - t0
        del held
        t0 = time.perf_counter()
        done = finish(compiled, np.zeros(n), hops,
                      link_delays_bulk(schedule, np.random.default_rng(0), compiled))
        total = time.perf_counter() - t0
        drawn = total - rec
    else:
        delays = [d[0] for d in link_delays_exact(schedule, 0, compiled, 1)]
        drawn = time.perf_counter() - t0
        done = finish(compiled, np.zeros(n), hops, delays)
        total = time.perf_counter() - t0
        rec = total - drawn
    assert np.all(np.isfinite(done))
    m = compiled.messages
    return (f"({'b' if algorithm == 'ring' else 'c'}) {algorithm}, {draws} draws", n, m / 1e6,
            setup, drawn, rec, total, m / rec / 1e6, target)


def _format(row: tuple) -> list[str]:
    return [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]


def main() -> int:
    quick = "--quick" in sys.argv
    ring_n, big_n = (512, 2**14) if quick else (4096, 2**20)
    rows: list[tuple] = []
    notes = []
    try:
        rows += bench_native(*((100, 12) if quick else (1000, 20)))
    except NotImplementedError as exc:
        notes.append(f"(a) skipped: {exc}")
    rows.append(bench_pattern("ring", ring_n, "bulk", "total < 1 s, 1e8 updates/s"))
    rows.append(bench_pattern("ring", ring_n, "exact", "(per-link streams)"))
    for algorithm in ("tree", "recursive_doubling"):
        rows.append(bench_pattern(algorithm, big_n, "bulk", "setup + total < 5 s"))
    table = [list(HEADER)] + [_format(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    for line in table:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                        for i, (v, w) in enumerate(zip(line, widths))))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
