"""The bandwidth-vs-predictability study: a steady network (bandwidth B, low per-hop
jitter) against a fast one (2B, the same mean per-hop latency, jittery), on the
workloads' own steps, over the world sizes each allows. ``jitterlab simulate`` runs it
for a spec with a ``[study]`` table (``experiments/presets/bandwidth-vs-predictability
.toml``; parsed by ``study_spec.parse_study``) and writes ``study.json``, ``study.csv``
and the report (``study_report``).

The networks (``jitter_models.paired``): two tiers; intra-node links (NVLink) are the
same in both networks; the inter-node tier differs: the steady network's bandwidth and
latency law, and the fast network's bandwidth with each variant's latency law, whose mean
must equal the steady one's. Every network gets the same draws per message (a paired
comparison). Each workload's collectives run as the explicit algorithm its entry names.

Approximation (stated in the report, checked here at a smaller N against the reference
``paired.full_steps``): each collective starts when its slowest rank is ready and takes a
duration drawn from a pool of simulated calls (``paired.steps``).

Metrics, per (workload, model, network): the mean and p99 step; efficiency E(N) =
T_compute(N) / T(N), the share of the step that is the ranks' own compute at perfect
balance (a free, jitter-free network and even expert loads; for data parallelism this is
T(1) / T(N)); ``useful_n`` the largest N with E >= the threshold; ``crossover_n`` the
smallest N >= 2 from which the steady network's mean step is no longer than the fast
one's at that N and every larger N of the range (``crossover_n_p99`` on the p99).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jitter_models.hop_laws import HopLaw, lognormal_sigma_for_ratio
from jitter_models.paired import (
    PairedTier,
    SiteCall,
    SiteCalls,
    full_steps,
    steps,
)
from jitter_models.percentiles import nearest_rank

from .study_spec import Entry, Study, parse_study

__all__ = ["ROW_KEYS", "SCHEMA", "Entry", "Study", "break_even", "crossover", "parse_study",
           "run_study", "stderr_progress", "verdict"]

SCHEMA = 1
SENSITIVITY_RATIOS = (2.0, 3.0, 5.0, 10.0, 30.0)
"""p99/p50 of the fast network's per-hop latency (lognormal, same mean) tried for the
sensitivity view, besides the steady law's own."""
LARGE_N = 2048
"""Past this N, pools hold ``samples_large`` calls (a call at 65,536 ranks is 2 M
messages per sample)."""
ROW_KEYS = ("workload", "model", "variant", "crossover_n", "crossover_n_p99",
            "useful_n_steady", "useful_n_fast", "verdict")


# --- running -------------------------------------------------------------------------

ROUTING_STEPS = 2
"""Distinct steps of a workload whose sites vary from step to step (MoE routing): step k
uses the sites of step k mod 2 (each with its own routing per layer; the pools mix
every layer's routings)."""


def _calls(entry: Entry, n: int, algorithm: str, rpn: int) -> tuple[tuple, Callable]:
    """The sites at ``n`` and ``calls(j)`` for ``paired.steps``: a site without load is
    its own group (keyed by what its pool depends on); sites whose loads name the same
    ``group`` (``routing.MoELoad``: one per phase) pool their routings together."""
    from jitter_models.pattern_sim import compile_algorithm

    sites = entry.work.simulated_sites(entry.params, batch=entry.batch, dtype=entry.dtype,
                                       world_size=n)
    compiled = {c: compile_algorithm(algorithm, c, n, rpn)
                for c in {s.collective for s in sites}}
    own: dict[int, list] = {}
    groups: dict[tuple, list] = {}
    for j, s in enumerate(sites):
        name = (algorithm, s.collective)
        if s.load is None:
            own[j] = [(SiteCall(compiled[s.collective], name, float(s.message_bytes)),
                       np.broadcast_to(np.float64(s.compute_s), (n,)))]  # (no copy)
            key = (*name, n, float(s.message_bytes))
        else:
            own[j] = []
            for k in range(ROUTING_STEPS):
                d = s.load.draw(n, k)
                own[j].append((SiteCall(compiled[s.collective], name,
                                        float(s.message_bytes), d.bytes),
                               s.compute_s + d.compute_s))
            key = (*name, n, "load", getattr(s.load, "group", j), float(s.compute_s))
        groups.setdefault(key, []).extend(own[j])
        own[j] = (own[j], key)

    def calls(j: int) -> SiteCalls:
        mine, key = own[j]
        return SiteCalls(own=mine, group=key, pool=groups[key], varies="load" in key)
    return sites, calls


