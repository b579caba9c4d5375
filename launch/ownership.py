"""Which processes provably belong to a run, so that a rerun stops those and nothing else.

A lock or a progress board left by a killed sweep names process ids. An id alone proves
nothing: after a crash or a reboot it may belong to anything, and a file can be edited. A
process counts as a run's own only when

- its command line is ``... jitterlab worker <folder>/plan.json`` for the run's point
  folder, and
- its start time (clock ticks since boot, ``/proc/<pid>/stat`` field 22) is the one
  recorded when the run started it (for a launcher's group, no earlier than the
  launcher's), on the same boot (``/proc/sys/kernel/random/boot_id``).

Linux only (``/proc``); elsewhere nothing can be proven and nothing is signalled.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


def boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[-1].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def alive(pid: int) -> bool:
    """A live process (not a zombie) with this id."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def describe(pid: int) -> str:
    """``pid 123 (sleep 1000)``: for messages (escaped, at most 60 characters)."""
    cmd = " ".join(cmdline(pid)) or "?"
    cmd = cmd.encode("unicode_escape").decode("ascii")
    return f"pid {pid} ({cmd[:60]}{'...' if len(cmd) > 60 else ''})"


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    out = []
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry.name))
    return out


def runs_plan(pid: int, plan_path: str) -> bool:
    """Is ``pid``'s command line ``... jitterlab worker <plan_path> ...`` (the path as
    given, which the run makes absolute; ``jitterlab`` the console script, by any path)?"""
    argv = cmdline(pid)
    return any(os.path.basename(prog) == "jitterlab" and a == "worker" and b == plan_path
               for prog, a, b in zip(argv, argv[1:], argv[2:]))


@dataclass(frozen=True)
class Verdict:
    """What a stale run left: processes that are provably its own (to stop), and live
    processes it names that are not (never signalled; their presence refuses the rerun)."""

    own: tuple[int, ...]
    foreign: tuple[str, ...]


def judge(*, folder: str, pgid: int | None, pgid_start: int | None,
          ranks: list[tuple[int, int]], same_boot: bool) -> Verdict:
    """Sort what a stale lock names into the run's own processes and the others.

    ``pgid`` and ``pgid_start``: the launcher's process group and its leader's start time;
    ``ranks``: (pid, start ticks) pairs read from the progress board. After a reboot
    (``same_boot`` false) nothing of the old run can be alive and nothing is named."""
    if not same_boot:
        return Verdict((), ())
    plan = str(Path(folder) / "plan.json")
    own: list[int] = []
    foreign: list[str] = []
    if pgid is not None:
        if pgid <= 1:
            foreign.append(f"process group {pgid} (not a launcher's)")
        elif alive(pgid):  # the leader: its group can be trusted only through it
            if pgid_start is not None and start_ticks(pgid) == pgid_start \
                    and runs_plan(pgid, plan):
                own.append(pgid)
            else:
                foreign.append(describe(pgid))
        else:  # leader gone: each member proves itself
            for pid in group_members(pgid):
                start = start_ticks(pid)
                if pgid_start is not None and start is not None and start >= pgid_start \
                        and runs_plan(pid, plan):
                    own.append(pid)
                else:
                    foreign.append(describe(pid))
    for pid, recorded in ranks:
        if pid <= 1 or not alive(pid) or pid in own:
            continue
        if start_ticks(pid) == recorded and runs_plan(pid, plan):
            own.append(pid)
        else:
            foreign.append(describe(pid))
    return Verdict(tuple(own), tuple(foreign))


def stop(verdict: Verdict, pgid: int | None) -> None:
    """SIGKILL the run's own processes (its launcher's whole group when the leader is
    among them). Call only with a verdict that names nothing foreign."""
    if verdict.foreign:
        raise ValueError("refusing to signal: the run names processes not its own")
    for pid in verdict.own:
        try:
            if pid == pgid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
