"""The progress board: four int64 slots per rank in a file every rank maps into memory.

- ``mark``: how many collectives this rank has reached, stored after its injected delay
  and before ``t_arrive`` is read (so the collective's own time excludes it). When a run
  stalls, the rank with the lowest mark is the culprit and the others, blocked in the
  collective it never reached, its victims (the rank that times out first is usually a
  victim).
- ``beat``: a counter a daemon thread bumps once a second. A rank stopped as a whole
  (SIGSTOP, a crash, a hang holding the interpreter) stops beating even when it stalls
  inside a collective, where its mark looks like everyone else's.
- ``pid`` and ``start``: so the parent can stop ranks that a launcher started in sessions
  of their own, and a rerun after a crash can prove that a live process with that pid is
  still the rank (its start time, clock ticks since boot; see ``ownership.py``).

The board is created with mode 0600 whatever the umask: a later run acts on the pids it
holds, so only the run's own user may write it, and a board that others could write is
not trusted (``read_trusted_board``).

A store costs well under a microsecond and never blocks.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import numpy as np

from .ownership import start_ticks

NOT_STARTED = -2
READY = -1           # bootstrapped, before the first collective
DONE = 2**62         # wrote its records
SLOTS = 4            # mark, beat, pid, start
BEAT_S = 1.0


BOARD = "progress.bin"
BOARD_ENV = "JITTERLAB_BOARD"
"""Names the board file in the run folder when it is not ``progress.bin``: in a multi-node
run each node's agent makes its own (ranks of different hosts never share a mapped file,
which a network file system would not keep coherent)."""


def board_path(out_dir: str | os.PathLike[str], name: str = BOARD) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"board: a plain file name, got {name!r}")
    return Path(out_dir) / name


def create_board(out_dir: str | os.PathLike[str], world_size: int, name: str = BOARD) -> Path:
    """The parent's side: a fresh board with every rank NOT_STARTED."""
    path = board_path(out_dir, name)
    board = np.zeros((world_size, SLOTS), dtype=np.int64)
    board[:, 0] = NOT_STARTED
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file keeps its mode through O_TRUNC
        f.write(board.tobytes())
    return path


class RankSlot:
    """A rank's side of the board: its mark (a one-element writable view, for the hot
    loop), its heartbeat thread and its pid."""

    def __init__(self, board: np.memmap, rank: int):
        self._row = board[rank]
        self.mark = board[rank, 0:1]
        self._row[3] = start_ticks(os.getpid()) or 0
        self._row[2] = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="jitterlab-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._row[1] += 1  # at once: the parent need not wait a whole period for a first sign
        while not self._stop.wait(BEAT_S):
            self._row[1] += 1

    def close(self) -> None:
        self._stop.set()


def rank_slot(out_dir: str | os.PathLike[str], rank: int) -> RankSlot | None:
    """None if no board exists (a worker started by hand, or on another host). The file
    is ``$JITTERLAB_BOARD`` when the parent set it, else ``progress.bin``."""
    path = board_path(out_dir, os.environ.get(BOARD_ENV) or BOARD)
    if not path.exists():
        return None
    board = np.memmap(path, dtype=np.int64, mode="r+").reshape(-1, SLOTS)
    return RankSlot(board, rank) if rank < board.shape[0] else None


def read_board(out_dir: str | os.PathLike[str], name: str = BOARD) -> np.ndarray:
    """(ranks, SLOTS) int64; empty if the board is missing or unreadable."""
    try:
        flat = np.fromfile(board_path(out_dir, name), dtype=np.int64)
    except OSError:
        flat = np.empty(0, dtype=np.int64)
    if flat.size % SLOTS:
        flat = np.empty(0, dtype=np.int64)
    return flat.reshape(-1, SLOTS)


class Watch:
    """The parent's view over time: when did anything move, and whose heartbeat stopped."""

    def __init__(self) -> None:
        self.last: np.ndarray | None = None
        self.moved = time.monotonic()
        self.beat_seen: dict[int, tuple[int, float]] = {}

    def update(self, board: np.ndarray) -> None:
        now = time.monotonic()
        if board.size == 0:
            return
        marks = board[:, 0]
        if self.last is None or not np.array_equal(marks, self.last):
            self.last, self.moved = marks.copy(), now
        # Silence counts from the rank's start: a rank still importing (its mark not yet
        # moved) has not begun to beat, however long the start takes on a loaded host.
        for r, (mark, beat) in enumerate(board[:, :2].tolist()):
            if mark == NOT_STARTED or r not in self.beat_seen or self.beat_seen[r][0] != beat:
                self.beat_seen[r] = (beat, now)

    def idle_s(self) -> float:
        return time.monotonic() - self.moved

    def silent(self, board: np.ndarray, after_s: float = 3 * BEAT_S) -> list[int]:
        """Ranks that started, are not done, and have not beaten for ``after_s``."""
        now = time.monotonic()
        return [r for r, (beat, seen) in self.beat_seen.items()
                if r < board.shape[0] and board[r, 0] not in (NOT_STARTED, DONE)
                and now - seen > after_s]


def describe_stall(board: np.ndarray, silent: list[int] | None = None) -> str:
    """Which ranks are behind, in words."""
    if board.size == 0:
        return "no progress board"
    marks = board[:, 0]
    never = [r for r, m in enumerate(marks) if m == NOT_STARTED]
    if never:
        return f"ranks {never} never started (bootstrap did not finish)"
    # A silent rank whose process is gone exited (its mark says where, below); one that is
    # still there is frozen or stuck holding the interpreter.
    silent = [r for r in (silent or []) if _running(int(board[r, 2]))]
    if silent:
        who = f"rank {silent[0]}" if len(silent) == 1 else f"ranks {silent}"
        return f"{who} stopped responding (no heartbeat)"
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


def read_trusted_board(out_dir: str | os.PathLike[str], name: str = BOARD) -> np.ndarray:
    """The board, only if it is a regular file of this user that nobody else can write;
    else empty (its pids are not evidence of anything)."""
    try:
        fd = os.open(board_path(out_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (OSError, ValueError):
        return np.empty((0, SLOTS), dtype=np.int64)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() \
                or st.st_mode & 0o022 or st.st_size > SLOTS * 8 * 2**20:
            return np.empty((0, SLOTS), dtype=np.int64)
        flat = np.frombuffer(f.read(), dtype=np.int64)
    if flat.size % SLOTS:
        return np.empty((0, SLOTS), dtype=np.int64)
    return flat.reshape(-1, SLOTS)


def rank_starts(board: np.ndarray) -> list[tuple[int, int]]:
    """(pid, start ticks) of every rank that reported one."""
    if board.size == 0 or board.shape[1] < SLOTS:
        return []
    return [(int(p), int(s)) for p, s in board[:, 2:4].tolist() if p > 0]


def _running(pid: int) -> bool:
    """Is ``pid`` a live process here (not a zombie)? True when unknown (0: a rank of
    another host, whose row this board does not own)."""
    if pid <= 0:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return False
    except OSError:
        return True
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
