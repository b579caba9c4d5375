"""A model of the mean decode step, validated on the measured points and extrapolated.

Every site ends in an all-reduce that waits for the last rank, so with the same compute on
every rank a site costs its compute, plus the expected max over the N ranks' delays
(exact, from the schedule's order statistics), plus the collective:

    T(N) = sites * ( compute_site(N) + E[max of N delays] + coll(N) ) + overhead

- compute_site(N): measured at the smallest measured N and scaled by N_min / N (weights
  and KV heads split N ways);
- coll(N) = a + b * (N - 1): a least-squares fit of the measured per-site collective time
  (the decomposition's ``collective_us``, without the skew wait) over the points with
  N >= 2, the latency term of a ring (one hop per extra rank). With fewer than two such
  world sizes there is nothing to fit a growth on: the collective is held at its value at
  the largest measured N (b = 0), and the report says so;
- E[max of N delays]: ``jitter_models.expected_max`` over the schedule's independent
  streams at one site (``Schedule.site_groups``);
- at N = 1 the collective is the measured local call; overhead: the step's host time
  outside its sites, measured at the smallest N and held.

``validate`` puts the model next to every measured point; ``extrapolate`` goes to world
sizes never run (up to thousands), where only the model speaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jitter_models import Schedule

from .analysis import predicted_site_max_us

EXTRAPOLATE_TO = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def fit_collective(points: Sequence[dict[str, Any]], n_sites: int
                   ) -> tuple[float, float, bool]:
    """(a, b, fitted) in µs per site from points with ``world_size`` and ``collective_us``
    (per step). Only N >= 2 points: at N = 1 the "collective" is a local call, not a ring."""
    multi = [p for p in points if p["world_size"] >= 2] or list(points)
    n = np.array([p["world_size"] for p in multi], dtype=float)
    y = np.array([p["collective_us"] for p in multi], dtype=float) / n_sites
    if np.unique(n).size < 2:
        top = n.max()
        return float(y[n == top].mean()), 0.0, False
    b, a = np.polyfit(n - 1, y, 1)
    if a < 0 or b < 0:  # a cost cannot be negative: refit with the offending term at 0
        if a < 0:
            a, b = 0.0, float(np.dot(n - 1, y) / np.dot(n - 1, n - 1))
        if b < 0:
            a, b = float(y.mean()), 0.0
    return float(a), float(max(b, 0.0)), True


def predict_step_us(schedule: Schedule, world_size: int, *, compute_site_us: float,
                    coll: tuple[float, float, bool], n_sites: int, seed: int,
                    ranks_per_node: int, local_coll_us: float = 0.0,
                    overhead_us: float = 0.0) -> float:
    """sites x (compute + E[max delay] + collective) + per-step overhead; at N = 1 the
    collective is the measured local call (the fit describes multi-rank rings)."""
    delay = predicted_site_max_us(schedule, seed, world_size, ranks_per_node)
    a, b, _ = coll
    c = a + b * (world_size - 1) if world_size > 1 else local_coll_us
    return n_sites * (compute_site_us + delay + c) + overhead_us


def build(points: Sequence[dict[str, Any]], schedules: dict[str, Schedule], *, n_sites: int,
          seed: int, ranks_per_node: int) -> dict[str, Any]:
    """Validation rows (measured vs model at each measured point) and extrapolation rows,
    from report points (``schedule``, ``world_size``, ``mean_us``, ``compute_us``,
    ``collective_us``)."""
    if not points:
        return {"validation": [], "extrapolation": [], "collective_fit_us": None}
    coll = fit_collective(points, n_sites)
    n_min = min(p["world_size"] for p in points)
    base = [p["compute_us"] for p in points if p["world_size"] == n_min]
    compute_min = float(np.mean(base)) / n_sites  # per site, at the smallest N

    def compute_at(n: int) -> float:
        return compute_min * n_min / n

    ones = [p["collective_us"] / n_sites for p in points if p["world_size"] == 1]
    local = float(np.mean(ones)) if ones else 0.0
    # Host time per step outside the sites' four parts (step bookkeeping, the barrier),
    # measured at the smallest N and held.
    parts = ("compute_us", "delay_us", "collective_us", "skew_wait_us")
    rest = [p["mean_us"] - sum(p.get(k) or 0.0 for k in parts)
            for p in points if p["world_size"] == n_min and "delay_us" in p]
    overhead = max(float(np.mean(rest)), 0.0) if rest else 0.0
    extra = {"local_coll_us": local, "overhead_us": overhead}

    validation = []
    for p in points:
        sched = schedules.get(p["schedule"])
        if sched is None:
            continue
        model = predict_step_us(sched, p["world_size"], compute_site_us=compute_at(
            p["world_size"]), coll=coll, n_sites=n_sites, seed=seed,
            ranks_per_node=ranks_per_node, **extra)
        validation.append({"schedule": p["schedule"], "world_size": p["world_size"],
                           "measured_mean_us": p["mean_us"], "model_mean_us": model,
                           "rel_error": model / p["mean_us"] - 1})
    extrapolation = []
    for name, sched in schedules.items():
        t1 = None
        for n in EXTRAPOLATE_TO:
            t = predict_step_us(sched, n, compute_site_us=compute_at(n), coll=coll,
                                n_sites=n_sites, seed=seed, ranks_per_node=ranks_per_node,
                                **extra)
            t1 = t if n == 1 else t1
            extrapolation.append({"schedule": name, "world_size": n, "model_mean_us": t,
                                  "efficiency": (t1 / t / n) if t1 else None})
    return {"validation": validation, "extrapolation": extrapolation,
            "collective_fit_us": {"a": coll[0], "b_per_rank": coll[1], "fitted": coll[2],
                                  **extra}}
