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

import functools
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jitter_models import Schedule
from jitter_models.percentiles import PERCENTILES, nearest_rank

from .backends import Backend, elem_size
from .clocks import Clock, aligned
from .inject import Injector
from .ops import check as count_wrong
from .ops import get_op
from .timing import Records, site_timer
from .workload import BaseWorkload, RankResult, check_ints, with_defaults


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


def _np_dtype(dtype: str) -> str:
    return "float32" if dtype == "bfloat16" else dtype  # bf16 values are exact in float32


def op_list(colls: Sequence[str], algorithms: Sequence[str]) -> list[tuple[str, str]]:
    """(collective, algorithm) pairs in run order, each algorithm with the collectives it
    implements (an algorithm that implements none of ``colls`` is an error); a record's
    ``op`` column indexes this list."""
    from jitter_models.algorithms import ALGORITHMS, check_algorithm

    pairs = [(c, a) for c in colls for a in algorithms if c in ALGORITHMS[a]]
    for a in algorithms:
        if not any(c in ALGORITHMS[a] for c in colls):
            check_algorithm(a, colls[0])  # raises, naming what the algorithm implements
    return pairs


def cases(colls: Sequence[str], sizes: Sequence[int],
          algorithms: Sequence[str] = ("native",)) -> list[tuple[int, str, str, int]]:
    """(op index, collective, algorithm, size) in run order; a case's index is its site."""
    return [(k, c, a, s) for k, (c, a) in enumerate(op_list(colls, algorithms)) for s in sizes]


@dataclass
class _Case:
    """One case's buffers and call, set up before its timing loop."""

    op: Any
    inp: Any
    out: Any
    call: Callable[[int], tuple[int, int]]  # iteration -> (hop delay requested, achieved)
    send_count: int
    recv_count: int
    explicit: Any = None
    hops: np.ndarray | None = None  # link scope: [call, send] hop delays in ns


def _setup(backend: Backend, coll: str, algo: str, size: int, dtype: str, redop: str,
           root: int, ranks_per_node: int, injector: Injector, hop_log: Any = None,
           op_index: int = 0, site: int = 0) -> _Case:
    n = backend.world_size
    op = get_op(coll)
    send_count, recv_count = op.counts(size, elem_size(dtype), n)
    inp = backend.from_numpy(np.zeros(send_count, dtype=_np_dtype(dtype)), dtype)
    out = None if op.in_place else backend.empty(recv_count, dtype)
    from jitter_models.algorithms import has_pattern

    if not has_pattern(algo):
        def native(it: int) -> tuple[int, int]:
            op.run(backend, inp, out, redop, root)
            return 0, 0
        return _Case(op, inp, out, native, send_count, recv_count)
    from .explicit import Explicit

    ex = Explicit(backend, algorithm=algo, collective=coll, dtype=dtype, redop=redop,
                  count=max(send_count, recv_count), ranks_per_node=ranks_per_node)
    ex.hop_log, ex.hop_op, ex.hop_site = hop_log, op_index, site
    case = _Case(op, inp, out, lambda it: (0, 0), send_count, recv_count, ex)

    def explicit(it: int) -> tuple[int, int]:
        hops = case.hops
        return ex.run(inp, out, hop_delays_ns=None if hops is None else hops[it],
                      injector=injector)
    case.call = explicit
    return case


