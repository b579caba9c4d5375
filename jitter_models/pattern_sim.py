"""An explicit algorithm's pattern executed as a vectorized recurrence (the simulator's
engine), the per-hop delays it takes, and a plain discrete-event simulation as reference.

Timing follows ``pattern.py`` exactly: a rank's step starts when its previous step
finished (its first at its time of entering the collective); its sends depart at step start
+ their hop delay, concurrently; a receive arrives at its sender's departure + the
message's hop time (``Network.hop_time`` of the bytes it carries); the step finishes at the
max of the rank's own departures and its receives' arrivals, never before it started.
Hop delays are waits (>= 0, as every schedule draws them).

``finish`` does a few numpy operations per pattern step over its transfers, so its cost is
the message count ("hop updates"). A step where every rank sends once, in rank order, and
receives once is a gather and a max (a slice and a max when the receivers are a cyclic
shift, as in a ring); other steps scatter with ``np.maximum.at`` where ranks repeat.

Building a ``Pattern`` of Transfer objects costs microseconds per message, too much for a
ring at N = 4096 (33.5 M messages) or recursive doubling at N = 2**20 (21 M):
``compile_algorithm`` builds the same arrays directly with numpy where ``algorithm_arrays``
has a builder (tests/test_pattern_sim.py checks them against ``compile_pattern`` of the
built pattern) and falls back to the pattern for any other. Steps with identical
senders and receivers share their arrays (every step of a ring): treat them as read-only.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .algorithm_arrays import ARRAY_BUILDERS
from .algorithms import pattern as build_pattern
from .algorithms import pattern_args
from .network import Network
from .pattern import Pattern


@dataclass(frozen=True, eq=False)
class Step:
    """One pattern step as arrays over its transfers, and how ``finish`` updates it."""

    src: np.ndarray
    """int64 sender of each transfer."""
    dst: np.ndarray
    """int64 receiver of each transfer."""
    frac: np.ndarray
    """float64 fraction of the working buffer each transfer carries: (hi - lo) / n_chunks."""
    link_index: np.ndarray
    """Each transfer's number among the pattern's messages on its (src, dst) link
    (``Pattern.link_index``)."""
    kind: str
    """"shift": every rank sends once, in rank order, to rank + ``shift`` (mod N);
    "permutation": every rank sends once, in rank order, and receives once;
    "scatter": anything else."""
    shift: int = 0
    inverse: np.ndarray | None = None
    """permutation: the transfer each rank receives."""
    unique_src: bool = True
    unique_dst: bool = True


@dataclass(frozen=True, eq=False)
class CompiledPattern:
    """A pattern's steps as arrays (``compile_pattern``, ``compile_algorithm``)."""

    world_size: int
    steps: tuple[Step, ...]
    messages: int
    """Total number of transfers."""


_COMPILED: dict[int, CompiledPattern] = {}


def compile_pattern(pattern: Pattern) -> CompiledPattern:
    """``pattern``'s steps as arrays, cached for as long as the pattern lives (keyed by
    identity: hashing a pattern walks all its transfers)."""
    done = _COMPILED.get(id(pattern))
    if done is None:
        index = pattern.link_index()
        rows = []
        for step, links in zip(pattern.steps, index):
            m = len(step)
            rows.append((np.fromiter((t.src for t in step), np.int64, m),
                         np.fromiter((t.dst for t in step), np.int64, m),
                         np.fromiter(((t.hi - t.lo) / pattern.n_chunks for t in step),
                                     np.float64, m),
                         np.array(links, dtype=np.int64)))
        done = _compiled(pattern.world_size, rows)
        _COMPILED[id(pattern)] = done
        weakref.finalize(pattern, _COMPILED.pop, id(pattern), None)
    return done


def compile_algorithm(algorithm: str, collective: str, world_size: int,
                      ranks_per_node: int | None = None) -> CompiledPattern:
    """``compile_pattern(algorithms.pattern(...))`` without building the pattern's Transfer
    objects where an array builder exists (``algorithm_arrays``); cached. Arguments as
    ``algorithms.pattern``, checked by it."""
    return _compile_algorithm(algorithm, collective,
                              *pattern_args(algorithm, collective, world_size, ranks_per_node))


@functools.lru_cache(maxsize=16)
def _compile_algorithm(algorithm: str, collective: str, n: int, k: int | None
                       ) -> CompiledPattern:
    builder = ARRAY_BUILDERS.get((algorithm, collective))
    if builder is None:
        return compile_pattern(build_pattern(algorithm, collective, n, k))
    return _compiled(n, builder(n, k) if n > 1 else [])


