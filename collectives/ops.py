"""Collective ops with nccl-tests semantics: sizes, inputs, expected results, bandwidth.

One small class per collective behind the `Op` protocol, registered in `OPS`: the slots of
nccl-tests' ``struct testColl`` (byte counts, init data, check, bandwidth factor, run by
name). Pure numpy: a backend runs the op; this module says what each rank sends, what it
must hold afterwards, and how a time becomes algbw/busbw.

Sizes are nccl-tests' "size" column S, in bytes:

- all_reduce, broadcast: every rank's buffer holds ``S // elem_size`` elements.
- all_gather, reduce_scatter, all_to_all: S is the whole (gathered / pre-scatter /
  exchanged) buffer of ``count = S // elem_size`` elements; each rank's chunk is
  ``count // world_size`` elements. As in nccl-tests the count is rounded down to a
  multiple of the world size, and `bytes_moved` is the S actually used. (Some nccl-tests
  versions also align reduce_scatter's chunk down to 16 bytes; jitterlab does not.)

Inputs are small integers, so every result is exact and `check` can demand equality.
Values are exactly representable in bfloat16 (integers with |v| <= 256): numpy has no
bfloat16, so a bf16 caller asks for float32 and converts. Per redop, for world sizes up
to 64:

- sum, max, min (and the ops without a redop): integers in [-4, 4], so every partial sum
  stays within 4 * 64 = 256, exact in float16 (integers to 2048) and bfloat16.
- prod: +-1 everywhere except one rank per element (chosen from the seed) holding +-2,
  so every product is +-1 or +-2.
- avg: ``world_size * k`` with k in {-1, 0, 1}; the mean is the integer sum of the k.
  Exact in float32/float64/integers; in float16 and bfloat16 for power-of-two world
  sizes and any world size up to 16 (|sum| <= world_size**2). A backend that
  pre-multiplies by 1/world_size (NCCL does for floats) is exact only for power-of-two
  world sizes: pass ``check(..., atol=...)`` otherwise.
"""

from __future__ import annotations

import re
from numbers import Integral
from typing import Any, Protocol

import numpy as np

REDOPS: tuple[str, ...] = ("sum", "prod", "max", "min", "avg")
SUPPORTED_DTYPES: tuple[str, ...] = ("float16", "float32", "float64", "int32", "int64")
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16", "int32", "int64")
"""The element types an op runs in: numpy's SUPPORTED_DTYPES, and bfloat16 (inputs made
in float32 and converted, exact: see above)."""
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGkmg]?)\s*$")
_RANK_STREAM, _OWNER_STREAM = 1, 2  # keep per-rank and shared draws apart


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def _rank_args(rank: object, world_size: object, send_count: object,
               seed: object) -> tuple[int, int, int]:
    """Validated (world_size, send_count, seed) for a rank's inputs or expected output."""
    world_size = _int("world_size", world_size, 1)
    if not 0 <= _int("rank", rank, 0) < world_size:
        raise ValueError(f"rank={rank} outside world_size={world_size}")
    return world_size, _int("send_count", send_count, 0), _int("seed", seed, 0)


def _dtype(dtype: object) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; use one of "
                         f"{', '.join(SUPPORTED_DTYPES)} (bfloat16: pass float32 and convert)")
    return dt


def _redop(redop: object) -> str:
    if redop not in REDOPS:
        raise ValueError(f"unknown redop {redop!r}; known: {', '.join(REDOPS)}")
    return redop  # type: ignore[return-value]


def _values(rank: int, world_size: int, count: int, redop: str, seed: int) -> np.ndarray:
    """The rank's inputs as int64; see the module docstring for the value ranges."""
    rng = np.random.default_rng([seed, _RANK_STREAM, rank])
    if redop == "prod":
        owner = np.random.default_rng([seed, _OWNER_STREAM, world_size])
        holds_two = owner.integers(0, world_size, count) == rank
        return rng.choice(np.array([-1, 1]), count) * np.where(holds_two, 2, 1)
    if redop == "avg":
        return world_size * rng.integers(-1, 2, count)
    return rng.integers(-4, 5, count)


def _reduce(stack: np.ndarray, redop: str) -> np.ndarray:
    """Exact reduction over ranks (axis 0) of int64 values."""
    if redop == "avg":
        total = stack.sum(axis=0)
        assert not (total % len(stack)).any(), "avg inputs must be multiples of world_size"
        return total // len(stack)
    return {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}[redop](stack, axis=0)


def algbw_gbps(size_bytes: int, seconds: float) -> float:
    """nccl-tests' algorithm bandwidth S / t, in GB/s (1e9 bytes per second)."""
    if not seconds > 0:
        raise ValueError(f"seconds={seconds!r}: must be positive")
    return size_bytes / seconds / 1e9


