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
``compile_algorithm`` builds the same arrays directly with numpy for the algorithms of
``algorithm_builders`` (tests/test_pattern_sim.py checks them against ``compile_pattern``
of the built pattern) and falls back to the pattern for any other. Steps with identical
senders and receivers share their arrays (every step of a ring): treat them as read-only.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .algorithm_builders import check_patterned, takes_ranks_per_node
from .algorithms import pattern as build_pattern
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
    objects where an array builder exists (module docstring); cached. Arguments as
    ``algorithms.pattern``: ``ranks_per_node`` is used by hierarchical only."""
    check_patterned(algorithm, collective)
    for name, v in (("world_size", world_size), ("ranks_per_node", ranks_per_node)):
        if name == "ranks_per_node" and not takes_ranks_per_node(algorithm):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    k = int(ranks_per_node) if takes_ranks_per_node(algorithm) else None
    return _compile_algorithm(algorithm, collective, int(world_size), k)


@functools.lru_cache(maxsize=16)
def _compile_algorithm(algorithm: str, collective: str, n: int, k: int | None
                       ) -> CompiledPattern:
    builder = _ARRAY_BUILDERS.get((algorithm, collective))
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


# --- array builders: algorithm_builders' steps without Transfer objects ----------------

def _fill(value: float, m: int, dtype: Any = np.float64) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=dtype), (m,))


def _ring_rows(ranks: np.ndarray, phases: int, n_chunks: int) -> list[tuple[np.ndarray, ...]]:
    """Each step ranks[i] -> ranks[i + 1], one chunk: each link carries one message per
    step, so its link index is the step's number."""
    m = ranks.size
    src, dst, frac = ranks, np.roll(ranks, -1), np.full(m, 1.0 / n_chunks)
    return [(src, dst, frac, _fill(s, m, np.int64)) for s in range(phases * (m - 1))]


def _doubling_rows(n: int, k: int | None) -> list[tuple[np.ndarray, ...]]:
    """Fold-in, whole-buffer exchanges at distance 1, 2, 4 ... among the active ranks,
    fold-out; every link carries one message."""
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    evens = 2 * np.arange(rem, dtype=np.int64)
    active = np.concatenate([evens + 1, np.arange(2 * rem, n, dtype=np.int64)])
    q = np.arange(p, dtype=np.int64)
    exchanges = [(active, active[q ^ (1 << i)]) for i in range(p.bit_length() - 1)]
    pairs = ([(evens, evens + 1)] if rem else []) + exchanges + (
        [(evens + 1, evens)] if rem else [])
    return [(a, b, _fill(1.0, a.size), _fill(0, a.size, np.int64)) for a, b in pairs]


