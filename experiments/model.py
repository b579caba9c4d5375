"""A model of the mean decode step, validated on the measured points and extrapolated.

Every site ends in an all-reduce that waits for the last rank, so with the same compute on
every rank a site costs its compute, plus the expected max over the N ranks' delays
(exact, from the schedule's order statistics), plus the collective:

    T(N) = sites * ( compute_site(N) + E[max of N delays] + coll(N) ) + overhead

- compute_site(N): measured at the smallest measured N and scaled by the rank's share of
  the layer's weights, share(N) / share(N_min) (``collectives.models.weight_share``: 1/N
  while heads and KV heads split, more once KV heads replicate, and constant past
  N = heads, where tensor parallelism cannot split attention further); 1/N when the
  model's shape is not given;
- coll(N) = a + b * (N - 1): a least-squares fit of the measured per-site collective time
  (the decomposition's ``collective_us``, without the skew wait) over the points with
  N >= 2, the latency term of a ring (one hop per extra rank). With fewer than two such
  world sizes there is nothing to fit a growth on: the collective is held at its value at
  the largest measured N (b = 0), and the report says so;
- E[max of N delays]: ``jitter_models.expected_max`` over the schedule's independent
  streams at one site (``Schedule.site_groups``);
- at N = 1 the collective is the measured local call; overhead: the step's host time
  outside its sites, measured at the smallest N and held.

``build`` puts the model next to every measured point and extrapolates to world sizes never
run (up to thousands), where only the model speaks. Two checks of how far to trust that:

- a band: the measured inputs (each point's mean compute and collective time per step)
  carry sampling error, their batch-means standard errors. ``BAND_DRAWS`` replicates
  perturb them by independent normal errors with those SEs, refit the collective and
  recompute every prediction; the band is the replicates' 2.5th to 97.5th percentile of
  the mean step (and of the efficiency). It assumes the model's form: the validation
  errors show how well that form fits;
- held out: with three or more multi-rank world sizes, the model is refitted without the
  largest one and predicts it, a measured test of extrapolation (``holdout``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jitter_models import Schedule

from .analysis import predicted_site_max_us

EXTRAPOLATE_TO = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
BAND_DRAWS = 2000
BAND_SEED = 20261128  # the band is part of the report: the same data gives the same band


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


def _fit_many(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fit_collective``'s rule for many replicates at once: x (points,) = N - 1 of the
    multi-rank points, y (draws, points) their per-site collective times."""
    if np.unique(x).size < 2:
        top = x == x.max()
        return y[:, top].mean(axis=1), np.zeros(y.shape[0])
    xm = x.mean()
    b = ((x - xm) * (y - y.mean(axis=1, keepdims=True))).sum(axis=1) / ((x - xm) ** 2).sum()
    a = y.mean(axis=1) - b * xm
    through_zero = (y @ x) / (x @ x)
    a, b = np.where(a < 0, 0.0, a), np.where(a < 0, through_zero, b)
    a, b = np.where(b < 0, y.mean(axis=1), a), np.where(b < 0, 0.0, b)
    return a, b