def run(backend: Backend, *, colls: Sequence[str], sizes: Sequence[int], dtype: str,
        redop: str, root: int, iters: int, warmup: int, check: bool, seed: int,
        schedule: Schedule | None, injector: Injector, node: int,
        progress: np.ndarray | None = None, fault: Fault | None = None,
        algorithms: Sequence[str] = ("native",), ranks_per_node: int = 8,
        hop_log: Any = None) -> tuple[Records, list[int]]:
    """Time every collective with every algorithm at every size on this rank. Returns the
    records and, per case (see :func:`cases`), the number of wrong elements (-1 where not
    checked).

    ``progress``: a one-element int64 array (a memory-mapped slot) that receives the index
    of each timed collective this rank reaches, stored after the injected delay and before
    ``t_arrive`` is read: the collective's own time (t_done - t_arrive) excludes the store
    (tens of nanoseconds); the achieved delay and the iteration's time include it. ``fault``: make
    this rank exit or hang on reaching a collective (to test failure handling).
    A link-scoped ``schedule`` delays the messages of explicit algorithms (their records'
    hop columns); it asks no delay before the collective."""
    n, rank = backend.world_size, backend.rank
    todo = cases(colls, sizes, algorithms)
    clipped = 0
    if schedule is not None:
        delays_ns, clipped = schedule.delays_ns(seed, rank, node, n, iters, len(todo))
    else:
        delays_ns = np.zeros((iters, len(todo)), dtype=np.int64)
    setups = [_setup(backend, coll, algo, size, dtype, redop, root, ranks_per_node, injector,
                     hop_log, k, site) for site, (k, coll, algo, size) in enumerate(todo)]
    if schedule is not None and schedule.scope == "link":
        from .explicit import link_delays

        explicit = [c for c in setups if c.explicit is not None]
        tables, hop_clipped = link_delays(schedule, seed, rank,
                                          [(c.explicit, warmup + iters) for c in explicit])
        for c, table in zip(explicit, tables):
            c.hops = table
        clipped += hop_clipped
    records = Records(iters * len(todo))
    records.delays_clipped = clipped
    wrong: list[int] = []
    fault_at = fault.at if fault is not None and fault.rank == rank else -1
    timer = site_timer(backend, injector, records, schedule=schedule, seed=seed,
                       mark=progress)
    for site, ((k, _, _, size), case) in enumerate(zip(todo, setups)):
        nbytes = case.op.bytes_moved(size, elem_size(dtype), n)
        for it in range(warmup):
            case.call(it)
        backend.synchronize()
        column = delays_ns[:, site].tolist()  # Python ints: nothing to convert in the loop
        for it in range(iters):
            backend.barrier()
            g = site * iters + it
            if g == fault_at:
                fault.trigger()  # type: ignore[union-attr]
            call = functools.partial(case.call, warmup + it)
            timer.begin_step(it)
            timer.site(site, delay_ns=column[it], collective=call, op=k, nbytes=nbytes,
                       index=g)
            timer.end_step()
        wrong.append(_check(backend, case, seed, dtype, redop, root) if check else -1)
    return records, wrong


def _check(backend: Backend, case: _Case, seed: int, dtype: str, redop: str,
           root: int) -> int:
    """One untimed call on fresh, exactly checkable inputs: the number of wrong elements."""
    n, rank = backend.world_size, backend.rank
    npd, op = _np_dtype(dtype), case.op
    inp = backend.from_numpy(op.inputs(rank, n, case.send_count, npd, seed, redop), dtype)
    out = None if op.in_place else backend.empty(case.recv_count, dtype)
    if case.explicit is None:
        op.run(backend, inp, out, redop, root)
    else:
        case.explicit.run(inp, out)
    backend.synchronize()
    got = backend.to_numpy(inp if out is None else out)
    return count_wrong(got, op.expected(rank, n, case.send_count, npd, redop, root, seed))


