"""One message of a communication pattern (``Transfer``) and the collectives patterns
implement; the atom that ``pattern.py`` and ``algorithm_builders.py`` share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Collective = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]
COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


@dataclass(frozen=True, repr=False)
class Transfer:
    """One message: chunks ``[lo, hi)`` of ``src``'s working buffer to ``dst`` (for
    all_to_all: of ``src``'s input, landing in ``dst``'s output from chunk ``at``)."""

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
    at: int | None = None
    """The receiver's first chunk the message lands on; None: ``lo`` (the same chunks).
    Only all_to_all moves a chunk to another index (rank r's chunk j is rank j's
    chunk r)."""

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi:
            raise ValueError(f"Transfer: needs 0 <= lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.at is not None and (self.at < 0 or self.reduce):
            raise ValueError(f"Transfer: at={self.at} needs at >= 0 and reduce=False")

    def __repr__(self) -> str:
        at = "" if self.at is None else f", at={self.at}"
        return (f"Transfer(src={self.src}, dst={self.dst}, lo={self.lo}, hi={self.hi}, "
                f"reduce={self.reduce}{at})")

    @property
    def lands(self) -> tuple[int, int]:
        """[first, last + 1) chunk of the receiver the message lands on."""
        first = self.lo if self.at is None else self.at
        return first, first + self.hi - self.lo


Steps = list[list[Transfer]]
