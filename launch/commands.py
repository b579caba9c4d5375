"""Command lines that start the ranks: torchrun, mpirun (Open MPI or MPICH), srun, sbatch.

Pure functions from arguments to an argv list (a bash script's text for sbatch); nothing
here runs a process, so every flag is tested exactly. `worker_argv` is the command each
rank runs (e.g. ["jitterlab", "worker", "plan.json"]). Flag spellings are those accepted by
torchrun (torch 2.x), Open MPI 5's mpirun, MPICH's Hydra mpiexec and Slurm's srun/sbatch.

Two defaults depend on the machine and so are decided apart, by `running_as_root()` and
`needs_oversubscribe()`, and passed in as plain booleans.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple, get_args

Rendezvous = Literal["standalone", "static", "c10d", "file"]
RENDEZVOUS: tuple[str, ...] = get_args(Rendezvous)
MpiFlavour = Literal["openmpi", "mpich"]
MPI_FLAVOURS: tuple[str, ...] = get_args(MpiFlavour)
LAUNCHERS: tuple[str, ...] = ("local", "torchrun", "mpirun", "srun")
"""What can start a run's ranks (``launch.supervise.launch_argv``); local: one rank in a
plain process."""
LOOPBACK = "127.0.0.1"
# torchrun's agent hosts a TCPStore for its workers unless this is "1" in its environment.
NO_AGENT_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
# Open MPI transports that open no socket: ob1 over shared memory (no TCP BTL, no UCX/OFI).
OPENMPI_SHARED_MEMORY = ("--mca", "pml", "ob1", "--mca", "btl", "self,sm")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Slurm --time: min, min:sec, h:min:sec, d-h, d-h:min, d-h:min:sec.
_SLURM_TIME = re.compile(r"[0-9]+(:[0-9]{1,2}){0,2}|[0-9]+-[0-9]{1,2}(:[0-9]{1,2}){0,2}")


def _count(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _word(name: str, value: object) -> str:
    """A non-empty string without whitespace: one argv element, one #SBATCH value."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{name} must be a non-empty string without whitespace, "
                         f"got {value!r}")
    return value


def _text(name: str, value: object) -> str:
    """A non-empty string: one argv element (a path may hold spaces)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _strings(name: str, value: object, *, non_empty: bool) -> list[str]:
    # A bare string is a sequence of characters: almost always a caller's mistake here.
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
            isinstance(item, str) for item in value):
        raise ValueError(f"{name} must be a sequence of strings, got {value!r}")
    if non_empty and not value:
        raise ValueError(f"{name} must not be empty")
    return list(value)


def _worker(worker_argv: object) -> list[str]:
    argv = _strings("worker_argv", worker_argv, non_empty=True)
    if not argv[0]:
        raise ValueError(f"worker_argv[0] (the program) must not be empty, got {argv!r}")
    return argv


def _port(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{name} must be an integer in [1, 65535], got {value!r}")
    return value


def _unused(rdzv: str, **given: object) -> None:
    """Reject options the chosen rendezvous ignores: torchrun would drop them silently."""
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{name}={value!r} is not used with rdzv={rdzv!r}")


def torchrun_cmd(worker_argv: Sequence[str], *, nproc_per_node: int, nnodes: int = 1,
                 node_rank: int = 0, master_addr: str | None = None,
                 master_port: int | None = None, rdzv: Rendezvous = "standalone",
                 rdzv_endpoint: str | None = None, rdzv_id: str | None = None,
                 python: str | None = None, torchrun: str = "torchrun",
                 extra: Sequence[str] = ()) -> list[str]:
    """torchrun starting `nproc_per_node` copies of `worker_argv` on this node.

    rdzv="standalone": one node, torchrun picks a free port (nnodes must be 1).
    rdzv="static": run once per node with its `node_rank`; rank 0's node listens on
    `master_addr`:`master_port`. rdzv="c10d": every node runs the same command;
    `rdzv_endpoint` ("host:port") and `rdzv_id` name the rendezvous, ranks are assigned by
    it. rdzv="file": one node, and torchrun's agent opens no socket: its rendezvous lives
    in a file store at `rdzv_endpoint` (a path), it shares no TCP store with its workers
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, set through env(1) ahead of torchrun) and tells
    them MASTER_ADDR=127.0.0.1 (--local-addr), where rank 0 hosts their store
    (``launch.bootstrap`` binds it to loopback). torchrun's TCPStore server binds every
    interface whatever address it is given, so this is how a one-node run keeps its
    sockets on loopback. `python`: run torchrun as `python -m torch.distributed.run` with
    that interpreter; else `torchrun` is the program. `extra`: more torchrun flags. The
    worker is a console script, so it follows --no-python (torchrun would otherwise run it
    with python).
    """
    argv = _worker(worker_argv)
    per_node = _count("nproc_per_node", nproc_per_node)
    _count("nnodes", nnodes)
    _count("node_rank", node_rank, low=0)
    extra = _strings("extra", extra, non_empty=False)
    if rdzv not in RENDEZVOUS:
        raise ValueError(f"rdzv={rdzv!r} is not one of {', '.join(RENDEZVOUS)}")
    if rdzv != "static" and node_rank != 0:
        raise ValueError(f"node_rank={node_rank} is only used with rdzv='static'")
    head = _torchrun_head(python, torchrun)
    prefix, rendezvous = _RENDEZVOUS_FLAGS[rdzv](_RendezvousOptions(
        nnodes, node_rank, master_addr, master_port, rdzv_endpoint, rdzv_id))
    return [*prefix, *head, *rendezvous, "--nproc-per-node", str(per_node), *extra,
            "--no-python", *argv]


def _torchrun_head(python: str | None, torchrun: str) -> list[str]:
    """The program: `torchrun`, or `python -m torch.distributed.run` (not both)."""
    if python is None:
        return [_text("torchrun", torchrun)]
    if torchrun != "torchrun":
        raise ValueError(f"give python or torchrun, not both (python={python!r}, "
                         f"torchrun={torchrun!r})")
    return [_text("python", python), "-m", "torch.distributed.run"]


class _RendezvousOptions(NamedTuple):
    """torchrun_cmd's rendezvous options, as given."""

    nnodes: int
    node_rank: int
    master_addr: str | None
    master_port: int | None
    rdzv_endpoint: str | None
    rdzv_id: str | None


