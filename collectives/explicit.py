"""Explicit collective algorithms on real ranks: a pattern of ``jitter_models.algorithms``
executed over the backend's non-blocking point-to-point calls.

The pattern says, per step, who sends which chunks to whom and whether the receiver
reduces or overwrites; this module follows its execution semantics exactly (see that
module's docstring): a rank runs its own steps in order with no barrier between them;
in a step it posts its receives, then each send, then waits for all of them and applies
the receives in order. A send's payload is a view of the working buffer: receives land
in scratch buffers and are applied only after the step's sends completed, so the payload
is the start-of-step content without a copy.

Per-hop jitter (``scope = "link"``): every send departs its own delay after the step is
ready (the sender waits, then sends). Sends of one step wait concurrently: they are
posted in order of their deadlines, each as soon as its deadline has passed. Backends
whose point-to-point calls must be posted as one group (NCCL) wait for the step's
largest delay, then post the group: there the step's sends depart together.

Buffers (as ``ops``): all_reduce works in place on ``inp``; all_gather fills ``out``
(world_size chunks) from ``inp``; reduce_scatter reads ``inp`` (world_size chunks, left
unchanged: it is copied into a working buffer) and leaves chunk ``rank`` in ``out``;
all_to_all sends views of ``inp`` and receives straight into ``out`` (the output is
never sent from, so no scratch is needed), with even chunks or, given per-call counts,
uneven ones (alltoallv).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jitter_models.algorithms import Pattern, chunk_bounds, pattern

from .backends import Backend, elem_size
from .inject import Injector, NoInjector
from .timing import now_ns


@dataclass(frozen=True)
class _Send:
    buf: Any
    dst: int
    link: int  # index into this rank's links (destinations), for the per-link draws
    index: int  # the message's index on its link within one call


@dataclass(frozen=True)
class _Recv:
    buf: Any      # scratch buffer the message lands in
    target: Any   # the working buffer's chunks it is applied to
    src: int
    reduce: bool


@dataclass(frozen=True)
class _Step:
    sends: tuple[_Send, ...]
    recvs: tuple[_Recv, ...]
    index: int = 0  # the pattern's (global) step number


HOP_COLUMNS = ("op", "site", "call", "step", "direction", "peer", "bytes", "delay_req_ns",
               "delay_ns", "t_post_ns", "t_done_ns")
SEND, RECV = 0, 1


class HopLog:
    """``record_hops``: one row per message an explicit collective of this rank sent
    (``direction`` 0) or received (1). ``op`` and ``site``: the records' op index and
    site of the collective (microbench: its case, one per size; a workload with one
    explicit all-reduce for all its sites: 0); ``call``: that collective's call number on
    this rank (warm-up and check calls included; a workload's calls run through its steps'
    sites in order); ``step``:
    the pattern's step; ``peer``: the destination of a send, the source of a receive;
    ``delay_req_ns`` / ``delay_ns``: a send's requested hop delay and its post time minus
    the time its step was ready (0 for a receive); ``t_post_ns``: when the message was
    posted; ``t_done_ns``: when the step's messages were done (its wait returned and the
    device synchronized: a receive is done by then). Host clock (``timing.now_ns``) of
    this rank."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []

    def table(self) -> dict[str, np.ndarray]:
        data = np.array(self.rows, dtype=np.int64).reshape(-1, len(HOP_COLUMNS))
        return {name: data[:, i].copy() for i, name in enumerate(HOP_COLUMNS)}


