"""experiments.analysis on synthetic records whose answers are known exactly.

``make_tables`` simulates tp_decode's timing: every rank starts a step together, each site
is compute then injected delay then all-reduce, and the all-reduce finishes on every rank
at the last arrival plus the collective's own time. Times are written on each rank's own
clock (``t_local = t_rank0 - offset``), as the worker records them.
"""

from __future__ import annotations

import numpy as np
import pytest

import jitter_models as jm
from collectives.timing import COLUMNS
from experiments import analysis as an
from jitter_models.percentiles import quantile_interval

US = 1_000  # ns per µs


def make_tables(compute_ns, delay_ns, collective_ns, *, offsets_ns=None, tail_ns=None,
                delay_req_ns=None, t0_ns=5_000_000):
    """Tables for R ranks, S steps, L sites. ``compute_ns``, ``delay_ns`` and
    ``delay_req_ns``: [R, S, L] (broadcast); ``collective_ns``: [S, L], the all-reduce's
    time after the last arrival; ``tail_ns``: [R], time from a rank's last site to its step
    end; ``offsets_ns``: [R], t_rank0 = t_local + offset."""
    delay = np.asarray(delay_ns, dtype=np.int64)
    r_, s_, l_ = delay.shape
    compute = np.broadcast_to(np.asarray(compute_ns, dtype=np.int64), delay.shape)
    req = delay if delay_req_ns is None else np.broadcast_to(
        np.asarray(delay_req_ns, dtype=np.int64), delay.shape)
    coll = np.broadcast_to(np.asarray(collective_ns, dtype=np.int64), (s_, l_))
    tail = np.zeros(r_, np.int64) if tail_ns is None else np.asarray(tail_ns, np.int64)
    off = np.zeros(r_, np.int64) if offsets_ns is None else np.asarray(offsets_ns, np.int64)
    rows = [{k: [] for k in COLUMNS} for _ in range(r_)]

    def add(r, step, site, req_ns, d_ns, start, arrive, done):
        for k, v in zip(COLUMNS, (step, site, 0, 1024, req_ns, d_ns,
                                  start - off[r], arrive - off[r], done - off[r])):
            rows[r][k].append(v)

    t = t0_ns  # rank 0's clock
    for s in range(s_):
        step_start, start = t, np.full(r_, t, dtype=np.int64)
        for site in range(l_):
            arrive = start + compute[:, s, site] + delay[:, s, site]
            done = arrive.max() + coll[s, site]
            for r in range(r_):
                add(r, s, site, req[r, s, site], delay[r, s, site], start[r], arrive[r], done)
            start = np.full(r_, done, dtype=np.int64)
        for r in range(r_):
            add(r, s, -1, 0, 0, step_start, step_start, start[r] + tail[r])
        t = int(start.max() + tail.max() + 1_000)
    return [{k: np.asarray(v, dtype=np.int64) for k, v in ranks.items()} for ranks in rows]


# --- step latency ---------------------------------------------------------------------


def test_step_latency_is_the_max_over_ranks_of_each_step():
    def steps_only(durations_us, starts_ns):
        n = len(durations_us)
        table = {k: np.zeros(n, np.int64) for k in COLUMNS}
        table["step"] = np.arange(n)[::-1].copy()  # rows out of order
        table["site"] = np.full(n, -1)
        table["t_start_ns"] = np.asarray(starts_ns)[::-1].copy()
        table["t_done_ns"] = table["t_start_ns"] + np.asarray(durations_us)[::-1] * US
        return table

    tables = [steps_only([1, 5, 3], [0, 10**9, 2 * 10**9]),
              steps_only([4, 2, 6], [7, 8, 9])]
    np.testing.assert_allclose(an.step_latencies(tables), [4e-6, 5e-6, 6e-6], rtol=1e-12)


