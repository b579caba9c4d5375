"""Where this process stands in the run: rank, world size, node, as the launcher says.

`RunContext.detect()` reads the environment that torchrun, Open MPI's mpirun, MPICH's
Hydra (mpiexec) or Slurm's srun gives each process, with no communication, so it is a pure
function of its `env` argument and is tested without launching anything.

Launchers nest: torchrun started by srun, mpirun inside a Slurm allocation (Open MPI and
Hydra start their daemons with srun there, so their ranks inherit a SLURM_PROCID that
describes the daemon's step, not these processes). The innermost launcher is the one that
knows these processes, so the first of these that claims the environment wins:

1. torchrun: RANK or TORCHELASTIC_RUN_ID is set;
2. Open MPI: OMPI_COMM_WORLD_RANK is set;
3. MPICH (Hydra): PMI_RANK is set, unless SLURM_PROCID is set and MPI_LOCALRANKID is not
   (Slurm's own PMI plugins, srun --mpi=pmi2, set PMI_RANK too; only Hydra sets
   MPI_LOCALRANKID);
4. Slurm: SLURM_PROCID is set (inside an srun step; an allocation alone does not count);
5. otherwise a single process: rank 0 of 1.

Only contradictions within the chosen launcher's variables are errors (ValueError naming
the variable and its value); variables of outer launchers are ignored.

Node index. torchrun gives it (GROUP_RANK) and so does Slurm (SLURM_NODEID). Open MPI and
MPICH do not: OMPI_COMM_WORLD_NODE_RANK is this process's rank on its node across all
jobs (equal to the local rank for one job), not the node's index. Where no variable gives
it, the node is derived assuming block mapping with the same number of ranks on every node
(ranks fill node 0, then node 1, ...: Open MPI's default, --map-by slot; Hydra with
host:count lists): node = rank // ranks_per_node. When the variables show that assumption
false (local rank != rank % ranks_per_node, or ranks_per_node does not divide the world
size) detection raises rather than return a wrong node, because node-scope jitter would be
silently wrong.

Defaults for missing optional variables: ranks per node (LOCAL_WORLD_SIZE,
OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS, Slurm's tasks-per-node lists) defaults to the
world size (one node); the node index, where its variable is missing, is derived as above.
The rank, the world size and the local rank are required once a launcher claims the
environment, and so is SLURM_NODEID for Slurm (srun always sets it).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Launcher = Literal["torchrun", "openmpi", "mpich", "slurm", "single"]
LAUNCHERS: tuple[str, ...] = get_args(Launcher)


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """This process's place in the run."""

    rank: int
    """Rank of this process in the world, 0-based."""
    world_size: int
    """Number of ranks in the run."""
    local_rank: int
    """Rank of this process among the ranks on its node, 0-based."""
    node: int
    """Index of this process's node, 0-based."""
    ranks_per_node: int
    """Number of ranks on this process's node (the local world size)."""
    hostname: str
    """Host name of the machine this process runs on."""
    launcher: Launcher
    """The launcher that started this process ("single": none, rank 0 of 1)."""

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "local_rank", "node", "ranks_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"RunContext: {name} must be an integer, got {value!r}")
        if self.world_size < 1:
            raise ValueError(f"RunContext: world_size={self.world_size} is not >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RunContext: rank={self.rank} is not in "
                             f"[0, world_size={self.world_size})")
        if not 1 <= self.ranks_per_node <= self.world_size:
            raise ValueError(f"RunContext: ranks_per_node={self.ranks_per_node} is not in "
                             f"[1, world_size={self.world_size}]")
        if not 0 <= self.local_rank < self.ranks_per_node:
            raise ValueError(f"RunContext: local_rank={self.local_rank} is not in "
                             f"[0, ranks_per_node={self.ranks_per_node})")
        if self.node < 0:
            raise ValueError(f"RunContext: node={self.node} is not >= 0")
        if not isinstance(self.hostname, str) or not self.hostname:
            raise ValueError(f"RunContext: hostname must be a non-empty string, "
                             f"got {self.hostname!r}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"RunContext: launcher={self.launcher!r} is not one of "
                             f"{', '.join(LAUNCHERS)}")
        if self.launcher == "single" and self.world_size != 1:
            raise ValueError(f"RunContext: launcher='single' needs world_size=1, "
                             f"got {self.world_size}")

    @classmethod
    def detect(cls, env: Mapping[str, str] | None = None, *,
               hostname: str | None = None) -> RunContext:
        """The context described by `env` (default: os.environ); see the module docstring
        for the precedence between launchers and the defaults. `hostname` defaults to
        socket.gethostname()."""
        env = os.environ if env is None else env
        host = socket.gethostname() if hostname is None else hostname
        for layout in _LAYOUTS:
            if layout.claims(env):
                return layout.read(env, host)
        return cls(rank=0, world_size=1, local_rank=0, node=0, ranks_per_node=1,
                   hostname=host, launcher="single")


