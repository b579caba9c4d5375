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

from .ops import REDOPS

BACKENDS: tuple[str, ...] = ("auto", "gloo", "nccl", "mpi")
"""Backend names a plan, a spec or ``bench --backend`` takes (auto: nccl with CUDA, else
gloo; mpi only on request)."""
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16", "int8", "uint8",
                           "int32", "int64")


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
    def all_to_all_v(self, out: Any, out_counts: list[int], inp: Any,
                     in_counts: list[int]) -> None:
        """Uneven all-to-all: ``inp``'s first ``in_counts[0]`` elements go to rank 0, the
        next ``in_counts[1]`` to rank 1, ...; ``out`` receives ``out_counts[j]`` elements
        from rank j, in rank order (MPI_Alltoallv with packed displacements)."""
    @abstractmethod
    def iall_reduce(self, buf: Any, op: str = "sum") -> Any:
        """A non-blocking all-reduce in place (sum or max): the request, for ``done``
        and ``wait``."""
    @abstractmethod
    def done(self, request: Any) -> bool:
        """Has the non-blocking call finished? (Calling it drives MPI's progress.)"""
    @abstractmethod
    def wait(self, request: Any) -> None: ...
    @abstractmethod
    def barrier(self) -> None: ...
    @abstractmethod
    def send(self, buf: Any, dst: int) -> None: ...
    @abstractmethod
    def recv(self, buf: Any, src: int) -> None: ...

    # Point-to-point for explicit algorithms (``explicit.py``): non-blocking, then waited.
    grouped_p2p: ClassVar[bool] = False
    """True where a step's sends and receives must be posted together (NCCL: separate
    calls between a pair share a stream, so an exchange posted one call at a time would
    deadlock); such a backend takes them through :meth:`post_group`."""

    @abstractmethod
    def isend(self, buf: Any, dst: int, tag: int = 0) -> Any: ...
    @abstractmethod
    def irecv(self, buf: Any, src: int, tag: int = 0) -> Any: ...
    @abstractmethod
    def wait_all(self, requests: list[Any]) -> None: ...

    def post_group(self, sends: list[tuple[Any, int]], recvs: list[tuple[Any, int]],
                   tag: int = 0) -> list[Any]:
        """Post receives then sends together; the requests to wait for."""
        return ([self.irecv(b, src, tag) for b, src in recvs]
                + [self.isend(b, dst, tag) for b, dst in sends])

    @abstractmethod
    def combine(self, acc: Any, other: Any, op: str) -> None:
        """``acc = acc op other`` elementwise, in place (sum, prod, max, min; avg sums)."""

    @abstractmethod
    def copy(self, dst: Any, src: Any) -> None:
        """``dst[:] = src``."""

    @abstractmethod
    def divide(self, buf: Any, n: int) -> None:
        """``buf /= n`` in place, integers truncated toward zero (avg = sum / n)."""

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

    def all_to_all_v(self, out: np.ndarray, out_counts: list[int], inp: np.ndarray,
                     in_counts: list[int]) -> None:
        self.comm.Alltoallv([inp, (in_counts, _displacements(in_counts))],
                            [out, (out_counts, _displacements(out_counts))])

    def iall_reduce(self, buf: np.ndarray, op: str = "sum") -> Any:
        if check_redop(op) not in ("sum", "max"):
            raise ValueError(f"op: iall_reduce takes sum or max, got {op!r}")
        return self.comm.Iallreduce(self._mpi.IN_PLACE, buf, op=self._ops[op])

    def done(self, request: Any) -> bool:
        return bool(request.Test())

    def wait(self, request: Any) -> None:
        request.Wait()

    def barrier(self) -> None:
        self.comm.Barrier()

    def send(self, buf: np.ndarray, dst: int) -> None:
        self.comm.Send(buf, dest=dst)

    def recv(self, buf: np.ndarray, src: int) -> None:
        self.comm.Recv(buf, source=src)

    def isend(self, buf: np.ndarray, dst: int, tag: int = 0) -> Any:
        return self.comm.Isend(buf, dest=dst, tag=tag)

    def irecv(self, buf: np.ndarray, src: int, tag: int = 0) -> Any:
        return self.comm.Irecv(buf, source=src, tag=tag)

    def wait_all(self, requests: list[Any]) -> None:
        if requests:
            self._mpi.Request.Waitall(requests)

    def combine(self, acc: np.ndarray, other: np.ndarray, op: str) -> None:
        _NUMPY_OPS[op](acc, other, out=acc)

    def copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        dst[...] = src

    def divide(self, buf: np.ndarray, n: int) -> None:
        _divide(buf, n)

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)


def _displacements(counts: list[int]) -> list[int]:
    """Packed offsets of consecutive blocks of ``counts`` elements."""
    return [int(x) for x in np.concatenate(([0], np.cumsum(counts[:-1])))] if counts else []


