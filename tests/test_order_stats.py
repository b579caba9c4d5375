"""Order statistics of the max of N delays, against closed forms, high-precision
references (mpmath, 50 digits) and brute force.

Statistical assertions use fixed seeds (deterministic here); each states its significance
level, which is the rate at which it would fail for a correct implementation under a
random seed: 1e-3 for the KS and chi-square tests, about 6e-7 for 5-sigma mean checks.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from scipy import stats

import jitter_models as jm
from jitter_models.order_stats import log_cdf_max

mpmath.mp.dps = 50
NS = [1, 2, 10, 1000, 10**6, 10**7]
ALPHA = 1e-3  # significance of each KS / chi-square assertion


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --- expected_max against every closed form --------------------------------------------


@pytest.mark.parametrize("n", NS)
def test_expected_max_constant_is_the_constant(n):
    assert jm.expected_max(jm.parse("constant(37us)"), n) == 37e-6


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("low,high", [(0.0, 40e-6), (3e-6, 5e-6), (1.0, 2.0)])
def test_expected_max_uniform(n, low, high):
    exact = mpmath.mpf(low) + (mpmath.mpf(high) - low) * n / (n + 1)
    assert rel_err(jm.expected_max(jm.Uniform(low_s=low, high_s=high), n), float(exact)) <= 1e-6


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("mean", [20e-6, 1.0, 3e3])
def test_expected_max_exponential_is_mean_times_harmonic_number(n, mean):
    exact = mean * mpmath.harmonic(n)
    assert rel_err(jm.expected_max(jm.Exponential(mean_s=mean), n), float(exact)) <= 1e-6


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("alpha", [1.05, 1.5, 2.5, 4.0])
def test_expected_max_pareto_via_gamma_functions(n, alpha):
    # E[max] = scale * n * Gamma(n) Gamma(1 - 1/alpha) / Gamma(n + 1 - 1/alpha)
    a = mpmath.mpf(alpha)
    exact = 10e-6 * n * mpmath.gamma(n) * mpmath.gamma(1 - 1 / a) / mpmath.gamma(n + 1 - 1 / a)
    got = jm.expected_max(jm.Pareto(alpha=alpha, scale_s=10e-6), n)
    assert rel_err(got, float(exact)) <= 1e-6


@pytest.mark.parametrize("n", NS)
def test_expected_max_two_atom_mixture(n):
    # max = 2ms unless all n draws are 5us: E = 5us + (2ms - 5us) * (1 - 0.99^n)
    d = jm.parse("mixture(0.99*constant(5us), 0.01*constant(2ms))")
    exact = 5e-6 + (2e-3 - 5e-6) * (1 - mpmath.mpf("0.99") ** n)
    assert rel_err(jm.expected_max(d, n), float(exact)) <= 1e-9


def mp_expected_max(cdf, pieces, n):
    """Reference: 50-digit quadrature of 1 - F(x)^n, split at the given points."""
    return mpmath.quad(lambda x: 1 - cdf(x) ** n, pieces)


@pytest.mark.parametrize("n", NS)
def test_expected_max_continuous_plus_atom_mixture_against_mpmath(n):
    # The atom at 2 ms is where the integrand jumps: for large n, the 1e-12 quantile of
    # the max sits exactly on it.
    d = jm.parse("mixture(0.99*lognormal(median=10us, sigma=0.5), 0.01*constant(2ms))")
    w, atom = mpmath.mpf("0.99"), mpmath.mpf("2e-3")

    def cdf(x):
        body = w * mpmath.ncdf(mpmath.log(x / mpmath.mpf("1e-5")) / mpmath.mpf("0.5"))
        return body + (1 - w if x >= atom else 0) if x > 0 else mpmath.mpf(0)

    exact = (mp_expected_max(cdf, [0, 1e-6, 1e-5, 1e-4, atom], n)
             + mp_expected_max(cdf, [atom, 1e-2, 1, mpmath.inf], n))
    assert rel_err(jm.expected_max(d, n), float(exact)) <= 1e-6


@pytest.mark.parametrize("n", [1, 10, 1000, 10**6])
def test_expected_max_groups_with_an_atomic_straggler_against_mpmath(n):
    # n uniform(0, 40us) ranks plus one rank that always waits 39us.
    groups = [(jm.parse("uniform(low=0us, high=40us)"), n), (jm.parse("constant(39us)"), 1)]
    hi, c = mpmath.mpf("4e-5"), mpmath.mpf("3.9e-5")
    # E = c + int_c^hi (1 - (x/hi)^n) dx
    exact = c + (hi - c) - (hi ** (n + 1) - c ** (n + 1)) / ((n + 1) * hi**n)
    assert rel_err(jm.expected_max(groups), float(exact)) <= 1e-6


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_expected_max_empirical_matches_order_statistic_sum(tmp_path, n):
    # For an empirical law on sorted x_(1..m): P(max <= x_(k)) = (k/m)^n exactly.
    values = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    f = tmp_path / "lat.txt"
    f.write_text("latency_us\n" + "\n".join(map(str, values)) + "\n")
    xs = sorted(v * 1e-6 for v in values)
    m = len(xs)
    exact = sum(xs[k] * ((mpmath.mpf(k + 1) / m) ** n - (mpmath.mpf(k) / m) ** n)
                for k in range(m))
    got = jm.expected_max(jm.parse(f'empirical("{f}")'), n)
    assert rel_err(got, float(exact)) <= 1e-12


@pytest.mark.parametrize("n", [1, 16, 4096])
def test_expected_max_shifted_and_clip_reduce_to_closed_forms(n):
    shifted = jm.parse("shifted(offset=7us, dist=exponential(20us))")
    assert rel_err(jm.expected_max(shifted, n), 7e-6 + 20e-6 * float(mpmath.harmonic(n))) <= 1e-6
    # clip(uniform(0, 1s), 0.5s): E[max] = int_0^0.5 (1 - x^n) dx = 0.5 - 0.5^(n+1)/(n+1)
    clip = jm.parse("clip(dist=uniform(low=0s, high=1s), max=0.5s)")
    exact = mpmath.mpf("0.5") - mpmath.mpf("0.5") ** (n + 1) / (n + 1)
    assert rel_err(jm.expected_max(clip, n), float(exact)) <= 1e-6


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_expected_max_is_inf_when_the_mean_is(alpha):
    d = jm.Pareto(alpha=alpha, scale_s=1e-6)
    assert jm.expected_max(d, 10) == math.inf
    assert jm.expected_max([(jm.parse("exponential(5us)"), 100), (d, 1)]) == math.inf


def test_expected_max_grows_with_n_and_matches_monte_carlo_for_lognormal():
    d = jm.parse("lognormal(median=50us, sigma=0.8)")
    values = [jm.expected_max(d, n) for n in (1, 2, 8, 64, 1024)]
    assert values == sorted(values) and values[0] == pytest.approx(d.mean(), rel=1e-9)
    draws = d.sample(np.random.default_rng(1), (50_000, 64)).max(axis=1)
    se = draws.std() / math.sqrt(draws.size)
    assert abs(draws.mean() - values[3]) <= 5 * se  # ~6e-7 false-failure rate


# --- heterogeneous groups ------------------------------------------------------------


def test_groups_use_the_product_of_cdfs_against_brute_force():
    fast, slow = jm.parse("exponential(20us)"), jm.parse("exponential(200us)")
    groups = [(fast, 63), (slow, 1)]
    rng = np.random.default_rng(2)
    brute = np.maximum(fast.sample(rng, (40_000, 63)).max(axis=1), slow.sample(rng, 40_000))
    se = brute.std() / math.sqrt(brute.size)
    assert abs(brute.mean() - jm.expected_max(groups)) <= 5 * se  # ~6e-7
    t = 150e-6
    p = jm.prob_max_exceeds(groups, t)
    assert p == pytest.approx(1 - fast.cdf(t) ** 63 * slow.cdf(t), rel=1e-12)
    direct = jm.sample_max(groups, np.random.default_rng(3), 40_000)
    assert stats.ks_2samp(direct, brute).pvalue > ALPHA


def test_groups_of_one_dist_equal_the_iid_form():
    d = jm.parse("gamma(shape=2.0, mean=30us)")
    assert jm.expected_max([(d, 40), (d, 24)]) == pytest.approx(jm.expected_max(d, 64), rel=1e-9)
    assert jm.max_quantile([(d, 40), (d, 24)], 0.99) == pytest.approx(
        jm.max_quantile(d, 64, 0.99), rel=1e-12)


# --- max_quantile -----------------------------------------------------------------


@pytest.mark.parametrize("spec", ["lognormal(median=50us, sigma=0.8)", "exponential(20us)",
                                  "weibull(shape=0.7, scale=20us)"])
@pytest.mark.parametrize("n", [1, 8, 1000])
def test_max_quantile_is_ppf_of_q_to_the_one_over_n(spec, n):
    d = jm.parse(spec)
    for q in (0.01, 0.5, 0.9, 0.99):
        assert jm.max_quantile(d, n, q) == pytest.approx(d.ppf(q ** (1 / n)), rel=1e-9)


def test_max_quantile_keeps_precision_where_q_to_the_one_over_n_rounds_to_one():
    d = jm.parse("exponential(1s)")
    n = 10**12
    # q^(1/n) = 1 - 1e-14-ish: sf level = -expm1(log(q)/n); exact: -log(1 - q^(1/n))
    exact = -mpmath.log(1 - mpmath.mpf("0.99") ** (mpmath.mpf(1) / n))
    assert rel_err(jm.max_quantile(d, n, 0.99), float(exact)) <= 1e-12


def test_max_quantile_of_groups_is_the_generalized_inverse_exactly():
    groups = [(jm.parse("mixture(0.9*constant(5us), 0.1*constant(80us))"), 30),
              (jm.parse("lognormal(median=20us, sigma=0.5)"), 2)]
    for q in (0.01, 0.3, 0.5, 0.9, 0.99, 0.999999):
        x = jm.max_quantile(groups, q)
        assert log_cdf_max(groups, x) >= math.log(q)
        assert log_cdf_max(groups, np.nextafter(x, 0)) < math.log(q)
    assert jm.max_quantile(groups, 0.0) == 5e-6  # the max is never below the largest minimum
    assert jm.max_quantile(groups, 1.0) == math.inf  # unbounded support


def test_max_quantile_rejects_bad_q():
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\], got 1.5"):
        jm.max_quantile(jm.parse("exponential(1us)"), 4, 1.5)


# --- prob_max_exceeds -------------------------------------------------------------


def test_prob_max_exceeds_matches_monte_carlo():
    d = jm.parse("lognormal(median=50us, sigma=0.8)")
    n, t, draws = 32, 400e-6, 100_000
    hits = int((d.sample(np.random.default_rng(4), (draws, n)).max(axis=1) > t).sum())
    p = jm.prob_max_exceeds(d, n, t)
    assert stats.binomtest(hits, draws, p).pvalue > ALPHA


def test_prob_max_exceeds_in_a_tail_where_cdf_rounds_to_one():
    d = jm.parse("exponential(1s)")
    t, n = 50.0, 1000
    assert d.cdf(t) == 1.0 and 1 - d.cdf(t) ** n == 0.0  # the naive formula cancels
    exact = 1 - (1 - mpmath.exp(-50)) ** n
    assert rel_err(jm.prob_max_exceeds(d, n, t), float(exact)) <= 1e-12
    heavy = jm.parse("lognormal(median=50us, sigma=0.5)")
    t = 50e-6 * math.exp(0.5 * 12)  # 12 sigma above the median
    exact = 1 - (1 - mpmath.ncdf(-12)) ** n
    assert rel_err(jm.prob_max_exceeds(heavy, n, t), float(exact)) <= 1e-9


# --- sample_max ---------------------------------------------------------------------


def brute_max(d, n, size, seed):
    return d.sample(np.random.default_rng(seed), (size, n)).max(axis=1)


@pytest.mark.parametrize("spec", [
    "lognormal(median=50us, sigma=0.8)", "pareto(alpha=1.5, scale=5us)",
    "normal(mean=30us, std=10us)",
    "mixture(0.8*exponential(20us), 0.2*lognormal(median=300us, sigma=0.3))"])
@pytest.mark.parametrize("n", [2, 16, 256])
def test_sample_max_matches_brute_force_continuous(spec, n):
    d = jm.parse(spec)
    direct = jm.sample_max(d, n, np.random.default_rng(5), 4000)
    assert stats.ks_2samp(direct, brute_max(d, n, 4000, 6)).pvalue > ALPHA


def atom_frequencies(x, atoms):
    return np.array([(x == a).sum() for a in atoms])


@pytest.mark.parametrize("spec,atoms", [
    ("mixture(0.7*constant(5us), 0.2*constant(50us), 0.1*constant(2ms))", [5e-6, 50e-6, 2e-3]),
    ("clip(dist=exponential(20us), max=60us)", [60e-6]),
])
@pytest.mark.parametrize("n", [2, 16, 256])
def test_sample_max_atom_frequencies_are_exact(spec, atoms, n):
    d = jm.parse(spec)
    size = 20_000
    direct = jm.sample_max(d, n, np.random.default_rng(7), size)
    brute = brute_max(d, n, size, 8)
    # Exact P(max == a) = F(a)^n - F(a-)^n; the rest of the mass is continuous.
    exact = np.array([d.cdf(a) ** n - d.cdf(np.nextafter(a, 0)) ** n for a in atoms])
    for sample in (direct, brute):
        counts = atom_frequencies(sample, atoms)
        observed = np.append(counts, size - counts.sum())
        expected = np.append(exact, 1 - exact.sum()) * size
        keep = expected > 0
        assert observed[~keep].sum() == 0
        assert stats.chisquare(observed[keep], expected[keep]).pvalue > ALPHA


def test_sample_max_of_atoms_and_continuous_mixture_matches_exact_law():
    d = jm.parse("mixture(0.9*exponential(20us), 0.1*constant(1ms))")
    n, size = 16, 20_000
    x = jm.sample_max(d, n, np.random.default_rng(9), size)
    # Bins (e_{i-1}, e_i] with an edge just below and at the atom; exact G = F^n.
    edges = np.array([0.0, 20e-6, 40e-6, 80e-6, np.nextafter(1e-3, 0), 1e-3, np.inf])
    probs = np.diff(np.asarray(d.cdf(edges), dtype=float) ** n)
    counts = np.bincount(np.searchsorted(edges, x, side="left"), minlength=edges.size)[1:]
    keep = probs > 0
    assert counts[~keep].sum() == 0
    assert stats.chisquare(counts[keep], probs[keep] * size).pvalue > ALPHA


def test_sample_max_cost_does_not_depend_on_n():
    # The direct sampler never draws n values: a million ranks is a plain vector op.
    d = jm.parse("mixture(0.99*lognormal(median=10us, sigma=0.5), 0.01*constant(2ms))")
    x = jm.sample_max(d, 10**9, np.random.default_rng(10), 1000)
    assert np.all(x == 2e-3)  # P(no spike among 1e9 ranks) = 0.99^1e9 = 0


# --- argument validation --------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -3, True, 2.5])
def test_n_must_be_a_positive_integer(n):
    with pytest.raises(ValueError, match=r"n must be a positive integer, got"):
        jm.expected_max(jm.parse("exponential(1us)"), n)


def test_groups_and_n_are_exclusive():
    d = jm.parse("exponential(1us)")
    with pytest.raises(ValueError, match="not both"):
        jm.expected_max([(d, 3)], 4)
    with pytest.raises(ValueError, match="n is required"):
        jm.expected_max(d)
    with pytest.raises(ValueError, match="group count must be a positive integer, got 0"):
        jm.expected_max([(d, 0)])


# --- regressions found in review ---------------------------------------------------------


@pytest.mark.parametrize("n", [1, 8, 1000])
def test_expected_max_resolves_a_narrow_component_far_from_the_bulk(n):
    # The normal's rise (20us wide at 2ms) once fell inside one wide integration piece.
    d = jm.parse("mixture(0.99*constant(5us), 0.01*normal(mean=2ms, std=20us))")
    w, mu, sd = mpmath.mpf("0.99"), mpmath.mpf("2e-3"), mpmath.mpf("2e-5")

    def cdf(x):
        return (w if x >= mpmath.mpf("5e-6") else 0) + (1 - w) * (
            mpmath.ncdf((x - mu) / sd) - mpmath.ncdf(-mu / sd)) / mpmath.ncdf(mu / sd)

    pts = [0, mpmath.mpf("5e-6"), mu - 10 * sd, mu - 2 * sd, mu, mu + 2 * sd, mu + 10 * sd,
           mpmath.mpf("1e-2")]
    exact = mp_expected_max(cdf, pts, n) + mp_expected_max(cdf, [pts[-1], 1], n)
    assert rel_err(jm.expected_max(d, n), float(exact)) <= 1e-6


def test_valid_heavy_tailed_input_raises_no_floating_point_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in ["clip(dist=pareto(alpha=0.8, scale=7us), max=10ms)",
                     "mixture(0.99*weibull(shape=2, scale=10us), "
                     "0.01*pareto(alpha=1.5, scale=1ms))"]:
            d = jm.parse(spec)
            assert math.isfinite(jm.expected_max(d, 100))
            assert math.isfinite(jm.max_quantile(d, 100, 0.99))


def test_mixture_sample_max_with_weights_that_round_past_one():
    # Successive conditional probabilities once went negative through rounding.
    atoms = [jm.Constant(value_s=v * 1e-6) for v in (1, 2, 3, 4, 5)]
    weights = (0.0509813184195821, 0.8884553912521895, 0.06056329032822846, 1e-18, 1e-18)
    d = jm.Mixture(components=tuple(zip(weights, atoms)))
    x = jm.sample_max(d, 50, np.random.default_rng(11), 20_000)
    # P(max == 3us) = 1 - P(no 3us among 50) up to the 2e-18 of the two tiny atoms.
    p3 = 1 - (1 - weights[2]) ** 50
    assert stats.binomtest(int((x == 3e-6).sum()), x.size, p3).pvalue > ALPHA
    assert set(np.unique(x)) <= {2e-6, 3e-6, 1e-6}


def test_prob_max_exceeds_is_plus_zero_not_minus_zero():
    p = jm.prob_max_exceeds(jm.parse("constant(5us)"), 3, 1.0)
    assert p == 0.0 and math.copysign(1.0, p) == 1.0
