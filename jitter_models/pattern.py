"""A communication pattern as plain data, its contract, and its numpy reference.

A ``Pattern`` says, per step, which rank sends which chunks of its working buffer to whom
and whether the receiver reduces them into its own or overwrites its own with them. Real
ranks (collectives/) and the simulator execute the same patterns under the contract below;
``execute`` and ``finish_times`` here are its numpy reference.

Buffer
------
Each rank holds a working buffer split into ``n_chunks`` chunks by ``chunk_bounds`` (equal
split, the first ``count % n_chunks`` chunks one element longer, like numpy.array_split).

- all_reduce: starts as the rank's input; the result is the whole buffer.
- reduce_scatter: starts as the rank's input of ``world_size * c`` elements
  (``n_chunks == world_size``, chunk i belongs to rank i); the result is chunk ``rank``.
- all_gather: the output buffer of ``world_size * c`` elements whose chunk ``rank`` holds
  the rank's input (the rest undefined); the result is the whole buffer.
- all_to_all: two buffers of ``world_size`` chunks: the input, read-only (its chunk j is
  the block for rank j), and the output (its chunk j receives rank j's block). A
  transfer sends input chunks ``[lo, hi)`` and lands in the receiver's output chunks from
  ``at``; the rank's own block (input chunk ``rank``) is copied to output chunk ``rank``
  locally, before the first step. The result is the output. Uneven splits (MPI's
  alltoallv) are the same pattern on chunks of other sizes: a chunk's bounds are the
  caller's, in the sender's input and the receiver's output alike.

Execution
---------
Each rank walks its own steps (``rank_steps``) in order; there is no global barrier. In a
step the payload of each send is the sender's chunks ``[lo, hi)`` as they were at the start
of that step (after every receive of its earlier steps). The rank posts all its sends and
receives of the step at once, waits for all of them, then applies the receives in the order
listed: ``reduce=True`` combines with the redop, ``reduce=False`` overwrites. Several
receives of one step may reduce into the same chunks; two receives of one step never
overwrite the same chunk, and no rank sends to itself (checked when a Pattern is built).
Every send of step k is matched by a receive of step k on its destination, so walking the
steps in order cannot deadlock.

Timing (``finish_times``)
-------------------------
``hop_time``: a message's time from departure to arrival. ``hop_delay(k, j)``: extra wait
of transfer ``steps[k][j]`` on its sender before it departs (link jitter; key draws by
``(src, dst, link_index()[k][j])``). A rank's step starts when its previous step finished
(0 for its first). Its sends depart at step start + their own hop_delay (concurrently, not
one after another); a receive arrives at its sender's departure + hop_time; the step
finishes at the max of the rank's own departures and its receives' arrivals (and never
before it started): a sender is not held until its message arrives. ``depth()`` is the
slowest rank's finish time with hop_time = 1 and no delays: the longest dependency chain
of messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .algorithm_builders import check_patterned, takes_ranks_per_node
from .transfer import Transfer

# Executor's redops: the receiver's chunks become op(own, received).
REDOPS = MappingProxyType({
    "sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply,
})


@dataclass(frozen=True)
class Pattern:
    """Who sends which chunks to whom, step by step (see the module docstring)."""

    algorithm: str
    """The algorithm's name, a key of ALGORITHMS other than "native"."""
    collective: str
    """One of COLLECTIVES, supported by the algorithm."""
    world_size: int
    """Number of ranks."""
    n_chunks: int
    """The working buffer is split into this many chunks (chunk_bounds)."""
    steps: tuple[tuple[Transfer, ...], ...]
    """The global step order; each step's transfers."""
    ranks_per_node: int | None = None
    """Ranks per node, for hierarchical only."""

    def __post_init__(self) -> None:
        check_patterned(self.algorithm, self.collective)
        object.__setattr__(self, "steps", tuple(tuple(step) for step in self.steps))
        n = self.world_size
        if n < 1:
            raise ValueError(f"world_size: must be >= 1, got {n}")
        if self.n_chunks < 1:
            raise ValueError(f"n_chunks: must be >= 1, got {self.n_chunks}")
        if self.collective != "all_reduce" and self.n_chunks != n:
            raise ValueError(f"n_chunks: {self.collective} needs n_chunks == world_size ({n}),"
                             f" got {self.n_chunks}")
        if (self.ranks_per_node is not None) != takes_ranks_per_node(self.algorithm):
            raise ValueError(f"ranks_per_node: {self.ranks_per_node!r} does not fit algorithm "
                             f"{self.algorithm!r} (hierarchical only)")
        for k, step in enumerate(self.steps):
            _check_step(k, step, n, self.n_chunks)
            if (self.collective == "all_to_all") != any(t.at is not None for t in step):
                raise ValueError(f"steps: step {k}: all_to_all transfers say where they "
                                 "land (at), the other collectives' do not")

    def rank_steps(self, rank: int) -> list[tuple[int, tuple[Transfer, ...], tuple[Transfer, ...]]]:
        """(step index, this rank's sends, this rank's receives) for the steps where the rank
        takes part, in order."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank: must be in 0..{self.world_size - 1}, got {rank}")
        out = []
        for k, step in enumerate(self.steps):
            sends = tuple(t for t in step if t.src == rank)
            receives = tuple(t for t in step if t.dst == rank)
            if sends or receives:
                out.append((k, sends, receives))
        return out

    def link_index(self) -> tuple[tuple[int, ...], ...]:
        """For steps[k][j], its index among this pattern's transfers on the same (src, dst)
        link, in step order: a per-link message counter to key per-link jitter draws."""
        seen: dict[tuple[int, int], int] = {}
        out = []
        for step in self.steps:
            row = []
            for t in step:
                row.append(seen.get((t.src, t.dst), 0))
                seen[t.src, t.dst] = row[-1] + 1
            out.append(tuple(row))
        return tuple(out)

    def messages(self) -> int:
        """Total number of transfers."""
        return sum(len(step) for step in self.steps)

    def depth(self) -> int:
        """Length of the longest dependency chain of messages: the slowest rank's finish
        time with hop_time = 1 and no delays."""
        return int(round(float(np.max(finish_times(self)))))


def _check_step(k: int, step: tuple[Transfer, ...], n: int, n_chunks: int) -> None:
    """Step ``k`` of a pattern on ``n`` ranks and ``n_chunks`` chunks is well formed."""
    if not step:
        raise ValueError(f"steps: step {k} is empty")
    overwritten: dict[int, set[int]] = {}
    pairs: set[tuple[int, int]] = set()
    for t in step:
        if (t.src, t.dst) in pairs:  # their order on the wire would be ambiguous
            raise ValueError(f"steps: step {k}: two transfers from rank {t.src} to "
                             f"rank {t.dst}")
        pairs.add((t.src, t.dst))
        if not (0 <= t.src < n and 0 <= t.dst < n):
            raise ValueError(f"steps: step {k}: {t} has a rank outside 0..{n - 1}")
        if t.src == t.dst:
            raise ValueError(f"steps: step {k}: {t} sends to itself")
        first, stop = t.lands
        if max(t.hi, stop) > n_chunks:
            raise ValueError(f"steps: step {k}: {t} reaches past n_chunks ({n_chunks})")
        if not t.reduce:
            mine = overwritten.setdefault(t.dst, set())
            if mine.intersection(range(first, stop)):
                raise ValueError(f"steps: step {k}: two receives overwrite the same "
                                 f"chunk of rank {t.dst}")
            mine.update(range(first, stop))


def chunk_bounds(count: int, n_chunks: int) -> list[tuple[int, int]]:
    """Element [start, stop) of each chunk of a buffer of ``count`` elements: equal split,
    the first ``count % n_chunks`` chunks one element longer (like numpy.array_split);
    chunks are empty when count < n_chunks."""
    if count < 0 or n_chunks < 1:
        raise ValueError(f"chunk_bounds: needs count >= 0 and n_chunks >= 1, "
                         f"got count={count}, n_chunks={n_chunks}")
    size, extra = divmod(count, n_chunks)
    bounds, start = [], 0
    for i in range(n_chunks):
        stop = start + size + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


# --- the reference executors --------------------------------------------------------------

def execute(pattern: Pattern, inputs: list[np.ndarray], redop: str = "sum") -> list[np.ndarray]:
    """Run ``pattern`` on one initial working buffer per rank (module docstring) and return
    each rank's result: the whole buffer, or chunk ``rank`` for reduce_scatter. The inputs
    are not modified."""
    if redop not in REDOPS:
        raise ValueError(f"redop: unknown {redop!r} (known: {', '.join(REDOPS)})")
    if len(inputs) != pattern.world_size:
        raise ValueError(f"inputs: need one buffer per rank ({pattern.world_size}), "
                         f"got {len(inputs)}")
    buffers = [np.array(x, copy=True).reshape(-1) for x in inputs]
    count = buffers[0].size
    if any(b.size != count for b in buffers):
        raise ValueError("inputs: every rank's buffer must have the same number of elements")
    if pattern.collective != "all_reduce" and count % pattern.world_size:
        raise ValueError(f"inputs: {pattern.collective} needs a multiple of world_size "
                         f"({pattern.world_size}) elements, got {count}")
    bounds = chunk_bounds(count, pattern.n_chunks)
    if pattern.collective == "all_to_all":
        return _execute_all_to_all(pattern, buffers, bounds)
    op = REDOPS[redop]
    for step in pattern.steps:
        # Payloads are taken from every sender's start-of-step buffer before any receive
        # of the step is applied; a rank's buffer only changes at its own steps, so this
        # global order gives the same result as each rank walking its own steps.
        lo_hi = [(bounds[t.lo][0], bounds[t.hi - 1][1]) for t in step]
        payloads = [buffers[t.src][a:b].copy() for t, (a, b) in zip(step, lo_hi)]
        for t, (a, b), payload in zip(step, lo_hi, payloads):
            if t.reduce:
                op(buffers[t.dst][a:b], payload, out=buffers[t.dst][a:b])
            else:
                buffers[t.dst][a:b] = payload
    if pattern.collective == "reduce_scatter":
        return [buffers[r][slice(*bounds[r])] for r in range(pattern.world_size)]
    return buffers


def _execute_all_to_all(pattern: Pattern, inputs: list[np.ndarray],
                        bounds: list[tuple[int, int]]) -> list[np.ndarray]:
    """all_to_all's buffer contract: inputs read, outputs written (module docstring)."""
    outputs = [np.zeros_like(x) for x in inputs]
    for r, (a, b) in enumerate(bounds):
        outputs[r][a:b] = inputs[r][a:b]
    for step in pattern.steps:
        for t in step:
            first, stop = t.lands
            outputs[t.dst][bounds[first][0]:bounds[stop - 1][1]] = \
                inputs[t.src][bounds[t.lo][0]:bounds[t.hi - 1][1]]
    return outputs


