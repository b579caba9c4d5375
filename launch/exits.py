"""Which rank died, and how, as the launcher's own log says.

A rank SIGKILLed inside a collective leaves the same progress mark as its peers, so the
board alone cannot name it; the launcher can. torchrun's failure summary lists every
failed local process (``rank : 1 (local_rank: 1)`` / ``exitcode : -9 (pid: 6079)``) and
puts the first observed failure under "Root Cause"; Open MPI's prterun says "process
rank 1 with PID 6175 on node vm exited on signal 9", or names the first process that
exited with a non-zero status.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

_TAIL_BYTES = 256 * 1024
_TORCHRUN = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
_OMPI_SIGNAL = re.compile(r"process\s+rank\s+(\d+)\s+with\s+PID\s+\d+\s+on\s+node\s+\S+\s+"
                          r"exited\s+on\s+signal\s+(\d+)")
_OMPI_STATUS = re.compile(r"Process name:\s*\[[^\]]*,(\d+)\]\s*\n\s*Exit code:\s*(\d+)")


@dataclass(frozen=True)
class RankExit:
    rank: int
    """Global rank (torchrun: as its summary prints it)."""
    exit_code: int | None
    """The process's exit status, when it exited."""
    signal: int | None
    """The signal that ended it, when one did."""

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = f" ({signal.Signals(self.signal).name})"
            except ValueError:
                name = ""
            return f"rank {self.rank} was killed by signal {self.signal}{name}"
        return f"rank {self.rank} exited with code {self.exit_code}"


def _exit(rank: str, code: int, *, is_signal: bool = False) -> RankExit:
    if is_signal:
        return RankExit(int(rank), None, code)
    return RankExit(int(rank), None, -code) if code < 0 else RankExit(int(rank), code, None)


def rank_exits(text: str) -> list[RankExit]:
    """The failed ranks a launcher's log names, the first observed failure first."""
    out: list[RankExit] = []
    root = text.rfind("Root Cause")
    if root >= 0:  # torchrun: the root cause section, then the others
        out += [_exit(r, int(c)) for r, c in _TORCHRUN.findall(text[root:])]
        out += [_exit(r, int(c)) for r, c in _TORCHRUN.findall(text[:root])]
    else:
        out += [_exit(r, int(c)) for r, c in _TORCHRUN.findall(text)]
    out += [_exit(r, int(s), is_signal=True) for r, s in _OMPI_SIGNAL.findall(text)]
    out += [_exit(r, int(c)) for r, c in _OMPI_STATUS.findall(text)]
    seen: set[int] = set()
    unique = []
    for e in out:
        if e.rank not in seen and (e.signal is not None or e.exit_code):
            seen.add(e.rank)
            unique.append(e)
    return unique


def log_rank_exits(path: str | Path) -> list[RankExit]:
    """``rank_exits`` of the end of a log file (missing or unreadable: none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            return rank_exits(f.read().decode("utf-8", errors="replace"))
    except OSError:
        return []
