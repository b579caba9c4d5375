"""One mode for every file and folder a run creates: 0644 and 0755 under the user's umask.

Results are meant to be read by colleagues (the report, the tables, the records), so the
user's umask decides who may read them, as for any file they make; but nothing a run
writes is ever writable by group or others, even under umask 000, because a later run
reads its folder back (checksums, locks, the pids on a progress board). Control files
that a later run acts on are stricter: the progress board is 0600 (``launch.progress``).
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


def umask() -> int:
    """This process's umask, read without changing it (``os.umask`` is process-wide and
    would race with other threads); Linux's /proc, else the set-and-restore fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    return FILE_MODE & ~umask()


def set_file_mode(fd: int) -> None:
    """Give an open file the run's mode (a temporary file from ``mkstemp`` is 0600; one
    from ``open`` is 0666 under the umask)."""
    os.fchmod(fd, file_mode())


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` with DIR_MODE under the umask for every folder it creates (``Path.mkdir``
    gives the parents it makes the default 0777 under the umask)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
    return path
