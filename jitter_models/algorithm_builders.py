"""The explicit algorithms: one builder of steps per (algorithm, collective), and the
registry of algorithm names derived from them (``ALGORITHMS``, ``check_algorithm``).

A builder returns ``(n_chunks, steps)`` for ``n`` ranks (``k`` ranks per node for
hierarchical); ``algorithms.pattern`` turns them into a checked, cached ``Pattern``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from .transfer import COLLECTIVES, Steps, Transfer


def _ring(ranks: list[int], phases: tuple[str, ...]) -> Steps:
    """Chunked ring over ``ranks`` (chunk i belongs to ranks[i]) with n_chunks = len(ranks).
    "reduce_scatter": after it ranks[i] holds chunk i reduced; "all_gather": from ranks[i]
    holding chunk i, every rank holds all. ranks[i] sends to ranks[i + 1]."""
    m = len(ranks)
    steps: Steps = []
    for phase in phases:
        # Reduce-scatter: at step s position i sends chunk i - s - 1, so that the chunk a
        # position receives last is its own; all-gather: position i first sends chunk i.
        offset, reduce = (1, True) if phase == "reduce_scatter" else (0, False)
        for s in range(m - 1):
            steps.append([Transfer(ranks[i], ranks[(i + 1) % m], c, c + 1, reduce)
                          for i in range(m) for c in [(i - s - offset) % m]])
    return steps


def _tree_levels(size: int) -> list[list[int]]:
    """Local ranks of a binary tree rooted at 0 (children of r: 2r+1, 2r+2) by level."""
    return [list(range(2**level - 1, min(2 ** (level + 1) - 1, size)))
            for level in range(size.bit_length())]


def _tree_reduce(base: int, size: int, n_chunks: int, slots: int) -> Steps:
    """Tree reduce of ranks base..base+size-1 to base, deepest level first, as ``slots``
    steps ending with the last slot (a shallower tree leaves the first slots empty)."""
    levels = _tree_levels(size)[1:]
    steps: Steps = [[] for _ in range(slots)]
    for level, members in enumerate(levels):
        steps[slots - 1 - level] = [Transfer(base + r, base + (r - 1) // 2, 0, n_chunks, True)
                                    for r in members]
    return steps


def _tree_broadcast(base: int, size: int, n_chunks: int, slots: int) -> Steps:
    """Tree broadcast from base to base..base+size-1, level by level, in ``slots`` steps."""
    levels = _tree_levels(size)[1:]
    steps: Steps = [[] for _ in range(slots)]
    for level, members in enumerate(levels):
        steps[level] = [Transfer(base + (r - 1) // 2, base + r, 0, n_chunks, False)
                        for r in members]
    return steps


def _merge(*parts: Steps) -> Steps:
    """Slot-wise union of independent step lists (e.g. one per node)."""
    steps: Steps = [[] for _ in range(max((len(p) for p in parts), default=0))]
    for part in parts:
        for k, step in enumerate(part):
            steps[k].extend(step)
    return steps


def _build_ring(collective: str, n: int, k: int | None) -> tuple[int, Steps]:
    """Rank r sends to r + 1: all_reduce is reduce-scatter then all-gather, 2(N-1) steps."""
    phases = {"all_reduce": ("reduce_scatter", "all_gather")}.get(collective, (collective,))
    return n, _ring(list(range(n)), phases)


def _fold(n: int, n_chunks: int) -> tuple[int, list[int], list[Transfer], list[Transfer]]:
    """Folding N ranks into a power of two: p (the largest power of two <= N), the p active
    ranks (renumbered 0..p-1), the fold-in (of the first 2*(N - p) ranks the even ones hand
    their whole buffer to the next rank and sit out) and the fold-out (they get the result
    back); both empty for a power of two."""
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    active = [2 * i + 1 for i in range(rem)] + list(range(2 * rem, n))
    fold_in = [Transfer(2 * i, 2 * i + 1, 0, n_chunks, True) for i in range(rem)]
    fold_out = [Transfer(2 * i + 1, 2 * i, 0, n_chunks, False) for i in range(rem)]
    return p, active, fold_in, fold_out


def _build_recursive_doubling(collective: str, n: int, k: int | None) -> tuple[int, Steps]:
    """Whole-buffer exchanges at distance 1, 2, 4, ...: log2 N steps for a power of two,
    log2 p + 2 otherwise (p the largest power of two <= N; extra ranks folded in)."""
    p, active, fold_in, fold_out = _fold(n, 1)
    steps: Steps = [fold_in]
    distance = 1
    while distance < p:
        # Both partners send their start-of-step buffer and reduce the other's into theirs.
        steps.append([Transfer(active[q], active[q ^ distance], 0, 1, True) for q in range(p)])
        distance *= 2
    steps.append(fold_out)
    return 1, [s for s in steps if s]


def _build_rabenseifner(collective: str, n: int, k: int | None) -> tuple[int, Steps]:
    """Reduce-scatter by recursive halving, then all-gather by recursive doubling (Thakur,
    Rabenseifner & Gropp 2005) over p chunks: 2 log2 p steps, each rank sending 2(p-1)/p
    of the buffer; extra ranks folded in and out as recursive doubling (+2 steps).
    Distance 1 first, so that with consecutive ranks on a node the largest messages
    (1/2, 1/4, 1/8 of the buffer) stay inside a node of 8."""
    levels = n.bit_length() - 1
    p, active, fold_in, fold_out = _fold(n, 1 << levels)

    def block(q: int, i: int) -> int:
        """First chunk of rank q's block of p / 2**i chunks before halving step i: at each
        step j < i it kept the upper half when bit j of q is 1."""
        return sum(p >> (j + 1) for j in range(i) if q >> j & 1)

    # Halving step i (distance 2**i): partners agree on the bits below i, so hold the same
    # block; each keeps the half its bit i names and sends the other half to be reduced.
    halving = [[Transfer(active[q], active[q ^ (1 << i)], lo, lo + (p >> (i + 1)), True)
                for q in range(p)
                for lo in [block(q, i) + (0 if q >> i & 1 else p >> (i + 1))]]
               for i in range(levels)]
    # Doubling, distances p/2 .. 1: each sends its block (the one it kept at halving step i)
    # to its partner, who holds the other half of their common block.
    doubling = [[Transfer(active[q], active[q ^ (1 << i)], lo, lo + (p >> (i + 1)), False)
                 for q in range(p) for lo in [block(q, i + 1)]]
                for i in reversed(range(levels))]
    return p, [s for s in [fold_in, *halving, *doubling, fold_out] if s]


def _build_tree(collective: str, n: int, k: int | None) -> tuple[int, Steps]:
    """A single binary tree rooted at 0 (not NCCL's double binary tree, and not pipelined):
    reduce up level by level from the deepest, then broadcast down, 2 * height steps."""
    height = n.bit_length() - 1
    return 1, _tree_reduce(0, n, 1, height) + _tree_broadcast(0, n, 1, height)


def _build_hierarchical(collective: str, n: int, k: int | None) -> tuple[int, Steps]:
    """Tree reduce inside each node to its leader, chunked ring all_reduce among the M
    leaders (n_chunks = M), tree broadcast inside each node; nodes share step slots."""
    assert k is not None
    # The node of rank r is r // k (the last node may be smaller); its leader its first rank.
    nodes = [(base, min(k, n - base)) for base in range(0, n, k)]
    leaders = [base for base, _ in nodes]
    m = len(leaders)
    height = min(k, n).bit_length() - 1  # the first node is the largest
    reduce = _merge(*(_tree_reduce(base, size, m, height) for base, size in nodes))
    ring = _ring(leaders, ("reduce_scatter", "all_gather"))
    broadcast = _merge(*(_tree_broadcast(base, size, m, height) for base, size in nodes))
    return m, reduce + ring + broadcast


def _build_pairwise(collective: str, n: int, k: int | None) -> tuple[int, Steps]:
    """All-to-all as N - 1 pairwise exchanges: at step s (1 .. N-1) rank r sends its chunk
    r + s (the block for rank r + s) to rank r + s and receives rank r - s's block into
    its output chunk r - s (mod N); its own block is copied locally. One message per link
    per call; every step is a cyclic shift."""
    return n, [[Transfer(r, (r + s) % n, (r + s) % n, (r + s) % n + 1, False, at=r)
                for r in range(n)] for s in range(1, n)]


BUILDERS: dict[tuple[str, str], Callable[[str, int, int | None], tuple[int, Steps]]] = {
    ("ring", "all_reduce"): _build_ring,
    ("ring", "all_gather"): _build_ring,
    ("ring", "reduce_scatter"): _build_ring,
    ("recursive_doubling", "all_reduce"): _build_recursive_doubling,
    ("rabenseifner", "all_reduce"): _build_rabenseifner,
    ("tree", "all_reduce"): _build_tree,
    ("hierarchical", "all_reduce"): _build_hierarchical,
    ("pairwise", "all_to_all"): _build_pairwise,
}

# --- the registry of names --------------------------------------------------------------

# The backend's own call implements every collective the ops know (collectives.ops.OPS;
# this layer cannot import it): the patterned ones plus broadcast.
NATIVE_COLLECTIVES: tuple[str, ...] = (*COLLECTIVES, "broadcast")

NATIVE = "native"
"""The backend's own call (NCCL, gloo or MPI picks its algorithm): an entry of
``ALGORITHMS`` with no pattern."""

ALGORITHMS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    NATIVE: NATIVE_COLLECTIVES,  # the backend's own call: no pattern
    **{name: tuple(c for a, c in BUILDERS if a == name) for name, _ in BUILDERS},
})
"""Every valid algorithm name and the collectives it implements."""


NODE_AWARE: frozenset[str] = frozenset({"hierarchical"})
"""Algorithms whose builder places ranks on nodes (takes ``ranks_per_node``)."""

LINEAR_DEPTH: frozenset[str] = frozenset({"ring", "hierarchical"})
"""Algorithms whose chain of messages grows linearly with the ranks (a ring inside):
N x 2(N - 1) messages per call, so the simulator takes fewer ranks for them."""


def takes_ranks_per_node(algorithm: str) -> bool:
    """Does ``algorithm``'s pattern depend on how ranks sit on nodes?"""
    return algorithm in NODE_AWARE


def has_pattern(algorithm: str) -> bool:
    """Is ``algorithm`` an explicit algorithm (a pattern of messages jitterlab runs), as
    opposed to the backend's own call?"""
    return any(a == algorithm for a, _ in BUILDERS)


def explicit_names(sep: str) -> str:
    """The explicit algorithms' names, quoted, joined by ``sep`` (for messages)."""
    return sep.join(repr(a) for a in ALGORITHMS if has_pattern(a))


def check_algorithm(algorithm: object, collective: object) -> str:
    """Return ``algorithm`` if it names an algorithm that implements ``collective``."""
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: unknown {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    if not isinstance(collective, str) or collective not in NATIVE_COLLECTIVES:
        raise ValueError(f"collective: unknown {collective!r} "
                         f"(known: {', '.join(NATIVE_COLLECTIVES)})")
    supported = ALGORITHMS[algorithm]
    if collective not in supported:
        raise ValueError(f"algorithm: {algorithm!r} does not implement {collective} "
                         f"({algorithm} implements: {', '.join(supported)})")
    return algorithm  # type: ignore[return-value]


def check_patterned(algorithm: object, collective: object) -> str:
    """:func:`check_algorithm`, and ``algorithm`` must have a pattern (not be native)."""
    check_algorithm(algorithm, collective)
    if not has_pattern(algorithm):  # type: ignore[arg-type]
        raise ValueError(f"algorithm: {algorithm!r} has no pattern (it is the backend's own "
                         "call)")
    return algorithm  # type: ignore[return-value]