def summarize(tables: Sequence[dict[str, np.ndarray]], *, colls: Sequence[str],
              world_size: int, offsets_ns: Sequence[Clock],
              wrong: Sequence[Sequence[int]], algorithms: Sequence[str] = ("native",)
              ) -> list[dict[str, Any]]:
    """One row per (collective, algorithm, size) from every rank's records
    (``tables[rank]``); ``colls`` and ``algorithms`` as the run was given them.
    ``offsets_ns[rank]``: that rank's clock (its rank file's metadata, the offset to rank
    0 then interpolated at each arrival by ``timing.aligned``; or one offset in ns, 0 on
    rank 0's host), used to align arrivals for the skew; None where unknown (then no skew
    is reported)."""
    sites = np.unique(tables[0]["site"])
    ops = op_list(colls, algorithms)
    rows = []
    for site in sites:
        per_rank = [{k: v[t["site"] == site] for k, v in t.items()} for t in tables]
        steps = per_rank[0]["step"]
        if any(not np.array_equal(r["step"], steps) for r in per_rank):
            raise ValueError(f"rank records disagree on the iterations of size index {site}")
        dur = np.max([r["t_done_ns"] - r["t_start_ns"] for r in per_rank], axis=0) / 1e3
        mean_us = float(dur.mean())
        nbytes = int(per_rank[0]["bytes"][0])
        coll, algorithm = ops[int(per_rank[0]["op"][0])]
        op = get_op(coll)
        row: dict[str, Any] = {"coll": coll, "algorithm": algorithm, "size_bytes": nbytes,
                               "iters": int(dur.size), "min_us": float(dur.min())}
        row.update({f"{k}_us": nearest_rank(dur, p) for k, p in PERCENTILES.items()})
        row["max_us"], row["mean_us"] = float(dur.max()), mean_us
        if world_size > 1:
            row["algbw_gbps"] = nbytes / (mean_us * 1e-6) / 1e9
            row["busbw_gbps"] = row["algbw_gbps"] * op.bus_factor(world_size)
        else:  # one rank moves no bytes between ranks: S / t of a local no-op is no bandwidth
            row["algbw_gbps"] = row["busbw_gbps"] = None
        arrivals = [aligned(r["t_arrive_ns"], c) for r, c in zip(per_rank, offsets_ns)]
        if all(a is not None for a in arrivals):
            arrive = np.array(arrivals)
            row["skew_us"] = float((arrive.max(axis=0) - arrive.min(axis=0)).mean() / 1e3)
        else:
            row["skew_us"] = None
        req = np.concatenate([r["delay_req_ns"] for r in per_rank])
        got = np.concatenate([r["delay_ns"] for r in per_rank])
        row["delay_err_p50_us"] = nearest_rank(np.abs(got - req), 50) / 1e3 if req.any() \
            else None
        # Link scope: each rank's summed achieved hop delays per iteration (its sends'
        # departure delays), the mean of their max over ranks; None without hop delays.
        hop_req = np.array([r.get("hop_delay_req_ns", np.zeros_like(r["step"])) for r in per_rank])
        hop = np.array([r.get("hop_delay_ns", np.zeros_like(r["step"])) for r in per_rank])
        row["hop_delay_us"] = float(hop.max(axis=0).mean() / 1e3) if hop_req.any() else None
        counts = [w[int(site)] for w in wrong]
        row["wrong"] = -1 if any(c < 0 for c in counts) else int(sum(counts))
        rows.append(row)
    return rows


