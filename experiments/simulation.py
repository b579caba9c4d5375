"""``jitterlab simulate``: a sweep spec's schedules and world sizes through the simulator
(``jitter_models.simulate``), with the spec's ``[network]``, into ``simulation.json`` and a
report.

Every (schedule, batch) series is simulated at N = 1 as well, the efficiency baseline,
whether or not the spec lists it. The workload says what a step is
(``simulated_sites``: compute, message bytes and collective per site) and how its
compute scales (``compute_share``, for the speedup); the spec's ``algorithm`` runs every
site's collective.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jitter_models.errors import BadInput
from jitter_models.sim_stats import scaling, summarize, useful_work
from jitter_models.simulate import DEFAULT_CUTOFF, Site, check_world_size, simulate

SCHEMA = 1
MAX_STEP_SITES = 1 << 24  # simulated (step, site) pairs per point: arrays of that many
ROW_KEYS = ("schedule", "batch", "world_size", "method", "steps", "mean_us", "mean_se_us",
            "p50_us", "p50_se_us", "p90_us", "p90_se_us", "p99_us", "p99_se_us", "p999_us",
            "p999_se_us", "compute_us", "wait_us", "comm_us", "speedup", "efficiency",
            "efficiency_p99", "seconds")


def sites_of(spec: Any, batch: int, world_size: int) -> tuple[Site, ...]:
    """The simulator's sites of one step of ``spec``'s workload at ``world_size``."""
    work = spec.work
    out = []
    for s in work.simulated_sites(spec.params, batch=batch, dtype=spec.dtype,
                                  world_size=world_size):
        out.append(Site(compute_s=float(s.compute_s), message_bytes=int(s.message_bytes),
                        collective=s.collective, algorithm=spec.algorithm,
                        overlap=bool(s.overlap), load=s.load))
    return tuple(out)


def run_simulation(spec: Any, *, steps: int | None = None, cutoff: int = DEFAULT_CUTOFF,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every (schedule, batch, N) of ``spec`` simulated: the data of simulation.json."""
    if spec.network is None:
        raise BadInput("network: the simulator needs a [network] table: alpha (a duration "
                       "per hop) and bandwidth_gbps (GB/s per rank and direction), "
                       "optionally [network.intra] for ranks on one node")
    key = "steps" if steps is None else "--steps"
    steps = spec.steps if steps is None else steps
    n_sites = len(sites_of(spec, spec.batches[0], 1))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 \
            or steps * n_sites > MAX_STEP_SITES:
        raise BadInput(f"{key}: must be an integer >= 1 with steps x sites per step "
                       f"({n_sites}) at most {MAX_STEP_SITES}, got {steps!r}")
    sizes = sorted({1, *spec.world_sizes})
    for n in sizes:
        try:
            check_world_size(n, sites_of(spec, spec.batches[0], 1))
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    work = useful_work(spec.work.compute_share(spec.params))
    say = progress or (lambda text: None)
    rows, useful = [], []
    total, k = len(spec.schedules) * len(spec.batches) * len(sizes), 0
    for schedule in spec.schedules:
        for batch in spec.batches:
            series = []
            for n in sizes:
                k += 1
                t0 = time.perf_counter()
                out = simulate(schedule, n, sites_of(spec, batch, n), network=spec.network,
                               steps=steps, seed=spec.seed, cutoff=cutoff)
                row = {"schedule": schedule.name, "batch": batch, "world_size": n,
                       "method": out.method, **summarize(out.latency_s),
                       "compute_us": float(out.compute_s.mean()) * 1e6,
                       "wait_us": float(out.wait_s.mean()) * 1e6,
                       "comm_us": float(out.comm_s.mean()) * 1e6,
                       "seconds": time.perf_counter() - t0}
                if not all(np.isfinite(row[k]) for k in ("mean_us", "p999_us")):
                    raise BadInput(f"network: the simulated step latency of {schedule.name!r} "
                                   f"at N = {n} is not finite: check network.alpha and "
                                   "network.bandwidth_gbps")
                series.append(row)
                say(f"simulate: [{k}/{total}] {schedule.name} batch {batch} N={n}: mean "
                    f"{row['mean_us']:.1f} us, p99 {row['p99_us']:.1f} us "
                    f"({out.method}, {row['seconds']:.1f} s)")
            u = scaling(series, work)
            useful.append({"schedule": schedule.name, "batch": batch, **u})
            rows += [{key: r.get(key) for key in ROW_KEYS} for r in series]
    return {"schema": SCHEMA, "name": spec.name, "workload": spec.work.describe(spec.params),
            "algorithm": spec.algorithm, "network": spec.network.to_table(),
            "ranks_per_node": spec.ranks_per_node, "seed": spec.seed, "steps": steps,
            "cutoff": cutoff, "rows": rows, "useful": useful}


def stderr_progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