def _compute_s(sites: tuple, calls: Callable) -> float:
    """The step's compute at perfect balance (the efficiency's numerator): each site's
    compute, loads at their mean over ranks and steps, overlap kept."""
    t = r = 0.0
    means: dict[tuple, float] = {}
    for j, s in enumerate(sites):
        sc = calls(j)
        if sc.varies:  # a pool serves every site of its group: its mean once
            if sc.group not in means:
                means[sc.group] = float(np.mean([np.mean(c) for _, c in sc.pool]))
            c = means[sc.group]
        else:
            c = float(np.mean([_mean(comp) for _, comp in sc.own]))
        begin = r if s.overlap else t
        r = begin + c
        t = max(r, t) if s.overlap else r
    return max(t, r)


def _mean(a: np.ndarray) -> float:
    """``a``'s mean; one element's read for a constant broadcast (stride 0)."""
    return float(a.flat[0]) if a.ndim == 1 and a.strides == (0,) else float(np.mean(a))


def _summ(lat: np.ndarray) -> tuple[float, float]:
    return float(lat.mean()), nearest_rank(lat, 99)


def run_study(study: Study, progress: Callable[[str], None] | None = None
              ) -> dict[str, Any]:
    """Every entry x N x network: the data of study.json."""
    say = progress or (lambda text: None)
    nets = study.networks(study.variants)
    pools: dict[tuple, dict] = {}  # per network set: call pools shared between entries
    points, rows, sensitivity, checks = [], [], [], []
    for e_i, entry in enumerate(study.entries):
        series = []
        for n in entry.world_sizes:
            t0 = time.perf_counter()
            sites, calls = _calls(entry, n, entry.algorithm, study.ranks_per_node)
            samples = study.samples if n <= LARGE_N else study.samples_large
            rng = np.random.default_rng([study.seed, e_i, n, 0])
            lat = steps(sites, calls, nets, rng, study.steps, samples,
                        pools.setdefault(("main", samples), {}))
            compute = _compute_s(sites, calls)
            for c, net in enumerate(nets):
                mean, p99 = _summ(lat[c])
                series.append({"workload": entry.workload, "model": entry.model,
                               "network": net.name, "world_size": n, "mean_us": mean * 1e6,
                               "p99_us": p99 * 1e6, "compute_us": compute * 1e6,
                               "efficiency": compute / mean, "efficiency_p99": compute / p99,
                               "samples": samples, "steps": study.steps})
            say(f"study: {entry.workload} {entry.model} N={n}: steady mean "
                f"{series[-len(nets)]['mean_us']:.0f} us, "
                + ", ".join(f"{r['network']} {r['mean_us']:.0f}" for r in series[-len(nets) + 1:])
                + f" ({time.perf_counter() - t0:.1f} s)")
            if n in entry.sensitivity_n:
                sensitivity.append(_sensitivity(study, entry, e_i, n, sites, calls, samples,
                                                pools.setdefault(("sensitivity", samples),
                                                                 {})))
        points += series
        rows += _rows(study, entry, series)
        checks.append(_check(study, entry, e_i))
        say(f"study: {entry.workload} {entry.model}: approximation check at N = "
            f"{checks[-1]['world_size']}: mean {checks[-1]['mean_error']:+.1%}, p99 "
            f"{checks[-1]['p99_error']:+.1%}")
    return {"schema": SCHEMA, "name": study.name, "seed": study.seed, "steps": study.steps,
            "threshold": study.threshold, "networks": _describe_networks(study),
            "entries": [_describe_entry(e) for e in study.entries], "rows": rows,
            "points": points, "sensitivity": sensitivity, "checks": checks,
            "sources": study.sources}