# One function per rendezvous: (what goes ahead of the program, the rendezvous flags);
# each checks the options its rendezvous needs.

def _file_rendezvous(o: _RendezvousOptions) -> tuple[list[str], list[str]]:
    if o.nnodes != 1:
        raise ValueError(f"rdzv='file' runs on one node, got nnodes={o.nnodes}")
    if o.rdzv_endpoint is None or o.rdzv_id is None:
        raise ValueError(f"rdzv='file' needs rdzv_endpoint (a path) and rdzv_id, got "
                         f"rdzv_endpoint={o.rdzv_endpoint!r}, rdzv_id={o.rdzv_id!r}")
    _unused("file", master_addr=o.master_addr, master_port=o.master_port)
    return (["env", f"{NO_AGENT_STORE}=1"],
            ["--nnodes", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", _text("rdzv_endpoint", o.rdzv_endpoint),
             "--rdzv-conf", "store_type=file", "--rdzv-id", _word("rdzv_id", o.rdzv_id),
             "--local-addr", LOOPBACK])


def _standalone_rendezvous(o: _RendezvousOptions) -> tuple[list[str], list[str]]:
    if o.nnodes != 1:
        raise ValueError(f"rdzv='standalone' runs on one node, got nnodes={o.nnodes}")
    _unused("standalone", master_addr=o.master_addr, master_port=o.master_port,
            rdzv_endpoint=o.rdzv_endpoint, rdzv_id=o.rdzv_id)
    return [], ["--standalone", "--nnodes", "1"]


def _static_rendezvous(o: _RendezvousOptions) -> tuple[list[str], list[str]]:
    if o.master_addr is None or o.master_port is None:
        raise ValueError(f"rdzv='static' needs master_addr and master_port, got "
                         f"master_addr={o.master_addr!r}, master_port={o.master_port!r}")
    if o.node_rank >= o.nnodes:
        raise ValueError(f"node_rank={o.node_rank} is not < nnodes={o.nnodes}")
    _unused("static", rdzv_endpoint=o.rdzv_endpoint, rdzv_id=o.rdzv_id)
    # Explicit backend: torchrun would otherwise take PET_RDZV_BACKEND from the env.
    return [], ["--nnodes", str(o.nnodes), "--rdzv-backend", "static",
                "--node-rank", str(o.node_rank),
                "--master-addr", _word("master_addr", o.master_addr),
                "--master-port", str(_port("master_port", o.master_port))]


def _c10d_rendezvous(o: _RendezvousOptions) -> tuple[list[str], list[str]]:
    if o.rdzv_endpoint is None or o.rdzv_id is None:
        raise ValueError(f"rdzv='c10d' needs rdzv_endpoint and rdzv_id, got "
                         f"rdzv_endpoint={o.rdzv_endpoint!r}, rdzv_id={o.rdzv_id!r}")
    _unused("c10d", master_addr=o.master_addr, master_port=o.master_port)
    return [], ["--nnodes", str(o.nnodes), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", _word("rdzv_endpoint", o.rdzv_endpoint),
                "--rdzv-id", _word("rdzv_id", o.rdzv_id)]


