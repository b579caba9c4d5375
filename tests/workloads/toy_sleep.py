"""A toy workload from outside the package: each step, ``sites`` times, sleep ``compute``
then all-reduce ``count`` ones. It exists to show the extension point: it is named in a
spec as ``workload = "toy_sleep:SleepAllReduce"`` (this folder on ``PYTHONPATH``) and no
file of jitterlab knows it. Its own check: every all-reduce must give the world size."""

from __future__ import annotations

import time

import numpy as np

from collectives.workload import BaseWorkload, RankResult
from jitter_models.units import parse_duration

MAX_SITES = 64


class SleepAllReduce(BaseWorkload):
    name = "toy_sleep"
    spec_keys = {"sites": "all-reduces per step (1..64)",
                 "compute": "host sleep before each all-reduce, e.g. '1ms'",
                 "count": "elements per all-reduce"}

    def parse(self, doc, common):
        sites = doc.get("sites", 2)
        if isinstance(sites, bool) or not isinstance(sites, int) or not 1 <= sites <= MAX_SITES:
            raise ValueError(f"sites: must be an integer in [1, {MAX_SITES}], got {sites!r}")
        count = doc.get("count", 256)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count: must be an integer >= 1, got {count!r}")
        try:
            compute_s = parse_duration(doc.get("compute", "1ms"))
        except ValueError as exc:
            raise ValueError(f"compute: {exc}") from None
        return {"sites": sites, "count": count, "compute_ns": round(compute_s * 1e9)}

    def sites_per_step(self, params):
        return params["sites"]

    def message_bytes(self, params, *, batch, dtype, world_size):
        from collectives.backends import elem_size

        return batch * params["count"] * elem_size(dtype)

    def describe(self, params):
        return (f"toy_sleep: {params['sites']} x (sleep {params['compute_ns'] / 1e6:g} ms, "
                f"all-reduce of {params['count']} elements)")

    def run(self, rank) -> RankResult:
        from collectives.backends import elem_size
        from collectives.explicit import all_reduce_call
        from collectives.timing import Records

        p, backend = rank.params, rank.backend
        n_sites, total = p["sites"], p["warmup"] + p["steps"]
        count = p["batch"] * p["count"]
        delays = (rank.schedule.delays_ns(rank.seed, backend.rank, rank.node,
                                          backend.world_size, total, n_sites)[0]
                  if rank.schedule is not None else np.zeros((total, n_sites), np.int64))
        reduce, _ = all_reduce_call(backend, algorithm=rank.algorithms[0], count=count,
                                    dtype=rank.dtype, ranks_per_node=rank.ranks_per_node,
                                    schedule=rank.schedule, seed=rank.seed,
                                    n_calls=total * n_sites, injector=rank.injector,
                                    hop_log=rank.hop_log)
        records = Records(p["steps"] * (n_sites + 1))
        timer = rank.site_timer(records)  # the schedule's detours, CUDA events
        ones = np.ones(count, dtype="float32")
        for step in range(total):
            recorded = step >= p["warmup"]
            timer.record_sites = recorded
            backend.barrier()
            timer.begin_step(step - p["warmup"])
            for site in range(n_sites):
                buf = backend.from_numpy(ones.copy(), rank.dtype)
                timer.site(site, delay_ns=int(delays[step, site]),
                           collective=lambda b=buf: reduce(b),
                           compute=lambda: time.sleep(p["compute_ns"] / 1e9),
                           nbytes=count * elem_size(rank.dtype), index=step * n_sites + site)
                got = backend.to_numpy(buf)
                if not np.all(got == backend.world_size):
                    raise RuntimeError(f"toy_sleep: all-reduce of ones gave {got[:4]}, not "
                                       f"{backend.world_size}")
            end = timer.end_step()
            if recorded:
                timer.step_row(end)
        return RankResult(records=records, ops=[("all_reduce", rank.algorithms[0])])
