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




def test_balanced_resampling_uses_every_value_equally():
    from experiments.model_noise import balanced_resample

    values = np.arange(7, dtype=float) ** 2
    out = balanced_resample(values, 7 * 30, np.random.default_rng(1))
    assert np.array_equal(np.bincount(out.astype(int), minlength=37)[values.astype(int)],
                          np.full(7, 30))
    assert balanced_resample(values, 3, np.random.default_rng(1)).size == 3
    assert np.all(balanced_resample(np.zeros(0), 4, np.random.default_rng(1)) == 0)


def test_baseline_noise_is_on_the_time_axis():
    """One 100 ms stall in 100 no-jitter steps of 5 ms: a simulated step of one window
    gets the no-jitter point's own deviations from its mean (so its p99 returns); a step of
    five windows holds five excesses, so five times the stalls and its mean noise grows by
    four windows' mean excess (exact: balanced permutations)."""
    from experiments.model_noise import windowed_noise

    lat = np.full(100, 5e-3) + np.linspace(-1e-4, 1e-4, 100)
    lat[37] += 0.1
    excess = lat - np.median(lat)
    one = windowed_noise(excess, 5e-3, np.full(1000, 5e-3), np.random.default_rng(2))
    np.testing.assert_allclose(np.sort(one)[::10], np.sort(lat - lat.mean()), atol=1e-15)
    five = windowed_noise(excess, 5e-3, np.full(1000, 25e-3), np.random.default_rng(2))
    assert int(np.sum(five > 0.05)) == 50 and int(np.sum(one > 0.05)) == 10
    np.testing.assert_allclose(five.mean() - one.mean(), 4 * excess.mean(), rtol=1e-9)
    part = windowed_noise(excess, 5e-3, np.full(4000, 7.5e-3), np.random.default_rng(3))
    assert 55 <= int(np.sum(part > 0.05)) <= 62  # 1.5 windows each: ~6000 draws, ~60 stalls


def test_two_no_jitter_schedules_bracket_the_sweep_and_are_pooled():
    """A reference measured before and after: both are fitted (in sample), pooled per N,
    so a host that drifted by +20% between them is predicted at the steps-weighted mean
    of the two; the jittered points stay out of sample."""
    tier = Tier(alpha_s=3e-6, bandwidth_Bps=1e9)
    spec = _spec([1, 2])
    doc_jitter = [*spec.schedules, parse_schedule({"name": "again", "dist": "constant(0s)"})]
    points, steps = _measured(spec, Network(inter=tier, intra=tier, ranks_per_node=8))
    drifted = {}
    for p in [p for p in points if p["schedule"] == "none"]:
        q = {**p, "point": f"again-{p['world_size']}", "schedule": "again"}
        for key in ("mean_us", "p99_us", "compute_us", "collective_us"):
            q[key] = p[key] * 1.2
        drifted[q["point"]] = steps(p) * 1.2
        points.append(q)

    def both(p):
        return drifted[p["point"]] if p["point"] in drifted else steps(p)

    m = build(points, {s.name: s for s in doc_jitter}, spec=spec, batch=1,
              step_latencies=both, extrapolate=False)
    assert m["fit"]["schedules"] == ["none", "again"]
    for r in m["validation"]:
        assert r["in_sample"] == (r["schedule"] in ("none", "again"))
        if r["in_sample"]:
            ref = [p for p in points if p["schedule"] == "none"
                   and p["world_size"] == r["world_size"]][0]
            assert r["model_mean_us"] == pytest.approx(1.1 * ref["mean_us"], rel=1e-3)


def test_the_spun_share_of_a_delay_follows_the_injector():
    """The host injector spins the last 500 us of a delay: exponential(1 ms) spins
    E[min(D, 0.5 ms)] / E[D] = 1 - exp(-0.5) of it (Monte Carlo over 4096 draws: 4 SE is
    about 1.5%); sleep only spins none; cuda spins all; constants below the margin all."""
    from experiments.model_noise import sleep_margin_s, spun_share

    exp = parse_schedule("exponential(1ms)")
    host = sleep_margin_s("host")
    assert host == pytest.approx(500e-6)
    assert spun_share(exp, host) == pytest.approx(1 - np.exp(-0.5), rel=0.03)
    assert spun_share(exp, sleep_margin_s("host (sleep only: more ranks than cores)")) == 0
    assert spun_share(exp, sleep_margin_s("cuda")) == 1
    assert spun_share(exp, sleep_margin_s(None)) == spun_share(exp, host)
    slow = parse_schedule({"dist": "constant(20us)", "stragglers": {
        "ranks": [1], "dist": "constant(2ms)"}})
    assert spun_share(slow, host) == pytest.approx(0.25)  # the stragglers' law is slower
