"""Progress marks: one int64 per rank in a file every rank maps into memory.

A rank writes its mark outside the timed region: after its injected delay and before
``t_arrive`` is read, it stores how many collectives it has reached. When a run stops
making progress, the rank with the lowest mark is the culprit: the others are its
victims, blocked inside the collective it never reached (the rank that times out first is
usually a victim). A store costs well under a microsecond and never blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

NOT_STARTED = -2
READY = -1           # bootstrapped, before the first collective
DONE = 2**62         # wrote its records


def board_path(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / "progress.bin"


def create_board(out_dir: str | os.PathLike[str], world_size: int) -> Path:
    """The parent's side: a fresh board with every rank NOT_STARTED."""
    path = board_path(out_dir)
    np.full(world_size, NOT_STARTED, dtype=np.int64).tofile(path)
    return path


def rank_mark(out_dir: str | os.PathLike[str], rank: int) -> np.ndarray | None:
    """A rank's side: a one-element writable view of its slot (None if no board exists,
    e.g. a worker started by hand)."""
    path = board_path(out_dir)
    if not path.exists():
        return None
    board = np.memmap(path, dtype=np.int64, mode="r+")
    if rank >= board.size:
        return None
    return board[rank: rank + 1]


def read_board(out_dir: str | os.PathLike[str]) -> np.ndarray:
    path = board_path(out_dir)
    try:
        return np.fromfile(path, dtype=np.int64)
    except OSError:
        return np.empty(0, dtype=np.int64)


def describe_stall(marks: np.ndarray) -> str:
    """Which ranks are behind, in words."""
    if marks.size == 0:
        return "no progress board"
    never = [r for r, m in enumerate(marks) if m == NOT_STARTED]
    if never:
        return f"ranks {never} never started (bootstrap did not finish)"
    live = marks[marks != DONE]
    if live.size == 0:
        return "every rank finished"
    low = int(live.min())
    behind = [r for r, m in enumerate(marks) if m == low]
    ahead = sorted({int(m) for m in marks if m != low and m != DONE})
    where = "before its first collective" if low == READY else f"at collective #{low}"
    others = f" (others reached #{', #'.join(map(str, ahead))})" if ahead else ""
    if len(behind) == 1:
        return f"rank {behind[0]} stopped {where}{others}"
    return f"ranks {behind} stopped {where}{others}"
