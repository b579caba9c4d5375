"""The worker every rank runs: ``jitterlab worker PLAN.json``.

It runs through the installed console script, not ``python -m launch.worker``, so a
``launch/`` folder in the user's working directory cannot shadow this package.
"""

from __future__ import annotations

from collectives import microbench
from collectives.inject import make_injector
from collectives.timing import same_host_offsets, write_rank_file
from jitter_models import parse_schedule

from .bootstrap import bootstrap, shutdown
from .context import RunContext
from .plan import Plan


def run(plan_path: str) -> int:
    """Run ``plan_path`` on this rank and write its records file; 0 on success."""
    plan = Plan.load(plan_path)
    schedule = parse_schedule(plan.jitter) if plan.jitter else None
    injector = make_injector(plan.injector if schedule is not None else "none")
    ctx = RunContext.detect()
    backend = bootstrap(plan.backend, ctx, plan.timeout_s)
    try:
        records, wrong = microbench.run(
            backend, colls=plan.colls, sizes=plan.sizes, dtype=plan.dtype, redop=plan.redop,
            root=plan.root, iters=plan.iters, warmup=plan.warmup, check=plan.check,
            seed=plan.seed, schedule=schedule, injector=injector, node=ctx.node)
        hostnames = backend.all_gather_object(ctx.hostname)
        offset = same_host_offsets(hostnames)[ctx.rank]
        metadata = {
            "plan": plan.as_dict(), "rank": ctx.rank, "world_size": ctx.world_size,
            "node": ctx.node, "local_rank": ctx.local_rank, "hostname": ctx.hostname,
            "launcher": ctx.launcher, "backend": getattr(backend, "backend_name", backend.name),
            "device": backend.device, "clock_offset_ns": offset.offset_ns,
            "clock_offset_uncertainty_ns": offset.uncertainty_ns, "wrong": wrong,
        }
        write_rank_file(plan.rank_file(ctx.rank), records.table(), metadata)
        backend.barrier()  # nobody leaves (and tears the group down) before all have written
    finally:
        shutdown(backend)
    return 0