HEADER = ("coll", "algorithm", "size_B", "min_us", "p50_us", "p90_us", "p99_us", "p999_us",
          "max_us", "mean_us", "algbw_GB/s", "busbw_GB/s", "skew_us", "#wrong")


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The table an nccl-tests user reads at a glance; units in the header."""
    keys = ["coll", "algorithm", "size_bytes", "min_us", "p50_us", "p90_us", "p99_us",
            "p999_us", "max_us", "mean_us", "algbw_gbps", "busbw_gbps", "skew_us", "wrong"]
    header = list(HEADER)
    if any(r.get("hop_delay_us") is not None for r in rows):  # link-scoped jitter
        keys.insert(-1, "hop_delay_us")
        header.insert(-1, "hop_us")
    width = max([14] + [len(r["coll"]) + 2 for r in rows])
    awidth = max([11] + [len(r.get("algorithm", "native")) + 2 for r in rows])
    lines = [header[0].rjust(width) + header[1].rjust(awidth)
             + "".join(h.rjust(12) for h in header[2:])]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "native") if k == "algorithm" else r.get(k)
            if v is None or (k == "wrong" and v < 0):
                cells.append("n/a")
            elif k in ("coll", "algorithm", "size_bytes", "wrong"):
                cells.append(str(v))
            elif k.endswith("gbps"):
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{v:.2f}")
        lines.append(cells[0].rjust(width) + cells[1].rjust(awidth)
                     + "".join(c.rjust(12) for c in cells[2:]))
    return "\n".join(lines)


class Microbench(BaseWorkload):
    """The collective benchmark as a workload (``jitterlab bench``): every collective with
    every algorithm at every size, ``iters`` timed iterations each. Its plan params:
    ``colls``, ``sizes`` (bytes), ``redop``, ``root``, ``iters``, ``warmup`` (per size) and
    ``check``. It is not a sweep workload: its iterations are per size, not the steps of
    one step latency, so ``jitterlab run`` refuses it."""

    name = "microbench"
    spec_keys: dict[str, str] = {}
    DEFAULTS: dict[str, Any] = {"colls": ["all_reduce"], "sizes": [1024], "redop": "sum",
                                "root": 0, "iters": 20, "warmup": 5, "check": False}

    def parse(self, doc: Any, common: Any) -> dict[str, Any]:
        raise ValueError("workload: 'microbench' runs through `jitterlab bench` (its "
                         "iterations are per size, not decode steps); `jitterlab run` "
                         "sweeps step workloads such as 'tp_decode'")

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` over the defaults, validated; ValueError naming the key."""
        from .backends import check_redop

        p = with_defaults(self.name, self.DEFAULTS, params)
        for key in ("colls", "sizes"):
            if not isinstance(p[key], (list, tuple)):
                raise ValueError(f"{key}: expected a list, got {p[key]!r}")
            p[key] = list(p[key])
        if not p["colls"]:
            raise ValueError("colls: needs at least one collective")
        for c in p["colls"]:
            try:
                get_op(c)
            except ValueError as exc:
                raise ValueError(f"colls: {exc}") from None
        if not p["sizes"] or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                 for s in p["sizes"]):
            raise ValueError(f"sizes: must be positive integers, got {p['sizes']!r}")
        check_ints(p, (("root", 0), ("iters", 1), ("warmup", 0)))
        if not isinstance(p["check"], bool):
            raise ValueError(f"check: must be true or false, got {p['check']!r}")
        check_redop(p["redop"])
        return p

    def plan_params(self, params: Any, *, batch: int, steps: int, warmup: int
                    ) -> dict[str, Any]:
        return self.params({**params, "iters": steps, "warmup": warmup})

    def content(self, params: Any, batch: int) -> dict[str, Any]:
        return dict(params)

    def collectives(self, params: dict[str, Any]) -> tuple[str, ...]:
        return tuple(self.params(params)["colls"])

    def sites_per_step(self, params: dict[str, Any]) -> int:
        return 1  # one collective per timed iteration

    def message_bytes(self, params: dict[str, Any], *, batch: int, dtype: str,
                      world_size: int) -> int:
        return max(self.params(params)["sizes"])

    def run(self, rank: Any) -> Any:
        p = self.params(rank.params)
        records, wrong = run(
            rank.backend, colls=p["colls"], sizes=p["sizes"], dtype=rank.dtype,
            redop=p["redop"], root=p["root"], iters=p["iters"], warmup=p["warmup"],
            check=p["check"], seed=rank.seed, schedule=rank.schedule, injector=rank.injector,
            algorithms=rank.algorithms, ranks_per_node=rank.ranks_per_node, node=rank.node,
            progress=rank.progress, fault=rank.fault, hop_log=rank.hop_log)
        return RankResult(records=records, wrong=wrong,
                          ops=op_list(p["colls"], rank.algorithms))
