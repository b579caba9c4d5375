"""The explicit collective algorithms' communication patterns, as plain data.

The public home of this layer's algorithms; the pieces live in:

- ``pattern.py``: ``Pattern`` (the contract real ranks and the simulator follow: buffer,
  execution, timing), ``chunk_bounds``, and the numpy reference ``execute`` and
  ``finish_times``;
- ``algorithm_builders.py``: each algorithm's steps, and the registry of names
  (``ALGORITHMS``, ``check_algorithm``, ``has_pattern``);
- ``transfer.py``: one message (``Transfer``) and the patterned ``COLLECTIVES``.

:func:`pattern` here builds (and caches) an algorithm's pattern for a world size.
"""

from __future__ import annotations

import functools

import numpy as np

from .algorithm_builders import (
    ALGORITHMS,
    BUILDERS,
    NATIVE,
    NATIVE_COLLECTIVES,
    check_algorithm,
    check_patterned,
    explicit_names,
    has_pattern,
    takes_ranks_per_node,
)
from .pattern import REDOPS, Pattern, chunk_bounds, execute, finish_times
from .transfer import COLLECTIVES, Collective, Steps, Transfer

__all__ = [
    "ALGORITHMS", "COLLECTIVES", "NATIVE", "NATIVE_COLLECTIVES", "REDOPS", "Collective",
    "Pattern", "Steps", "Transfer", "check_algorithm", "chunk_bounds", "execute",
    "explicit_names", "finish_times", "has_pattern", "pattern", "pattern_args",
]


def pattern(algorithm: str, collective: str, world_size: int,
            ranks_per_node: int | None = None) -> Pattern:
    """The (cached, shared) pattern of ``algorithm`` for ``collective`` on ``world_size``
    ranks. ``ranks_per_node`` is required (>= 1) for hierarchical and ignored otherwise, so
    a caller can pass its layout whatever the algorithm."""
    return _pattern(algorithm, collective,
                    *pattern_args(algorithm, collective, world_size, ranks_per_node))


def pattern_args(algorithm: str, collective: str, world_size: int,
                 ranks_per_node: int | None) -> tuple[int, int | None]:
    """:func:`pattern`'s arguments checked (ValueError naming the argument): the world size
    and the ranks per node (None where the algorithm does not place ranks on nodes)."""
    check_patterned(algorithm, collective)
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) \
            or world_size < 1:
        raise ValueError(f"world_size: must be an integer >= 1, got {world_size!r}")
    if not takes_ranks_per_node(algorithm):
        return int(world_size), None
    if (isinstance(ranks_per_node, bool) or not isinstance(ranks_per_node, (int, np.integer))
            or ranks_per_node < 1):
        raise ValueError(f"ranks_per_node: {algorithm} needs an integer >= 1, "
                         f"got {ranks_per_node!r}")
    return int(world_size), int(ranks_per_node)


@functools.lru_cache(maxsize=1024)
def _pattern(algorithm: str, collective: str, n: int, k: int | None) -> Pattern:
    n_chunks, steps = (1, []) if n == 1 else BUILDERS[algorithm, collective](collective, n, k)
    if collective != "all_reduce":
        n_chunks = n
    return Pattern(algorithm=algorithm, collective=collective, world_size=n, n_chunks=n_chunks,
                   steps=tuple(tuple(s) for s in steps), ranks_per_node=k)
