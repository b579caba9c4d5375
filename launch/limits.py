"""How many ranks one host may run, checked before anything starts.

Every rank is a whole Python process with torch loaded: asking for a thousand of them on
one machine (``bench --nproc 1000``, a custom model with 4096 heads run on one node)
starts processes until the machine runs out of memory. The default limit is the smaller of

- ``RANKS_PER_CORE`` ranks per core this process may run on (``sched_getaffinity``: the
  share a SLURM job, a container or ``taskset`` gives it, not the machine's count), and
- the memory available now (``MemAvailable``, or less where a cgroup limit leaves less)
  over ``RANK_MEMORY_BYTES``, the measured cost of one rank.

``--max-ranks-per-host`` (or ``JITTERLAB_MAX_RANKS_PER_HOST``) replaces the default.
Torch-free and process-free: a pure function of what it is given, with the machine's
figures read only when not given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jitter_models.errors import BadInput

RANKS_PER_CORE = 4
# Peak RSS (VmHWM) of one gloo rank of `jitterlab bench --launcher torchrun --nproc 2
# --backend gloo` with torch 2.13 (CPU build), Python 3.11, x86-64: 333 MiB (PSS 232-269
# MiB). A rank of a real-compute model holds its weights on top of this.
RANK_MEMORY_BYTES = 333 * 2**20
ENV = "JITTERLAB_MAX_RANKS_PER_HOST"
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True, kw_only=True)
class HostLimit:
    """The most ranks this host may run, and why."""

    ranks: int
    """The limit (>= 1)."""
    why: str
    """What set it, for the error message."""


def usable_cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> int | None:
    """Memory available for new processes: MemAvailable, or the headroom under this
    process's cgroup memory limit (v2 or v1) where that is smaller; None if unknown."""
    best = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                best = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        groups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        groups = []
    for line in groups:  # "0::/path" (v2) or "4:memory:/path" (v1)
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            roots, limit_file, usage_file = ["/sys/fs/cgroup"], "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            roots = ["/sys/fs/cgroup/memory"]
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        for root in roots:  # inside a container the mount is the group itself
            for d in {Path(root) / rel.lstrip("/"), Path(root)}:
                limit, usage = _read_int(d / limit_file), _read_int(d / usage_file)
                if limit is not None and usage is not None and limit < _NO_LIMIT:
                    headroom = max(0, limit - usage)
                    best = headroom if best is None else min(best, headroom)
    return best


def default_limit(*, cores: int | None = None, memory_bytes: int | None = None,
                  read_machine: bool = True) -> HostLimit:
    """The default limit from ``cores`` and ``memory_bytes`` (this machine's where not
    given and ``read_machine``; an unknown memory figure sets no bound)."""
    if cores is None:
        cores = usable_cores()
    if memory_bytes is None and read_machine:
        memory_bytes = available_memory_bytes()
    by_cores = RANKS_PER_CORE * cores
    why = f"{RANKS_PER_CORE} per core x {cores} core{'s' * (cores != 1)}"
    if memory_bytes is None:
        return HostLimit(ranks=by_cores, why=why)
    by_memory = max(1, memory_bytes // RANK_MEMORY_BYTES)
    mem = (f"{memory_bytes / 2**30:.1f} GiB of memory available at "
           f"{RANK_MEMORY_BYTES // 2**20} MiB a rank")
    if by_memory < by_cores:
        return HostLimit(ranks=by_memory, why=f"{mem}; {why} would allow {by_cores}")
    return HostLimit(ranks=by_cores, why=f"{why}; {mem} would allow {by_memory}")


def host_limit(override: int | None = None, env: Mapping[str, str] | None = None,
               **machine: int) -> HostLimit:
    """``override`` (the flag), else ``JITTERLAB_MAX_RANKS_PER_HOST``, else the default."""
    env = os.environ if env is None else env
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise BadInput(f"max-ranks-per-host: must be an integer >= 1, got {override!r}")
        return HostLimit(ranks=override, why="--max-ranks-per-host")
    raw = env.get(ENV)
    if raw:
        if not raw.strip().isdigit() or int(raw) < 1:
            raise BadInput(f"{ENV}: must be an integer >= 1, got {raw!r}")
        return HostLimit(ranks=int(raw), why=ENV)
    return default_limit(**machine)


def check_ranks_per_host(ranks: int, field: str, limit: HostLimit) -> None:
    """ValueError naming ``field`` if ``ranks`` on one host is over ``limit``."""
    if ranks > limit.ranks:
        hint = ("" if limit.why in ("--max-ranks-per-host", ENV) else
                "; --max-ranks-per-host N allows more")
        raise BadInput(f"{field}: {ranks} ranks on one host, over this host's limit of "
                         f"{limit.ranks} ({limit.why}){hint}")