def test_step_latency_of_simulated_run_and_clock_offsets_do_not_matter():
    # Per site: compute 10us, delays 0 / 30us (rank 0 / 1), collective 5us, 2 sites;
    # tails 1us / 3us: step durations 2 * 45 + tail, so the latency is 93us every step.
    delay = np.zeros((2, 3, 2), np.int64)
    delay[1] = 30 * US
    kw = dict(compute_ns=10 * US, delay_ns=delay, collective_ns=5 * US,
              tail_ns=[1 * US, 3 * US])
    expected = np.full(3, 93e-6)
    np.testing.assert_allclose(an.step_latencies(make_tables(**kw)), expected, rtol=1e-12)
    shifted = make_tables(**kw, offsets_ns=[0, -123_456_789])
    np.testing.assert_allclose(an.step_latencies(shifted), expected, rtol=1e-12)


def test_step_latency_rejects_ranks_with_different_steps():
    tables = make_tables(10 * US, np.zeros((2, 2, 1), np.int64), 5 * US)
    keep = tables[1]["step"] == 0
    tables[1] = {k: v[keep] for k, v in tables[1].items()}
    with pytest.raises(ValueError, match=r"tables\[1\]: its steps differ"):
        an.step_latencies(tables)


# --- decomposition --------------------------------------------------------------------


def test_decompose_hand_example():
    # 2 ranks, 1 step, 1 site: rank 1 arrives 30us after rank 0, which waits for it.
    tables = make_tables([[[10 * US]], [[10 * US]]], [[[0]], [[30 * US]]], [[5 * US]])
    d = an.decompose(tables, [0, 0])
    se = {"compute_se_us": d.pop("compute_se_us"), "collective_se_us": d.pop("collective_se_us")}
    assert d == pytest.approx({"compute_us": 10.0, "delay_us": 15.0, "skew_wait_us": 15.0,
                               "collective_us": 5.0, "n_ranks": 2, "n_steps": 1})
    assert se == {"compute_se_us": None, "collective_se_us": None}  # one step: no SE


def test_decompose_recovers_the_chosen_components():
    rng = np.random.default_rng(7)
    r_, s_, l_ = 3, 4, 2
    compute = np.array([10, 20, 30])[:, None, None] * US + np.zeros((r_, s_, l_), np.int64)
    delay = rng.integers(0, 100 * US, size=(r_, s_, l_))
    coll = rng.integers(1 * US, 20 * US, size=(s_, l_))
    d = an.decompose(make_tables(compute, delay, coll), [0, 0, 0])
    arrive = compute + delay  # every site starts together on all ranks
    skew = arrive.max(axis=0) - arrive
    per = r_ * s_ * 1e3  # (rank, step) pairs, ns -> µs
    assert d["compute_us"] == pytest.approx(2 * 20.0, abs=1e-9)
    assert d["delay_us"] == pytest.approx(delay.sum() / per, abs=1e-9)
    assert d["skew_wait_us"] == pytest.approx(skew.sum() / per, abs=1e-9)
    assert d["collective_us"] == pytest.approx(coll.sum() / (s_ * 1e3), abs=1e-9)
    assert (d["n_ranks"], d["n_steps"]) == (3, 4)


def test_decompose_aligns_arrivals_with_the_clock_offsets():
    delay = np.array([0, 30 * US])[:, None, None] + np.zeros((2, 2, 3), np.int64)
    kw = dict(compute_ns=10 * US, delay_ns=delay, collective_ns=5 * US)
    truth = an.decompose(make_tables(**kw), [0, 0])
    assert truth["skew_wait_us"] == pytest.approx(3 * 30 / 2)
    offsets = [0, 1_000_000_000]  # rank 1's clock reads 1 s less than rank 0's
    shifted = make_tables(**kw, offsets_ns=offsets)
    assert an.decompose(shifted, offsets) == pytest.approx(truth)
    # Without alignment rank 1 seems to arrive 1 s early: the skew is capped at its wait
    # and is wrong.
    assert an.decompose(shifted, [0, 0])["skew_wait_us"] != pytest.approx(45.0)


