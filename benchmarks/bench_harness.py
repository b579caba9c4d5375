"""Harness overhead: the benchmark's timing loop against a bare mpi4py loop timed the
same way, in interleaved blocks in one MPI job (2 ranks), so both see the same machine.

    .venv/bin/python benchmarks/bench_harness.py [--check]   # relaunches itself via mpirun

Both loops: untimed barrier, clock, Allreduce (in place, sum, float32), clock; the
per-iteration value is the max over ranks. Targets: p50 within +1 µs at 1 KiB, within
10% at 64 KiB and above.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = (1024, 65536, 1048576)


def bare_loop(comm, size: int, iters: int) -> np.ndarray:
    from mpi4py import MPI

    buf = np.zeros(size // 4, dtype=np.float32)
    out = np.empty(iters, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(iters):
        comm.Barrier()
        t0 = clock()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        out[i] = clock() - t0
    return out


def harness_loop(backend, size: int, iters: int) -> np.ndarray:
    from collectives import microbench
    from collectives.inject import make_injector

    records, _ = microbench.run(backend, colls=("all_reduce",), sizes=(size,),
                                dtype="float32", redop="sum", root=0, iters=iters, warmup=0,
                                check=False, seed=0, schedule=None,
                                injector=make_injector("none"), node=0)
    t = records.table()
    return t["t_done_ns"] - t["t_start_ns"]


def worker(blocks: int, iters: int, check: bool) -> int:
    from mpi4py import MPI

    from collectives.backends import MPIBackend

    comm = MPI.COMM_WORLD
    backend = MPIBackend(comm)
    per = {(path, s): [] for path in ("bare", "harness") for s in SIZES}
    for s in SIZES:  # warm both paths
        bare_loop(comm, s, 20)
        harness_loop(backend, s, 20)
    for _ in range(blocks):
        for s in SIZES:
            for path in ("bare", "harness"):
                local = bare_loop(comm, s, iters) if path == "bare" else \
                    harness_loop(backend, s, iters)
                allr = np.empty((comm.Get_size(), iters), dtype=np.int64)
                comm.Allgather(local, allr)
                per[(path, s)].append(allr.max(axis=0))  # per-iteration max over ranks
    if comm.Get_rank() != 0:
        return 0
    print(f"Harness overhead, {comm.Get_size()} ranks, {blocks} interleaved blocks x {iters} "
          f"iterations (load average {os.getloadavg()[0]:.2f})")
    head = ["size_B", "bare_p50_us", "harness_p50_us", "diff_us", "ratio", "target", ""]
    print("".join(h.rjust(15) for h in head))
    ok_all = True
    for s in SIZES:
        bare = np.concatenate(per[("bare", s)]) / 1e3
        harn = np.concatenate(per[("harness", s)]) / 1e3
        b50, h50 = statistics.median(bare), statistics.median(harn)
        diff, ratio = h50 - b50, h50 / b50
        if s <= 1024:
            target, ok = "+1 us", diff <= 1.0
        else:
            target, ok = "10%", ratio <= 1.10
        ok_all &= ok
        cells = [str(s), f"{b50:.2f}", f"{h50:.2f}", f"{diff:+.2f}", f"{ratio:.3f}", target,
                 "ok" if ok else "MISS"]
        print("".join(c.rjust(15) for c in cells))
    return 0 if (ok_all or not check) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--iters", type=int, default=300)
    args = p.parse_args()
    if "OMPI_COMM_WORLD_RANK" in os.environ or "PMI_RANK" in os.environ:
        return worker(args.blocks, args.iters, args.check)
    mpirun = Path(sys.executable).with_name("mpirun")
    argv = [str(mpirun), "-np", "2"]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    argv += [sys.executable, __file__, *sys.argv[1:]]
    return subprocess.run(argv).returncode


if __name__ == "__main__":
    sys.exit(main())