def _tree_rows(bases: np.ndarray, size: int, last: int, height: int
               ) -> list[tuple[np.ndarray, ...]]:
    """Binary-tree reduce (deepest level first) then broadcast, in ``height`` slots each,
    in every node of ``size`` ranks starting at ``bases`` and one last node of ``last``
    ranks after them (0: none); nodes in order within a slot, as ``_merge``."""
    reduce, broadcast = [], []
    for level in range(1, height + 1):
        lo = 2**level - 1
        child = np.arange(lo, min(2 * lo + 1, size), dtype=np.int64)
        tail = np.arange(lo, min(2 * lo + 1, last), dtype=np.int64)
        end = bases[-1] + size if bases.size else 0
        kids = np.concatenate([(bases[:, None] + child).ravel(), end + tail])
        parents = np.concatenate([(bases[:, None] + (child - 1) // 2).ravel(),
                                  end + (tail - 1) // 2])
        ones, zeros = _fill(1.0, kids.size), _fill(0, kids.size, np.int64)
        reduce.insert(0, (kids, parents, ones, zeros))
        broadcast.append((parents, kids, ones, zeros))
    return reduce + broadcast


def _tree_all_reduce(n: int, k: int | None) -> list[tuple[np.ndarray, ...]]:
    return _tree_rows(np.zeros(1, dtype=np.int64), n, 0, n.bit_length() - 1)


def _hierarchical(n: int, k: int | None) -> list[tuple[np.ndarray, ...]]:
    """Tree reduce in each node, ring among the node leaders, tree broadcast in each node."""
    assert k is not None
    full = n // k
    leaders = np.arange(0, n, k, dtype=np.int64)
    tree = _tree_rows(leaders[:full], k, n - full * k, min(k, n).bit_length() - 1)
    half = len(tree) // 2
    return tree[:half] + _ring_rows(leaders, 2, leaders.size) + tree[half:]


_ARRAY_BUILDERS: dict[tuple[str, str], Callable[[int, int | None], list]] = {
    ("ring", "all_reduce"): lambda n, k: _ring_rows(np.arange(n, dtype=np.int64), 2, n),
    ("ring", "all_gather"): lambda n, k: _ring_rows(np.arange(n, dtype=np.int64), 1, n),
    ("ring", "reduce_scatter"): lambda n, k: _ring_rows(np.arange(n, dtype=np.int64), 1, n),
    ("recursive_doubling", "all_reduce"): _doubling_rows,
    ("tree", "all_reduce"): _tree_all_reduce,
    ("hierarchical", "all_reduce"): _hierarchical,
}


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
           hop_delay: list[np.ndarray] | None = None) -> np.ndarray:
    """Each rank's finish time (N,), seconds, from its time of entering the collective
    (``start``, (N,)), each step's hop times and, optionally, hop delays (per step, one per
    transfer, >= 0): the timing of the module docstring."""
    n = compiled.world_size
    clock = np.array(start, dtype=np.float64)
    if clock.shape != (n,):
        raise ValueError(f"start: expected shape ({n},), got {clock.shape}")
    for name, per_step in (("hop_time", hop_time), ("hop_delay", hop_delay)):
        if per_step is not None and (len(per_step) != len(compiled.steps) or any(
                np.shape(a) != s.src.shape for a, s in zip(per_step, compiled.steps))):
            raise ValueError(f"{name}: expected one array per step with one value per "
                             "transfer")
    for k, s in enumerate(compiled.steps):
        clock = _UPDATE[s.kind](clock, s, hop_time[k],
                                None if hop_delay is None else hop_delay[k])
    return clock


def _shift(clock: np.ndarray, s: Step, hop: np.ndarray, delay: np.ndarray | None
           ) -> np.ndarray:
    # Rank r sends transfer r (departing at dep[r] >= its start: delays are waits) and
    # receives transfer r - shift.
    dep = clock if delay is None else clock + delay
    arr = dep + hop
    out = np.empty_like(clock)
    n, b = clock.size, s.shift
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
        dep += delay
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


def link_delays_bulk(schedule: Any, rng: np.random.Generator, compiled: CompiledPattern,
                     n_calls: int) -> list[np.ndarray]:
    """:func:`link_delays_exact`'s shapes, drawn iid in bulk from ``rng``: the link law
    (``schedule.temporal.marginal(schedule.dist)``; links in ``stragglers.links``: the
    stragglers' marginal). Statistically the same law per message, not the same draws, and
    the temporal structure along a link (AR(1), bursts) is dropped: for large N, where one
    stream per link costs too much. Per step, views of one (n_calls, messages) array."""
    _check_link_scope(schedule, n_calls)
    m = compiled.messages
    law = schedule.temporal.marginal(schedule.dist)
    flat = np.asarray(law.sample(rng, n_calls * m), dtype=np.float64).reshape(n_calls, m)
    bounds = np.concatenate([[0], np.cumsum([s.src.size for s in compiled.steps])])
    slow = schedule.stragglers.links if schedule.stragglers is not None else None
    if slow:
        n = compiled.world_size
        slow_keys = np.array([a * n + b for a, b in slow if a < n and b < n], dtype=np.int64)
        hit: dict[tuple[int, int], np.ndarray] = {}
        where = []
        for k, s in enumerate(compiled.steps):
            key = (id(s.src), id(s.dst))
            if key not in hit:
                hit[key] = np.flatnonzero(np.isin(s.src * n + s.dst, slow_keys))
            where.append(bounds[k] + hit[key])
        cols = np.concatenate([np.zeros(0, np.int64), *where])
        if cols.size:
            slow_law = schedule.temporal.marginal(schedule.stragglers.dist)
            flat[:, cols] = np.asarray(slow_law.sample(rng, n_calls * cols.size),
                                       dtype=np.float64).reshape(n_calls, cols.size)
    return [flat[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]


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