def _compiled(n: int, rows: list[tuple[np.ndarray, ...]]) -> CompiledPattern:
    """Steps from (src, dst, frac, link_index) rows; rows sharing src and dst arrays share
    their analysis."""
    plans: dict[tuple[int, int], dict[str, Any]] = {}
    steps = []
    for src, dst, frac, link in rows:
        for a in (src, dst, frac, link):
            a.flags.writeable = False
        key = (id(src), id(dst))
        if key not in plans:
            plans[key] = _plan(n, src, dst)
        steps.append(Step(src, dst, frac, link, **plans[key]))
    return CompiledPattern(n, tuple(steps), sum(s.src.size for s in steps))


def _plan(n: int, src: np.ndarray, dst: np.ndarray) -> dict[str, Any]:
    """How ``finish`` updates a step with these senders and receivers (``Step.kind``)."""
    if src.size == n and np.array_equal(src, np.arange(n)):
        b = int(dst[0]) % n
        if np.array_equal(dst[:n - b], np.arange(b, n)) and np.array_equal(dst[n - b:],
                                                                             np.arange(b)):
            return {"kind": "shift", "shift": b}
        inverse = np.full(n, -1, dtype=np.int64)
        inverse[dst] = np.arange(n)
        if inverse.min() >= 0:  # n receivers, none missing: each rank receives once
            inverse.flags.writeable = False
            return {"kind": "permutation", "inverse": inverse}
    return {"kind": "scatter", "unique_src": np.bincount(src, minlength=n).max() <= 1,
            "unique_dst": np.bincount(dst, minlength=n).max() <= 1}


# --- the recurrence ---------------------------------------------------------------------

def hop_times(compiled: CompiledPattern, network: Network, nbytes: float) -> list[np.ndarray]:
    """Per step, each transfer's seconds from departure to arrival: ``network.hop_time``
    of nbytes * frac. Steps with the same arrays share one (read-only) result."""
    done: dict[tuple[int, int, int], np.ndarray] = {}
    out = []
    for s in compiled.steps:
        key = (id(s.src), id(s.dst), id(s.frac))
        if key not in done:
            done[key] = network.hop_time(s.src, s.dst, nbytes * s.frac)
            done[key].flags.writeable = False
        out.append(done[key])
    return out


def finish(compiled: CompiledPattern, start: Any, hop_time: list[np.ndarray],
           hop_delay: Iterable[np.ndarray] | None = None) -> np.ndarray:
    """Each rank's finish time (N,), seconds, from its time of entering the collective
    (``start``, (N,)), each step's hop times and, optionally, hop delays (per step, one per
    transfer, >= 0; a list, or an iterator such as ``link_delays_bulk``'s, consumed in step
    order): the timing of the module docstring.

    Many independent calls at once: ``start`` of shape (N, *S) runs one call per trailing
    index (e.g. S Monte Carlo samples, or the same draws on several networks); hop times
    and delays are then (M,) (shared) or (M, *S) per step, and the result is (N, *S)."""
    n = compiled.world_size
    clock = np.array(start, dtype=np.float64)
    if clock.shape[:1] != (n,):
        raise ValueError(f"start: expected shape ({n},) or ({n}, ...), got {clock.shape}")
    trail = clock.shape[1:]

    def fits(a: Any, s: Step) -> bool:
        return np.shape(a) in (s.src.shape, s.src.shape + trail)

    bad = ValueError("{}: expected one array per step with one value per transfer")
    if len(hop_time) != len(compiled.steps) or any(
            not fits(a, s) for a, s in zip(hop_time, compiled.steps)):
        raise ValueError(str(bad).format("hop_time"))
    if hop_delay is None:
        for k, s in enumerate(compiled.steps):
            clock = _UPDATE[s.kind](clock, s, _lift(hop_time[k], clock), None)
        return clock
    delays, end = iter(hop_delay), object()
    for k, s in enumerate(compiled.steps):
        d = next(delays, end)
        if d is end or d is None or not fits(d, s):
            raise ValueError(str(bad).format("hop_delay"))
        clock = _UPDATE[s.kind](clock, s, _lift(hop_time[k], clock), _lift(d, clock))
    if next(delays, end) is not end:
        raise ValueError(str(bad).format("hop_delay"))
    return clock


def _lift(a: np.ndarray, clock: np.ndarray) -> np.ndarray:
    """Per-transfer values shaped to broadcast against the clock's trailing axes."""
    a = np.asarray(a)
    return a.reshape(a.shape + (1,) * (clock.ndim - a.ndim))


