"""Start a Plan's ranks through a launcher, wait within a timeout, and say what failed.

The launcher runs in its own process group (session), so a timeout can stop every rank
it started. Failures name the ranks that left no records file, with the tail of the
launcher's log (every rank's output goes there).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .commands import mpirun_cmd, needs_oversubscribe, running_as_root, srun_cmd, torchrun_cmd
from .plan import Plan

LAUNCHERS = ("local", "torchrun", "mpirun", "srun")
_GRACE_S = 30.0  # start-up and teardown on top of the plan's own timeout


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
        mpirun = _beside_python("mpirun") or "mpirun"
        return mpirun_cmd(worker, np=nproc, as_root=running_as_root(),
                          oversubscribe=needs_oversubscribe(nproc), mpirun=mpirun)
    return srun_cmd(worker, ntasks=nproc)


def run_plan(plan_path: str | Path, *, launcher: str, nproc: int, timeout_s: float) -> None:
    """Run the plan's ranks; raise RunFailed unless every rank wrote its records file."""
    plan = Plan.load(plan_path)
    argv = launch_argv(launcher, nproc, worker_argv(plan_path))
    log_path = Path(plan.out_dir) / "launcher.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s + _GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise RunFailed(_explain(plan, nproc, log_path,
                                     f"timed out after {timeout_s + _GRACE_S:.0f} s")) from None
    missing = [r for r in range(nproc) if not plan.rank_file(r).exists()]
    if rc != 0 or missing:
        raise RunFailed(_explain(plan, nproc, log_path, f"{launcher} exited with code {rc}"))


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


def _explain(plan: Plan, nproc: int, log_path: Path, what: str) -> str:
    missing = [r for r in range(nproc) if not plan.rank_file(r).exists()]
    ranks = f"ranks without a records file: {missing}" if missing else "all ranks wrote records"
    tail = _tail(log_path)
    return f"{what}; {ranks}; log {log_path}" + (f": {tail}" if tail else "")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    useful = [ln.strip() for ln in text if ln.strip()]
    return " | ".join(useful[-lines:])