def test_decompose_interpolates_a_drifting_offset_per_record():
    # 2 ranks, 40 steps x 3 sites, rank 1 always 30 us late; rank 1's clock drifts: its
    # offset to rank 0 goes from 0 to 400 us, linearly over the run (as measured before
    # and after it). Aligned record by record, the skew is the true 30 us per site.
    delay = np.array([0, 30 * US])[:, None, None] + np.zeros((2, 40, 3), np.int64)
    kw = dict(compute_ns=10 * US, delay_ns=delay, collective_ns=5 * US)
    truth = an.decompose(make_tables(**kw), [0, 0])
    tables = make_tables(**kw)
    t_b, t_a = int(tables[1]["t_start_ns"].min()), int(tables[1]["t_done_ns"].max())
    slope = 400 * US / (t_a - t_b)
    for col in ("t_start_ns", "t_arrive_ns", "t_done_ns"):  # t_here = t_rank0 - offset(t)
        t = tables[1][col]
        tables[1][col] = t - np.rint((t - t_b) * slope).astype(np.int64)
    meta = {"clock_offset_ns": 200 * US, "clock_offset_before_ns": 0,
            "clock_offset_after_ns": 400 * US, "clock_offset_before_t_ns": t_b,
            "clock_offset_after_t_ns": t_a}
    got = an.decompose(tables, [{"clock_offset_ns": 0}, meta])
    assert got["skew_wait_us"] == pytest.approx(truth["skew_wait_us"], abs=0.01)
    # the one midpoint number is off by up to 200 us at the ends: the skew is capped at
    # the wait there and comes out wrong
    one = an.decompose(tables, [0, 200 * US])["skew_wait_us"]
    assert abs(one - truth["skew_wait_us"]) > 5


def test_decompose_with_an_unknown_offset_counts_all_waiting_as_collective():
    delay = np.array([0, 30 * US])[:, None, None] + np.zeros((2, 2, 3), np.int64)
    tables = make_tables(10 * US, delay, 5 * US, offsets_ns=[0, 777])
    d = an.decompose(tables, [0, None])
    assert d["skew_wait_us"] is None
    assert d["collective_us"] == pytest.approx(3 * (5 + 30 / 2))  # mean of t_done - t_arrive
    assert d["compute_us"] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="offsets_ns: 1 offsets for 2 ranks"):
        an.decompose(tables, [0])


# --- latency statistics ---------------------------------------------------------------


def test_latency_stats_of_1_to_100_us():
    samples = np.arange(1, 101)[::-1] * 1e-6
    st = an.latency_stats(samples)
    assert st["n"] == 100
    assert st["min_us"] == pytest.approx(1) and st["max_us"] == pytest.approx(100)
    assert st["mean_us"] == pytest.approx(50.5)
    for key, p, value in [("p50", 50, 50), ("p90", 90, 90), ("p99", 99, 99),
                          ("p999", 99.9, 100)]:
        assert st[f"{key}_us"] == pytest.approx(value)
        lo, hi = quantile_interval(samples * 1e6, p)
        assert st[f"{key}_ci_us"][0] == pytest.approx(lo)
        assert (st[f"{key}_ci_us"][1] is None) == (hi is None)
        if hi is not None:
            assert st[f"{key}_ci_us"][1] == pytest.approx(hi)
    assert st["p50_ci_us"] == pytest.approx([40, 61])
    # 100 samples cannot bound the 99.9th percentile from above: reported as None.
    assert st["p999_ci_us"][0] == pytest.approx(99) and st["p999_ci_us"][1] is None
    # 10 batches of 10 (in order, 100 down to 1): means 95.5 .. 5.5, sd 30.28, / sqrt(10).
    assert st["mean_se_us"] == pytest.approx(10 * np.std(np.arange(10), ddof=1) / 10**0.5)


