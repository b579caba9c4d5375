"""Backend bootstrap: from a detected RunContext to a ready Backend.

- ``mpi``: mpi4py's COMM_WORLD (a singleton MPI when no launcher started us).
- ``gloo`` / ``nccl`` (``auto``: nccl with CUDA, else gloo): torch.distributed. Under
  torchrun the rendezvous is in the environment (``env://``). Under mpirun or srun, rank 0
  picks a free port and broadcasts ``MASTER_ADDR``/``MASTER_PORT`` over mpi4py. A single
  process binds to loopback. Device ``cuda:local_rank`` for nccl.
- ``OMP_NUM_THREADS=1`` unless set: ranks share the node's cores.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from collectives.backends import Backend, MPIBackend, TorchBackend

from .context import RunContext


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def resolve_backend(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def _single_node(ctx: RunContext) -> bool:
    return ctx.ranks_per_node == ctx.world_size


def _rendezvous_over_mpi(ctx: RunContext) -> tuple[str, int]:
    """Rank 0's address and a free port on it, broadcast to every rank by MPI."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != ctx.world_size:
        raise RuntimeError(f"MPI world size {comm.Get_size()} != launcher world size "
                           f"{ctx.world_size}")
    addr = None
    if comm.Get_rank() == 0:
        host = "127.0.0.1" if _single_node(ctx) else socket.gethostbyname(socket.gethostname())
        addr = (host, free_port(host if host != "127.0.0.1" else "127.0.0.1"))
    return comm.bcast(addr, root=0)


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
    if _single_node(ctx) and os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: stay on loopback
    env = os.environ
    kwargs: dict[str, Any] = {"rank": ctx.rank, "world_size": ctx.world_size,
                              "timeout": timedelta(seconds=timeout_s)}
    if "MASTER_ADDR" in env and "MASTER_PORT" in env:
        init = "env://"
    elif ctx.world_size == 1:
        init = f"tcp://127.0.0.1:{free_port()}"
    elif ctx.launcher in ("openmpi", "mpich", "slurm"):
        host, port = _rendezvous_over_mpi(ctx)
        init = f"tcp://{host}:{port}"
    else:
        raise ValueError(f"cannot form a {name} group of {ctx.world_size} ranks: no "
                         "MASTER_ADDR/MASTER_PORT and no MPI to share them")
    dist.init_process_group(name, init_method=init, **kwargs)
    return TorchBackend(device)


def shutdown(backend: Backend) -> None:
    backend.close()
    if isinstance(backend, TorchBackend):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
