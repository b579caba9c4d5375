"""The worker every rank runs: ``jitterlab worker PLAN.json``.

It runs through the installed console script, not ``python -m launch.worker``, so a
``launch/`` folder in the user's working directory cannot shadow this package. A rank that
fails leaves ``errors/rank-NNNNN.txt`` (one line) for the parent to report.
"""

from __future__ import annotations

import os
from pathlib import Path

from collectives.clocks import clock_metadata, measure_offsets
from collectives.explicit import HopLog
from collectives.files import make_dirs, set_file_mode
from collectives.inject import SLEEP_ONLY, HostInjector, make_injector
from collectives.microbench import Fault
from collectives.timing import write_rank_file
from collectives.workload import RankRun, get_workload
from jitter_models import node_of, parse_schedule

from .bootstrap import bootstrap, shutdown
from .context import RunContext, die_with_torchrun
from .plan import Plan
from .progress import DONE, READY, rank_slot


def _shared_folder(backend, out_dir: str) -> bool:
    """Do all ranks see the same run folder? Rank 0 leaves a token there; all look for it."""
    token = Path(out_dir) / f".shared-{os.getpid()}"
    name = backend.all_gather_object(token.name if backend.rank == 0 else None)[0]
    if backend.rank == 0:
        token.write_text("jitterlab")
    backend.barrier()
    seen = (Path(out_dir) / name).exists()
    everyone = all(backend.all_gather_object(seen))
    backend.barrier()
    if backend.rank == 0:
        token.unlink(missing_ok=True)
    return everyone


def error_file(out_dir: str, rank: int) -> Path:
    return Path(out_dir) / "errors" / f"rank-{rank:05d}.txt"


def run(plan_path: str) -> int:
    """Run ``plan_path`` on this rank and write its records file; 0 on success."""
    plan = Plan.load(plan_path)
    ctx = RunContext.detect()
    die_with_torchrun()  # (again, for callers other than the CLI; cheap)
    try:
        return _run(plan, ctx)
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            path = error_file(plan.out_dir, ctx.rank)
            make_dirs(path.parent)
            with open(path, "w", encoding="utf-8") as f:
                set_file_mode(f.fileno())
                f.write(f"{type(exc).__name__}: {exc}\n".replace("\n", " ").strip() + "\n")
        raise


def _run(plan: Plan, ctx: RunContext) -> int:
    schedule = parse_schedule(plan.jitter) if plan.jitter else None
    fault = Fault.parse(plan.fault) if plan.fault else None
    slot = rank_slot(plan.out_dir, ctx.rank)
    mark = slot.mark if slot is not None else None
    backend = bootstrap(plan.backend, ctx, plan.timeout_s)
    try:
        hostnames = backend.all_gather_object(ctx.hostname)
        name, injector = _injector(plan, schedule, backend.device,
                                   hostnames.count(ctx.hostname))
        before = measure_offsets(backend, hostnames, force=plan.clock_pingpong)
        if mark is not None:
            mark[0] = READY
        # Node-scoped draws are keyed by the rank's block of ranks_per_node, the model's
        # node, not the launcher's (0 for every rank on one host). A multi-node point
        # fills ceil(N / ranks_per_node) nodes in these same blocks, so there the two agree.
        node = node_of(ctx.rank, plan.ranks_per_node)
        hop_log = HopLog() if plan.record_hops else None
        result = get_workload(plan.workload).run(RankRun(
            backend=backend, params=plan.params, dtype=plan.dtype, seed=plan.seed,
            schedule=schedule, injector=injector, node=node, algorithms=plan.algorithms,
            ranks_per_node=plan.ranks_per_node, out_dir=plan.out_dir, progress=mark,
            fault=fault, hop_log=hop_log))
        records = result.records
        after = measure_offsets(backend, hostnames, force=plan.clock_pingpong)
        metadata = _metadata(plan, ctx, backend, name, result, clock_metadata(before, after))
        hops = hop_log.table() if hop_log is not None else None
        if plan.gather_records == "always" or not _shared_folder(backend, plan.out_dir):
            # Not every rank sees the run folder (a local disk per node): rank 0 writes all.
            everything = backend.all_gather_object((records.table(), metadata, hops))
            if ctx.rank == 0:
                for r, (cols, meta, rank_hops) in enumerate(everything):
                    _write(plan, r, cols, {**meta, "written_by": 0}, rank_hops)
        else:
            _write(plan, ctx.rank, records.table(), metadata, hops)
        if mark is not None:
            mark[0] = DONE
        backend.barrier()  # nobody leaves (and tears the group down) before all have written
    finally:
        shutdown(backend)
        if slot is not None:
            slot.close()
    return 0


def _write(plan: Plan, rank: int, cols: dict, meta: dict, hops: dict | None) -> None:
    if hops is not None:  # first: the records file is what tells the parent the rank is done
        write_rank_file(plan.hops_file(rank), hops, {"rank": rank, "columns":
                                                     "collectives.explicit.HopLog"})
    write_rank_file(plan.rank_file(rank), cols, meta)


def _injector(plan: Plan, schedule, device: str, ranks_here: int):
    """The injector's name for the metadata, and the injector. More ranks on this host
    than cores: a spinning rank would take the core of one with work, so host delays only
    sleep (the OS overshoot, ~70 us, is recorded as achieved delay) and mpirun makes
    waiting ranks yield (launch.commands). (The host's CPUs, not this rank's affinity:
    mpirun binds each rank to one core.)"""
    name = plan.injector if schedule is not None else "none"
    if name == "auto":
        name = "cuda" if device.startswith("cuda") else "host"
    if name == "host" and ranks_here > (os.cpu_count() or 1):
        return f"{name} ({SLEEP_ONLY})", HostInjector(sleep_margin_ns=0)
    return name, make_injector(name, device)


def _metadata(plan: Plan, ctx: RunContext, backend, name: str, result, clocks: dict) -> dict:
    """The rank file's metadata."""
    return {
        "plan": plan.as_dict(), "rank": ctx.rank, "world_size": ctx.world_size,
        "node": ctx.node, "local_rank": ctx.local_rank, "hostname": ctx.hostname,
        "launcher": ctx.launcher, "backend": getattr(backend, "backend_name", backend.name),
        "device": backend.device, "injector": name,
        # native: the backend's own call (NCCL, gloo or MPI picks ring, tree, ...);
        # otherwise the explicit algorithms of jitter_models.algorithms. A record's
        # ``op`` indexes "ops", its (collective, algorithm) pairs.
        "algorithm": ",".join(plan.algorithms),
        "ops": [list(p) for p in result.ops],
        "timing": ("cuda_events: t_arrive and t_done from CUDA events, anchored at the "
                   "host's t_start (uncertain by the start event's launch latency)"
                   if backend.device.startswith("cuda") else "host: perf_counter_ns"),
        # the run's midpoint offset, and both estimates with their times (rank 0's
        # clock) for analysis to interpolate the drift between (timing.aligned)
        **clocks,
        "wrong": result.wrong,
        # Draws above the maximum delay (one hour), clipped to it before injection.
        "delays_clipped": int(result.records.delays_clipped),
    }
