"""Per-collective timing records, preallocated, and the rank file they end up in.

During a run a rank only reads ``time.perf_counter_ns`` (CLOCK_MONOTONIC) and stores
integers into preallocated numpy columns: nothing else happens between two clock reads.
After the run the columns go to ``rank-00007.parquet`` atomically (temporary name, then
rename), with the run's metadata and this rank's clock offset to rank 0.

Clock offsets: ranks on one host share CLOCK_MONOTONIC, so their offset is exactly 0
(detected by host name). Across hosts a ping-pong estimate is needed; it is not built
yet, and such ranks are marked with an unknown offset (null) rather than a guess.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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

    def add(self, step: int, site: int, op: int, nbytes: int, delay_req_ns: int,
            t_start_ns: int, t_arrive_ns: int, t_done_ns: int) -> None:
        i = self.n
        c = self.columns
        c["step"][i], c["site"][i], c["op"][i], c["bytes"][i] = step, site, op, nbytes
        c["delay_req_ns"][i], c["delay_ns"][i] = delay_req_ns, t_arrive_ns - t_start_ns
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
    """Exact zero for ranks on rank 0's host; unknown for the others."""
    return [ClockOffset(offset_ns=0, uncertainty_ns=0) if h == hostnames[0]
            else ClockOffset(offset_ns=None, uncertainty_ns=None) for h in hostnames]


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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_rank_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict]:
    """(columns, metadata) of one rank file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"jitterlab", b"{}"))
    return {name: table.column(name).to_numpy() for name in table.column_names}, meta
