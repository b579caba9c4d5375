"""Detour traces: LogGOPSim's noise-trace files read and checked, and detours merged.

A trace is ``start_ns<TAB>duration_ns`` lines (``#`` comments and blank lines allowed),
read by :func:`read_trace` into int64 nanoseconds; :func:`merge` turns any set of detours
into sorted, disjoint ones. ``detours.Trace`` repeats them over its period.
"""

from __future__ import annotations

import numpy as np

from .errors import BadInput
from .files import excerpt, read_input_file
from .units import MAX_DELAY_NS

MAX_TRACE_BYTES = 64 << 20
MAX_TRACE_DETOURS = 1_000_000


def merge(starts: np.ndarray, durations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint (starts, durations): overlapping or touching detours merged, zero
    durations dropped."""
    keep = durations > 0
    starts, ends = starts[keep], (starts + durations)[keep]
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    if starts.size == 0:
        return starts, ends
    run_end = np.maximum.accumulate(ends)
    new = np.concatenate([[True], starts[1:] > run_end[:-1]])
    group = np.cumsum(new) - 1
    s = starts[new]
    e = np.zeros_like(s)
    np.maximum.at(e, group, run_end)
    return s, e - s


def read_trace(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, durations) in int64 nanoseconds, in file order, from a LogGOPSim-style
    trace file: ``start_ns<TAB>duration_ns`` lines, ``#`` comments and blank lines."""
    what = f"detours: trace file {path!r}"
    try:
        text = read_input_file(path, what=what, max_bytes=MAX_TRACE_BYTES)
    except OSError as exc:
        raise BadInput(f"{what}: cannot be read: {exc.strerror or exc}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
            raise BadInput(f"{what}: line {n}: expected start_ns<TAB>duration_ns, two "
                           f"integers >= 0, got {excerpt(line)}")
        start, duration = int(parts[0]), int(parts[1])
        if start + duration > MAX_DELAY_NS:
            raise BadInput(f"{what}: line {n}: the detour ends after 1 hour, got "
                           f"{excerpt(line)}")
        rows.append((start, duration))
        if len(rows) > MAX_TRACE_DETOURS:
            raise BadInput(f"{what}: more than {MAX_TRACE_DETOURS} detours")
    if not rows:
        raise BadInput(f"{what}: holds no detour")
    a = np.array(rows, dtype=np.int64)
    return a[:, 0], a[:, 1]
