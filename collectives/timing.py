"""Per-collective timing records, preallocated, and the rank file they end up in.

During a run a rank only reads ``time.perf_counter_ns`` (CLOCK_MONOTONIC) and stores
integers into preallocated numpy columns: nothing else happens between two clock reads.
After the run the columns go to ``rank-00007.parquet`` atomically (temporary name, then
rename), with the run's metadata and this rank's clock offset to rank 0.

Clock offsets: ranks on one host share CLOCK_MONOTONIC, so their offset is exactly 0
(detected by host name). A rank on another host estimates its offset to rank 0 by
ping-pong over the backend (the sample with the smallest round trip; its half round trip
bounds the error), once before and once after the run, so drift can be interpolated.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jitter_models.files import named_error

from .files import set_file_mode

# One row per timed collective. All times int64 nanoseconds on this rank's monotonic clock.
COLUMNS: dict[str, str] = {
    "step": "int64",          # iteration (microbench) or decode step
    "site": "int64",          # collective index inside the step (microbench: case index)
    "op": "int64",            # index into the run's list of collectives
    "bytes": "int64",         # nccl-tests size S of the operation
    "delay_req_ns": "int64",  # what the schedule asked
    "delay_ns": "int64",      # what the injector achieved: t_arrive - t_start
    "t_start_ns": "int64",    # site start, before the injected delay
    "t_arrive_ns": "int64",   # entered the collective
    "t_done_ns": "int64",     # collective finished on this rank (device synchronized)
}

now_ns = time.perf_counter_ns


class Records:
    """Preallocated columns; ``add`` fills the next row (call it outside timed regions)."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity: must be >= 0, got {capacity}")
        self.columns = {k: np.zeros(capacity, dtype=v) for k, v in COLUMNS.items()}
        self.n = 0
        # Draws of the schedule clipped to the maximum delay (jitter_models MAX_DELAY_NS)
        # before this rank injected them; the rank file's metadata carries it.
        self.delays_clipped = 0

    def add(self, step: int, site: int, op: int, nbytes: int, delay_req_ns: int,
            t_start_ns: int, t_arrive_ns: int, t_done_ns: int,
            delay_ns: int | None = None) -> None:
        """``delay_ns`` defaults to ``t_arrive - t_start`` (no compute before the delay)."""
        i = self.n
        c = self.columns
        c["step"][i], c["site"][i], c["op"][i], c["bytes"][i] = step, site, op, nbytes
        c["delay_req_ns"][i] = delay_req_ns
        c["delay_ns"][i] = t_arrive_ns - t_start_ns if delay_ns is None else delay_ns
        c["t_start_ns"][i], c["t_arrive_ns"][i], c["t_done_ns"][i] = (
            t_start_ns, t_arrive_ns, t_done_ns)
        self.n = i + 1

    def table(self) -> dict[str, np.ndarray]:
        return {k: v[: self.n] for k, v in self.columns.items()}


@dataclass(frozen=True, kw_only=True)
class ClockOffset:
    """This rank's clock relative to rank 0's: t_rank0 = t_here + offset_ns."""

    offset_ns: int | None
    """None where it could not be measured (another host, no estimate yet)."""
    uncertainty_ns: int | None
    """Half-width of the offset's error bound (0 on the same host)."""


def same_host_offsets(hostnames: list[str]) -> list[ClockOffset]:
    """Exact zero for ranks on rank 0's host; unknown (to be measured) for the others."""
    return [ClockOffset(offset_ns=0, uncertainty_ns=0) if h == hostnames[0]
            else ClockOffset(offset_ns=None, uncertainty_ns=None) for h in hostnames]


def offset_from_samples(t0: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> ClockOffset:
    """Rank 0 sent at t0 and got the reply at t2 (its clock); the peer stamped t1 (its
    clock) in between. The offset (t_rank0 = t_peer + offset) from the sample with the
    smallest round trip: the midpoint of [t0, t2] minus t1, to within half that trip."""
    rtt = t2 - t0
    if np.any(rtt < 0):
        raise ValueError("ping-pong samples with a negative round trip")
    i = int(np.argmin(rtt))
    return ClockOffset(offset_ns=int((t0[i] + t2[i]) // 2 - t1[i]),
                       uncertainty_ns=int(rtt[i] + 1) // 2)


def ping_pong(backend: Any, peer: int, rounds: int = 64) -> ClockOffset | None:
    """Run on rank 0 and ``peer`` at the same time (no other rank takes part). Rank 0 gets
    the estimate; the peer gets it too (sent back). Host buffers only."""
    buf = backend.from_numpy(np.zeros(1, dtype=np.int64), "int64")
    if backend.rank == 0:
        t0, t1, t2 = (np.empty(rounds, dtype=np.int64) for _ in range(3))
        for i in range(rounds):
            t0[i] = now_ns()
            backend.send(buf, peer)
            backend.recv(buf, peer)
            t2[i] = now_ns()
            t1[i] = int(backend.to_numpy(buf)[0])
        est = offset_from_samples(t0, t1, t2)
        backend.send(backend.from_numpy(np.array([est.offset_ns, est.uncertainty_ns],
                                                  dtype=np.int64), "int64"), peer)
        return est
    if backend.rank == peer:
        for _ in range(rounds):
            backend.recv(buf, 0)
            stamped = backend.from_numpy(np.array([now_ns()], dtype=np.int64), "int64")
            backend.send(stamped, 0)
        out = backend.from_numpy(np.zeros(2, dtype=np.int64), "int64")
        backend.recv(out, 0)
        offset, unc = (int(v) for v in backend.to_numpy(out))
        return ClockOffset(offset_ns=offset, uncertainty_ns=unc)
    return None


def measure_offsets(backend: Any, hostnames: list[str], *, force: bool = False
                    ) -> ClockOffset:
    """This rank's offset to rank 0: exact 0 on rank 0's host (unless ``force``), else a
    ping-pong estimate. Every rank must call it (the peers are served in rank order)."""
    mine = same_host_offsets(hostnames)[backend.rank]
    for peer in range(1, backend.world_size):
        if force or hostnames[peer] != hostnames[0]:
            est = ping_pong(backend, peer)
            if backend.rank == peer:
                mine = est
    return mine


def combine(before: ClockOffset, after: ClockOffset) -> ClockOffset:
    """One offset for the run from estimates before and after it: their mean, with an
    uncertainty that also covers the drift between them."""
    if before.offset_ns is None or after.offset_ns is None:
        return before if after.offset_ns is None else after
    drift = abs(after.offset_ns - before.offset_ns)
    return replace(before, offset_ns=(before.offset_ns + after.offset_ns) // 2,
                   uncertainty_ns=max(before.uncertainty_ns or 0, after.uncertainty_ns or 0)
                   + (drift + 1) // 2)


def write_rank_file(path: str | os.PathLike[str], columns: dict[str, np.ndarray],
                    metadata: dict[str, Any]) -> None:
    """Parquet with the records and JSON metadata, written to a temporary name and renamed,
    so a reader never sees half a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns).replace_schema_metadata(
        {"jitterlab": json.dumps(metadata, sort_keys=True)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            set_file_mode(f.fileno())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: report the rank file, not its temporary name
        raise named_error(exc, path) from exc
    finally:
        tmp.unlink(missing_ok=True)


def read_rank_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict]:
    """(columns, metadata) of one rank file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"jitterlab", b"{}"))
    return {name: table.column(name).to_numpy() for name in table.column_names}, meta
