"""The model of a measured sweep: the simulator fitted on the no-jitter points. Its fit is
checked on points the simulator itself made with a known network (so the truth is known),
its out-of-sample flags, its refusals, and the weight share that scales tp_decode's
compute."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.model import build, is_no_jitter
from experiments.spec import parse_spec
from jitter_models import parse_schedule
from jitter_models.network import Network, Tier
from jitter_models.simulate import Site, simulate

SITES = 4


def _spec(sizes, algorithm="native", nbytes=8192):
    doc = {"name": "m", "workload": "bsp", "sites_per_step": SITES,
           "compute_per_site": "50us", "message_bytes": nbytes, "world_sizes": sizes,
           "algorithm": algorithm, "steps": 400, "seed": 3, "jitter": [
               {"name": "none", "dist": "constant(0s)"},
               {"name": "exp", "dist": "exponential(20us)"},
               {"name": "logn", "dist": "lognormal(median=15us, sigma=0.7)"}]}
    return parse_spec(doc)


def _measured(spec, truth: Network, local_us=2.0, overhead_us=5.0):
    """Points as a sweep would measure them, made by the simulator with ``truth``: per
    site 50 µs of compute + a local call, a per-step overhead, and the collective."""
    points, steps = [], {}
    for sched in spec.schedules:
        for n in spec.world_sizes:
            sites = tuple(Site(compute_s=50e-6 + local_us * 1e-6 + (overhead_us * 1e-6
                                                                   if j == 0 else 0.0),
                               message_bytes=8192, algorithm=spec.algorithm)
                          for j in range(SITES))
            lat = simulate(sched, n, sites, network=truth, steps=4000, seed=n + 17)
            coll = truth.native_time("all_reduce", n, 8192) if spec.algorithm == "native" \
                else None
            if coll is None:
                from experiments.model import _collective_s
                coll = _collective_s(truth, spec.algorithm, n, 8192)
            key = f"{sched.name}-{n}"
            steps[key] = lat.latency_s
            points.append({"point": key, "schedule": sched.name, "world_size": n,
                           "mean_us": lat.latency_s.mean() * 1e6,
                           "p99_us": float(np.quantile(lat.latency_s, 0.99)) * 1e6,
                           "compute_us": SITES * 50.0,
                           "collective_us": SITES * (local_us + coll * 1e6),
                           "delay_us": 0.0, "skew_wait_us": 0.0})
    return points, (lambda p: steps[p["point"]])


def test_the_fit_recovers_the_network_and_predicts_the_jittered_points_out_of_sample():
    truth_tier = Tier(alpha_s=4e-6, bandwidth_Bps=2e9)
    truth = Network(inter=truth_tier, intra=truth_tier, ranks_per_node=8)
    spec = _spec([1, 2, 4, 8], algorithm="ring")
    points, steps = _measured(spec, truth)
    m = build(points, {s.name: s for s in spec.schedules}, spec=spec, batch=1,
              step_latencies=steps, extrapolate=False)
    assert m["why"] is None and m["fit"]["separable"]
    assert m["fit"]["alpha_us"] == pytest.approx(4.0, rel=0.05)
    assert m["fit"]["bandwidth_gbps"] == pytest.approx(2.0, rel=0.05)
    for r in m["validation"]:
        assert r["in_sample"] == (r["schedule"] == "none")
        assert r["model_mean_us"] == pytest.approx(r["measured_mean_us"], rel=0.02), r
        assert r["model_p99_us"] == pytest.approx(r["measured_p99_us"], rel=0.05), r


def test_one_multi_rank_size_fits_the_sum_of_alpha_and_bytes_and_says_so():
    tier = Tier(alpha_s=3e-6, bandwidth_Bps=1e9)
    truth = Network(inter=tier, intra=tier, ranks_per_node=8)
    spec = _spec([1, 2])
    points, steps = _measured(spec, truth)
    m = build(points, {s.name: s for s in spec.schedules}, spec=spec, batch=1,
              step_latencies=steps, extrapolate=False)
    assert not m["fit"]["separable"] and m["fit"]["bandwidth_gbps"] is None
    # native at N = 2 is one exchange of the whole buffer: alpha + 8192 B / 1 GB/s
    assert m["fit"]["alpha_us"] == pytest.approx(3.0 + 8.192, rel=1e-6)


def test_no_model_without_a_no_jitter_schedule_or_its_n1_point():
    spec = _spec([1, 2])
    tier = Tier(alpha_s=3e-6, bandwidth_Bps=1e9)
    points, steps = _measured(spec, Network(inter=tier, intra=tier, ranks_per_node=8))
    jittered = {s.name: s for s in spec.schedules if s.name != "none"}
    m = build(points, jittered, spec=spec, batch=1, step_latencies=steps)
    assert m["why"].startswith("no no-jitter schedule") and m["validation"] == []
    no_one = [p for p in points if not (p["schedule"] == "none" and p["world_size"] == 1)]
    m = build(no_one, {s.name: s for s in spec.schedules}, spec=spec, batch=1,
              step_latencies=steps)
    assert "no N = 1 point" in m["why"]


def test_what_counts_as_no_jitter():
    assert is_no_jitter(parse_schedule("constant(0s)"))
    assert not is_no_jitter(parse_schedule("constant(1us)"))
    assert not is_no_jitter(parse_schedule("constant(0s); detours=periodic(period=1ms, "
                                           "duration=10us)"))
    assert not is_no_jitter(parse_schedule(
        "constant(0s); stragglers.ranks=1; stragglers.dist=constant(1ms)"))


@pytest.mark.parametrize("name", ["tiny", "small", "llama-2-7b", "llama-3-8b", "llama-3-70b",
                                  "llama-3.1-405b"])
def test_weight_share_is_the_layouts_own_bytes_wherever_a_split_exists(name):
    from collectives.models import model_config, shard_layout, site_weight_bytes, weight_share

    cfg = model_config(name)
    one = shard_layout(cfg, 1)
    whole = site_weight_bytes(one, 0, 2) + site_weight_bytes(one, 1, 2)
    last = 1.0
    for n in range(1, 2 * cfg.heads + 1):
        share = weight_share(cfg, n)
        assert share <= last  # more ranks never hold more
        last = share
        try:
            layout = shard_layout(cfg, n)
        except ValueError:
            continue
        exact = (site_weight_bytes(layout, 0, 2) + site_weight_bytes(layout, 1, 2)) / whole
        assert share == pytest.approx(exact, rel=1e-12), n
    assert weight_share(cfg, 4096) == weight_share(cfg, cfg.heads)  # no split past heads


