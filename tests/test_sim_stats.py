"""The simulator's statistics: standard errors that cover, and the scaling figures."""

from __future__ import annotations

import numpy as np
import pytest

from jitter_models.sim_stats import nearest_rank, scaling, summarize, useful_work


def test_mean_and_p99_standard_errors_cover_the_truth_for_iid_steps():
    """400 replicates of 2000 iid Exp(1) steps: the true mean 1 and p99 ln(100) lie
    within 1.96 SE in about 95% of replicates; accept 91% .. 99% (binomial SD of the
    coverage about 1.1%: false-failure rate under 1e-3)."""
    rng = np.random.default_rng(7)
    hit_mean = hit_p99 = 0
    for _ in range(400):
        s = summarize(rng.exponential(1.0, 2000) * 1e-6)  # µs out: values in µs of 1e-6 s
        hit_mean += abs(s["mean_us"] - 1.0) < 1.96 * s["mean_se_us"]
        hit_p99 += abs(s["p99_us"] - np.log(100)) < 1.96 * s["p99_se_us"]
    assert 0.91 <= hit_mean / 400 <= 0.99
    assert 0.91 <= hit_p99 / 400 <= 0.995


def test_the_mean_se_grows_for_correlated_steps():
    """An AR(1) series with rho = 0.9 has a mean SE about sqrt((1+rho)/(1-rho)) = 4.4
    times the iid one: batch means must see at least 2.5 times."""
    rng = np.random.default_rng(1)
    x = np.empty(20_000)
    x[0] = 0
    e = rng.standard_normal(x.size)
    for i in range(1, x.size):
        x[i] = 0.9 * x[i - 1] + e[i]
    s = summarize(x * 1e-6)
    iid = x.std(ddof=1) / np.sqrt(x.size)
    assert s["mean_se_us"] > 2.5 * iid


def test_nearest_rank():
    assert nearest_rank(np.arange(1.0, 101.0), 0.99) == 99.0
    assert nearest_rank(np.arange(1.0, 101.0), 0.5) == 50.0


def test_scaling_strong_and_weak():
    rows = [{"world_size": 1, "mean_us": 100.0, "p99_us": 200.0},
            {"world_size": 4, "mean_us": 50.0, "p99_us": 100.0}]
    strong = [dict(r) for r in rows]
    u = scaling(strong, useful_work(lambda n: 1.0 / n))
    assert strong[1]["speedup"] == pytest.approx(2.0)
    assert strong[1]["efficiency"] == pytest.approx(0.5)
    assert u["useful_parallelism"] == 4 and u["n_opt"] == 4  # lowest p99
    weak = [dict(r) for r in rows]
    u = scaling(weak, useful_work(lambda n: 1.0))
    assert weak[1]["speedup"] == pytest.approx(8.0)  # 4 ranks, each twice as fast
    assert weak[1]["efficiency"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="N = 1"):
        scaling(rows[1:], lambda n: 1.0)
