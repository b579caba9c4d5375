"""The lock of a result folder: one sweep (or one node's agent) at a time, atomically.

The lock is ``fcntl.flock`` on ``<folder>/.lock`` (``.lock-node-<r>`` for node r's agent),
held open for the whole sweep: the kernel gives it to one process only, and releases it
when that process dies however it dies, so two sweeps started at the same instant cannot
both take it and a crashed sweep's folder is free again. The file's content (JSON) says
who holds it, and while a point runs, what a rerun may have to stop::

    {"host", "pid", "pid_start", "boot_id",                  the sweep
     "pgid", "pgid_start", "folder", "board"}                its running point's launcher

A rerun that finds the lock free but its content naming a running point stops only the
processes that are provably that point's (``launch.ownership``); a lock naming a live
process that is not a jitterlab run, or a process group that is not the point's, is
refused with the file to remove, and nothing is signalled. A lock written on another host
(a shared file system) cannot be checked from here and is refused too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import stat
from pathlib import Path
from typing import Any

from jitter_models.errors import BadInput
from launch.ownership import alive, boot_id, cmdline, describe, start_ticks
from launch.progress import BOARD
from launch.supervise import stop_stale

from .atomic import FILE_MODE, make_dirs

_MAX_LOCK_BYTES = 64 * 1024


class FolderInUse(BadInput):
    """Another sweep holds the folder, or the lock names processes that are not ours."""


class RunLock:
    """A held lock: ``record`` what runs now, ``release`` at the end."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd = fd

    def record(self, *, pgid: int | None = None, folder: str | Path | None = None,
               board: str | None = None) -> None:
        """Rewrite the content in place (the flock belongs to this inode: never replace
        the file). With ``pgid``: a point's launcher started, in ``folder``."""
        me = os.getpid()
        doc: dict[str, Any] = {"host": platform.node(), "pid": me,
                               "pid_start": start_ticks(me), "boot_id": boot_id()}
        if pgid is not None:
            doc |= {"pgid": pgid, "pgid_start": start_ticks(pgid),
                    "folder": os.path.abspath(str(folder)), "board": board or BOARD}
        data = (json.dumps(doc) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Remove the file while still holding it, then let go (a sweep that opened the
        old file meanwhile sees it was unlinked and tries again)."""
        if self._fd < 0:
            return
        try:
            if _same_file(self._fd, self.path):  # not a lock someone put in its place
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = -1


def take_lock(root: str | Path, name: str = ".lock", board: str = BOARD) -> RunLock:
    """Lock ``root`` (created if missing) for this process, or raise ``FolderInUse``.

    After a sweep that died, what its lock names is checked (see the module's text) and its
    provably own processes are stopped before the lock is taken over."""
    root = Path(os.path.abspath(root))
    make_dirs(root)
    path = root / name
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, FILE_MODE)
        except OSError as exc:
            raise FolderInUse(f"out: cannot open the lock {str(path)!r} "
                              f"({exc.strerror or exc})") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            os.close(fd)  # it is rewritten in place: never through a link or into a pipe
            raise FolderInUse(f"out: the lock {str(path)!r} is not a plain file of this "
                              "user (a link, a FIFO, another user's); remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            doc = _read(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUse(f"out: cannot lock {str(path)!r} ({exc.strerror})") from None
            who = f" (pid {doc['pid']} on {doc.get('host', '?')})" \
                if isinstance(doc.get("pid"), int) else ""
            raise FolderInUse(f"out: {str(root)!r} is in use by a running sweep{who}") \
                from None
        if not _same_file(fd, path):  # released and removed between our open and our flock: again
            os.close(fd)
            continue
        try:
            _take_over(root, path, _read(fd), board)
            lock = RunLock(path, fd)
            lock.record()
        except BaseException:
            os.close(fd)  # the file (and what it names) stays for the user to see
            raise
        return lock
    raise FolderInUse(f"out: could not take the lock {str(path)!r} (it keeps changing)")


def _take_over(root: Path, path: Path, doc: dict[str, Any], board: str) -> None:
    """The lock is ours, but a dead sweep's content may still name its running point."""
    if not doc:
        return
    remove = f"if no sweep uses this folder, remove {str(path)!r}"
    host = doc.get("host")
    if host not in (None, platform.node()):
        raise FolderInUse(f"out: {str(root)!r} is locked by a sweep on host {host!r} (pid "
                          f"{doc.get('pid')}); {remove}")
    same_boot = doc.get("boot_id") is None or doc.get("boot_id") == boot_id()
    pid = doc.get("pid")
    if same_boot and _int(pid) and pid > 1 and pid != os.getpid() and alive(pid):
        recorded = doc.get("pid_start")
        reused = isinstance(recorded, int) and recorded != start_ticks(pid)
        if not reused:
            argv = cmdline(pid)
            if "jitterlab" in " ".join(argv) and "run" in argv:
                raise FolderInUse(f"out: {str(root)!r} is in use by a running sweep "
                                  f"(pid {pid}); {remove}")
            raise FolderInUse(f"out: the lock {str(path)!r} names a live process that is "
                              f"not a jitterlab sweep, {describe(pid)}; {remove}")
    if "pgid" not in doc and "folder" not in doc:
        return
    pgid, folder = doc.get("pgid"), doc.get("folder")
    points = root / "points"
    if not (_int(pgid) and isinstance(folder, str) and os.path.isabs(folder)
            and Path(folder).parent == points and Path(folder).name.startswith(".tmp-")
            and isinstance(doc.get("board", board), str)):
        raise FolderInUse(f"out: the lock {str(path)!r} names a process group or folder "
                          f"that is not a point of this sweep ({_short(doc)}); {remove}")
    pgid_start = doc.get("pgid_start")
    try:
        verdict = stop_stale(folder, pgid=pgid,
                             pgid_start=pgid_start if _int(pgid_start) else None,
                             board=doc.get("board") or board, same_boot=same_boot)
    except ValueError:  # a board name that is not a plain file name
        raise FolderInUse(f"out: the lock {str(path)!r} names a bad progress board "
                          f"({_short(doc)}); {remove}") from None
    if verdict.foreign:
        raise FolderInUse(f"out: the lock {str(path)!r} names processes that are not this "
                          f"sweep's own: {'; '.join(verdict.foreign[:3])}; nothing was "
                          f"signalled; {remove}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(doc: dict[str, Any]) -> str:
    text = json.dumps({k: doc.get(k) for k in ("pgid", "folder", "board") if k in doc})
    return text[:120].encode("unicode_escape").decode("ascii")


def _read(fd: int) -> dict[str, Any]:
    """The lock's fields (empty when unreadable: then it names nothing)."""
    try:
        text = os.pread(fd, _MAX_LOCK_BYTES, 0).decode("utf-8", errors="replace")
    except OSError:
        return {}
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, dict) else {}
    except ValueError:
        fields = text.split(maxsplit=2)  # older plain ``pid [pgid folder]`` text
        try:
            out: dict[str, Any] = {"pid": int(fields[0])}
            if len(fields) == 3:
                out |= {"pgid": int(fields[1]), "folder": fields[2].strip()}
            return out
        except (ValueError, IndexError):
            return {}