_RENDEZVOUS_FLAGS: dict[str, Callable[[_RendezvousOptions], tuple[list[str], list[str]]]] = {
    "standalone": _standalone_rendezvous, "static": _static_rendezvous,
    "c10d": _c10d_rendezvous, "file": _file_rendezvous,
}


def running_as_root() -> bool:
    """Default for mpirun_cmd's `as_root`: Open MPI refuses to run as root without
    --allow-run-as-root (containers often run as root)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def needs_oversubscribe(np: int, cores: int | None = None) -> bool:
    """Default for mpirun_cmd's `oversubscribe`: np > cores, cores defaulting to
    os.cpu_count(). Open MPI counts physical cores as slots, so on machines with several
    hardware threads per core pass the physical core count as `cores`."""
    _count("np", np)
    if cores is None:
        cores = os.cpu_count() or 1
    return np > _count("cores", cores)


def mpirun_cmd(worker_argv: Sequence[str], *, np: int, flavour: MpiFlavour = "openmpi",
               hostfile: str | os.PathLike[str] | None = None,
               hosts: Sequence[str] | None = None, map_by: str | None = None,
               as_root: bool = False, oversubscribe: bool = False,
               shared_memory: bool = False,
               env: Mapping[str, str] | None = None, mpirun: str = "mpirun") -> list[str]:
    """`mpirun` starting `np` ranks of `worker_argv`, for Open MPI or MPICH (Hydra).

    `hostfile` or `hosts` (not both) say where; ["a:4", "b:4"] gives slot counts. Hydra
    places one rank per listed host in turn unless counts are given, and RunContext
    derives the node index assuming block mapping, so give counts with MPICH.
    `map_by`: Open MPI --map-by, Hydra -map-by. `as_root` (--allow-run-as-root) and
    `oversubscribe` (--oversubscribe) exist only in Open MPI; Hydra needs neither, so they
    are ignored for MPICH. `shared_memory` (Open MPI only, ranks on one node): the ranks
    talk over shared memory alone (pml ob1, btl self,sm), so they open no TCP listener
    (the TCP BTL binds every interface). `env`: variables set on every rank (Open MPI
    -x NAME=VALUE, Hydra -genv NAME VALUE).
    """
    argv = _worker(worker_argv)
    _count("np", np)
    openmpi = _mpi_flavour(flavour, hostfile=hostfile, hosts=hosts, as_root=as_root,
                           oversubscribe=oversubscribe, shared_memory=shared_memory)
    cmd = [_text("mpirun", mpirun), "-np" if openmpi else "-n", str(np)]
    if openmpi and as_root:
        cmd.append("--allow-run-as-root")
    if openmpi and oversubscribe:
        # More ranks than cores: a rank that busy-polls in a wait takes the core from a
        # rank that has work (or a delay to time), so waiting ranks yield instead.
        cmd += ["--oversubscribe", "--mca", "mpi_yield_when_idle", "1"]
    if shared_memory:
        cmd += OPENMPI_SHARED_MEMORY
    return [*cmd, *_mpi_placement(openmpi, hostfile, hosts, map_by), *_mpi_env(openmpi, env),
            *argv]


def _mpi_flavour(flavour: object, *, hostfile: object, hosts: object, as_root: object,
                 oversubscribe: object, shared_memory: object) -> bool:
    """Check mpirun_cmd's options that do not depend on one another; True for Open MPI."""
    if flavour not in MPI_FLAVOURS:
        raise ValueError(f"flavour={flavour!r} is not one of {', '.join(MPI_FLAVOURS)}")
    if hostfile is not None and hosts is not None:
        raise ValueError(f"give hostfile or hosts, not both (hostfile={hostfile!r}, "
                         f"hosts={hosts!r})")
    for name, flag in (("as_root", as_root), ("oversubscribe", oversubscribe),
                       ("shared_memory", shared_memory)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    openmpi = flavour == "openmpi"
    if shared_memory and not openmpi:
        raise ValueError("shared_memory: only for Open MPI (MPICH picks its transports "
                         "itself)")
    return openmpi


def _mpi_placement(openmpi: bool, hostfile: str | os.PathLike[str] | None,
                   hosts: Sequence[str] | None, map_by: str | None) -> list[str]:
    """The flags that say where the ranks run: hostfile or hosts, and the mapping."""
    cmd: list[str] = []
    if hostfile is not None:
        path = os.fspath(hostfile) if isinstance(hostfile, os.PathLike) else hostfile
        cmd += ["--hostfile" if openmpi else "-f", _text("hostfile", path)]
    if hosts is not None:
        names = _strings("hosts", hosts, non_empty=True)
        for host in names:
            if "," in host:
                raise ValueError(f"hosts: one host per item, got {host!r}")
            _word("hosts item", host)
        cmd += ["--host" if openmpi else "-hosts", ",".join(names)]
    if map_by is not None:
        cmd += ["--map-by" if openmpi else "-map-by", _word("map_by", map_by)]
    return cmd


def _mpi_env(openmpi: bool, env: Mapping[str, str] | None) -> list[str]:
    """Variables set on every rank: Open MPI -x NAME=VALUE, Hydra -genv NAME VALUE."""
    cmd: list[str] = []
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ValueError(f"env: {name!r} is not an environment variable name")
        if not isinstance(value, str):
            raise ValueError(f"env: {name}={value!r} is not a string")
        cmd += ["-x", f"{name}={value}"] if openmpi else ["-genv", name, value]
    return cmd


def loopback_namespace_cmd(argv: Sequence[str], *, python: str) -> list[str]:
    """`argv` run in a private network namespace that holds only a loopback device
    (``launch/netns.py``, run by `python` in isolated mode), for a launcher that offers no
    way to bind its listeners: Open MPI's prterun binds its out-of-band ports to every
    interface. Where the kernel refuses the namespace, netns.py says so on stderr and runs
    `argv` as it is."""
    cmd = _worker(argv)
    netns = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns.py")
    return [_text("python", python), "-I", netns, *cmd]


def srun_cmd(worker_argv: Sequence[str], *, ntasks: int, nodes: int | None = None,
             ntasks_per_node: int | None = None, gpus_per_task: int | None = None,
             cpu_bind: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """`srun` starting `ntasks` ranks of `worker_argv` inside a Slurm allocation.
    `extra`: more srun flags (e.g. "--kill-on-bad-exit=1")."""
    argv = _worker(worker_argv)
    cmd = ["srun", f"--ntasks={_count('ntasks', ntasks)}"]
    if nodes is not None:
        if _count("nodes", nodes) > ntasks:
            raise ValueError(f"nodes={nodes} exceeds ntasks={ntasks}: a node would "
                             f"have no task")
        cmd.append(f"--nodes={nodes}")
    if ntasks_per_node is not None:
        _count("ntasks_per_node", ntasks_per_node)
        if nodes is not None and nodes * ntasks_per_node < ntasks:
            raise ValueError(f"ntasks={ntasks} exceeds nodes={nodes} x "
                             f"ntasks_per_node={ntasks_per_node}")
        cmd.append(f"--ntasks-per-node={ntasks_per_node}")
    if gpus_per_task is not None:
        cmd.append(f"--gpus-per-task={_count('gpus_per_task', gpus_per_task)}")
    if cpu_bind is not None:
        cmd.append(f"--cpu-bind={_word('cpu_bind', cpu_bind)}")
    return [*cmd, *_strings("extra", extra, non_empty=False), *argv]


def sbatch_script(worker_argv: Sequence[str], *, job_name: str, nodes: int,
                  ntasks_per_node: int, time_limit: str = "00:30:00",
                  partition: str | None = None, gpus_per_node: int | None = None,
                  output: str | None = None, setup_lines: Sequence[str] = ()) -> str:
    """A batch script for `sbatch`: #SBATCH lines, `set -e` (a failed setup line stops the
    job instead of running the worker in the wrong environment), `setup_lines` as given,
    then one srun line starting nodes x ntasks_per_node ranks, quoted with shlex.join."""
    _count("nodes", nodes)
    _count("ntasks_per_node", ntasks_per_node)
    if not isinstance(time_limit, str) or not _SLURM_TIME.fullmatch(time_limit):
        raise ValueError(f"time_limit={time_limit!r} is not a Slurm time such as "
                         f"'00:30:00', '90' or '1-12:00:00'")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={_word('job_name', job_name)}",
             f"#SBATCH --nodes={nodes}",
             f"#SBATCH --ntasks-per-node={ntasks_per_node}",
             f"#SBATCH --time={time_limit}"]
    if partition is not None:
        lines.append(f"#SBATCH --partition={_word('partition', partition)}")
    if gpus_per_node is not None:
        lines.append(f"#SBATCH --gpus-per-node={_count('gpus_per_node', gpus_per_node)}")
    if output is not None:
        lines.append(f"#SBATCH --output={_word('output', output)}")
    setup = _strings("setup_lines", setup_lines, non_empty=False)
    srun = srun_cmd(worker_argv, ntasks=nodes * ntasks_per_node, nodes=nodes,
                    ntasks_per_node=ntasks_per_node)
    return "\n".join([*lines, "", "set -e", *setup, shlex.join(srun)]) + "\n"