def test_batch_means_se_by_hand_and_for_too_few_values():
    # 16 values: 4 batches of 4, means 2.5, 6.5, 10.5, 14.5.
    assert an.batch_means_se(np.arange(1, 17)) == pytest.approx(
        np.std([2.5, 6.5, 10.5, 14.5], ddof=1) / 2)
    # 10 values: 3 batches of 3 after dropping the first one.
    assert an.batch_means_se(np.arange(10)) == pytest.approx(np.std([2, 5, 8], ddof=1) / 3**0.5)
    assert an.batch_means_se([1.0, 2.0, 3.0]) is None


@pytest.mark.parametrize("phi", [0.0, 0.9])
def test_batch_means_se_is_honest_for_correlated_steps(phi):
    """AR(1) steps, n = 10^4 (100 batches of 100): the SE of the mean is
    sqrt((1 + phi) / (1 - phi) / n) for unit innovations' stationary variance 1; the naive
    sd / sqrt(n) would be 4.4x too small at phi = 0.9. The estimate's relative spread is
    about 7% (100 batches), its bias at phi = 0.9 about -2%: the 25% tolerance is over 3
    sigma, a false-failure rate below 1e-3 (seed fixed)."""
    rng = np.random.default_rng(11)
    n = 10_000
    e = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    x = np.empty(n)
    x[0] = rng.standard_normal()
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    truth = np.sqrt((1 + phi) / (1 - phi) / n)
    assert an.batch_means_se(x) == pytest.approx(truth, rel=0.25)


def test_latency_stats_rejects_no_samples():
    with pytest.raises(ValueError, match="no samples"):
        an.latency_stats([])


# --- scaling --------------------------------------------------------------------------

POINTS = [
    {"schedule": "none", "world_size": 1, "mean_s": 10e-3, "p99_s": 12e-3},
    {"schedule": "none", "world_size": 2, "mean_s": 6e-3, "p99_s": 8e-3},
    {"schedule": "none", "world_size": 4, "mean_s": 4e-3, "p99_s": 7e-3},
    {"schedule": "exp", "world_size": 1, "mean_s": 20e-3, "p99_s": 30e-3},
    {"schedule": "exp", "world_size": 2, "mean_s": 15e-3, "p99_s": 40e-3},
    {"schedule": "exp", "world_size": 4, "mean_s": 12e-3, "p99_s": 60e-3},
    {"schedule": "exp", "world_size": 8, "mean_s": 11e-3, "p99_s": 90e-3},
    {"schedule": "orphan", "world_size": 2, "mean_s": 1e-3, "p99_s": 2e-3},
]


def test_scaling_speedup_efficiency_tax_and_tail():
    rows = {(r["schedule"], r["world_size"]): r for r in an.scaling(POINTS)}
    assert len(rows) == len(POINTS)
    r = rows[("exp", 2)]
    assert r["speedup_mean"] == pytest.approx(20 / 15)
    assert r["efficiency_mean"] == pytest.approx(20 / 15 / 2)
    assert r["speedup_p99"] == pytest.approx(30 / 40)
    assert r["efficiency_p99"] == pytest.approx(30 / 40 / 2)
    assert r["jitter_tax_mean"] == pytest.approx(15 / 6)
    assert r["jitter_tax_p99"] == pytest.approx(40 / 8)
    assert rows[("exp", 4)]["tail_amplification"] == pytest.approx(2.0)
    assert rows[("exp", 1)]["efficiency_mean"] == pytest.approx(1.0)
    assert rows[("none", 4)]["jitter_tax_p99"] == pytest.approx(1.0)
    assert rows[("exp", 8)]["jitter_tax_mean"] is None  # no "none" point at N = 8
    orphan = rows[("orphan", 2)]  # no N = 1 point
    assert orphan["speedup_mean"] is None and orphan["efficiency_p99"] is None
    assert orphan["tail_amplification"] is None
    assert orphan["jitter_tax_mean"] == pytest.approx(1 / 6)  # "none" exists at N = 2