def finish_times(pattern: Pattern, hop_delay: Callable[[int, int], float] = lambda k, j: 0.0,
                 hop_time: float = 1.0) -> np.ndarray:
    """Each rank's finish time under the timing semantics of the module docstring: a step's
    finish is the max of the rank's own departures (step start + hop_delay, concurrently)
    and its receives' arrivals (sender's departure + hop_time); a rank with no steps
    finishes at 0. ``hop_delay`` may return arrays (e.g. one draw per Monte Carlo sample):
    the result then has shape (world_size, *their broadcast shape)."""
    clock: list[np.ndarray | float] = [0.0] * pattern.world_size
    for k, step in enumerate(pattern.steps):
        departures = [np.add(clock[t.src], hop_delay(k, j)) for j, t in enumerate(step)]
        # A step never ends before it starts: a message that arrived while its receiver
        # was still busy with an earlier step is taken at once.
        finish = {r: clock[r] for t in step for r in (t.src, t.dst)}
        for t, departure in zip(step, departures):
            finish[t.src] = np.maximum(finish[t.src], departure)
            finish[t.dst] = np.maximum(finish[t.dst], departure + hop_time)
        for rank, time in finish.items():
            clock[rank] = time
    shape = np.broadcast_shapes(*(np.shape(c) for c in clock))
    return np.stack([np.broadcast_to(np.asarray(c, dtype=float), shape) for c in clock])
