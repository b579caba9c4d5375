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
