"""Run by every rank (under mpirun) for tests/distributed/test_explicit_algorithms.py:
every explicit algorithm against the exact expected result and the backend's own call.

Usage: python explicit_ranks.py BACKEND RANKS_PER_NODE OUT.json, under mpirun with W
ranks: the checks run at every world size 2..W in turn, on the first N ranks (an MPI
sub-communicator or a torch process group of them; the others wait), so one launch covers
them all. Rank 0 writes one JSON row per check: (world size, algorithm, collective, redop,
dtype, count, wrong vs expected, elements unlike the backend's own call). Inputs are small
integers (collectives.ops), so every partial sum is exact.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI

from collectives.backends import MPIBackend, TorchBackend
from collectives.explicit import Explicit
from collectives.ops import check, get_op
from jitter_models.algorithms import ALGORITHMS
from launch.bootstrap import bootstrap, shutdown
from launch.context import RunContext


def main(backend_name: str, ranks_per_node: int, out: str) -> None:
    world = bootstrap(backend_name, RunContext.detect(), 60.0)
    rows: list[dict] = []
    try:
        for n in range(2, world.world_size + 1):
            sub = _first(world, n)
            if sub is not None:
                rows += _checks(sub, ranks_per_node)
            world.barrier()
        every = world.all_gather_object(rows)  # one gather: each rank's own counts
    finally:
        shutdown(world)
    if world.rank == 0:
        keys = ("world_size", "algorithm", "collective", "redop", "dtype", "count")
        total: dict[tuple, dict] = {}
        for theirs in every:  # rank 0 took part in every check; the others in some
            for row in theirs:
                mine = total.setdefault(tuple(row[k] for k in keys),
                                        {**row, "wrong": 0, "unlike_native": 0})
                mine["wrong"] += row["wrong"]
                mine["unlike_native"] += row["unlike_native"]
        rows = list(total.values())
        with open(out, "w") as f:
            json.dump(rows, f)


def _first(world, n):
    """A backend over ranks 0..n-1 (None on the others); every rank must call it."""
    if isinstance(world, MPIBackend):
        comm = world.comm.Split(0 if world.rank < n else MPI.UNDEFINED, world.rank)
        return MPIBackend(comm) if world.rank < n else None
    import torch.distributed as dist

    group = dist.new_group(list(range(n)))
    return TorchBackend(world.device, group=group) if world.rank < n else None


def _checks(backend, ranks_per_node):
    n = backend.world_size
    rows = []
    for algo, colls in ALGORITHMS.items():
        if algo == "native":
            continue
        for coll in colls:
            op = get_op(coll)
            counts = ([1, n, 7 * n + 3] if coll == "all_reduce"
                      else [n, 7 * n])  # elements of the whole buffer
            for redop in ("sum", "max"):
                for dtype in ("float32", "int32"):
                    for count in counts:
                        rows.append({"world_size": n, **_one(
                            backend, op, algo, coll, redop, dtype, count, ranks_per_node)})
    return rows


def _one(backend, op, algo, coll, redop, dtype, count, ranks_per_node):
    n, rank = backend.world_size, backend.rank
    send = count if coll in ("all_reduce", "reduce_scatter", "all_to_all") else count // n
    recv = count if coll in ("all_reduce", "all_gather", "all_to_all") else count // n
    expected = op.expected(rank, n, send, dtype, redop, 0, seed=5)
    results = []
    for explicit in (True, False):
        inp = backend.from_numpy(op.inputs(rank, n, send, dtype, seed=5, redop=redop), dtype)
        out = None if op.in_place else backend.empty(recv, dtype)
        if explicit:
            Explicit(backend, algorithm=algo, collective=coll, count=count, dtype=dtype,
                     redop=redop, ranks_per_node=ranks_per_node).run(inp, out)
        else:
            op.run(backend, inp, out, redop, 0)
        results.append(backend.to_numpy(inp if out is None else out))
    return {"algorithm": algo, "collective": coll, "redop": redop, "dtype": dtype,
            "count": count, "wrong": check(results[0], expected),
            "unlike_native": int(np.count_nonzero(results[0] != results[1]))}


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