class Explicit:
    """One explicit collective on this rank, its buffers allocated once."""

    def __init__(self, backend: Backend, *, algorithm: str, collective: str, count: int,
                 dtype: str, redop: str = "sum", ranks_per_node: int | None = None):
        """``count``: elements of the buffer the pattern works on (all_reduce: the
        buffer; all_gather and reduce_scatter: the whole, world_size chunks)."""
        self.backend, self.collective, self.redop = backend, collective, redop
        n, rank = backend.world_size, backend.rank
        self.pattern: Pattern = pattern(algorithm, collective, n, ranks_per_node)
        if collective in ("all_gather", "reduce_scatter", "all_to_all") and count % n:
            raise ValueError(f"count: {collective} needs a multiple of world_size={n}, "
                             f"got {count}")
        self.count = count
        self.work = (None if collective in ("all_reduce", "all_to_all")
                     else backend.empty(count, dtype))
        self.bounds = chunk_bounds(count, self.pattern.n_chunks)
        self.links: list[int] = []  # destinations, in the order this rank first sends
        self._dtype = dtype
        self._steps_on: Any = None
        self._scratch: list[list[Any]] | None = None
        self._plan: list[tuple[tuple[int, int, int, int], ...]] = []
        self.hop_log: HopLog | None = None
        """Set (with ``hop_op``) to record one row per message (``record_hops``)."""
        self.hop_op = self.hop_site = 0
        self._calls = 0
        self._esize = elem_size(dtype)
        per_link: dict[int, int] = {}
        self.sends: list[tuple[int, int]] = []
        """(destination, index of the message on that link within one call) of each of
        this rank's sends, in pattern order: the columns of ``run``'s hop delays."""
        for _, sends, _recvs in self.pattern.rank_steps(rank):
            for t in sends:
                if t.dst not in per_link:
                    per_link[t.dst] = 0
                    self.links.append(t.dst)
                self.sends.append((t.dst, per_link[t.dst]))
                per_link[t.dst] += 1
        self.messages_per_link = [per_link[d] for d in self.links]
        """Messages this rank sends on each of its links per call (paired with links)."""

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        return self.bounds[lo][0], self.bounds[hi - 1][1]

    def _bind(self, work: Any) -> list[_Step]:
        """The steps with views into ``work`` (cached while the buffer stays the same; a
        caller with a fresh buffer per call pays for the views, not for new scratch)."""
        if self._steps_on is work:
            return self._steps
        backend, rank = self.backend, self.backend.rank
        if self._scratch is None:  # the receives' landing buffers, allocated once
            self._scratch = [[backend.empty(b - a, self._dtype) for a, b in
                              (self._span(t.lo, t.hi) for t in recvs)]
                             for _, _, recvs in self.pattern.rank_steps(rank)]
        seen: dict[int, int] = {}
        steps = []
        for (index, sends, recvs), scratch in zip(self.pattern.rank_steps(rank),
                                                  self._scratch):
            out_sends = []
            for t in sends:
                a, b = self._span(t.lo, t.hi)
                li = self.links.index(t.dst)
                out_sends.append(_Send(work[a:b], t.dst, li, seen.get(t.dst, 0)))
                seen[t.dst] = seen.get(t.dst, 0) + 1
            out_recvs = []
            for t, buf in zip(recvs, scratch):
                a, b = self._span(t.lo, t.hi)
                out_recvs.append(_Recv(buf, work[a:b], t.src, t.reduce))
            steps.append(_Step(tuple(out_sends), tuple(out_recvs), index))
        self._steps, self._steps_on = steps, work
        return steps


    def _bind_all_to_all(self, inp: Any, out: Any, in_counts: Sequence[int] | None,
                         out_counts: Sequence[int] | None) -> list[_Step]:
        """all_to_all's steps for one call: sends view ``inp``'s blocks, receives land in
        ``out``'s; blocks are even chunks of ``count``, or packed blocks of the counts."""
        n, rank = self.backend.world_size, self.backend.rank
        if (in_counts is None) != (out_counts is None):
            raise ValueError("in_counts, out_counts: give both (uneven) or neither (even)")
        if in_counts is None:
            src_b = dst_b = self.bounds
        else:
            if len(in_counts) != n or len(out_counts) != n:
                raise ValueError(f"in_counts, out_counts: need {n} counts each")
            src_b, dst_b = _packed(in_counts), _packed(out_counts)
            if src_b[-1][1] > len(inp) or dst_b[-1][1] > len(out):
                raise ValueError("in_counts, out_counts: add up to more than the buffers")
        a, b = src_b[rank]
        self.backend.copy(out[slice(*dst_b[rank])], inp[a:b])  # the own block: local
        seen: dict[int, int] = {}
        steps = []
        for index, sends, recvs in self.pattern.rank_steps(rank):
            out_sends = []
            for t in sends:
                out_sends.append(_Send(inp[src_b[t.lo][0]:src_b[t.hi - 1][1]], t.dst,
                                       self.links.index(t.dst), seen.get(t.dst, 0)))
                seen[t.dst] = seen.get(t.dst, 0) + 1
            out_recvs = []
            for t in recvs:
                first, stop = t.lands
                view = out[dst_b[first][0]:dst_b[stop - 1][1]]
                out_recvs.append(_Recv(view, view, t.src, False))
            steps.append(_Step(tuple(out_sends), tuple(out_recvs), index))
        return steps

    def run(self, inp: Any, out: Any = None, *, hop_delays_ns: Sequence[int] | None = None,
            injector: Injector | None = None, in_counts: Sequence[int] | None = None,
            out_counts: Sequence[int] | None = None) -> tuple[int, int]:
        """One call. ``hop_delays_ns[j]``: the delay of this rank's j-th send of the call
        (in pattern order), None for none. all_to_all only: ``in_counts[j]`` elements go
        to rank j, ``out_counts[j]`` come from it (packed blocks; None: even chunks).
        Returns (requested, achieved) hop delay summed over this rank's sends, in ns:
        achieved is each send's post time minus the time its step was ready."""
        backend = self.backend
        if self.collective == "all_to_all":
            steps = self._bind_all_to_all(inp, out, in_counts, out_counts)
            return self._run_steps(steps, hop_delays_ns, injector)
        if self.collective == "all_reduce":
            work = inp.reshape(-1)  # (a model's (batch, hidden) activations: a view)
            if work.shape[0] != self.count:
                raise ValueError(f"inp: {self.collective} was set up for {self.count} "
                                 f"elements, got {work.shape[0]}")
        else:
            work = self.work
            if self.collective == "reduce_scatter":
                backend.copy(work, inp)
            else:
                a, b = self._span(backend.rank, backend.rank + 1)
                backend.copy(work[a:b], inp)
        requested, achieved = self._run_steps(self._bind(work), hop_delays_ns, injector)
        if self.redop == "avg" and self.pattern.steps and self.collective != "all_gather":
            backend.divide(work, backend.world_size)
        if self.collective == "reduce_scatter":
            a, b = self._span(backend.rank, backend.rank + 1)
            backend.copy(out, work[a:b])
        elif self.collective == "all_gather":
            backend.copy(out, work)
        return requested, achieved

    def _run_steps(self, steps: list[_Step], hop_delays_ns: Sequence[int] | None,
                   injector: Injector | None) -> tuple[int, int]:
        """Walk the steps: post, wait, apply each receive (a receive that landed in
        place, ``buf is target``, needs nothing applied); (requested, achieved) ns."""
        backend = self.backend
        inject = injector if injector is not None else NoInjector()
        requested = achieved = 0
        j = 0
        for step in steps:
            delays = ([int(hop_delays_ns[j + k]) for k in range(len(step.sends))]
                      if hop_delays_ns is not None else [0] * len(step.sends))
            j += len(step.sends)
            requested += sum(delays)
            achieved += self._step(step, delays, inject)
            for r in step.recvs:
                if r.buf is r.target:
                    continue
                if r.reduce:
                    backend.combine(r.target, r.buf, self.redop)
                else:
                    backend.copy(r.target, r.buf)
        self._calls += 1
        return requested, achieved

    def _step(self, step: _Step, delays: list[int], inject: Injector) -> int:
        """Post the step's messages, each send after its delay; wait; the achieved delay."""
        if self.hop_log is not None:
            return self._logged_step(step, delays, inject)
        backend = self.backend
        recvs = [(r.buf, r.src) for r in step.recvs]
        t_ready = now_ns()
        achieved = 0
        if backend.grouped_p2p or not step.sends:
            if step.sends:
                inject.inject(t_ready, max(delays))
                achieved = (now_ns() - t_ready) * len(step.sends)
            reqs = backend.post_group([(s.buf, s.dst) for s in step.sends], recvs)
        elif not any(delays):  # no hop jitter: no clock reads or waits in the way
            reqs = [backend.irecv(b, src) for b, src in recvs]
            reqs += [backend.isend(s.buf, s.dst) for s in step.sends]
        else:
            reqs = [backend.irecv(b, src) for b, src in recvs]
            for k in sorted(range(len(delays)), key=delays.__getitem__):  # by deadline
                inject.inject(t_ready, delays[k])
                achieved += now_ns() - t_ready
                s = step.sends[k]
                reqs.append(backend.isend(s.buf, s.dst))
        backend.wait_all(reqs)
        return achieved

    def _logged_step(self, step: _Step, delays: list[int], inject: Injector) -> int:
        """``_step`` with a clock read at each post and one row per message."""
        backend = self.backend
        t_ready = now_ns()
        reqs = [backend.irecv(r.buf, r.src) for r in step.recvs] \
            if not backend.grouped_p2p else []
        posted = [t_ready] * len(step.sends)
        t_recv = t_ready
        if backend.grouped_p2p:  # one group, receives included, after the largest delay
            if step.sends:
                inject.inject(t_ready, max(delays))
            t_recv = now_ns()
            posted = [t_recv] * len(step.sends)
            reqs = backend.post_group([(s.buf, s.dst) for s in step.sends],
                                      [(r.buf, r.src) for r in step.recvs])
        else:
            for k in sorted(range(len(delays)), key=delays.__getitem__):  # by deadline
                inject.inject(t_ready, delays[k])
                posted[k] = now_ns()
                reqs.append(backend.isend(step.sends[k].buf, step.sends[k].dst))
        backend.wait_all(reqs)
        backend.synchronize()  # (NCCL's wait returns once the work is queued)
        t_done = now_ns()
        head = (self.hop_op, self.hop_site, self._calls, step.index)
        rows = self.hop_log.rows  # type: ignore[union-attr]
        for s, d, t in zip(step.sends, delays, posted):
            rows.append((*head, SEND, s.dst, len(s.buf) * self._esize, d, t - t_ready, t,
                         t_done))
        for r in step.recvs:
            rows.append((*head, RECV, r.src, len(r.buf) * self._esize, 0, 0, t_recv, t_done))
        return sum(t - t_ready for t in posted)


