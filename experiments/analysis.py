"""Analysis of one point's records (tp_decode): step latency and its percentiles, where a
step's time goes, scaling across world sizes, and the order-statistics check of the
injected delay. Definitions are ARCHITECTURE.md's "Metric definitions".

Input of one point: ``tables``, one dict of columns per rank (``collectives.timing.COLUMNS``,
int64 ns on that rank's clock, warm-up steps already dropped; rows with ``site == -1`` are
per-step rows, the others per-(step, site) rows), and ``offsets_ns``, each rank's clock:
its rank file's metadata, from which ``collectives.clocks.aligned`` interpolates the
offset to rank 0 at each record's time (``t_rank0 = t_here + offset(t)``), or one offset
in ns, or None where unknown.

Outputs follow the units rule: samples in seconds, reported values in microseconds
(``*_us``), ratios without a unit. numpy and scipy only: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from collectives.clocks import Clock, aligned
from collectives.timing import COLUMNS, STEP_SITE
from jitter_models import Schedule, expected_max
from jitter_models.percentiles import PERCENTILES, nearest_rank, quantile_interval

Table = Mapping[str, np.ndarray]

CI_LEVEL = 0.95


def _check_tables(tables: Sequence[Table]) -> None:
    if len(tables) == 0:
        raise ValueError("tables: no ranks")
    for r, t in enumerate(tables):
        missing = [c for c in COLUMNS if c not in t]
        if missing:
            raise ValueError(f"tables[{r}]: missing columns {', '.join(missing)}")


def step_latencies(tables: Sequence[Table]) -> np.ndarray:
    """Step latency per step, float64 seconds, in step order: for each step the max over
    ranks of that rank's step duration (``t_done - t_start`` of its ``site == -1`` row).
    Every rank must hold the same steps, once each."""
    _check_tables(tables)
    steps0, durations = None, []
    for r, t in enumerate(tables):
        m = np.asarray(t["site"]) == STEP_SITE
        steps = np.asarray(t["step"])[m]
        order = np.argsort(steps, kind="stable")
        steps = steps[order]
        if np.any(np.diff(steps) == 0):
            raise ValueError(f"tables[{r}]: a step has more than one step row")
        if steps0 is None:
            steps0 = steps
        elif not np.array_equal(steps, steps0):
            raise ValueError(f"tables[{r}]: its steps differ from rank 0's")
        dur = np.asarray(t["t_done_ns"])[m] - np.asarray(t["t_start_ns"])[m]
        durations.append(dur[order])
    return np.max(np.stack(durations), axis=0).astype(np.float64) * 1e-9


def latency_stats(samples_s: Any) -> dict[str, Any]:
    """n, min, percentiles (nearest rank), max and mean of ``samples_s`` (seconds), in µs.
    Each percentile ``pX_us`` comes with ``pX_ci_us = [lo, hi]``, its 95% distribution-free
    interval (``quantile_interval``); an end is None where there are too few samples to
    bound that side."""
    x = np.asarray(samples_s, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("latency_stats: no samples")
    if not np.all(np.isfinite(x)):
        raise ValueError("latency_stats: samples must be finite")
    us = x * 1e6
    out: dict[str, Any] = {"n": int(x.size), "min_us": float(us.min())}
    for key, p in PERCENTILES.items():
        out[f"{key}_us"] = nearest_rank(us, p)
        out[f"{key}_ci_us"] = list(quantile_interval(us, p, CI_LEVEL))
    out["max_us"] = float(us.max())
    out["mean_us"] = float(us.mean())
    out["mean_se_us"] = batch_means_se(us)
    return out


def batch_means_se(x: Any) -> float | None:
    """Standard error of the mean of a series that may be autocorrelated (bursty or AR(1)
    jitter, slow drifts): the series in order is cut into b = floor(sqrt(n)) batches of
    equal length (the first n mod b values dropped), and the SE is the standard deviation
    of the batch means over sqrt(b). Consistent when batches outlast the correlation;
    None for fewer than 4 values (fewer than 2 batches)."""
    v = np.asarray(x, dtype=np.float64).ravel()
    b = int(math.isqrt(v.size))
    if b < 2:
        return None
    m = v.size // b
    means = v[v.size - b * m:].reshape(b, m).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(b))


def _site_grid(tables: Sequence[Table]) -> dict[str, np.ndarray]:
    """Every column of the per-site rows, and ``detour_ns`` (0 where a rank file predates
    it), as a [rank, (step, site)] int64 array, the rows of every rank in the same (step,
    site) order."""
    _check_tables(tables)
    per_rank = []
    for t in tables:
        m = np.asarray(t["site"]) >= 0
        cols = {k: np.asarray(t[k], dtype=np.int64)[m] for k in COLUMNS}
        cols["detour_ns"] = (np.asarray(t["detour_ns"], dtype=np.int64)[m] if "detour_ns" in t
                             else np.zeros(int(m.sum()), dtype=np.int64))
        order = np.lexsort((cols["site"], cols["step"]))
        per_rank.append({k: v[order] for k, v in cols.items()})
    first = per_rank[0]
    if first["step"].size == 0:
        raise ValueError("tables: no per-site rows")
    same = (np.diff(first["step"]) == 0) & (np.diff(first["site"]) == 0)
    if np.any(same):
        raise ValueError("tables[0]: a (step, site) has more than one row")
    for r, cols in enumerate(per_rank[1:], 1):
        if not (np.array_equal(cols["step"], first["step"])
                and np.array_equal(cols["site"], first["site"])):
            raise ValueError(f"tables[{r}]: its (step, site) rows differ from rank 0's")
    return {k: np.stack([c[k] for c in per_rank]) for k in first}


def decompose(tables: Sequence[Table], offsets_ns: Sequence[Clock]) -> dict[str, Any]:
    """Mean time per step, µs, split into four parts (five with detours) that add up to the
    mean over (rank, step) of the sum over the step's sites of ``t_done - t_start``:

    - ``compute_us``: ``t_arrive - t_start - delay_ns - detour_ns`` (work before the delay);
    - ``delay_us``: ``delay_ns``, the injected delay as achieved;
    - ``detour_us`` (only when the records carry ``detour_ns``, rank files written since
      detours exist): ``detour_ns``, the time compute and delay paused for detours;
    - ``skew_wait_us``: time in the all-reduce waiting for the last rank to arrive: the
      aligned (``timing.aligned``: t + the offset at t) max arrival over ranks at that
      (step, site) minus this rank's aligned arrival, clipped to [0, t_done - t_arrive]
      (the cap keeps a clock offset error from making the collective part negative);
      None when any offset is unknown;
    - ``collective_us``: the rest of ``t_done - t_arrive`` (all of it when
      ``skew_wait_us`` is None).

    What is averaged: for each (rank, step) the sum over that step's sites of each part;
    the result is the mean of these sums over all ranks and all steps. ``compute_se_us``
    and ``collective_se_us`` are the standard errors of those two means (batch means over
    the steps in order, ``batch_means_se``), the inputs of the model's uncertainty band.
    """
    g = _site_grid(tables)
    n_ranks = g["step"].shape[0]
    if len(offsets_ns) != n_ranks:
        raise ValueError(f"offsets_ns: {len(offsets_ns)} offsets for {n_ranks} ranks")
    n_steps = int(np.unique(g["step"][0]).size)
    wait = g["t_done_ns"] - g["t_arrive_ns"]
    arrivals = [aligned(g["t_arrive_ns"][r], c) for r, c in enumerate(offsets_ns)]
    if any(a is None for a in arrivals):
        skew = None
        collective = wait
    else:
        arrive = np.stack(arrivals)
        skew = np.clip(arrive.max(axis=0) - arrive, 0, np.maximum(wait, 0))
        collective = wait - skew

    def per_step_us(ns: np.ndarray) -> float:
        return float(ns.sum()) / (n_ranks * n_steps) * 1e-3

    step_of = np.unique(g["step"][0], return_inverse=True)[1]

    def se_us(ns: np.ndarray) -> float | None:  # of the same mean, over steps in order
        steps = np.bincount(step_of, weights=ns.sum(axis=0).astype(np.float64),
                            minlength=n_steps) / n_ranks * 1e-3
        return batch_means_se(steps)

    compute = g["t_arrive_ns"] - g["t_start_ns"] - g["delay_ns"] - g["detour_ns"]
    detour = ({"detour_us": per_step_us(g["detour_ns"])}
              if any("detour_ns" in t for t in tables) else {})
    return {
        "compute_us": per_step_us(compute),
        "delay_us": per_step_us(g["delay_ns"]),
        **detour,
        "skew_wait_us": None if skew is None else per_step_us(skew),
        "collective_us": per_step_us(collective),
        "compute_se_us": se_us(compute),
        "collective_se_us": se_us(collective),
        "n_ranks": n_ranks,
        "n_steps": n_steps,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def scaling(points: Sequence[Mapping[str, Any]],
            work: Callable[[int], float] = lambda n: 1.0) -> list[dict[str, Any]]:
    """One row per (schedule, world size), sorted, from points {"schedule", "world_size",
    "mean_s", "p99_s"}: speedup S(N) = work(N) T(1)/T(N) and efficiency E(N) = S(N)/N
    (``work``: the step's useful work at N over N = 1, ``jitter_models.sim_stats.
    useful_work``: 1 strong scaling, the default, N weak scaling) for T the
    mean and the p99 step latency, against the same schedule's N = 1 point; jitter tax
    T_schedule(N)/T_none(N) against the schedule named "none" at the same N; tail
    amplification p99(N)/p99(1). A value is None where its reference point is missing."""
    by_key: dict[tuple[str, int], Mapping[str, Any]] = {}
    for p in points:
        key = (str(p["schedule"]), int(p["world_size"]))
        if key[1] < 1:
            raise ValueError(f"world_size: must be >= 1, got {p['world_size']!r}")
        if key in by_key:
            raise ValueError(f"two points for schedule {key[0]!r} at world size {key[1]}")
        by_key[key] = p
    rows = []
    for (sched, n), p in sorted(by_key.items()):
        one, none = by_key.get((sched, 1)), by_key.get(("none", n))
        row: dict[str, Any] = {"schedule": sched, "world_size": n,
                               "mean_s": float(p["mean_s"]), "p99_s": float(p["p99_s"])}
        for stat in ("mean", "p99"):
            t = float(p[f"{stat}_s"])
            speedup = _ratio(None if one is None else float(one[f"{stat}_s"]), t)
            speedup = None if speedup is None else speedup * work(n)
            row[f"speedup_{stat}"] = speedup
            row[f"efficiency_{stat}"] = None if speedup is None else speedup / n
            row[f"jitter_tax_{stat}"] = _ratio(t, None if none is None
                                              else float(none[f"{stat}_s"]))
        row["tail_amplification"] = _ratio(float(p["p99_s"]),
                                           None if one is None else float(one["p99_s"]))
        rows.append(row)
    return rows


def useful_parallelism(rows: Sequence[Mapping[str, Any]], threshold: float = 0.5
                       ) -> dict[str, dict[str, int | None]]:
    """Per schedule, from ``scaling`` rows: ``n_useful``, the largest N with efficiency
    (mean) >= ``threshold`` (None if none), and ``n_opt``, the N of least p99 step latency
    (the smallest such N on a tie)."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
            and threshold > 0):
        raise ValueError(f"threshold: must be a finite number > 0, got {threshold!r}")
    out: dict[str, dict[str, int | None]] = {}
    for sched in sorted({str(r["schedule"]) for r in rows}):
        mine = sorted((r for r in rows if r["schedule"] == sched),
                      key=lambda r: r["world_size"])
        useful = [r["world_size"] for r in mine if r["efficiency_mean"] is not None
                  and r["efficiency_mean"] >= threshold]
        best = min(mine, key=lambda r: (r["p99_s"], r["world_size"]))
        out[sched] = {"n_useful": max(useful) if useful else None,
                      "n_opt": best["world_size"]}
    return out


def predicted_site_max_us(schedule: Schedule, seed: int, world_size: int,
                          ranks_per_node: int = 8) -> float:
    """Order-statistics prediction of the expected max over ranks of the injected delay at
    one site, µs: ``expected_max`` over ``schedule.site_groups(...)``. A link-scoped
    schedule injects nothing before the collective: 0 (its delays add up inside the
    algorithm, which this order-statistics model does not see)."""
    groups = schedule.site_groups(seed, world_size, ranks_per_node)
    return expected_max(groups) * 1e6 if groups else 0.0


def measured_site_max_us(tables: Sequence[Table]) -> dict[str, float]:
    """Mean over (step, site) of the max over ranks of the injected delay, µs:
    ``requested_us`` from ``delay_req_ns`` (what the schedule asked), ``achieved_us``
    from ``delay_ns`` (what the injector did)."""
    g = _site_grid(tables)
    return {"requested_us": float(g["delay_req_ns"].max(axis=0).mean()) * 1e-3,
            "achieved_us": float(g["delay_ns"].max(axis=0).mean()) * 1e-3}
