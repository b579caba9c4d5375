"""The fitters (jitter_models/fitters.py): each family's log density and CDF against
scipy.stats' own, its maximum-likelihood estimate against the truth on seeded samples and
against a perturbed estimate, and its text read back by ``jitter_models.parse``.

Seeds are fixed. Each recovery bound is at least 5 standard errors of its estimator at
n = 40,000 (the asymptotic SE from the Fisher information, or from a pilot of 50 seeds
for the shift), so a correct fitter fails it with probability under 1e-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from jitter_models.distributions import parse
from jitter_models.fitters import FITTERS, shift_bound

US = 1e-6
N = 40_000
TRUTH = {
    "exponential": {"mean": 20 * US},
    "lognormal": {"median": 50 * US, "sigma": 0.4},
    "gamma": {"shape": 2.5, "mean": 30 * US},
    "weibull": {"shape": 0.8, "scale": 10 * US},
    "pareto": {"alpha": 2.5, "scale": 5 * US},
    "shifted(exponential)": {"shift": 8 * US, "mean": 20 * US},
    "shifted(gamma)": {"shift": 5 * US, "shape": 2.0, "mean": 10 * US},
    "shifted(lognormal)": {"shift": 5 * US, "median": 10 * US, "sigma": 0.5},
    "shifted(weibull)": {"shift": 5 * US, "shape": 1.5, "scale": 10 * US},
    "mixture": {"weight": 0.02, "median": 50 * US, "sigma": 0.1, "spike_median": 1000 * US,
                "spike_sigma": 0.2},
}
# relative bounds per parameter (>= 5 SE at n = 40,000; the weight's SE is
# sqrt(w (1 - w) / n) = 7e-4, 3.5% of 0.02)
TOLERANCE = {"mean": 0.03, "median": 0.03, "sigma": 0.04, "shape": 0.05, "scale": 0.05,
             "alpha": 0.06, "shift": 0.05, "weight": 0.2, "spike_median": 0.03,
             "spike_sigma": 0.1}

SCIPY = {
    "exponential": lambda p: stats.expon(scale=p["mean"]),
    "lognormal": lambda p: stats.lognorm(s=p["sigma"], scale=p["median"]),
    "gamma": lambda p: stats.gamma(a=p["shape"], scale=p["mean"] / p["shape"]),
    "weibull": lambda p: stats.weibull_min(c=p["shape"], scale=p["scale"]),
    "pareto": lambda p: stats.pareto(b=p["alpha"], scale=p["scale"]),
}


def test_every_candidate_the_issue_names_is_registered():
    assert {"lognormal", "gamma", "shifted(exponential)", "mixture"} <= set(FITTERS)
    assert set(TRUTH) == set(FITTERS)


@pytest.mark.parametrize("family", list(SCIPY))
def test_log_density_and_cdf_are_scipys(family):
    f, p = FITTERS[family], TRUTH[family]
    rv = SCIPY[family](p)
    x = rv.ppf(np.linspace(0.001, 0.999, 101))
    assert np.allclose(f.logpdf(x, p), rv.logpdf(x), rtol=1e-9, atol=1e-9)
    assert np.allclose(f.cdf(x, p), rv.cdf(x), rtol=1e-9, atol=1e-12)
    shifted = FITTERS.get(f"shifted({family})")
    if shifted is not None:
        q = {"shift": 3 * US, **p}
        assert np.allclose(shifted.logpdf(x + 3 * US, q), rv.logpdf(x), rtol=1e-6)


def test_the_mixtures_density_is_the_weighted_sum_of_its_lognormals():
    p = TRUTH["mixture"]
    x = np.geomspace(10 * US, 3000 * US, 200)
    base = stats.lognorm(s=p["sigma"], scale=p["median"])
    spike = stats.lognorm(s=p["spike_sigma"], scale=p["spike_median"])
    want = (1 - p["weight"]) * base.pdf(x) + p["weight"] * spike.pdf(x)
    got = np.exp(FITTERS["mixture"].logpdf(x, p))
    assert np.allclose(got, want, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("family", list(TRUTH))
def test_the_estimate_recovers_the_truth_and_is_a_maximum(family):
    f, p = FITTERS[family], TRUTH[family]
    x = f.sample(np.random.default_rng(list(TRUTH).index(family)), p, N)
    est = f.mle(x)
    assert set(est) == set(f.names)
    for name, want in p.items():
        assert abs(est[name] / want - 1) <= TOLERANCE[name], (name, est[name], want)
    if "shift" in est:
        assert 0 <= est["shift"] < x.min()
    ll = f.logpdf(x, est).sum()
    for name in est:  # any parameter moved by 1% (where the support allows) lowers it
        for factor in (0.99, 1.01):
            q = dict(est, **{name: est[name] * factor})
            if (name == "shift" and q["shift"] >= x.min()) or (
                    name == "scale" and family == "pareto" and factor > 1):
                continue
            if name == "weight" and not 0 < q["weight"] < 1:
                continue
            assert f.logpdf(x, q).sum() < ll, (name, factor)


@pytest.mark.parametrize("family", list(TRUTH))
def test_the_text_reads_back_as_the_same_law_to_six_digits(family):
    f, p = FITTERS[family], TRUTH[family]
    d = parse(f.text(p))
    want = {"shifted(exponential)": "shifted", "shifted(gamma)": "shifted",
            "shifted(lognormal)": "shifted", "shifted(weibull)": "shifted"}.get(family, family)
    assert d.family == want
    x = f.sample(np.random.default_rng(7), p, 2000)
    assert np.allclose(np.asarray(d.cdf(x)), f.cdf(x, p), rtol=1e-6, atol=1e-9)


def test_the_shift_stays_below_the_smallest_sample():
    x = np.array([5.0, 5.0, 6.0, 7.5, 9.0]) * US
    assert shift_bound(x) == pytest.approx(4 * US)
    assert shift_bound(np.full(10, 3 * US)) == 0.0
    # a shifted exponential's floor lands near x_(1) - mean / n (its likelihood rises to x_(1))
    x = FITTERS["shifted(exponential)"].sample(np.random.default_rng(3),
                                               {"shift": 8 * US, "mean": 20 * US}, N)
    est = FITTERS["shifted(exponential)"].mle(x)
    assert x.min() - 5 * 20 * US / N < est["shift"] < x.min()


def test_the_mixture_labels_the_slower_component_the_spike_whatever_em_converged_to():
    f = FITTERS["mixture"]
    x = f.sample(np.random.default_rng(11), TRUTH["mixture"], N)
    start = {"weight": 0.98, "median": 1000 * US, "sigma": 0.2, "spike_median": 50 * US,
             "spike_sigma": 0.1}  # the components swapped
    est = f.mle(x, start)
    assert est["spike_median"] > est["median"] and est["weight"] < 0.5
    assert math.isclose(est["weight"], 0.02, rel_tol=0.2)