def node_of(rank: int, ranks_per_node: int) -> int:
    """Node index of `rank` under block mapping with `ranks_per_node` ranks on every node."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"node_of: rank must be an integer >= 0, got {rank!r}")
    if (isinstance(ranks_per_node, bool) or not isinstance(ranks_per_node, int)
            or ranks_per_node < 1):
        raise ValueError(f"node_of: ranks_per_node must be an integer >= 1, "
                         f"got {ranks_per_node!r}")
    return rank // ranks_per_node


_UINT = re.compile(r"[0-9]+")
# One group of a Slurm tasks-per-node list: "4" or "4(x2)" (4 tasks on each of 2 nodes).
_SLURM_GROUP = re.compile(r"([0-9]+)(?:\(x([0-9]+)\))?")


@dataclass(frozen=True)
class _Var:
    """A value read from the environment (or defaulted), named for error messages."""

    name: str
    value: int
    default_from: str | None = None
    """The variable the value was copied from, when `name` itself is unset."""

    def __str__(self) -> str:
        if self.default_from is None:
            return f"{self.name}={self.value}"
        return f"{self.name}={self.value} (unset; defaults to {self.default_from})"


@dataclass(frozen=True)
class _Layout:
    """Where one launcher puts a process's place in the environment. For each quantity,
    the first variable present among its names is used."""

    launcher: Launcher
    markers: tuple[str, ...]
    rank: tuple[str, ...]
    world_size: tuple[str, ...]
    local_rank: tuple[str, ...]
    ranks_per_node: tuple[str, ...]
    node: tuple[str, ...] = ()

    def claims(self, env: Mapping[str, str]) -> bool:
        return any(name in env for name in self.markers)

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.launcher}: {message}")

    def get(self, env: Mapping[str, str], names: tuple[str, ...]) -> _Var | None:
        for name in names:
            if name in env:
                raw = env[name]
                if not _UINT.fullmatch(raw.strip()):
                    raise self.error(f"{name}={raw!r} is not a non-negative integer")
                return _Var(name, int(raw))
        return None

    def require(self, env: Mapping[str, str], names: tuple[str, ...], rank: _Var) -> _Var:
        var = self.get(env, names)
        if var is None:
            raise self.error(f"{' or '.join(names)} is missing while {rank} is set")
        return var

    def read(self, env: Mapping[str, str], hostname: str) -> RunContext:
        rank = self.get(env, self.rank)
        if rank is None:
            present = next(name for name in self.markers if name in env)
            raise self.error(f"{' or '.join(self.rank)} is missing while {present} is set")
        world = self.require(env, self.world_size, rank)
        if world.value < 1:
            raise self.error(f"{world} is not >= 1")
        if rank.value >= world.value:
            raise self.error(f"{rank} is not < {world}")
        # Local ranks need not follow world rank order: Open MPI, oversubscribed, numbers
        # the ranks on a node in its own order (rank 1 can be local rank 2).
        local = self.require(env, self.local_rank, rank)
        node, per_node = self.node_and_size(env, rank, world)
        if not 1 <= per_node.value <= world.value:
            raise self.error(f"{per_node} is not in [1, {world}]")
        if local.value >= per_node.value:
            raise self.error(f"{local} is not < {per_node}")
        if node is None and per_node.value == world.value:
            node = 0  # every rank on one node: nothing to derive
        if node is None:
            # Block mapping with equal nodes is the only layout where the local rank is
            # rank % ranks per node everywhere; anything else would give a wrong node.
            if local.value != rank.value % per_node.value or world.value % per_node.value:
                raise self.error(
                    f"no node index variable, and {rank}, {local}, {per_node}, {world} do "
                    f"not fit block mapping with equal ranks per node; launch with such a "
                    f"mapping (Open MPI: --map-by slot; MPICH: host:count lists)")
            node = node_of(rank.value, per_node.value)
        return RunContext(rank=rank.value, world_size=world.value, local_rank=local.value,
                          node=node, ranks_per_node=per_node.value, hostname=hostname,
                          launcher=self.launcher)

    def node_and_size(self, env: Mapping[str, str], rank: _Var,
                      world: _Var) -> tuple[int | None, _Var]:
        """The node index (None: derive it) and the ranks on this node."""
        per_node = self.get(env, self.ranks_per_node)
        if per_node is None:
            per_node = _Var(self.ranks_per_node[0], world.value, default_from=world.name)
        node = self.get(env, self.node)
        return (None if node is None else node.value), per_node


@dataclass(frozen=True)
class _MpichLayout(_Layout):
    def claims(self, env: Mapping[str, str]) -> bool:
        # srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE itself; only Hydra adds MPI_LOCALRANKID.
        if "SLURM_PROCID" in env and "MPI_LOCALRANKID" not in env:
            return False
        return super().claims(env)


@dataclass(frozen=True)
class _SlurmLayout(_Layout):
    def node_and_size(self, env: Mapping[str, str], rank: _Var,
                      world: _Var) -> tuple[int | None, _Var]:
        node = self.require(env, self.node, rank)
        for name in self.ranks_per_node:
            if name in env:
                return node.value, _Var(name, self.tasks_on_node(name, env[name], node))
        return node.value, _Var(self.ranks_per_node[0], world.value, default_from=world.name)

    def tasks_on_node(self, name: str, raw: str, node: _Var) -> int:
        """Tasks on `node` from a list such as "4(x2),3" (nodes 0-1: 4 tasks, node 2: 3).
        A plain number in SLURM_NTASKS_PER_NODE (the --ntasks-per-node request) holds
        for every node."""
        spec = raw.strip()
        if name == "SLURM_NTASKS_PER_NODE" and _UINT.fullmatch(spec):
            return int(spec)
        first = 0
        for group in spec.split(","):
            match = _SLURM_GROUP.fullmatch(group.strip())
            if match is None:
                raise self.error(f"{name}={raw!r} is not a tasks-per-node list "
                                 f"such as '4(x2),3'")
            count, repeat = int(match[1]), int(match[2] or 1)
            if first <= node.value < first + repeat:
                return count
            first += repeat
        raise self.error(f"{node} is not < the {first} nodes of {name}={raw!r}")


# Precedence: the innermost launcher first (module docstring).
_LAYOUTS: tuple[_Layout, ...] = (
    _Layout("torchrun", markers=("RANK", "TORCHELASTIC_RUN_ID"), rank=("RANK",),
            world_size=("WORLD_SIZE",), local_rank=("LOCAL_RANK",),
            ranks_per_node=("LOCAL_WORLD_SIZE",), node=("GROUP_RANK",)),
    _Layout("openmpi", markers=("OMPI_COMM_WORLD_RANK",), rank=("OMPI_COMM_WORLD_RANK",),
            world_size=("OMPI_COMM_WORLD_SIZE",), local_rank=("OMPI_COMM_WORLD_LOCAL_RANK",),
            ranks_per_node=("OMPI_COMM_WORLD_LOCAL_SIZE",)),
    _MpichLayout("mpich", markers=("PMI_RANK",), rank=("PMI_RANK",), world_size=("PMI_SIZE",),
                 local_rank=("MPI_LOCALRANKID",), ranks_per_node=("MPI_LOCALNRANKS",)),
    # Step variables first: inside a step they describe the step, whatever the job asked.
    _SlurmLayout("slurm", markers=("SLURM_PROCID",), rank=("SLURM_PROCID",),
                 world_size=("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"),
                 local_rank=("SLURM_LOCALID",),
                 ranks_per_node=("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                                 "SLURM_NTASKS_PER_NODE"),
                 node=("SLURM_NODEID",)),
)


def single_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without what would make a process look like one rank of a launcher's world:
    a run started by hand inside an srun task or an mpirun rank (a node's agent) is a
    world of its own. Drops every variable a layout reads and the PMI/PMIx/Open MPI rank
    wiring, so an MPI library initialises as a singleton."""
    names = {n for layout in _LAYOUTS for group in (layout.markers, layout.rank,
                                                    layout.world_size, layout.local_rank,
                                                    layout.ranks_per_node, layout.node)
             for n in group}
    names |= {"SLURM_STEPID", "SLURM_STEP_ID", "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_NODES",
              "SLURM_GTIDS", "SLURM_TASK_PID", "MASTER_ADDR", "MASTER_PORT",
              "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE"}
    prefixes = ("OMPI_COMM_WORLD_", "PMI_", "PMIX_", "OMPI_MCA_orte_", "OMPI_MCA_ess")
    return {k: v for k, v in env.items() if k not in names and not k.startswith(prefixes)}


def die_with_torchrun(env: Mapping[str, str] | None = None) -> None:
    """Linux, under torchrun: die with it. torchrun starts each worker in a session of its
    own, so a torchrun that is killed (its node's agent gone) would otherwise leave the
    ranks running until their collectives time out. Call it first thing (before heavy
    imports): if torchrun died before the request took effect, the parent is already init
    or a subreaper (no torchrun), and the worker ends at once."""
    env = os.environ if env is None else env
    torchrun = "TORCHELASTIC_RUN_ID" in env
    # Open MPI's launcher (prterun or its daemon) is the rank's parent too: a rank whose
    # mpirun was killed (SIGKILL leaves it no time to stop its ranks) would otherwise run
    # on, orphaned, until its work is done.
    openmpi = "OMPI_COMM_WORLD_RANK" in env
    if not (torchrun or openmpi) or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if not _parent_is_torchrun() if torchrun else os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGKILL)


def _parent_is_torchrun() -> bool:
    """Is the parent still a torchrun? After it dies, the parent is init or a subreaper.
    True when it cannot be told (no /proc)."""
    ppid = os.getppid()
    if ppid == 1:
        return False
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return True
    return any(os.path.basename(a) == b"torchrun" or a == b"torch.distributed.run"
               for a in argv)
