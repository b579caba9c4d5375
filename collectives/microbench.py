"""The collective benchmark: what every rank runs, and the table made from all ranks' records.

Each timed iteration, on every rank: a barrier (untimed, as OSU does, so iterations start
together and each one's delays are its own), then ``t_start``, the injected delay,
``t_arrive``, the collective, a device synchronize, ``t_done``. An iteration's time is the
max over ranks of ``t_done - t_start``: every rank waits for the slowest arrival, so with
jitter it is about the max of the N delays plus the collective; without, the collective
time as nccl-tests reports it (its per-iteration value is also the max over ranks).

Timed buffers start at zero, so in-place iterations cannot overflow whatever the count;
``check`` runs one more, untimed, iteration on fresh exactly-checkable inputs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jitter_models import Schedule
from jitter_models.percentiles import nearest_rank

from .backends import Backend, elem_size
from .inject import Injector
from .ops import check as count_wrong
from .ops import get_op
from .timing import Records, now_ns

PERCENTILES = {"p50": 50, "p90": 90, "p99": 99, "p999": 99.9}


@dataclass(frozen=True)
class Fault:
    """A deliberate failure for tests: ``rank`` exits (as if killed) or hangs when it
    reaches timed collective number ``at``. Text form: ``exit@RANK:AT``, ``hang@RANK:AT``."""

    kind: str
    rank: int
    at: int

    @classmethod
    def parse(cls, text: str) -> Fault:
        m = re.fullmatch(r"(exit|hang)@(\d+):(\d+)", text.strip())
        if m is None:
            raise ValueError(f"fault: expected exit@RANK:N or hang@RANK:N, got {text!r}")
        return cls(m.group(1), int(m.group(2)), int(m.group(3)))

    def trigger(self) -> None:
        if self.kind == "exit":
            os._exit(3)  # no cleanup, no records: as abrupt as a crash
        while True:
            time.sleep(3600)


class EventTimer:
    """CUDA events around the delay and the collective, read after the synchronize that
    ends each iteration. Times are anchored to the host clock at ``t_start`` (read just
    before the start event is enqueued on an idle stream), so they carry the launch
    latency between the two as their uncertainty; ``benchmarks/gpu_check.py`` measures it."""

    def __init__(self) -> None:
        import torch

        self.start, self.arrive, self.done = (torch.cuda.Event(enable_timing=True)
                                              for _ in range(3))

    def host_times(self, t0_ns: int) -> tuple[int, int]:
        """(t_arrive_ns, t_done_ns) on the host clock, from the start event at ``t0_ns``."""
        return (t0_ns + round(self.start.elapsed_time(self.arrive) * 1e6),
                t0_ns + round(self.start.elapsed_time(self.done) * 1e6))


def _runner(backend: Backend, coll: str, inp: Any, out: Any, redop: str, root: int
            ) -> Callable[[], None]:
    return {
        "all_reduce": lambda: backend.all_reduce(inp, redop),
        "broadcast": lambda: backend.broadcast(inp, root),
        "all_gather": lambda: backend.all_gather(out, inp),
        "reduce_scatter": lambda: backend.reduce_scatter(out, inp, redop),
        "all_to_all": lambda: backend.all_to_all(out, inp),
    }[coll]


def _in_place(coll: str) -> bool:
    return coll in ("all_reduce", "broadcast")


def _np_dtype(dtype: str) -> str:
    return "float32" if dtype == "bfloat16" else dtype  # bf16 values are exact in float32


def cases(colls: Sequence[str], sizes: Sequence[int]) -> list[tuple[int, str, int]]:
    """(op index, collective, size) in run order; a case's index is its site."""
    return [(k, c, s) for k, c in enumerate(colls) for s in sizes]


def run(backend: Backend, *, colls: Sequence[str], sizes: Sequence[int], dtype: str,
        redop: str, root: int, iters: int, warmup: int, check: bool, seed: int,
        schedule: Schedule | None, injector: Injector, node: int,
        progress: np.ndarray | None = None, fault: Fault | None = None
        ) -> tuple[Records, list[int]]:
    """Time every collective at every size on this rank. Returns the records and, per
    case (see :func:`cases`), the number of wrong elements (-1 where not checked).

    ``progress``: a one-element int64 array (a memory-mapped slot) that receives the index
    of each timed collective this rank reaches, stored after the injected delay and before
    ``t_arrive`` is read: the collective's own time (t_done - t_arrive) excludes the store
    (tens of nanoseconds); the achieved delay and the iteration's time include it. ``fault``: make
    this rank exit or hang on reaching a collective (to test failure handling)."""
    n, rank = backend.world_size, backend.rank
    esize = elem_size(dtype)
    todo = cases(colls, sizes)
    clipped = 0
    if schedule is not None:
        delays_ns, clipped = schedule.delays_ns(seed, rank, node, n, iters, len(todo))
    else:
        delays_ns = np.zeros((iters, len(todo)), dtype=np.int64)
    records = Records(iters * len(todo))
    records.delays_clipped = clipped
    wrong: list[int] = []
    mark = progress if progress is not None else np.zeros(1, dtype=np.int64)
    fault_at = fault.at if fault is not None and fault.rank == rank else -1
    for site, (k, coll, size) in enumerate(todo):
        op = get_op(coll)
        send_count, recv_count = op.counts(size, esize, n)
        nbytes = op.bytes_moved(size, esize, n)
        inp = backend.from_numpy(np.zeros(send_count, dtype=_np_dtype(dtype)), dtype)
        out = None if _in_place(coll) else backend.empty(recv_count, dtype)
        step = _runner(backend, coll, inp, out, redop, root)
        for _ in range(warmup):
            step()
        backend.synchronize()
        column = delays_ns[:, site].tolist()  # Python ints: nothing to convert in the loop
        events = EventTimer() if backend.device.startswith("cuda") else None
        for it in range(iters):
            backend.barrier()
            d = column[it]
            g = site * iters + it
            if g == fault_at:
                fault.trigger()  # type: ignore[union-attr]
            if events is None:
                t0 = now_ns()
                injector.inject(t0, d)
                mark[0] = g
                t1 = now_ns()
                step()
                backend.synchronize()
                t2 = now_ns()
            else:  # the GPU's own clock: the host returns before the stream has waited
                t0 = now_ns()
                events.start.record()
                injector.inject(t0, d)
                mark[0] = g
                events.arrive.record()
                step()
                events.done.record()
                backend.synchronize()
                t1, t2 = events.host_times(t0)
            records.add(it, site, k, nbytes, d, t0, t1, t2)
        wrong.append(_check(backend, op, coll, send_count, recv_count, dtype, redop, root,
                            seed) if check else -1)
    return records, wrong