def check(received: np.ndarray, expected: np.ndarray, *, atol: float = 0.0) -> int:
    """Number of wrong elements (nccl-tests' #wrong); NaN is always wrong.

    ``atol = 0`` demands equality, which the exact inputs allow; a positive ``atol``
    accepts ``|received - expected| <= atol`` (see the module docstring on avg).
    """
    received, expected = np.asarray(received), np.asarray(expected)
    if received.shape != expected.shape:
        raise ValueError(f"received shape {received.shape} != expected shape {expected.shape}")
    if atol < 0:
        raise ValueError(f"atol={atol!r}: must be >= 0")
    if atol == 0:
        return int(np.count_nonzero(received != expected))
    diff = np.abs(received.astype(np.float64) - expected.astype(np.float64))
    return int(np.count_nonzero(~(diff <= atol)))


class Op(Protocol):
    """One collective: how big its buffers are, what goes in and out, its bus factor."""

    name: str
    uses_redop: bool
    uses_root: bool

    def counts(self, size_bytes: int, elem_size: int, world_size: int) -> tuple[int, int]: ...
    def bytes_moved(self, size_bytes: int, elem_size: int, world_size: int) -> int: ...
    def bus_factor(self, world_size: int) -> float: ...
    def busbw_gbps(self, size_bytes: int, seconds: float, world_size: int) -> float: ...
    def inputs(self, rank: int, world_size: int, send_count: int, dtype: object,
               seed: int = 0, redop: str = "sum") -> np.ndarray: ...
    def expected(self, rank: int, world_size: int, send_count: int, dtype: object,
                 redop: str = "sum", root: int = 0, seed: int = 0) -> np.ndarray: ...
    in_place: bool
    def run(self, backend: Any, inp: Any, out: Any, redop: str, root: int) -> None: ...