def _shift(clock: np.ndarray, s: Step, hop: np.ndarray, delay: np.ndarray | None
           ) -> np.ndarray:
    # Rank r sends transfer r (departing at dep[r] >= its start: delays are waits) and
    # receives transfer r - shift.
    dep = clock if delay is None else clock + delay
    arr = dep + hop
    out = np.empty(np.broadcast_shapes(clock.shape, arr.shape))
    n, b = clock.shape[0], s.shift
    np.maximum(dep[b:], arr[:n - b], out=out[b:])
    np.maximum(dep[:b], arr[n - b:], out=out[:b])
    return out


def _permutation(clock: np.ndarray, s: Step, hop: np.ndarray, delay: np.ndarray | None
                 ) -> np.ndarray:
    dep = clock if delay is None else clock + delay
    return np.maximum(dep, (dep + hop)[s.inverse])


def _scatter(clock: np.ndarray, s: Step, hop: np.ndarray, delay: np.ndarray | None
             ) -> np.ndarray:
    dep = clock[s.src]  # departures from the start-of-step clocks, before any update
    if delay is not None:
        dep = dep + delay
        if s.unique_src:
            clock[s.src] = np.maximum(clock[s.src], dep)
        else:
            np.maximum.at(clock, s.src, dep)
    arr = dep + hop
    if s.unique_dst:
        clock[s.dst] = np.maximum(clock[s.dst], arr)
    else:
        np.maximum.at(clock, s.dst, arr)
    return clock


_UPDATE = {"shift": _shift, "permutation": _permutation, "scatter": _scatter}


def advance(clock: np.ndarray, step: Step, hop_time: np.ndarray,
            hop_delay: np.ndarray | None = None, inplace: bool = False) -> np.ndarray:
    """One step of ``finish``'s recurrence: the clocks (N, ...) after ``step``, from its
    transfers' hop times and optional delays ((M,) or (M, ...) like the clock).
    ``inplace``: ``clock`` (a float64 array the caller gives up) may be updated and
    returned instead of a copy."""
    if not (inplace and isinstance(clock, np.ndarray) and clock.dtype == np.float64
            and clock.flags.writeable):
        clock = np.array(clock, dtype=np.float64)
    return _UPDATE[step.kind](clock, step, _lift(hop_time, clock),
                              None if hop_delay is None else _lift(hop_delay, clock))


# --- hop delays ---------------------------------------------------------------------------

def _check_link_scope(schedule: Any, n_calls: Any) -> None:
    if schedule.scope != "link":
        raise ValueError(f"jitter {schedule.name!r}: link delays need scope = 'link', "
                         f"got scope={schedule.scope!r}")
    if isinstance(n_calls, bool) or not isinstance(n_calls, (int, np.integer)) or n_calls < 0:
        raise ValueError(f"n_calls: must be an integer >= 0, got {n_calls!r}")


def _link_ids(compiled: CompiledPattern) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """The pattern's links as sorted keys src * N + dst, each step's link ids, and each
    link's messages per call. Work is per distinct (src, dst) arrays, not per step."""
    n = compiled.world_size
    groups: dict[tuple[int, int], list[int]] = {}
    for k, s in enumerate(compiled.steps):
        groups.setdefault((id(s.src), id(s.dst)), []).append(k)
    keys = {g: compiled.steps[ks[0]].src * n + compiled.steps[ks[0]].dst
            for g, ks in groups.items()}
    links = np.unique(np.concatenate([np.zeros(0, np.int64), *keys.values()]))
    per_call = np.zeros(links.size, dtype=np.int64)
    step_ids: list[np.ndarray] = [np.zeros(0, np.int64)] * len(compiled.steps)
    for g, ks in groups.items():
        ids = np.searchsorted(links, keys[g])
        per_call[ids] += len(ks)  # a link appears at most once in a step
        for k in ks:
            step_ids[k] = ids
    return links, step_ids, per_call


