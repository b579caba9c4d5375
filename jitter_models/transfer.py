"""One message of a communication pattern (``Transfer``) and the collectives patterns
implement; the atom that ``pattern.py`` and ``algorithm_builders.py`` share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Collective = Literal["all_reduce", "all_gather", "reduce_scatter"]
COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter")


@dataclass(frozen=True)
class Transfer:
    """One message: chunks ``[lo, hi)`` of ``src``'s working buffer to ``dst``."""

    src: int
    """Sending rank."""
    dst: int
    """Receiving rank."""
    lo: int
    """First chunk index sent."""
    hi: int
    """One past the last chunk index sent (hi > lo)."""
    reduce: bool
    """True: dst combines the chunks into its own with the redop; False: overwrites its own."""

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi:
            raise ValueError(f"Transfer: needs 0 <= lo < hi, got lo={self.lo}, hi={self.hi}")


Steps = list[list[Transfer]]