def crossover(ns: list[int], steady: list[float], fast: list[float]) -> int | None:
    """The smallest N >= 2 from which steady <= fast at that N and every larger N."""
    best = None
    for n, s, f in sorted(zip(ns, steady, fast), reverse=True):
        if n < 2:
            break
        if s > f:
            break
        best = n
    return best


def _useful(rows: list[dict], threshold: float) -> int | None:
    good = [r["world_size"] for r in rows if r["efficiency"] >= threshold]
    return max(good) if good else None


def _rows(study: Study, entry: Entry, series: list[dict]) -> list[dict]:
    by = {name: [r for r in series if r["network"] == name]
          for name in ["steady", *(v for v, _ in study.variants)]}
    st = by["steady"]
    ns = [r["world_size"] for r in st]
    out = []
    for variant, _ in study.variants:
        fa = by[variant]
        c_mean = crossover(ns, [r["mean_us"] for r in st], [r["mean_us"] for r in fa])
        c_p99 = crossover(ns, [r["p99_us"] for r in st], [r["p99_us"] for r in fa])
        row = {"workload": entry.workload, "model": entry.model, "variant": variant,
               "crossover_n": c_mean, "crossover_n_p99": c_p99,
               "useful_n_steady": _useful(st, study.threshold),
               "useful_n_fast": _useful(fa, study.threshold)}
        row["verdict"] = verdict(row, ns, study.ranks_per_node)
        out.append(row)
    return out


def verdict(row: dict, ns: list[int], rpn: int = 8) -> str:
    """The row in words: where the crossover is, or that there is none; ties inside one
    node (N <= ``rpn``: no message leaves a node, the two networks are the same) named."""
    top = max(ns)
    if top <= rpn:
        return (f"inconclusive: every N studied (up to {top}) fits in one node of {rpn} "
                "GPUs, where the two networks are the same (no message crosses the network)")
    parts = []
    for key, what in (("crossover_n", "mean"), ("crossover_n_p99", "p99")):
        c = row[key]
        if c is None:
            parts.append(f"no crossover on the {what} step: the fast network is faster at "
                         f"N = {top}, the largest N studied")
        elif c <= rpn:
            parts.append(f"the steady network is no slower on the {what} step at every N "
                         f"(the same network up to N = {rpn}, one node; faster or equal "
                         "beyond)")
        else:
            parts.append(f"the steady network wins on the {what} step from N = {c}")
    return "; ".join(parts)


def _sensitivity(study: Study, entry: Entry, e_i: int, n: int, sites: tuple,
                 calls: Callable, samples: int, pools: dict) -> dict[str, Any]:
    """How much per-hop jitter (p99/p50 of a same-mean lognormal) the fast network's 2x
    bandwidth carries at N before the steady network's mean step is the shorter."""
    mean = study.steady.latency.mean_s
    ratios = tuple(sorted({round(study.steady.latency.ratio_p99_p50(), 3),
                           *SENSITIVITY_RATIOS}))
    laws = tuple((f"ratio {r:g}", HopLaw("lognormal", mean,
                                         sigma=lognormal_sigma_for_ratio(max(r, 1.0))))
                 for r in ratios)
    rng = np.random.default_rng([study.seed, e_i, n, 1])
    lat = steps(sites, calls, study.networks(laws), rng, study.steps, samples, pools)
    steady = float(lat[0].mean())
    fast = [float(x.mean()) for x in lat[1:]]
    return {"workload": entry.workload, "model": entry.model, "world_size": n,
            "ratios": list(ratios), "steady_mean_us": steady * 1e6,
            "fast_mean_us": [f * 1e6 for f in fast],
            "break_even_ratio": break_even(list(ratios), fast, steady)}


