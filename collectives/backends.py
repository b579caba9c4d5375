"""Backends: one protocol over torch.distributed (nccl, gloo) and mpi4py (MPI).

Buffers are the backend's native type: torch tensors for torch backends, numpy arrays for
MPI (zero-copy: mpi4py reads the array's memory directly). ``all_reduce`` and
``broadcast`` work in place, the others from an input buffer into an output buffer, as in
torch.distributed. Collectives are blocking on the host; on a GPU they are enqueued on
the stream and ``synchronize()`` waits for them.

Process groups are created by ``launch`` (bootstrap); a backend wraps one that exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16", "int8", "uint8",
                           "int32", "int64")
REDOPS: tuple[str, ...] = ("sum", "prod", "max", "min", "avg")


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r} (known: {', '.join(DTYPES)})")
    return dtype


def check_redop(op: str) -> str:
    if op not in REDOPS:
        raise ValueError(f"redop: unknown {op!r} (known: {', '.join(REDOPS)})")
    return op


def elem_size(dtype: str) -> int:
    """Bytes per element (bfloat16: 2)."""
    return 2 if check_dtype(dtype) == "bfloat16" else np.dtype(dtype).itemsize


class Backend(ABC):
    """What a workload needs from a communication library."""

    name: ClassVar[str]
    rank: int
    world_size: int
    device: str

    @abstractmethod
    def empty(self, count: int, dtype: str) -> Any:
        """An uninitialized buffer of ``count`` elements on this backend's device."""

    @abstractmethod
    def from_numpy(self, array: np.ndarray, dtype: str) -> Any:
        """A buffer holding ``array`` converted to ``dtype`` (values must be exact in it)."""

    @abstractmethod
    def to_numpy(self, buf: Any) -> np.ndarray:
        """The buffer's values on the host (bfloat16 as float32, which holds them exactly)."""

    @abstractmethod
    def all_reduce(self, buf: Any, op: str = "sum") -> None: ...
    @abstractmethod
    def all_gather(self, out: Any, inp: Any) -> None: ...
    @abstractmethod
    def reduce_scatter(self, out: Any, inp: Any, op: str = "sum") -> None: ...
    @abstractmethod
    def broadcast(self, buf: Any, root: int = 0) -> None: ...
    @abstractmethod
    def all_to_all(self, out: Any, inp: Any) -> None: ...
    @abstractmethod
    def barrier(self) -> None: ...
    @abstractmethod
    def send(self, buf: Any, dst: int) -> None: ...
    @abstractmethod
    def recv(self, buf: Any, src: int) -> None: ...

    def synchronize(self) -> None:
        """Wait until the device has finished the work enqueued so far (CPU: nothing)."""
        return None

    @abstractmethod
    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, on every rank. Untimed paths only."""

    def close(self) -> None:
        """Release the communicator (the process group is left to its creator)."""
        return None


class MPIBackend(Backend):
    """MPI through mpi4py on host memory. MPI has no bfloat16 type; device buffers would
    need a CUDA-aware MPI, which is not detected yet: both are clear errors."""

    name: ClassVar[str] = "mpi"

    def __init__(self, comm: Any = None, device: str = "cpu"):
        from mpi4py import MPI

        if device != "cpu":
            raise ValueError(f"device: the mpi backend works on host memory only, got "
                             f"{device!r} (use backend = 'nccl' for GPU buffers)")
        self._mpi = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.world_size, self.device = self.comm.Get_rank(), self.comm.Get_size(), device
        self._ops = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN,
                     "avg": MPI.SUM}

    def _dtype(self, dtype: str) -> np.dtype:
        if check_dtype(dtype) == "bfloat16":
            raise ValueError("dtype: MPI has no bfloat16 type; use float16 or float32 with "
                             "--backend mpi, or a torch backend for bfloat16")
        return np.dtype(dtype)

    def empty(self, count: int, dtype: str) -> np.ndarray:
        return np.empty(count, dtype=self._dtype(dtype))

    def from_numpy(self, array: np.ndarray, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=self._dtype(dtype))

    def to_numpy(self, buf: np.ndarray) -> np.ndarray:
        return np.array(buf, copy=True)

    def all_reduce(self, buf: np.ndarray, op: str = "sum") -> None:
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._ops[check_redop(op)])
        if op == "avg":
            _divide(buf, self.world_size)

    def all_gather(self, out: np.ndarray, inp: np.ndarray) -> None:
        self.comm.Allgather(inp, out)

    def reduce_scatter(self, out: np.ndarray, inp: np.ndarray, op: str = "sum") -> None:
        self.comm.Reduce_scatter_block(inp, out, op=self._ops[check_redop(op)])
        if op == "avg":
            _divide(out, self.world_size)

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        self.comm.Bcast(buf, root=root)

    def all_to_all(self, out: np.ndarray, inp: np.ndarray) -> None:
        self.comm.Alltoall(inp, out)

    def barrier(self) -> None:
        self.comm.Barrier()

    def send(self, buf: np.ndarray, dst: int) -> None:
        self.comm.Send(buf, dest=dst)

    def recv(self, buf: np.ndarray, src: int) -> None:
        self.comm.Recv(buf, source=src)

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)


def _divide(buf: np.ndarray, n: int) -> None:
    """avg = sum / n; integers truncate toward zero, as NCCL's ncclAvg does."""
    if np.issubdtype(buf.dtype, np.floating):
        buf /= n
    else:
        buf[...] = np.trunc(buf / n).astype(buf.dtype)


