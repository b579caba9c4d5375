"""Uneven work at a site: what differs between ranks and between steps when the work is
not the same everywhere (mixture-of-experts routing: each rank's experts receive their
own number of tokens, and each pair of ranks exchanges its own number of bytes).

A workload gives a site a ``SiteLoad``; the simulator asks it, step by step, for a
``LoadDraw``: each rank's compute on top of the site's ``compute_s`` and the bytes each
rank sends each other rank in the site's collective (an all-to-all). A load is a pure
function of its own seed and the step (and the world size), so the two networks of a
paired comparison see the same loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class LoadDraw:
    """One step's uneven work at one site on ``n`` ranks."""

    compute_s: np.ndarray
    """(n,) each rank's compute on top of the site's ``compute_s``, seconds (>= 0)."""
    bytes: np.ndarray | None = None
    """(n, n) bytes rank i sends rank j in the site's all-to-all (the diagonal stays on
    the rank: no message); None: the site's even ``message_bytes``."""

    def __post_init__(self) -> None:
        c = np.asarray(self.compute_s, dtype=np.float64)
        if c.ndim != 1 or not np.all(np.isfinite(c)) or np.any(c < 0):
            raise ValueError("compute_s: must be a 1-D array of finite seconds >= 0")
        object.__setattr__(self, "compute_s", c)
        if self.bytes is not None:
            b = np.asarray(self.bytes, dtype=np.float64)
            if b.shape != (c.size, c.size) or np.any(b < 0) or not np.all(np.isfinite(b)):
                raise ValueError(f"bytes: must be an ({c.size}, {c.size}) array of finite "
                                 "byte counts >= 0")
            object.__setattr__(self, "bytes", b)


@runtime_checkable
class SiteLoad(Protocol):
    def draw(self, n: int, step: int) -> LoadDraw:
        """The uneven work of simulated step ``step`` (warm-up excluded) on ``n`` ranks."""
        ...
