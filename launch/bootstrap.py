"""Backend bootstrap: from a detected RunContext to a ready Backend.

- ``mpi``: mpi4py's COMM_WORLD (a singleton MPI when no launcher started us).
- ``gloo`` / ``nccl`` (``auto``: nccl with CUDA, else gloo): torch.distributed. Under
  torchrun the rendezvous is in the environment (``MASTER_ADDR``/``MASTER_PORT``). Under
  mpirun or srun, rank 0 picks a free port and broadcasts its address over mpi4py. Device
  ``cuda:local_rank`` for nccl.
- One node: nothing listens beyond loopback. torch's TCPStore server binds every interface
  whatever host it is given, unless handed a socket already bound, so rank 0 binds one to
  127.0.0.1 and hosts the store on it (unless a torchrun agent already hosts it: then the
  socket is the agent's); gloo's and NCCL's sockets use ``lo``. A single process needs no
  store server at all (an in-memory store).
- ``OMP_NUM_THREADS=1`` unless set: ranks share the node's cores.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from collectives.backends import Backend, MPIBackend, TorchBackend

from .context import RunContext

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def loopback_listener(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (``port`` 0: the OS picks one)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK, port))
        s.listen(socket.SOMAXCONN)
    except OSError:
        s.close()
        raise
    return s


def resolve_backend(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def _single_node(ctx: RunContext) -> bool:
    return ctx.ranks_per_node == ctx.world_size


def _rendezvous_over_mpi(ctx: RunContext,
                         listener: socket.socket | None = None) -> tuple[str, int]:
    """Rank 0's address and a port on it, broadcast to every rank by MPI: the port of
    ``listener`` where rank 0 gives one, else a free port on its host's address."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != ctx.world_size:
        raise RuntimeError(f"MPI world size {comm.Get_size()} != launcher world size "
                           f"{ctx.world_size}")
    addr = None
    if comm.Get_rank() == 0:
        if listener is not None:
            addr = tuple(listener.getsockname()[:2])
        else:
            host = socket.gethostbyname(socket.gethostname())
            addr = (host, free_port(host))
    return comm.bcast(addr, root=0)


def _loopback_store(ctx: RunContext, port: int, timeout: timedelta,
                    listener: socket.socket | None = None) -> Any:
    """The ranks' TCPStore on 127.0.0.1:``port``, hosted by rank 0 on ``listener`` (bound
    here when not given): torch's store server binds every interface whatever host it is
    told, unless it is handed a socket already bound (master_listen_fd)."""
    import torch.distributed as dist

    fd = None
    if ctx.rank == 0:
        fd = (listener or loopback_listener(port)).detach()  # the store owns it now
    return dist.TCPStore(LOOPBACK, port, ctx.world_size, ctx.rank == 0, timeout,
                         multi_tenant=True, master_listen_fd=fd)


def _agent_hosts_store(env: Any) -> bool:
    """torchrun's agent shares its own TCPStore with the workers (unless
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 was set for it): rank 0 must not host one."""
    return env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def bootstrap(backend: str, ctx: RunContext, timeout_s: float) -> Backend:
    """A ready backend for this rank; raises with the reason if the group cannot form."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if backend == "mpi":
        mpi = MPIBackend()
        if mpi.world_size != ctx.world_size:
            raise ValueError(f"backend: mpi sees a world of {mpi.world_size} but "
                             f"{ctx.launcher} started {ctx.world_size} ranks; the mpi "
                             "backend needs an MPI launcher (mpirun, or srun with PMI)")
        return mpi
    import torch
    import torch.distributed as dist

    name = resolve_backend(backend)
    if name == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend: 'nccl' needs CUDA, which this process does not see "
                             "(use gloo or mpi on CPUs)")
        torch.cuda.set_device(ctx.local_rank)
        device = f"cuda:{ctx.local_rank}"
    else:
        device = "cpu"
    one_node = _single_node(ctx)
    if one_node and os.path.exists("/sys/class/net/lo"):
        # One node: loopback, whatever was set for multi-node sweeps (e.g. ib0).
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        os.environ["NCCL_SOCKET_IFNAME"] = "lo"
    env = os.environ
    timeout = timedelta(seconds=timeout_s)
    kwargs: dict[str, Any] = {"rank": ctx.rank, "world_size": ctx.world_size,
                              "timeout": timeout}
    given = "MASTER_ADDR" in env and "MASTER_PORT" in env
    mpi = ctx.launcher in ("openmpi", "mpich", "slurm")
    if ctx.world_size == 1:
        kwargs["store"] = dist.HashStore()  # nobody to meet: no socket
    elif given and (not one_node or _agent_hosts_store(env)):
        kwargs["init_method"] = "env://"
    elif given:
        kwargs["store"] = _loopback_store(ctx, _master_port(env["MASTER_PORT"]), timeout)
    elif mpi and one_node:
        listener = loopback_listener() if ctx.rank == 0 else None
        _, port = _rendezvous_over_mpi(ctx, listener)
        kwargs["store"] = _loopback_store(ctx, port, timeout, listener)
    elif mpi:
        host, port = _rendezvous_over_mpi(ctx)
        kwargs["init_method"] = f"tcp://{host}:{port}"
    else:
        raise ValueError(f"cannot form a {name} group of {ctx.world_size} ranks: no "
                         "MASTER_ADDR/MASTER_PORT and no MPI to share them")
    dist.init_process_group(name, **kwargs)
    return TorchBackend(device)


def _master_port(raw: str) -> int:
    if not raw.strip().isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"MASTER_PORT={raw!r} is not a port in [1, 65535]")
    return int(raw)


def shutdown(backend: Backend) -> None:
    backend.close()
    if isinstance(backend, TorchBackend):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
