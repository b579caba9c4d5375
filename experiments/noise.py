"""``jitterlab noise``: the host's own noise, measured the way sysjitter and the FTQ/FWQ
benchmarks do: one spinner pinned to each chosen core, all at once, reading the clock in
a tight loop; a gap between two reads longer than the threshold is an interruption (the
core ran something else: an interrupt, a kernel thread, another process).

A spinner is a Python loop around ``time.perf_counter_ns`` (CLOCK_MONOTONIC): its own
granularity is the loop's time per read, measured and reported with every run (about
0.1-0.3 µs here). The default threshold of 1 µs is several times that, so the loop's own
reads are not counted; a ``--threshold`` under 3 times the read time (measured by a 50 ms
spin before the run) is refused: its detours would be the loop's. Each interruption's
duration is the whole gap, one loop read included.

Per core: interruptions per second, the duration's p50, p90, p99, p99.9, p99.99 and max,
and the fraction of the time lost. The detours are written as a trace
(``start_ns<TAB>duration_ns``, from the start of the measurement) that
``detours = "trace('FILE', period=...)"`` replays on real ranks and in the simulator.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from jitter_models.percentiles import nearest_rank

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}
WARMUP_NS = 10_000_000
"""A spinner spins this long before it records (its first reads are its own warm-up)."""
GRANULARITY_FACTOR = 3
"""The threshold must be at least this many times the loop's own time per read."""


def spin(seconds: float, threshold_ns: int, start_at_ns: int | None = None
         ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Spin for ``seconds`` from ``start_at_ns`` (a perf_counter_ns time; default now)
    after a warm-up of ``WARMUP_NS``: (starts from the beginning, durations, the loop's
    ns per clock read, elapsed), ns. Records every gap between two clock reads longer than
    ``threshold_ns``. The read time is the warm-up's (the same loop, counting its reads:
    an upper bound), so the measuring loop holds nothing between its reads but the
    comparison."""
    clock = time.perf_counter_ns
    if start_at_ns is not None:
        while clock() < start_at_ns:  # every spinner starts at once
            pass
    begin = clock()
    warm, last, reads = begin + WARMUP_NS, begin, 0
    while last < warm:
        now = clock()
        if now - last > threshold_ns:
            pass
        last = now
        reads += 1
    read_ns = (last - begin) / max(reads, 1)
    starts, durations = array("q"), array("q")
    t0 = clock()
    end = t0 + int(seconds * 1e9)
    last = t0
    while last < end:
        now = clock()
        if now - last > threshold_ns:
            stop = min(now, end)  # an interruption over the end counts up to the end
            if stop - last > threshold_ns:
                starts.append(last - t0)
                durations.append(stop - last)
        last = now
    return (np.frombuffer(starts, np.int64).copy(), np.frombuffer(durations, np.int64).copy(),
            read_ns, end - t0)


def _pinned(args: tuple) -> tuple[int, np.ndarray, np.ndarray, float, int]:
    core, seconds, threshold_ns, start_at = args
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    return (core, *spin(seconds, threshold_ns, start_at))


@dataclass
class CoreNoise:
    core: int
    starts_ns: np.ndarray
    durations_ns: np.ndarray
    read_ns: float
    """The loop's time per clock read (its granularity, measured in its warm-up)."""
    elapsed_ns: int

    def row(self) -> dict[str, Any]:
        d = self.durations_ns
        seconds = self.elapsed_ns / 1e9
        row: dict[str, Any] = {"core": self.core, "seconds": seconds,
                               "interruptions": int(d.size),
                               "per_second": d.size / seconds if seconds > 0 else None}
        for key, p in PERCENTILES.items():
            # a percentile needs about 4 / (1 - p) interruptions
            enough = d.size >= math.ceil(4 / (1 - p / 100) - 1e-9)
            row[f"{key}_us"] = nearest_rank(d, p) / 1e3 if enough else None
        row["max_us"] = float(d.max()) / 1e3 if d.size else None
        row["lost_fraction"] = float(d.sum()) / self.elapsed_ns if self.elapsed_ns else None
        row["read_ns"] = self.read_ns
        return row


def measure(cores: list[int], seconds: float, threshold_ns: int) -> list[CoreNoise]:
    """One pinned spinner per core, started together (0.5 s after the pool starts)."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(len(cores)) as pool:
        start_at = time.perf_counter_ns() + int(0.5e9)  # after the pool's processes start
        out = pool.map(_pinned, [(c, seconds, threshold_ns, start_at) for c in cores],
                       chunksize=1)
    return [CoreNoise(*o) for o in out]


def trace_text(noise: CoreNoise) -> str:
    """The core's detours as a trace ``detours = "trace(...)"`` replays."""
    lines = [f"# jitterlab noise: core {noise.core}, {noise.elapsed_ns / 1e9:.3f} s, "
             f"{noise.durations_ns.size} interruptions; start_ns<TAB>duration_ns"]
    lines += [f"{s}\t{d}" for s, d in zip(noise.starts_ns.tolist(), noise.durations_ns.tolist())]
    if not noise.durations_ns.size:  # a quiet core: one empty detour keeps it replayable
        lines.append("0\t0")
    return "\n".join(lines) + "\n"
