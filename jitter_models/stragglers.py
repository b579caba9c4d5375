"""Stragglers: chosen ranks (or links) of a schedule with another distribution, and the
tags that keep a schedule's random streams apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .distributions import Distribution

# Stream tags mixed into the SeedSequence entropy, so the streams never overlap.
_BASE, _STRAGGLER, _SELECT, _LINK, _LINK_STRAGGLER = 0, 1, 2, 3, 4


@dataclass(frozen=True, kw_only=True)
class Stragglers:
    """Chosen ranks (or, for ``scope = "link"``, links) whose delays come from another
    distribution (with the schedule's temporal structure, from their own stream)."""

    dist: Distribution
    """The stragglers' delay distribution."""
    ranks: tuple[int, ...] | None = None
    """Explicit straggler ranks; ranks >= world size are simply absent at that size."""
    count: int | None = None
    """Or: this many ranks (at most the world size), a seeded choice per world size."""
    links: tuple[tuple[int, int], ...] | None = None
    """Or (link scope): slow links as (sender, receiver) pairs, e.g. ((0, 1),)."""

    def __post_init__(self) -> None:
        given = [k for k in ("ranks", "count", "links") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("stragglers: give exactly one of 'ranks', 'count' and 'links'")
        if self.links is not None:
            object.__setattr__(self, "links", _links(self.links))
        if self.ranks is not None:
            ranks = tuple(self.ranks) if not isinstance(self.ranks, (str, bytes)) else None
            if ranks is None or not ranks or any(
                    isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0
                    for r in ranks):
                raise ValueError(f"stragglers: ranks: expected a non-empty list of ranks "
                                 f"(integers >= 0), got {self.ranks!r}")
            object.__setattr__(self, "ranks", tuple(sorted({int(r) for r in ranks})))
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(
                self.count, (int, np.integer)) or self.count < 1):
            raise ValueError(f"stragglers: count: must be an integer >= 1, got {self.count!r}")
        if not isinstance(self.dist, Distribution):
            raise ValueError(f"stragglers: dist: not a distribution: {self.dist!r}")

    def chosen(self, seed: int, world_size: int) -> frozenset[int]:
        """The straggler ranks at this world size (none for straggler links)."""
        if self.links is not None:
            return frozenset()
        if self.ranks is not None:
            return frozenset(r for r in self.ranks if r < world_size)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SELECT, world_size]))
        k = min(int(self.count), world_size)
        return frozenset(int(r) for r in rng.choice(world_size, size=k, replace=False))


def _links(value: Any) -> tuple[tuple[int, int], ...]:
    """Validated (sender, receiver) pairs, sorted, without repeats."""
    bad = ValueError(f"stragglers: links: expected a non-empty list of [sender, receiver] "
                     f"rank pairs of two different ranks, got {value!r}")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise bad
    out = set()
    for pair in value:
        if (isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple))
                or len(pair) != 2 or any(isinstance(r, bool) or not isinstance(
                    r, (int, np.integer)) or r < 0 for r in pair) or pair[0] == pair[1]):
            raise bad
        out.add((int(pair[0]), int(pair[1])))
    return tuple(sorted(out))
