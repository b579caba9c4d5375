"""The bulk-synchronous workload: fixed work quanta between all-reduces (FWQ, IBM
osnoise style), the cleanest probe of how noise on one rank becomes everyone's wait.

Each step, ``sites_per_step`` times: compute for ``compute_per_site`` (a host spin of that
length from the site start, ``collectives.inject.HostInjector``: it sleeps for the bulk
and spins the last half millisecond, so the end is precise to about a microsecond), then
the schedule's delay, then an all-reduce of ``message_bytes`` bytes in the run's dtype
with the sweep's algorithm. A schedule's detours pause the compute and the delay
(``collectives.timing.SiteTimer``).

``message_bytes = 0`` runs a 1-element all-reduce: gloo and MPI return from an empty
all-reduce at once, without waiting for their peers (measured: a rank 0.5 s late is not
waited for), so an empty one would synchronize nothing. The records, ``message_bytes``
and the simulated sites carry the bytes that one element moves.

Spec keys (top level of the sweep's TOML, beside ``workload = "bsp"``):
``sites_per_step`` (default 1), ``compute_per_site`` (default "100us") and
``message_bytes`` (default 8). A step has no batch: the sweep's ``batch`` must be 1.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from jitter_models.units import MAX_DELAY_NS, format_duration, parse_duration

from .workload import BaseWorkload, RankResult, SimSite, check_ints, with_defaults

MAX_SITES = 1024
MAX_MESSAGE_BYTES = 1 << 30


def element_count(message_bytes: int, dtype: str) -> int:
    """Elements of one all-reduce: ``message_bytes`` in ``dtype``, at least one (see the
    module docstring); ValueError naming message_bytes when it is not whole elements."""
    from .backends import elem_size

    esize = elem_size(dtype)
    if message_bytes % esize:
        raise ValueError(f"message_bytes: must be a multiple of {esize} (one {dtype} "
                         f"element), got {message_bytes}")
    return max(message_bytes // esize, 1)


class BSP(BaseWorkload):
    """Bulk-synchronous steps as a workload. Plan params: ``sites_per_step``,
    ``compute_per_site_ns``, ``message_bytes``, plus ``batch`` (1), ``steps`` and
    ``warmup``."""

    name = "bsp"
    spec_keys = {"sites_per_step": f"compute + all-reduce sites per step (1..{MAX_SITES})",
                 "compute_per_site": "host spin before each all-reduce, e.g. '100us' "
                                     "('0s': none)",
                 "message_bytes": "bytes per all-reduce (0: one element, see describe)"}
    DEFAULTS: dict[str, Any] = {"sites_per_step": 1, "compute_per_site_ns": 100_000,
                                "message_bytes": 8, "batch": 1, "steps": 16, "warmup": 5}

    def parse(self, doc: Any, common: Any) -> dict[str, Any]:
        if tuple(common.batches) != (1,):
            raise ValueError(f"batch: bsp has no batch (message_bytes sizes its "
                             f"all-reduces): leave it at 1, got {list(common.batches)}")
        try:
            compute_s = parse_duration(doc.get("compute_per_site", "100us"))
        except ValueError as exc:
            raise ValueError(f"compute_per_site: {exc}") from None
        params = {"sites_per_step": doc.get("sites_per_step", 1),
                  "compute_per_site_ns": round(compute_s * 1e9),
                  "message_bytes": doc.get("message_bytes", 8)}
        self._check(params)
        element_count(params["message_bytes"], common.dtype)
        return params

    def _check(self, p: dict[str, Any]) -> None:
        check_ints(p, (("sites_per_step", 1), ("compute_per_site_ns", 0),
                       ("message_bytes", 0)))
        if p["sites_per_step"] > MAX_SITES:
            raise ValueError(f"sites_per_step: must be at most {MAX_SITES}, got "
                             f"{p['sites_per_step']}")
        if p["compute_per_site_ns"] > MAX_DELAY_NS:
            raise ValueError(f"compute_per_site: must be at most 1 hour, got "
                             f"{format_duration(p['compute_per_site_ns'] * 1e-9)}")
        if p["message_bytes"] > MAX_MESSAGE_BYTES:
            raise ValueError(f"message_bytes: must be at most {MAX_MESSAGE_BYTES}, got "
                             f"{p['message_bytes']}")

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` over the defaults, validated; ValueError naming the key."""
        p = with_defaults(self.name, self.DEFAULTS, params)
        self._check(p)
        check_ints(p, (("batch", 1), ("steps", 1), ("warmup", 0)))
        if p["batch"] != 1:
            raise ValueError(f"batch: bsp has no batch, must be 1, got {p['batch']!r}")
        return p

    def sites_per_step(self, params: dict[str, Any]) -> int:
        return params["sites_per_step"]

    def message_bytes(self, params: dict[str, Any], *, batch: int, dtype: str,
                      world_size: int) -> int:
        from .backends import elem_size

        return element_count(params["message_bytes"], dtype) * elem_size(dtype)

    def simulated_sites(self, params: dict[str, Any], *, batch: int, dtype: str,
                        world_size: int) -> tuple[SimSite, ...]:
        """``sites_per_step`` sites of ``compute_per_site`` each, then the all-reduce."""
        site = SimSite(compute_s=params["compute_per_site_ns"] * 1e-9,
                       message_bytes=self.message_bytes(params, batch=batch, dtype=dtype,
                                                        world_size=world_size),
                       collective="all_reduce")
        return (site,) * params["sites_per_step"]

    def describe(self, params: dict[str, Any]) -> str:
        nbytes = params["message_bytes"]
        size = (f"{nbytes} B" if nbytes else
                "1 element (message_bytes = 0: an empty all-reduce would not wait on gloo "
                "or MPI)")
        return (f"bsp: {params['sites_per_step']} x (compute "
                f"{format_duration(params['compute_per_site_ns'] * 1e-9)}, all-reduce of "
                f"{size})")

    def run(self, rank: Any) -> RankResult:
        from .explicit import all_reduce_call
        from .inject import HostInjector
        from .timing import Records, now_ns

        p, backend = self.params(rank.params), rank.backend
        n_sites, warmup, total = p["sites_per_step"], p["warmup"], p["warmup"] + p["steps"]
        count = element_count(p["message_bytes"], rank.dtype)
        nbytes = self.message_bytes(p, batch=1, dtype=rank.dtype,
                                    world_size=backend.world_size)
        clipped = 0
        if rank.schedule is not None:
            delays, clipped = rank.schedule.delays_ns(rank.seed, backend.rank, rank.node,
                                                      backend.world_size, total, n_sites)
        else:
            delays = np.zeros((total, n_sites), dtype=np.int64)
        reduce, hop_clipped = all_reduce_call(
            backend, algorithm=rank.algorithms[0], count=count, dtype=rank.dtype,
            ranks_per_node=rank.ranks_per_node, schedule=rank.schedule, seed=rank.seed,
            n_calls=total * n_sites, injector=rank.injector, hop_log=rank.hop_log)
        records = Records(p["steps"] * (n_sites + 1))
        records.delays_clipped = clipped + hop_clipped  # warm-up steps included
        timer = rank.site_timer(records)
        buf = backend.from_numpy(np.zeros(count, dtype="float32"), rank.dtype)
        collective = functools.partial(reduce, buf)  # zeros: the sum stays zero
        spin, compute_ns = HostInjector(), p["compute_per_site_ns"]
        compute = (lambda: spin.inject(now_ns(), compute_ns)) if compute_ns else None
        rows = delays.tolist()  # Python ints: nothing to convert in the loop
        for step in range(total):
            timer.record_sites = step >= warmup
            backend.barrier()
            timer.begin_step(step - warmup)
            for site in range(n_sites):
                timer.site(site, delay_ns=rows[step][site], collective=collective,
                           compute=compute, nbytes=nbytes, index=step * n_sites + site)
            end = timer.end_step()
            if step >= warmup:
                timer.step_row(end)
        return RankResult(records=records, ops=[("all_reduce", rank.algorithms[0])])