class TorchBackend(Backend):
    """torch.distributed with ``nccl`` (CUDA tensors, bfloat16 allowed) or ``gloo`` (CPU)."""

    name: ClassVar[str] = "torch"

    def __init__(self, device: str = "cpu"):
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("TorchBackend needs an initialized process group "
                               "(launch.bootstrap creates it)")
        self._torch, self._dist = torch, dist
        self.backend_name = dist.get_backend()
        self.rank, self.world_size, self.device = dist.get_rank(), dist.get_world_size(), device
        self._ops = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT,
                     "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN,
                     "avg": dist.ReduceOp.AVG}

    def _dtype(self, dtype: str) -> Any:
        return getattr(self._torch, check_dtype(dtype))

    def empty(self, count: int, dtype: str) -> Any:
        return self._torch.empty(count, dtype=self._dtype(dtype), device=self.device)

    def from_numpy(self, array: np.ndarray, dtype: str) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(array))
        return t.to(device=self.device, dtype=self._dtype(dtype))

    def to_numpy(self, buf: Any) -> np.ndarray:
        if buf.dtype == self._torch.bfloat16:
            buf = buf.float()
        return buf.detach().cpu().numpy().copy()

    def all_reduce(self, buf: Any, op: str = "sum") -> None:
        op_ = self._ops[check_redop(op)]
        if op == "avg" and self.backend_name == "gloo":
            # gloo has no AVG: sum, then divide (truncating integers, as NCCL does).
            self._dist.all_reduce(buf, op=self._ops["sum"])
            _torch_divide(self._torch, buf, self.world_size)
            return
        self._dist.all_reduce(buf, op=op_)

    def all_gather(self, out: Any, inp: Any) -> None:
        self._dist.all_gather_into_tensor(out, inp)

    def reduce_scatter(self, out: Any, inp: Any, op: str = "sum") -> None:
        if op == "avg" and self.backend_name == "gloo":
            self._dist.reduce_scatter_tensor(out, inp, op=self._ops["sum"])
            _torch_divide(self._torch, out, self.world_size)
            return
        self._dist.reduce_scatter_tensor(out, inp, op=self._ops[check_redop(op)])

    def broadcast(self, buf: Any, root: int = 0) -> None:
        self._dist.broadcast(buf, src=root)

    def all_to_all(self, out: Any, inp: Any) -> None:
        self._dist.all_to_all_single(out, inp)

    def barrier(self) -> None:
        self._dist.barrier()

    def send(self, buf: Any, dst: int) -> None:
        self._dist.send(buf, dst=dst)

    def recv(self, buf: Any, src: int) -> None:
        self._dist.recv(buf, src=src)

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out


def _torch_divide(torch: Any, buf: Any, n: int) -> None:
    if buf.is_floating_point():
        buf.div_(n)
    else:
        buf.copy_(torch.div(buf, n, rounding_mode="trunc"))
