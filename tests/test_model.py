"""The step model: its collective fit, its validation on points it generated itself, and
the max-of-N term from the schedule's order statistics."""

from __future__ import annotations

import math

import pytest

import jitter_models as jm
from experiments.model import build, fit_collective, predict_step_us

SITES = 4


def point(schedule: str, n: int, *, compute_site: float, a: float, b: float,
          delay_site: float) -> dict:
    coll = a + b * (n - 1) if n > 1 else 0.0  # one rank: the all-reduce is a local call
    return {"schedule": schedule, "world_size": n, "compute_us": SITES * compute_site,
            "collective_us": SITES * coll,
            "mean_us": SITES * (compute_site + delay_site + coll)}


def test_the_collective_fit_recovers_a_ring_latency_from_several_world_sizes():
    pts = [point("none", n, compute_site=100 / n, a=3.0, b=2.5, delay_site=0)
           for n in (2, 4, 8)]
    a, b, fitted = fit_collective(pts, SITES)
    assert fitted and a == pytest.approx(3.0) and b == pytest.approx(2.5)


def test_one_multi_rank_size_holds_the_collective_instead_of_inventing_growth():
    pts = [point("none", n, compute_site=100 / n, a=3.0, b=2.5, delay_site=0)
           for n in (1, 2)]
    a, b, fitted = fit_collective(pts, SITES)
    assert (a, b, fitted) == (pytest.approx(5.5), 0.0, False)


def test_a_fit_never_makes_a_cost_negative():
    # Noisy measurements whose straight line would cross zero before N = 2.
    pts = [{"world_size": 2, "collective_us": SITES * 1.0},
           {"world_size": 4, "collective_us": SITES * 9.0}]
    a, b, fitted = fit_collective(pts, SITES)
    assert fitted and a == 0.0 and b > 0
    assert all(a + b * (n - 1) >= 0 for n in (2, 4, 4096))


def test_the_model_reproduces_points_made_by_its_own_formula_and_extrapolates():
    mean_us = 20.0
    exp = jm.parse_schedule("exponential(20us)")
    none = jm.parse_schedule("constant(0s); name=none")
    pts = []
    for n in (1, 2, 4):
        for name, sched in (("none", none), ("exp", exp)):
            delay = jm.expected_max(sched.site_groups(0, n, 8)) * 1e6
            pts.append(point(name, n, compute_site=400 / n, a=3.0, b=2.0, delay_site=delay))
    out = build(pts, {"none": none, "exp": exp}, n_sites=SITES, seed=0, ranks_per_node=8)
    assert all(abs(v["rel_error"]) < 1e-9 for v in out["validation"])
    by = {(r["schedule"], r["world_size"]): r for r in out["extrapolation"]}
    # E[max of N exponentials] = mean * H_N: at N = 4096 the delay term alone per site.
    h = sum(1 / k for k in range(1, 4097))
    expected = SITES * (400 / 4096 + mean_us * h + 3.0 + 2.0 * 4095)
    assert by[("exp", 4096)]["model_mean_us"] == pytest.approx(expected, rel=1e-6)
    assert by[("exp", 64)]["efficiency"] < by[("none", 64)]["efficiency"] < 1


def test_predict_step_is_sites_times_the_three_terms():
    sched = jm.parse_schedule("constant(7us)")
    got = predict_step_us(sched, 8, compute_site_us=10.0, coll=(1.0, 0.5, True), n_sites=3,
                          seed=0, ranks_per_node=8)
    assert got == pytest.approx(3 * (10.0 + 7.0 + 1.0 + 0.5 * 7))
    assert math.isfinite(got)


def test_without_sampling_error_the_band_is_the_point_estimate():
    none = jm.parse_schedule("constant(0s); name=none")
    pts = [point("none", n, compute_site=400 / n, a=3.0, b=2.0, delay_site=0.0)
           for n in (1, 2, 4)]
    out = build(pts, {"none": none}, n_sites=SITES, seed=0, ranks_per_node=8)
    for r in out["extrapolation"] + out["validation"]:
        assert r["model_lo_us"] == pytest.approx(r["model_mean_us"])
        assert r["model_hi_us"] == pytest.approx(r["model_mean_us"])