def _check(backend: Backend, op: Any, coll: str, send_count: int, recv_count: int,
           dtype: str, redop: str, root: int, seed: int) -> int:
    n, rank = backend.world_size, backend.rank
    npd = _np_dtype(dtype)
    inp = backend.from_numpy(op.inputs(rank, n, send_count, npd, seed, redop), dtype)
    out = None if _in_place(coll) else backend.empty(recv_count, dtype)
    _runner(backend, coll, inp, out, redop, root)()
    backend.synchronize()
    got = backend.to_numpy(inp if out is None else out)
    return count_wrong(got, op.expected(rank, n, send_count, npd, redop, root, seed))


def summarize(tables: Sequence[dict[str, np.ndarray]], *, colls: Sequence[str],
              world_size: int, offsets_ns: Sequence[int | None],
              wrong: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """One row per (collective, size) from every rank's records (``tables[rank]``).
    ``offsets_ns[rank]``: that rank's clock offset to rank 0 (0 on rank 0's host), used
    to align arrivals for the skew; None where unknown (then no skew is reported)."""
    sites = np.unique(tables[0]["site"])
    rows = []
    for site in sites:
        per_rank = [{k: v[t["site"] == site] for k, v in t.items()} for t in tables]
        steps = per_rank[0]["step"]
        if any(not np.array_equal(r["step"], steps) for r in per_rank):
            raise ValueError(f"rank records disagree on the iterations of size index {site}")
        dur = np.max([r["t_done_ns"] - r["t_start_ns"] for r in per_rank], axis=0) / 1e3
        mean_us = float(dur.mean())
        nbytes = int(per_rank[0]["bytes"][0])
        coll = colls[int(per_rank[0]["op"][0])]
        op = get_op(coll)
        row: dict[str, Any] = {"coll": coll, "size_bytes": nbytes, "iters": int(dur.size),
                               "min_us": float(dur.min())}
        row.update({f"{k}_us": nearest_rank(dur, p) for k, p in PERCENTILES.items()})
        row["max_us"], row["mean_us"] = float(dur.max()), mean_us
        if world_size > 1:
            row["algbw_gbps"] = nbytes / (mean_us * 1e-6) / 1e9
            row["busbw_gbps"] = row["algbw_gbps"] * op.bus_factor(world_size)
        else:  # one rank moves no bytes between ranks: S / t of a local no-op is no bandwidth
            row["algbw_gbps"] = row["busbw_gbps"] = None
        if all(o is not None for o in offsets_ns):
            arrive = np.array([r["t_arrive_ns"] + o for r, o in zip(per_rank, offsets_ns)])
            row["skew_us"] = float((arrive.max(axis=0) - arrive.min(axis=0)).mean() / 1e3)
        else:
            row["skew_us"] = None
        req = np.concatenate([r["delay_req_ns"] for r in per_rank])
        got = np.concatenate([r["delay_ns"] for r in per_rank])
        row["delay_err_p50_us"] = nearest_rank(np.abs(got - req), 50) / 1e3 if req.any() \
            else None
        counts = [w[int(site)] for w in wrong]
        row["wrong"] = -1 if any(c < 0 for c in counts) else int(sum(counts))
        rows.append(row)
    return rows


HEADER = ("coll", "size_B", "min_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us",
          "algbw_GB/s", "busbw_GB/s", "skew_us", "#wrong")


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The table an nccl-tests user reads at a glance; units in the header."""
    keys = ("coll", "size_bytes", "min_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
            "mean_us", "algbw_gbps", "busbw_gbps", "skew_us", "wrong")
    width = max([14] + [len(r["coll"]) + 2 for r in rows])
    lines = [HEADER[0].rjust(width) + "".join(h.rjust(12) for h in HEADER[1:])]
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            if v is None or (k == "wrong" and v < 0):
                cells.append("n/a")
            elif k in ("coll", "size_bytes", "wrong"):
                cells.append(str(v))
            elif k.endswith("gbps"):
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{v:.2f}")
        lines.append(cells[0].rjust(width) + "".join(c.rjust(12) for c in cells[1:]))
    return "\n".join(lines)