def test_scaling_rejects_duplicate_points():
    with pytest.raises(ValueError, match="two points for schedule 'none' at world size 1"):
        an.scaling(POINTS + [POINTS[0]])


def test_useful_parallelism():
    got = an.useful_parallelism(an.scaling(POINTS))
    # none: E = 1, 0.83, 0.625; exp: E = 1, 0.67, 0.42, 0.23.
    assert got == {"none": {"n_useful": 4, "n_opt": 4}, "exp": {"n_useful": 2, "n_opt": 1},
                   "orphan": {"n_useful": None, "n_opt": 2}}
    assert an.useful_parallelism(an.scaling(POINTS), threshold=0.7)["none"]["n_useful"] == 2


def test_headlines_say_why_a_figure_is_missing():
    from experiments.report import _headlines

    rows = [r | {"batch": 1} for r in an.scaling(POINTS)]
    useful = {1: an.useful_parallelism(an.scaling(POINTS))}
    lines = _headlines(rows, useful, by_batch=False)
    assert lines["exp"] == ("exp: p99 step latency 90.00 ms at N = 8; efficiency 0.23; "
                            "useful parallelism 2, N_opt 1.")
    assert lines["orphan"] == ("orphan: p99 step latency 2.00 ms at N = 2; jitter tax on "
                               "p99 x0.250; useful parallelism n/a (no N = 1 point to "
                               "measure efficiency against), N_opt 2.")


# --- injected delay: order statistics against the records -----------------------------


def test_predicted_site_max_exponential_and_constant():
    exp = jm.parse_schedule("exponential(50us)")
    assert an.predicted_site_max_us(exp, 0, 1) == pytest.approx(50.0, rel=1e-9)
    assert an.predicted_site_max_us(exp, 0, 2) == pytest.approx(75.0, rel=1e-9)  # 1.5 m
    assert an.predicted_site_max_us(exp, 0, 8) == pytest.approx(
        jm.expected_max(jm.parse("exponential(50us)"), 8) * 1e6, rel=1e-12)
    # One shared draw: the max of one exponential, whatever the world size.
    glob = jm.parse_schedule("exponential(50us); scope=global")
    assert an.predicted_site_max_us(glob, 0, 16) == pytest.approx(50.0, rel=1e-9)
    const = jm.parse_schedule("constant(30us)")
    assert an.predicted_site_max_us(const, 3, 8) == pytest.approx(30.0, rel=1e-12)


def test_measured_site_max_requested_and_achieved():
    achieved = np.array([[[10], [40]], [[20], [30]]]) * US  # [rank, step, site]
    requested = np.array([[[50], [0]], [[20], [30]]]) * US
    tables = make_tables(1 * US, achieved, 1 * US, delay_req_ns=requested)
    got = an.measured_site_max_us(tables)
    assert got["achieved_us"] == pytest.approx((20 + 40) / 2)
    assert got["requested_us"] == pytest.approx((50 + 30) / 2)


def test_headlines_give_the_p99_interval_or_say_there_is_none():
    from experiments.report import _headlines

    rows = [r | {"batch": 1} for r in an.scaling(POINTS)]
    useful = {1: an.useful_parallelism(an.scaling(POINTS))}
    ci = {("exp", 1, 8): [85_000.0, 97_500.0], ("none", 1, 4): [6_000.0, None]}
    lines = _headlines(rows, useful, by_batch=False, p99_ci=ci)
    assert lines["exp"].startswith("exp: p99 step latency 90.00 ms (95% CI 85.00-97.50) at "
                                   "N = 8;")
    assert lines["none"].startswith("none: p99 step latency 7.00 ms (too few steps to bound "
                                    "it: no 95% CI) at N = 4;")