class _Inputs:
    """The measured inputs of the model, as arrays over points, with their SEs."""

    def __init__(self, points: Sequence[dict[str, Any]], n_sites: int):
        self.points = list(points)
        self.n_sites = n_sites
        self.n = np.array([p["world_size"] for p in points], dtype=float)
        self.compute = np.array([p["compute_us"] for p in points], dtype=float)
        self.coll = np.array([p["collective_us"] for p in points], dtype=float)
        self.compute_se = np.array([p.get("compute_se_us") or 0.0 for p in points])
        self.coll_se = np.array([p.get("collective_se_us") or 0.0 for p in points])
        self.n_min = self.n.min()

    def draws(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(compute, collective) per point, k perturbed replicates: (k, points) each."""
        z = rng.standard_normal((2, k, self.n.size))
        return self.compute + z[0] * self.compute_se, self.coll + z[1] * self.coll_se

    def terms(self, compute: np.ndarray, coll: np.ndarray) -> dict[str, np.ndarray]:
        """Per replicate: compute per site at N_min, local call, collective fit a and b."""
        at_min = self.n == self.n_min
        multi = self.n >= 2
        if not multi.any():
            multi = np.ones_like(multi)
        a, b = _fit_many(self.n[multi] - 1, coll[:, multi] / self.n_sites)
        ones = self.n == 1
        local = (coll[:, ones].mean(axis=1) / self.n_sites if ones.any()
                 else np.zeros(coll.shape[0]))
        return {"compute_min": compute[:, at_min].mean(axis=1) / self.n_sites,
                "local": local, "a": a, "b": b}


def _step_us(t: dict[str, np.ndarray], n: int, scale: float, delay_us: float, n_sites: int,
             overhead_us: float) -> np.ndarray:
    """Replicates of T(N); ``scale`` = compute at N over compute at N_min."""
    c = t["a"] + t["b"] * (n - 1) if n > 1 else t["local"]
    return n_sites * (t["compute_min"] * scale + delay_us + c) + overhead_us


def build(points: Sequence[dict[str, Any]], schedules: dict[str, Schedule], *, n_sites: int,
          seed: int, ranks_per_node: int, holdout: bool = True,
          share: Callable[[int], float] | None = None) -> dict[str, Any]:
    """Validation rows (measured vs model at each measured point, with the band), a
    held-out check where possible, and extrapolation rows with the band, from report
    points (``schedule``, ``world_size``, ``mean_us``, ``compute_us``, ``collective_us``
    and, where recorded, ``mean_se_us``, ``compute_se_us``, ``collective_se_us``)."""
    if not points:
        return {"validation": [], "extrapolation": [], "holdout": None,
                "collective_fit_us": None}
    fit = _Fit(points, schedules, n_sites=n_sites, seed=seed, ranks_per_node=ranks_per_node,
               share=share)
    return {"validation": _validation(fit, points),
            "extrapolation": _extrapolation(fit),
            "holdout": _holdout(points, schedules, n_sites=n_sites, seed=seed,
                                ranks_per_node=ranks_per_node, share=fit.share)
            if holdout else None,
            "collective_fit_us": {"a": fit.coll[0], "b_per_rank": fit.coll[1],
                                  "fitted": fit.coll[2], **fit.extra}}


class _Fit:
    """The model fitted to the measured points: its prediction at (schedule, N) and the
    replicas of its band."""

    def __init__(self, points: Sequence[dict[str, Any]], schedules: dict[str, Schedule], *,
                 n_sites: int, seed: int, ranks_per_node: int,
                 share: Callable[[int], float] | None) -> None:
        self.schedules, self.n_sites = schedules, n_sites
        self.seed, self.ranks_per_node = seed, ranks_per_node
        self.coll = fit_collective(points, n_sites)
        self.n_min = n_min = min(p["world_size"] for p in points)
        base = [p["compute_us"] for p in points if p["world_size"] == n_min]
        self.compute_min = float(np.mean(base)) / n_sites  # per site, at the smallest N
        self.share = share if share is not None else _inverse
        ones = [p["collective_us"] / n_sites for p in points if p["world_size"] == 1]
        local = float(np.mean(ones)) if ones else 0.0
        # Host time per step outside the sites' four parts (step bookkeeping, the
        # barrier), measured at the smallest N and held.
        parts = ("compute_us", "delay_us", "collective_us", "skew_wait_us")
        rest = [p["mean_us"] - sum(p.get(k) or 0.0 for k in parts)
                for p in points if p["world_size"] == n_min and "delay_us" in p]
        overhead = max(float(np.mean(rest)), 0.0) if rest else 0.0
        self.extra = {"local_coll_us": local, "overhead_us": overhead}
        inputs = _Inputs(points, n_sites)
        rng = np.random.default_rng(BAND_SEED)
        self.replicas = inputs.terms(*inputs.draws(BAND_DRAWS, rng))
        self._delays: dict[tuple[str, int], float] = {}

    def compute_at(self, n: int) -> float:
        return self.compute_min * self.share(n) / self.share(self.n_min)

    def delay(self, name: str, n: int) -> float:
        if (name, n) not in self._delays:
            self._delays[name, n] = predicted_site_max_us(self.schedules[name], self.seed, n,
                                                          self.ranks_per_node)
        return self._delays[name, n]

    def band(self, name: str, n: int) -> np.ndarray:
        return _step_us(self.replicas, n, self.share(n) / self.share(self.n_min),
                        self.delay(name, n), self.n_sites, self.extra["overhead_us"])

    def predict(self, sched: Schedule, n: int) -> float:
        return predict_step_us(sched, n, compute_site_us=self.compute_at(n), coll=self.coll,
                               n_sites=self.n_sites, seed=self.seed,
                               ranks_per_node=self.ranks_per_node, **self.extra)


def _inverse(n: int) -> float:
    return 1.0 / n


def _validation(fit: _Fit, points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        sched = fit.schedules.get(p["schedule"])
        if sched is None:
            continue
        model = fit.predict(sched, p["world_size"])
        lo, hi = np.percentile(fit.band(p["schedule"], p["world_size"]), [2.5, 97.5])
        se = p.get("mean_se_us")
        rows.append({"schedule": p["schedule"], "world_size": p["world_size"],
                     "measured_mean_us": p["mean_us"],
                     "measured_ci95_us": None if se is None else 1.96 * se,
                     "model_mean_us": model, "model_lo_us": float(lo),
                     "model_hi_us": float(hi), "rel_error": model / p["mean_us"] - 1})
    order = {name: i for i, name in enumerate(fit.schedules)}
    rows.sort(key=lambda r: (order[r["schedule"]], r["world_size"]))
    return rows


def _extrapolation(fit: _Fit) -> list[dict[str, Any]]:
    rows = []
    for name, sched in fit.schedules.items():
        t1 = fit.band(name, 1)
        t_1 = fit.predict(sched, 1)
        for n in EXTRAPOLATE_TO:
            t = fit.predict(sched, n)
            tn = fit.band(name, n)
            lo, hi = np.percentile(tn, [2.5, 97.5])
            e_lo, e_hi = np.percentile(t1 / tn / n, [2.5, 97.5])
            rows.append({"schedule": name, "world_size": n, "model_mean_us": t,
                         "model_lo_us": float(lo), "model_hi_us": float(hi),
                         "efficiency": t_1 / t / n, "efficiency_lo": float(e_lo),
                         "efficiency_hi": float(e_hi)})
    return rows


def _holdout(points: Sequence[dict[str, Any]], schedules: dict[str, Schedule], *,
             n_sites: int, seed: int, ranks_per_node: int,
             share: Callable[[int], float]) -> dict[str, Any] | None:
    """Refit without the largest world size and predict it: None unless three or more
    multi-rank world sizes were measured (two are left to fit the collective's growth)."""
    sizes = sorted({p["world_size"] for p in points if p["world_size"] >= 2})
    if len(sizes) < 3:
        return None
    top = sizes[-1]
    fit = build([p for p in points if p["world_size"] != top], schedules, n_sites=n_sites,
                seed=seed, ranks_per_node=ranks_per_node, holdout=False, share=share)
    terms = fit["collective_fit_us"]
    n_min = min(q["world_size"] for q in points if q["world_size"] != top)
    base = [q["compute_us"] for q in points if q["world_size"] == n_min]
    rows = []
    for p in points:
        if p["world_size"] != top or p["schedule"] not in schedules:
            continue
        model = predict_step_us(
            schedules[p["schedule"]], top,
            compute_site_us=float(np.mean(base)) / n_sites * share(top) / share(n_min),
            coll=(terms["a"], terms["b_per_rank"], terms["fitted"]), n_sites=n_sites,
            seed=seed, ranks_per_node=ranks_per_node, local_coll_us=terms["local_coll_us"],
            overhead_us=terms["overhead_us"])
        rows.append({"schedule": p["schedule"], "world_size": top,
                     "measured_mean_us": p["mean_us"], "model_mean_us": model,
                     "rel_error": model / p["mean_us"] - 1})
    return {"held_out_world_size": top, "fitted_on": sizes[:-1], "rows": rows}