_NUMPY_OPS = {"sum": np.add, "avg": np.add, "prod": np.multiply, "max": np.maximum,
              "min": np.minimum}


def _divide(buf: np.ndarray, n: int) -> None:
    """avg = sum / n; integers truncate toward zero, as NCCL's ncclAvg does."""
    if np.issubdtype(buf.dtype, np.floating):
        buf /= n
    else:
        buf[...] = np.trunc(buf / n).astype(buf.dtype)


class TorchBackend(Backend):
    """torch.distributed with ``nccl`` (CUDA tensors, bfloat16 allowed) or ``gloo`` (CPU)."""

    name: ClassVar[str] = "torch"

    def __init__(self, device: str = "cpu", group: Any = None):
        """``group``: a process group of the first ranks of the world (tests run several
        world sizes in one launch), so that its ranks are the global ranks; None: all."""
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("TorchBackend needs an initialized process group "
                               "(launch.bootstrap creates it)")
        self._torch, self._dist = torch, dist
        self.backend_name = dist.get_backend()
        self._g = {} if group is None else {"group": group}
        self.rank, self.world_size = dist.get_rank(**self._g), dist.get_world_size(**self._g)
        self.device = device
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
            self._dist.all_reduce(buf, op=self._ops["sum"], **self._g)
            _torch_divide(self._torch, buf, self.world_size)
            return
        self._dist.all_reduce(buf, op=op_, **self._g)

    def all_gather(self, out: Any, inp: Any) -> None:
        self._dist.all_gather_into_tensor(out, inp, **self._g)

    def reduce_scatter(self, out: Any, inp: Any, op: str = "sum") -> None:
        if op == "avg" and self.backend_name == "gloo":
            self._dist.reduce_scatter_tensor(out, inp, op=self._ops["sum"], **self._g)
            _torch_divide(self._torch, out, self.world_size)
            return
        self._dist.reduce_scatter_tensor(out, inp, op=self._ops[check_redop(op)], **self._g)

    def broadcast(self, buf: Any, root: int = 0) -> None:
        self._dist.broadcast(buf, src=root, **self._g)

    def all_to_all(self, out: Any, inp: Any) -> None:
        self._dist.all_to_all_single(out, inp, **self._g)

    def all_to_all_v(self, out: Any, out_counts: list[int], inp: Any,
                     in_counts: list[int]) -> None:
        self._dist.all_to_all_single(out, inp, output_split_sizes=list(out_counts),
                                     input_split_sizes=list(in_counts), **self._g)

    def iall_reduce(self, buf: Any, op: str = "sum") -> Any:
        if check_redop(op) not in ("sum", "max"):
            raise ValueError(f"op: iall_reduce takes sum or max, got {op!r}")
        return self._dist.all_reduce(buf, op=self._ops[op], async_op=True, **self._g)

    def done(self, request: Any) -> bool:
        return bool(request.is_completed())

    def wait(self, request: Any) -> None:
        request.wait()

    def barrier(self) -> None:
        self._dist.barrier(**self._g)

    def send(self, buf: Any, dst: int) -> None:
        self._dist.send(buf, dst=dst, **self._g)

    def recv(self, buf: Any, src: int) -> None:
        self._dist.recv(buf, src=src, **self._g)

    @property
    def grouped_p2p(self) -> bool:  # type: ignore[override]
        return self.backend_name == "nccl"

    def isend(self, buf: Any, dst: int, tag: int = 0) -> Any:
        return self._dist.isend(buf, dst=dst, tag=tag, **self._g)

    def irecv(self, buf: Any, src: int, tag: int = 0) -> Any:
        return self._dist.irecv(buf, src=src, tag=tag, **self._g)

    def post_group(self, sends: list[tuple[Any, int]], recvs: list[tuple[Any, int]],
                   tag: int = 0) -> list[Any]:
        ops = ([self._dist.P2POp(self._dist.irecv, b, src, tag=tag, **self._g)
                for b, src in recvs]
               + [self._dist.P2POp(self._dist.isend, b, dst, tag=tag, **self._g)
                  for b, dst in sends])
        return self._dist.batch_isend_irecv(ops) if ops else []

    def wait_all(self, requests: list[Any]) -> None:
        for req in requests:
            req.wait()

    def combine(self, acc: Any, other: Any, op: str) -> None:
        t = self._torch
        if op in ("sum", "avg"):
            acc.add_(other)
        elif op == "prod":
            acc.mul_(other)
        elif op == "max":
            t.maximum(acc, other, out=acc)
        else:
            t.minimum(acc, other, out=acc)

    def copy(self, dst: Any, src: Any) -> None:
        dst.copy_(src)

    def divide(self, buf: Any, n: int) -> None:
        _torch_divide(self._torch, buf, n)

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj, **self._g)
        return out


def _torch_divide(torch: Any, buf: Any, n: int) -> None:
    if buf.is_floating_point():
        buf.div_(n)
    else:
        buf.copy_(torch.div(buf, n, rounding_mode="trunc"))
