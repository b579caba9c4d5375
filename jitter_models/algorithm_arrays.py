"""The explicit algorithms' steps as numpy arrays, for the simulator at large N.

Each entry of ``ARRAY_BUILDERS``, keyed like ``algorithm_builders.BUILDERS``, gives for N
ranks (and ranks per node, where the algorithm places ranks on nodes) the rows
(src, dst, frac, link_index) of every step: the same messages, in the same order, as the
pattern that ``algorithm_builders`` builds from Transfer objects (``frac`` is the share of
the working buffer a message carries, ``link_index`` its number among the messages on its
link). Building Transfer objects costs microseconds per message, too much for a ring at
N = 4096 (33.5 M messages) or recursive doubling at N = 2**20 (21 M). An algorithm without
an entry here is compiled from its pattern (``pattern_sim.compile_algorithm``), so a new
algorithm needs only its builder; an entry is a speed-up, and
``tests/test_pattern_sim.py`` checks every entry against the pattern for N <= 33 and
ranks per node 1, 2, 3, 5 and 8. Rows that share src and dst arrays share their analysis: treat them
as read-only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _fill(value: float, m: int, dtype: Any = np.float64) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=dtype), (m,))


def _ring_rows(ranks: np.ndarray, phases: int, n_chunks: int) -> list[tuple[np.ndarray, ...]]:
    """Each step ranks[i] -> ranks[i + 1], one chunk: each link carries one message per
    step, so its link index is the step's number."""
    m = ranks.size
    src, dst, frac = ranks, np.roll(ranks, -1), np.full(m, 1.0 / n_chunks)
    return [(src, dst, frac, _fill(s, m, np.int64)) for s in range(phases * (m - 1))]


def _folded(n: int, exchanges: list[tuple[np.ndarray, ...]]) -> list[tuple[np.ndarray, ...]]:
    """``exchanges`` among the active ranks between the fold-in and the fold-out of
    ``algorithm_builders._fold`` (whole buffer, one message per link): none for a power
    of two."""
    rem = n - (1 << (n.bit_length() - 1))
    if not rem:
        return exchanges
    evens = 2 * np.arange(rem, dtype=np.int64)
    ones, zeros = _fill(1.0, rem), _fill(0, rem, np.int64)
    return [(evens, evens + 1, ones, zeros), *exchanges, (evens + 1, evens, ones, zeros)]


def _active(n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The p active ranks after the fold (renumbered 0..p-1) and their partners at
    distance 2**i, for each i < log2 p."""
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    active = np.concatenate([2 * np.arange(rem, dtype=np.int64) + 1,
                             np.arange(2 * rem, n, dtype=np.int64)])
    q = np.arange(p, dtype=np.int64)
    return active, [active[q ^ (1 << i)] for i in range(p.bit_length() - 1)]


def _doubling_rows(n: int, k: int | None) -> list[tuple[np.ndarray, ...]]:
    """Fold-in, whole-buffer exchanges at distance 1, 2, 4 ... among the active ranks,
    fold-out; every link carries one message."""
    active, partners = _active(n)
    ones, zeros = _fill(1.0, active.size), _fill(0, active.size, np.int64)
    return _folded(n, [(active, b, ones, zeros) for b in partners])


def _rabenseifner_rows(n: int, k: int | None) -> list[tuple[np.ndarray, ...]]:
    """Fold-in, halving at distance 1, 2 ... p/2 (1/2, 1/4 ... of the buffer), doubling at
    p/2 ... 1 (the same sizes, in reverse), fold-out: a link carries one message per phase,
    so its link index is 0 in the halving and 1 in the doubling."""
    active, partners = _active(n)
    m = active.size
    fracs = [_fill(1.0 / (2 << i), m) for i in range(len(partners))]
    halving = [(active, b, f, _fill(0, m, np.int64)) for b, f in zip(partners, fracs)]
    doubling = [(active, b, f, _fill(1, m, np.int64)) for b, f in zip(partners, fracs)]
    return _folded(n, halving + doubling[::-1])


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


ARRAY_BUILDERS: dict[tuple[str, str], Callable[[int, int | None], list]] = {
    ("ring", "all_reduce"): lambda n, k: _ring_rows(np.arange(n, dtype=np.int64), 2, n),
    ("ring", "all_gather"): lambda n, k: _ring_rows(np.arange(n, dtype=np.int64), 1, n),
    ("ring", "reduce_scatter"): lambda n, k: _ring_rows(np.arange(n, dtype=np.int64), 1, n),
    ("recursive_doubling", "all_reduce"): _doubling_rows,
    ("rabenseifner", "all_reduce"): _rabenseifner_rows,
    ("tree", "all_reduce"): _tree_all_reduce,
    ("hierarchical", "all_reduce"): _hierarchical,
}