def test_the_band_propagates_the_inputs_standard_errors():
    """Compute from N = 1 (SE s_c per step), the collective fitted exactly through N = 2
    and 4 (SE s_k per step each): T(N) is linear in them, so its SD is known, and the band
    is about 1.96 SD each side. 2000 draws estimate a 2.5% point to about 3% of the
    half-width; the 10% tolerance is over 3 sigma (seed fixed)."""
    none = jm.parse_schedule("constant(0s); name=none")
    s_c, s_k = 40.0, 8.0
    pts = []
    for n in (1, 2, 4):
        p = point("none", n, compute_site=4000 / n, a=300.0, b=200.0, delay_site=0.0)
        p["compute_se_us"], p["collective_se_us"] = s_c, (s_k if n > 1 else 0.0)
        pts.append(p)
    out = build(pts, {"none": none}, n_sites=SITES, seed=0, ranks_per_node=8)
    by = {r["world_size"]: r for r in out["extrapolation"]}
    for n in (8, 64, 4096):
        w = (n - 2) / 2  # a + b (N - 1) = y2 + (y4 - y2) (N - 2) / 2
        sd = math.hypot(s_c / n, s_k * math.hypot(1 - w, w))
        r = by[n]
        assert (r["model_hi_us"] - r["model_lo_us"]) / 2 == pytest.approx(1.96 * sd, rel=0.1)
        assert r["model_lo_us"] < r["model_mean_us"] < r["model_hi_us"]
        assert r["efficiency_lo"] < r["efficiency"] < r["efficiency_hi"]


def test_holding_out_the_largest_world_size_tests_the_extrapolation():
    none = jm.parse_schedule("constant(0s); name=none")
    linear = [point("none", n, compute_site=400 / n, a=3.0, b=2.0, delay_site=0.0)
              for n in (1, 2, 4, 8)]
    out = build(linear, {"none": none}, n_sites=SITES, seed=0, ranks_per_node=8)
    hold = out["holdout"]
    assert hold["held_out_world_size"] == 8 and hold["fitted_on"] == [2, 4]
    assert [r["world_size"] for r in hold["rows"]] == [8]
    assert abs(hold["rows"][0]["rel_error"]) < 1e-9  # the model's own form: exact
    # A collective that grows like log2 N instead (5 and 7 µs/site at N = 2 and 4): the line
    # through them, 4 + (N - 1), says 11 µs/site at N = 8, where 3 + 2*3 = 9 was measured.
    curved = [p | {"collective_us": SITES * (3.0 + 2.0 * math.log2(p["world_size"]))
                   if p["world_size"] > 1 else 0.0} for p in linear]
    for p in curved:
        p["mean_us"] = p["compute_us"] + p["collective_us"]
    bad = build(curved, {"none": none}, n_sites=SITES, seed=0, ranks_per_node=8)["holdout"]
    t8 = curved[-1]["mean_us"]
    predicted = SITES * (400 / 8 + 11.0)
    assert bad["rows"][0]["model_mean_us"] == pytest.approx(predicted)
    assert bad["rows"][0]["rel_error"] == pytest.approx(predicted / t8 - 1)
    few = build(linear[:3], {"none": none}, n_sites=SITES, seed=0, ranks_per_node=8)
    assert few["holdout"] is None  # two multi-rank sizes: nothing left to predict


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


def test_the_compute_term_follows_the_weight_share():
    from collectives.models import model_config, weight_share

    cfg = model_config("llama-3-8b")  # 32 heads, 8 KV heads: KV replicates past N = 8
    none = jm.parse_schedule("constant(0s); name=none")
    pts = [point("none", n, compute_site=400 * weight_share(cfg, n), a=3.0, b=2.0,
                 delay_site=0.0) for n in (1, 2, 4)]
    out = build(pts, {"none": none}, n_sites=SITES, seed=0, ranks_per_node=8,
                share=lambda n: weight_share(cfg, n))
    assert all(abs(v["rel_error"]) < 1e-9 for v in out["validation"])
    by = {r["world_size"]: r for r in out["extrapolation"]}
    for n in (16, 4096):
        coll = 3.0 + 2.0 * (n - 1)
        assert by[n]["model_mean_us"] == pytest.approx(
            SITES * (400 * weight_share(cfg, n) + coll))
    assert 400 * weight_share(cfg, 16) > 400 / 16  # replicated KV heads cost more than 1/N