class _Collective:
    """Shared slots; a subclass sets its name and writes counts, bus_factor, _result."""

    name = ""
    uses_redop = False
    uses_root = False
    chunked = False  # S is the whole buffer, split into world_size chunks
    splits_send = False  # the send buffer holds one chunk per destination rank
    in_place = False  # the result replaces the input buffer (``out`` is None)

    def run(self, backend: Any, inp: Any, out: Any, redop: str, root: int) -> None:
        """The backend's own call (nccl-tests' runColl); results land in ``out``, or in
        ``inp`` for an in-place op."""
        raise NotImplementedError

    def counts(self, size_bytes: int, elem_size: int, world_size: int) -> tuple[int, int]:
        """(send_count, recv_count) in elements per rank for nccl-tests' size S."""
        size_bytes = _int("size_bytes", size_bytes, 0)
        elem_size = _int("elem_size", elem_size, 1)
        world_size = _int("world_size", world_size, 1)
        need = elem_size * (world_size if self.chunked else 1)
        if size_bytes < need:
            what = f"{world_size} elements (one per rank)" if self.chunked else "one element"
            raise ValueError(f"{self.name}: size_bytes={size_bytes} is smaller than {what}; "
                             f"minimum {need} bytes")
        count = size_bytes // elem_size
        return self._counts(count // world_size if self.chunked else count, world_size)

    def _counts(self, count: int, world_size: int) -> tuple[int, int]:
        return count, count

    def bytes_moved(self, size_bytes: int, elem_size: int, world_size: int) -> int:
        """S after rounding down to whole elements (and whole chunks): the bytes timed."""
        return max(self.counts(size_bytes, elem_size, world_size)) * elem_size

    def bus_factor(self, world_size: int) -> float:
        raise NotImplementedError

    def busbw_gbps(self, size_bytes: int, seconds: float, world_size: int) -> float:
        """algbw * bus_factor; pass `bytes_moved` as size_bytes."""
        return algbw_gbps(size_bytes, seconds) * self.bus_factor(world_size)

    def _redop(self, redop: object) -> str:
        return _redop(redop) if self.uses_redop else "sum"  # others ignore redop

    def inputs(self, rank: int, world_size: int, send_count: int, dtype: object,
               seed: int = 0, redop: str = "sum") -> np.ndarray:
        """The rank's send buffer: ``send_count`` exact small integers in ``dtype``."""
        world_size, count, seed = _rank_args(rank, world_size, send_count, seed)
        return _values(rank, world_size, count, self._redop(redop), seed).astype(_dtype(dtype))

    def expected(self, rank: int, world_size: int, send_count: int, dtype: object,
                 redop: str = "sum", root: int = 0, seed: int = 0) -> np.ndarray:
        """What ``rank`` must hold afterwards, from every rank's recomputed inputs."""
        world_size, count, seed = _rank_args(rank, world_size, send_count, seed)
        if self.splits_send and count % world_size:
            raise ValueError(f"{self.name}: send_count={count} is not a multiple of "
                             f"world_size={world_size}")
        if self.uses_root and not 0 <= _int("root", root, 0) < world_size:
            raise ValueError(f"root={root} outside world_size={world_size}")
        dt, redop = _dtype(dtype), self._redop(redop)
        stack = np.stack([_values(r, world_size, count, redop, seed) for r in range(world_size)])
        return self._result(stack, rank, redop, root).astype(dt)

    def _result(self, stack: np.ndarray, rank: int, redop: str, root: int) -> np.ndarray:
        """From all ranks' int64 inputs (rank x send_count), the rank's int64 output."""
        raise NotImplementedError


def _chunk(row: np.ndarray, index: int, world_size: int) -> np.ndarray:
    size = len(row) // world_size
    return row[index * size:(index + 1) * size]


class AllReduce(_Collective):
    name, uses_redop, in_place = "all_reduce", True, True

    def run(self, backend, inp, out, redop, root):
        backend.all_reduce(inp, redop)

    def bus_factor(self, world_size: int) -> float:
        n = _int("world_size", world_size, 1)
        return 2 * (n - 1) / n  # 0.0 at one rank, as nccl-tests prints

    def _result(self, stack, rank, redop, root):
        return _reduce(stack, redop)


class AllGather(_Collective):
    name, chunked = "all_gather", True

    def run(self, backend, inp, out, redop, root):
        backend.all_gather(out, inp)

    def _counts(self, chunk: int, world_size: int) -> tuple[int, int]:
        return chunk, chunk * world_size

    def bus_factor(self, world_size: int) -> float:
        n = _int("world_size", world_size, 1)
        return (n - 1) / n

    def _result(self, stack, rank, redop, root):
        return stack.reshape(-1)  # rank r's buffer lands at chunk r


class ReduceScatter(_Collective):
    name, uses_redop, chunked, splits_send = "reduce_scatter", True, True, True

    def run(self, backend, inp, out, redop, root):
        backend.reduce_scatter(out, inp, redop)

    def _counts(self, chunk: int, world_size: int) -> tuple[int, int]:
        return chunk * world_size, chunk

    def bus_factor(self, world_size: int) -> float:
        n = _int("world_size", world_size, 1)
        return (n - 1) / n

    def _result(self, stack, rank, redop, root):
        return _chunk(_reduce(stack, redop), rank, len(stack))


class Broadcast(_Collective):
    name, uses_root, in_place = "broadcast", True, True

    def run(self, backend, inp, out, redop, root):
        backend.broadcast(inp, root)

    def bus_factor(self, world_size: int) -> float:
        _int("world_size", world_size, 1)
        return 1.0

    def _result(self, stack, rank, redop, root):
        return stack[root]


class AllToAll(_Collective):
    name, chunked, splits_send = "all_to_all", True, True

    def run(self, backend, inp, out, redop, root):
        backend.all_to_all(out, inp)

    def _counts(self, chunk: int, world_size: int) -> tuple[int, int]:
        return chunk * world_size, chunk * world_size

    def bus_factor(self, world_size: int) -> float:
        n = _int("world_size", world_size, 1)
        return (n - 1) / n

    def _result(self, stack, rank, redop, root):
        # Chunk j of the receive buffer is chunk `rank` of sender j's send buffer.
        return np.concatenate([_chunk(row, rank, len(stack)) for row in stack])


OPS: dict[str, Op] = {op.name: op for op in
                      (AllReduce(), AllGather(), ReduceScatter(), Broadcast(), AllToAll())}


def get_op(name: str) -> Op:
    """The op registered as ``name``; a ValueError lists the known ones."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown op {name!r}; known: {', '.join(OPS)}") from None


def parse_size(text: str | int) -> int:
    """Bytes from ``"1024"``, ``"64K"``, ``"8m"``, ``"1G"`` (powers of 1024, as nccl-tests
    -b/-e) or a non-negative int."""
    if isinstance(text, Integral) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must be >= 0")
        return int(text)
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected whole bytes with an optional "
                         "K, M or G suffix (powers of 1024), e.g. '64K'")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def size_sweep(min_bytes: str | int, max_bytes: str | int, step_factor: int = 2) -> list[int]:
    """Sizes from min to max, each ``step_factor`` times the last (nccl-tests -b/-e/-f).

    The last size is the largest not above max_bytes, so it may fall short of max_bytes.
    """
    low, high = parse_size(min_bytes), parse_size(max_bytes)
    if low < 1:
        raise ValueError(f"min_bytes={min_bytes!r}: must be at least 1 byte")
    if high < low:
        raise ValueError(f"max_bytes={max_bytes!r} is smaller than min_bytes={min_bytes!r}")
    if isinstance(step_factor, bool) or not isinstance(step_factor, Integral):
        raise ValueError(f"step_factor={step_factor!r}: expected an integer")
    if low == high:
        return [low]
    if step_factor <= 1:
        raise ValueError(f"step_factor={step_factor!r}: must be at least 2 "
                         f"to go from {low} to {high} bytes")
    sizes = [low]
    while sizes[-1] * step_factor <= high:
        sizes.append(sizes[-1] * int(step_factor))
    return sizes