def link_delays_exact(schedule: Any, seed: int, compiled: CompiledPattern, n_calls: int
                      ) -> list[np.ndarray]:
    """Per step, shape (n_calls, transfers): the hop delays, seconds, that real ranks use
    for the first ``n_calls`` calls of this pattern in a run (``collectives.explicit``):
    a link's stream (``Schedule.link_delays``) runs on over the run, so call c's message
    i of a link with m messages per call is the link's draw c * m + i. One stream per link:
    fine up to a few thousand links."""
    _check_link_scope(schedule, n_calls)
    n = compiled.world_size
    links, step_ids, per_call = _link_ids(compiled)
    offset = np.concatenate([[0], np.cumsum(per_call * n_calls)])
    pool = np.empty(int(offset[-1]))
    for i, key in enumerate(links.tolist()):
        a, b = int(offset[i]), int(offset[i + 1])
        pool[a:b] = schedule.link_delays(seed, key // n, key % n, b - a)
    calls = np.arange(n_calls, dtype=np.int64)[:, None]
    return [pool[(offset[ids] + s.link_index) + calls * per_call[ids]]
            for s, ids in zip(compiled.steps, step_ids)]


def link_delays_bulk(schedule: Any, rng: np.random.Generator, compiled: CompiledPattern
                     ) -> Iterator[np.ndarray]:
    """One call's hop delays, step by step as ``finish`` consumes them, drawn iid from
    ``rng``: the link law (``schedule.temporal.marginal(schedule.dist)``; links in
    ``stragglers.links``: the stragglers' marginal). Statistically the same law per message
    as :func:`link_delays_exact`, not the same draws, and the temporal structure along a
    link (AR(1), bursts) is dropped: for large N, where one stream per link costs too much.
    Drawn per step, so memory is one step's transfers (a ring at N = 65,536 has 8.6e9)."""
    _check_link_scope(schedule, 1)  # here, not at the first step: a generator runs late
    return _bulk_steps(schedule, rng, compiled)


def _bulk_steps(schedule: Any, rng: np.random.Generator, compiled: CompiledPattern
                ) -> Iterator[np.ndarray]:
    law = schedule.temporal.marginal(schedule.dist)
    slow = schedule.stragglers.links if schedule.stragglers is not None else None
    n = compiled.world_size
    slow_keys = np.array([a * n + b for a, b in slow or () if a < n and b < n], np.int64)
    slow_law = schedule.temporal.marginal(schedule.stragglers.dist) if slow_keys.size else None
    hit: dict[tuple[int, int], np.ndarray] = {}
    for s in compiled.steps:
        d = np.asarray(law.sample(rng, s.src.size), dtype=np.float64)
        if slow_law is not None:
            key = (id(s.src), id(s.dst))
            if key not in hit:
                hit[key] = np.flatnonzero(np.isin(s.src * n + s.dst, slow_keys))
            if hit[key].size:
                d[hit[key]] = slow_law.sample(rng, hit[key].size)
        yield d


# --- the reference: one event at a time --------------------------------------------------

def finish_events(pattern: Pattern, start: Any, hop_time_fn: Callable[[int, int], float],
                  hop_delay_fn: Callable[[int, int], float]) -> np.ndarray:
    """Each rank's finish time by a discrete-event simulation of ``pattern`` (a heap of
    step begins, departures and arrivals), written apart from ``finish`` and
    ``pattern.finish_times`` to check them. ``hop_time_fn(k, j)`` and
    ``hop_delay_fn(k, j)``: seconds, of transfer ``pattern.steps[k][j]``."""
    n = pattern.world_size
    done = np.array(start, dtype=np.float64)
    if done.shape != (n,):
        raise ValueError(f"start: expected shape ({n},), got {done.shape}")
    mine: list[list[int]] = [[] for _ in range(n)]  # each rank's steps, in order
    waits: dict[tuple[int, int], int] = {}  # a (rank, step)'s departures + arrivals to come
    sends: dict[tuple[int, int], list[int]] = {}
    for k, step in enumerate(pattern.steps):
        for j, t in enumerate(step):
            sends.setdefault((t.src, k), []).append(j)
            for r in (t.src, t.dst):
                if not mine[r] or mine[r][-1] != k:
                    mine[r].append(k)
                waits[r, k] = waits.get((r, k), 0) + 1
    latest: dict[tuple[int, int], float] = {}
    begun: set[tuple[int, int]] = set()
    position = [0] * n  # the index in mine[r] of the step rank r is in
    heap: list[tuple[float, int, str, int, int, int]] = []
    order = itertools.count()

    def post(t: float, kind: str, r: int, k: int, j: int = -1) -> None:
        heapq.heappush(heap, (t, next(order), kind, r, k, j))

    for r in range(n):
        if mine[r]:
            post(float(done[r]), "begin", r, mine[r][0])
    while heap:
        t, _, kind, r, k, j = heapq.heappop(heap)
        key = (r, k)
        latest[key] = max(latest.get(key, -np.inf), t)
        if kind == "begin":
            begun.add(key)
            for jj in sends.get(key, ()):
                post(t + hop_delay_fn(k, jj), "depart", r, k, jj)
        else:
            waits[key] -= 1
            if kind == "depart":
                post(t + hop_time_fn(k, j), "arrive", pattern.steps[k][j].dst, k, j)
        if key in begun and waits[key] == 0:
            waits[key] = -1  # completed: no event of this (rank, step) is left
            position[r] += 1
            if position[r] < len(mine[r]):
                post(latest[key], "begin", r, mine[r][position[r]])
            else:
                done[r] = latest[key]
    return done