def break_even(ratios: list[float], fast: list[float], steady: float) -> dict[str, Any]:
    """Where the fast mean step (increasing in the ratio) reaches the steady one, by
    linear interpolation in log ratio; or a bound when it never does in the range."""
    if fast[0] >= steady:
        return {"value": None, "bound": "below", "text": f"the steady network wins even at "
                f"p99/p50 {ratios[0]:g} (the 2x bandwidth buys nothing here)"}
    for i in range(1, len(ratios)):
        if fast[i] >= steady:
            a, b = math.log(ratios[i - 1]), math.log(ratios[i])
            w = (steady - fast[i - 1]) / (fast[i] - fast[i - 1])
            value = math.exp(a + w * (b - a))
            return {"value": value, "bound": None,
                    "text": f"the fast network wins up to a per-hop p99/p50 of {value:.2g}"}
    return {"value": None, "bound": "above", "text": f"the fast network wins even at "
            f"p99/p50 {ratios[-1]:g}, the largest tried"}


def _check(study: Study, entry: Entry, e_i: int) -> dict[str, Any]:
    """The barrier-and-pool approximation against the reference (every rank's clock
    through every site, fresh draws per call) at ``check_n`` (or the largest N below it),
    on every network. The barrier can only delay a rank, so the approximation is an upper
    bound on each step, larger for the jittery networks: it leans toward the steady
    network; ``ratio_error`` is that lean on the steady/fast ratio of mean steps."""
    n = max(m for m in entry.world_sizes if m <= study.check_n)
    sites, calls = _calls(entry, n, entry.algorithm, study.ranks_per_node)
    nets = study.networks(study.variants)
    approx = steps(sites, calls, nets, np.random.default_rng([study.seed, e_i, n, 2]),
                   study.steps, study.samples)
    # the reference runs its steps side by side: its Python work is per (site, pattern
    # step), whatever the steps; its memory is (ranks x networks x steps) clocks
    n_ref = study.check_steps
    ref = full_steps(sites, calls, nets, np.random.default_rng([study.seed, e_i, n, 3]),
                     n_ref)
    summ = [(_summ(a), _summ(r)) for a, r in zip(approx, ref)]
    by = [{"network": net.name, "mean_error": am / rm - 1, "p99_error": ap / rp - 1}
          for net, ((am, ap), (rm, rp)) in zip(nets, summ)]
    (am, ap), (rm, rp) = summ[1]
    ratio = [{"variant": net.name,
              "ratio_error": (summ[0][0][0] / summ[c][0][0])
              / (summ[0][1][0] / summ[c][1][0]) - 1}
             for c, net in enumerate(nets) if c > 0]
    return {"workload": entry.workload, "model": entry.model, "world_size": n,
            "variant": study.variants[0][0], "approx_mean_us": am * 1e6,
            "full_mean_us": rm * 1e6, "approx_p99_us": ap * 1e6, "full_p99_us": rp * 1e6,
            "mean_error": am / rm - 1, "p99_error": ap / rp - 1,
            "full_steps": n_ref, "networks": by, "ratio_errors": ratio,
            "worst_ratio_error": max(abs(r["ratio_error"]) for r in ratio)}


def _describe_networks(study: Study) -> list[dict[str, Any]]:
    def tier(t: PairedTier) -> dict[str, Any]:
        return {"bandwidth_gbps": t.bandwidth_Bps / 1e9, "latency": t.latency.describe(),
                "latency_mean_us": t.latency.mean_s * 1e6,
                "latency_p99_p50": t.latency.ratio_p99_p50()}
    out = [{"network": "steady", "intra": tier(study.intra), "inter": tier(study.steady)}]
    for name, law in study.variants:
        out.append({"network": name, "intra": tier(study.intra),
                    "inter": tier(PairedTier(study.fast_bandwidth_Bps, law))})
    return out


def _describe_entry(e: Entry) -> dict[str, Any]:
    return {"workload": e.workload, "model": e.model, "algorithm": e.algorithm,
            "world_sizes": list(e.world_sizes), "describe": e.work.describe(e.params),
            "dtype": e.dtype, "batch": e.batch}


def stderr_progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