def _packed(counts: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) of consecutive blocks of ``counts`` elements."""
    out, start = [], 0
    for c in counts:
        if c < 0:
            raise ValueError(f"counts: must be >= 0, got {c}")
        out.append((start, start + int(c)))
        start += int(c)
    return out


def link_delays(schedule: Any, seed: int, rank: int, calls: Sequence[tuple[Explicit, int]]
                ) -> tuple[list[np.ndarray], int]:
    """This rank's hop delays for a run: for each (collective, number of calls) in run
    order, an int64 ns array [calls, sends per call] (``Explicit.sends`` order), and the
    number of draws clipped. A link's message index runs on over the whole run, so the
    k-th message on a link gets the link's k-th draw (``Schedule.link_delays_ns``): each
    collective's calls run as one block, in the order given (warm-up calls included)."""
    total: dict[int, int] = {}
    for ex, n_calls in calls:
        for dst, m in zip(ex.links, ex.messages_per_link):
            total[dst] = total.get(dst, 0) + n_calls * m
    draws, clipped = {}, 0
    for dst, n in total.items():
        draws[dst], c = schedule.link_delays_ns(seed, rank, dst, n)
        clipped += c
    cursor = dict.fromkeys(total, 0)
    out = []
    for ex, n_calls in calls:
        per_call = dict(zip(ex.links, ex.messages_per_link))
        table = np.zeros((n_calls, len(ex.sends)), dtype=np.int64)
        t = np.arange(n_calls)
        for j, (dst, idx) in enumerate(ex.sends):
            table[:, j] = draws[dst][cursor[dst] + t * per_call[dst] + idx]
        for dst, m in per_call.items():
            cursor[dst] += n_calls * m
        out.append(table)
    return out, clipped


