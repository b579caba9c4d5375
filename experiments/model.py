"""The model of a measured sweep is the simulator, fitted on the sweep's no-jitter points.

What is fitted, on the no-jitter schedules' points only (a schedule that injects nothing:
``constant(0s)``, no stragglers, no detours; several are pooled per N, so that a reference
measured before and after the jittered points brackets the host's drift), at each
measured N:

- per-site compute: the measured compute per site (site start to the delay's start); at an
  N not measured, the largest measured N's value scaled by the workload's compute share;
- the local call: the collective time per site at N = 1 (host cost of a call that talks
  to nobody), kept at every N as part of each site's fixed cost;
- the network: the collective time per site above the local call, at the measured N >= 2,
  fitted by one tier (alpha, bandwidth) through the simulator's own cost of the spec's
  algorithm (``Network.native_time`` or the pattern's no-jitter time). With one message
  size and one multi-rank N the two cannot be separated: their sum at that size is fitted
  as alpha (bandwidth taken as unlimited), and the report says so. One host measures one
  tier: the fit is used for both (unless the spec's own [network] gives the inter-node
  tier, which is then kept);
- per-step overhead: the step's host time outside its sites (mean step minus the sites'
  compute, skew, collective and detours; so the injector's cost of a zero delay is in it),
  at the nearest measured N;
- baseline noise: the no-jitter point's step latencies minus their median, an empirical
  law of the noise in a window of its mean step, on the time axis (``model_noise``): a
  simulated step k windows long holds the sum of k of them, counting of the time a
  schedule adds to the simulated no-jitter step only the share the injector spins (a
  sleeping rank does not see the host's stalls). The law is that N's (the nearest
  measured N's elsewhere, accrued over the simulated step's length: the noise is not
  scaled with N past the measured sizes, only with time).

Then every measured point is predicted by simulating its schedule (mean and p99); a
no-jitter point was fitted (``in_sample``), every other schedule's point is out of sample.
Extrapolation: the same simulation at world sizes never run. Without a no-jitter schedule,
or without its N = 1 point, there is no model, and ``why`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from jitter_models import Schedule
from jitter_models.algorithm_builders import LINEAR_DEPTH
from jitter_models.network import Network, Tier
from jitter_models.parametric import Constant
from jitter_models.sim_stats import nearest_rank, useful_work
from jitter_models.simulate import MAX_RING_WORLD_SIZE, Site, simulate

from .model_noise import sleep_margin_s, spun_share, windowed_noise

EXTRAPOLATE_TO = tuple(2**k for k in range(21))
MODEL_STEPS = 2000
EXTRAPOLATION_STEPS = 400
UNLIMITED_BPS = 1e18  # "bandwidth not separable": the fitted alpha carries the bytes
HOP_BUDGET = 2e8  # hop updates per extrapolated point (explicit algorithms): ~1 s here
VALIDATION_COLUMNS = ("schedule", "world_size", "measured_mean_us", "model_mean_us",
                      "measured_p99_us", "model_p99_us", "in_sample")


def is_no_jitter(s: Schedule) -> bool:
    """Injects nothing: a constant zero delay, no stragglers, no detours."""
    return (isinstance(s.dist, Constant) and s.dist.value_s == 0 and s.stragglers is None
            and getattr(s, "detours", None) is None)


def absent(why: str) -> dict[str, Any]:
    return {"why": why, "fit": None, "validation": [], "extrapolation": []}


class Fit:
    """The fitted inputs of the simulator (module docstring), by measured N."""

    def __init__(self, base: list[dict[str, Any]], residuals: dict[int, np.ndarray], *,
                 spec: Any, batch: int):
        self.spec, self.batch = spec, batch
        self.n_sites = spec.work.sites_per_step(spec.params)
        self.share = spec.work.compute_share(spec.params)
        by_n = {p["world_size"]: p for p in base}
        self.measured = sorted(by_n)
        self.compute = {n: p["compute_us"] / self.n_sites * 1e-6 for n, p in by_n.items()}
        self.local_s = by_n[1]["collective_us"] / self.n_sites * 1e-6
        # delay_us stays in the overhead: a zero delay still costs the injector's call
        parts = ("compute_us", "collective_us", "skew_wait_us", "detour_us")
        self.overhead = {n: max(p["mean_us"] - sum(p.get(k) or 0.0 for k in parts), 0.0)
                         * 1e-6 for n, p in by_n.items()}
        self.residuals = residuals
        self.base_step_s = {n: p["mean_us"] * 1e-6 for n, p in by_n.items()}
        self.injector = {n: p.get("injector") for n, p in by_n.items()}
        self._ref: dict[int, float] = {}
        # The collective as the no-jitter point waited for it: its own time plus the skew
        # its baseline noise causes (the simulator draws no noise between ranks).
        multi = {n: (p["collective_us"] + (p.get("skew_wait_us") or 0.0)) / self.n_sites
                 * 1e-6 - self.local_s for n, p in by_n.items() if n >= 2}
        self.tier, self.separable = _fit_tier(multi, spec, self._bytes(2))
        self.inter = spec.network.inter if spec.network is not None else self.tier
        self.network = Network(inter=self.inter, intra=self.tier,
                               ranks_per_node=spec.ranks_per_node)
        # At a measured N the collective is known: the tier scaled to match it there.
        self.at_n = {}
        for n, y in multi.items():
            model = _collective_s(self.network, spec.algorithm, n, self._bytes(n))
            if model > 0 and y > 0:
                k = y / model
                self.at_n[n] = Network(inter=_scaled(self.inter, k),
                                       intra=_scaled(self.tier, k),
                                       ranks_per_node=spec.ranks_per_node)

    def _bytes(self, n: int) -> int:
        return self.spec.work.message_bytes(self.spec.params, batch=self.batch,
                                            dtype=self.spec.dtype, world_size=n)

    def _nearest(self, n: int) -> int:
        return min(self.measured, key=lambda m: (abs(np.log2(m) - np.log2(n)), -m))

    def sites(self, n: int) -> tuple[Site, ...]:
        if n in self.compute:
            c = self.compute[n]
        else:
            top = max(self.measured)
            c = self.compute[top] * self.share(n) / self.share(top)
        sites = self.spec.work.simulated_sites(self.spec.params, batch=self.batch,
                                               dtype=self.spec.dtype, world_size=n)
        # overlap kept (dp_step's buckets); a load's per-rank compute is not (the fitted
        # compute already holds the measured mean of it)
        out = [Site(compute_s=c + self.local_s, message_bytes=int(s.message_bytes),
                    collective=s.collective, algorithm=self.spec.algorithm,
                    overlap=bool(getattr(s, "overlap", False))) for s in sites]
        out[0] = replace(out[0], compute_s=out[0].compute_s + self.overhead[self._nearest(n)])
        return tuple(out)

    def predict(self, schedule: Schedule, n: int, steps: int) -> np.ndarray:
        """Simulated step latencies (s) with the baseline noise added."""
        out = simulate(schedule, n, self.sites(n), network=self.at_n.get(n, self.network),
                       steps=steps, seed=self.spec.seed)
        m = n if n in self.residuals else self._nearest(n)
        rng = np.random.default_rng([self.spec.seed, 77, n])
        lat, ref = out.latency_s, self._no_jitter_s(n)
        # noise accrues while ranks run: of the time a schedule adds to the no-jitter step
        # at this N, only the share the injector spins
        share = spun_share(schedule, sleep_margin_s(self.injector.get(m)))
        busy = np.where(lat > ref, ref + share * (lat - ref), lat)
        return lat + windowed_noise(self.residuals[m], self.base_step_s[m], busy, rng)

    def _no_jitter_s(self, n: int) -> float:
        """The simulated no-jitter step at ``n`` (mean, s; cached)."""
        if n not in self._ref:
            out = simulate(Schedule(dist=Constant(value_s=0.0)), n, self.sites(n),
                           network=self.at_n.get(n, self.network), steps=8,
                           seed=self.spec.seed)
            self._ref[n] = float(np.mean(out.latency_s))
        return self._ref[n]

    def describe(self) -> dict[str, Any]:
        return {"alpha_us": self.tier.alpha_s * 1e6,
                "bandwidth_gbps": (None if self.tier.bandwidth_Bps >= UNLIMITED_BPS
                                   else self.tier.bandwidth_Bps / 1e9),
                "separable": self.separable, "local_call_us": self.local_s * 1e6,
                "compute_site_us": {str(n): c * 1e6 for n, c in self.compute.items()},
                "overhead_step_us": {str(n): o * 1e6 for n, o in self.overhead.items()},
                "fitted_on": self.measured, "message_bytes": self._bytes(2)}


def _scaled(tier: Tier, k: float) -> Tier:
    """``tier`` with every message cost multiplied by ``k``."""
    return Tier(alpha_s=tier.alpha_s * k,
                bandwidth_Bps=min(tier.bandwidth_Bps / k, UNLIMITED_BPS))


def _fit_tier(residual_s: dict[int, float], spec: Any, nbytes: int) -> tuple[Tier, bool]:
    """One tier whose simulated cost of the spec's algorithm matches the per-site
    collective time above the local call at the measured N >= 2 (least squares)."""
    if not residual_s:  # no multi-rank point: the spec's own [network] (build checks)
        return spec.network.intra, True
    ns = sorted(residual_s)
    y = np.array([max(residual_s[n], 0.0) for n in ns])

    def cost(alpha: float, bps: float) -> np.ndarray:
        tier = Tier(alpha_s=alpha, bandwidth_Bps=bps)
        net = Network(inter=tier, intra=tier, ranks_per_node=spec.ranks_per_node)
        return np.array([_collective_s(net, spec.algorithm, n, nbytes) for n in ns])

    if len(ns) < 2 or nbytes == 0:
        unit = cost(1.0, UNLIMITED_BPS)
        return Tier(alpha_s=float(np.dot(unit, y) / np.dot(unit, unit)),
                    bandwidth_Bps=UNLIMITED_BPS), False
    from scipy.optimize import nnls

    # Least squares, costs non-negative: y ~ alpha L(N) + beta B(N), with L and B the
    # algorithm's cost per unit alpha and per byte-second (exact for one pattern; for
    # native, min(ring, doubling) is not linear, so the exact cost of each candidate is
    # compared and the best kept).
    lat, per_byte = cost(1.0, UNLIMITED_BPS), cost(0.0, 1.0)
    candidates = []
    coef, _ = nnls(np.stack([lat, per_byte], axis=1), y)
    candidates.append((coef[0], 1.0 / coef[1] if coef[1] > 0 else UNLIMITED_BPS))
    candidates.append((float(np.dot(lat, y) / np.dot(lat, lat)), UNLIMITED_BPS))
    candidates.append((0.0, float(np.dot(per_byte, per_byte) / max(np.dot(per_byte, y),
                                                                      1e-300))))
    best = min(candidates, key=lambda c: float(np.sum(
        (cost(c[0], min(max(c[1], 1e-300), UNLIMITED_BPS)) - y) ** 2)))
    return Tier(alpha_s=float(best[0]),
                bandwidth_Bps=float(min(max(best[1], 1.0), UNLIMITED_BPS))), True


def _collective_s(network: Network, algorithm: str, n: int, nbytes: int) -> float:
    from jitter_models.collective_sim import SiteCollective

    site = Site(compute_s=0.0, message_bytes=nbytes, algorithm=algorithm)
    return SiteCollective(site, n, network, Schedule(dist=Constant(value_s=0.0)), 0,
                          np.random.default_rng(0), exact_links=False).duration_s


def build(points: Sequence[dict[str, Any]], schedules: dict[str, Schedule], *, spec: Any,
          batch: int, step_latencies: Callable[[dict[str, Any]], np.ndarray],
          extrapolate: bool = True) -> dict[str, Any]:
    """The model of one batch's measured points: validation rows, extrapolation rows, the
    fit, or ``why`` there is none. ``step_latencies(point)``: a point's per-step latencies
    in seconds (read from its rank files)."""
    base_names = [name for name, s in schedules.items() if is_no_jitter(s)]
    if not base_names:
        return absent("no no-jitter schedule (constant(0s), no stragglers, no detours) to "
                      "fit the network, compute and baseline noise on")
    base = [p for p in points if p["schedule"] in base_names]
    names = " or ".join(repr(n) for n in base_names)
    if not any(p["world_size"] == 1 for p in base):
        return absent(f"no N = 1 point of the no-jitter schedule {names}: the "
                      "local call and the efficiency baseline are unmeasured")
    if not any(p["world_size"] >= 2 for p in base) and spec.network is None:
        return absent(f"no multi-rank point of the no-jitter schedule {names} and "
                      "no [network] table: the collective's cost is unmeasured")
    base, residuals = _pooled(base, step_latencies)
    fit = Fit(base, residuals, spec=spec, batch=batch)
    described = {**fit.describe(), "schedules": base_names}
    rows = []
    for p in points:
        sched = schedules.get(p["schedule"])
        if sched is None:
            continue
        lat = fit.predict(sched, p["world_size"], _model_steps(residuals, p["world_size"]))
        s = np.sort(lat)
        rows.append({"schedule": p["schedule"], "world_size": p["world_size"],
                     "measured_mean_us": p["mean_us"], "model_mean_us": float(lat.mean()) * 1e6,
                     "measured_p99_us": p["p99_us"],
                     "model_p99_us": nearest_rank(s, 0.99) * 1e6,
                     "in_sample": p["schedule"] in base_names})
    for r in rows:
        r["rel_error_mean"] = r["model_mean_us"] / r["measured_mean_us"] - 1
        r["rel_error_p99"] = r["model_p99_us"] / r["measured_p99_us"] - 1
    order = {name: i for i, name in enumerate(schedules)}
    rows.sort(key=lambda r: (order[r["schedule"]], r["world_size"]))
    return {"why": None, "fit": described, "validation": rows,
            "extrapolation": _extrapolate(fit, schedules) if extrapolate else []}


def _model_steps(residuals: dict[int, np.ndarray], n: int) -> int:
    """Simulated steps for a measured point at ``n``: whole permutations of that N's
    baseline noise (so that a no-jitter point's own p99 returns), MODEL_STEPS or more, and
    MODEL_STEPS alone where a whole number of permutations would pass 4 x MODEL_STEPS."""
    count = len(residuals.get(n, ()))
    if count == 0 or count > 4 * MODEL_STEPS:
        return MODEL_STEPS
    return count * -(-MODEL_STEPS // count)


def _pooled(base: list[dict[str, Any]], step_latencies: Callable[[dict[str, Any]], np.ndarray]
            ) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """One no-jitter point per N: several (a reference measured before and after the
    jittered points, to bracket the host's drift) pooled, their parts averaged by steps
    and their steps' excesses over the pooled median taken together."""
    out, residuals = [], {}
    for n in sorted({p["world_size"] for p in base}):
        mine = [p for p in base if p["world_size"] == n]
        each = [step_latencies(p) for p in mine]
        lat = np.concatenate(each)
        w = np.array([x.size for x in each], dtype=np.float64)
        row = {**mine[0], "mean_us": float(lat.mean()) * 1e6}
        for key in ("compute_us", "delay_us", "collective_us", "skew_wait_us",
                    "detour_us"):  # absent or null: 0, as Fit reads them
            row[key] = float(np.dot(w, [p.get(key) or 0.0 for p in mine]) / w.sum())
        out.append(row)
        residuals[n] = lat - np.median(lat)
    return out, residuals


def _extrapolate(fit: Fit, schedules: dict[str, Schedule]) -> list[dict[str, Any]]:
    limit = MAX_RING_WORLD_SIZE if fit.spec.algorithm in LINEAR_DEPTH else None
    sizes = []
    for n in EXTRAPOLATE_TO:
        try:  # a workload may not split past some N (tp_decode: heads)
            sites = fit.sites(n)
        except ValueError:
            break
        if (limit is not None and n > limit) or _hop_updates(sites, n) > HOP_BUDGET:
            break
        sizes.append(n)
    out = []
    for name, sched in schedules.items():
        series = []
        for n in sizes:
            lat = fit.predict(sched, n, EXTRAPOLATION_STEPS)
            series.append({"schedule": name, "world_size": n,
                           "model_mean_us": float(lat.mean()) * 1e6,
                           "model_p99_us": nearest_rank(np.sort(lat), 0.99) * 1e6})
        work = useful_work(fit.share)
        base = series[0]  # N = 1: EXTRAPOLATE_TO starts there
        for r in series:
            n = r["world_size"]
            r["efficiency"] = work(n) * base["model_mean_us"] / r["model_mean_us"] / n
        out += series
    return out


def _hop_updates(sites: tuple[Site, ...], n: int) -> float:
    """Messages an extrapolated point's explicit collectives would simulate."""
    from jitter_models.algorithm_builders import has_pattern
    from jitter_models.pattern_sim import compile_algorithm

    total = 0.0
    for s in sites:
        if has_pattern(s.algorithm) and n > 1:
            total += compile_algorithm(s.algorithm, s.collective, n, 8).messages
    return total * EXTRAPOLATION_STEPS


def rank_step_latencies(root: Path) -> Callable[[dict[str, Any]], np.ndarray]:
    """``step_latencies`` for ``build`` reading a point's rank files under ``root``."""
    def read(p: dict[str, Any]) -> np.ndarray:
        from collectives.timing import read_rank_file

        from .analysis import step_latencies

        folder = root / "points" / p["point"]
        tables = [read_rank_file(f)[0] for f in sorted(folder.glob("rank-*.parquet"))]
        return step_latencies(tables)
    return read


def validation_csv_rows(models: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """model_validation.csv: every batch's measured points, model beside them."""
    rows = []
    for m in models.values():
        rows += [{k: r[k] for k in VALIDATION_COLUMNS} for r in m["validation"]]
    return rows