def all_reduce_call(backend: Backend, *, algorithm: str, count: int, dtype: str,
                    ranks_per_node: int, schedule: Any = None, seed: int = 0,
                    n_calls: int = 0, injector: Injector | None = None,
                    hop_log: HopLog | None = None):
    """A workload's all-reduce of ``count`` elements in place: ``call(t) -> (requested,
    achieved)`` hop delays in ns. ``native``: the backend's own call (no hops, (0, 0));
    otherwise an explicit algorithm whose messages take a link-scoped ``schedule``'s
    delays, drawn for ``n_calls`` calls in call order (warm-up included). Also returns
    the number of hop draws clipped."""
    from jitter_models.algorithms import has_pattern

    if not has_pattern(algorithm):
        def native(t: Any) -> tuple[int, int]:
            backend.all_reduce(t)
            return 0, 0
        return native, 0
    ex = Explicit(backend, algorithm=algorithm, collective="all_reduce", count=count,
                  dtype=dtype, ranks_per_node=ranks_per_node)
    ex.hop_log = hop_log
    hops, clipped = None, 0
    if schedule is not None and schedule.scope == "link":
        (hops,), clipped = link_delays(schedule, seed, backend.rank, [(ex, n_calls)])
    calls = [0]  # the call's number in the run: its row of hop delays

    def explicit(t: Any) -> tuple[int, int]:
        k = calls[0]
        calls[0] = k + 1
        return ex.run(t, hop_delays_ns=None if hops is None else hops[k], injector=injector)
    return explicit, clipped
