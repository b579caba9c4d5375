"""Delay distributions (jitter_models.distributions and jitter_models.composite).

Statistical tests and their false-failure rates
-----------------------------------------------
Every statistical assertion draws from ``numpy.random.default_rng`` with a fixed seed, so
each test is deterministic: it passes or fails the same way on every run. The rate quoted
for each kind of assertion is the probability that it would fail for a *correct*
implementation if the seed were chosen at random:

* one-sample Kolmogorov-Smirnov tests (``scipy.stats.kstest`` against the family's own
  cdf) and chi-square tests of atom frequencies (``scipy.stats.chisquare``) assert
  ``pvalue >= 1e-3``: a false-failure rate of 1e-3 per assertion;
* Monte Carlo moments assert ``|estimate - exact| <= 5 standard errors``: the two-sided
  normal tail at 5 sigma, about 5.7e-7 per assertion (the normal approximation of the
  sample mean and variance is very good at n = 400,000 with a finite fourth moment).

Floating-point contracts
------------------------
``ppf``/``isf`` are generalized inverses: ``ppf(q)`` is the smallest x with
``cdf(x) >= q`` and ``isf(q)`` the smallest x with ``sf(x) <= q``. Families with atoms
(composites that find quantiles by exact bisection) must satisfy this exactly in floating
point. Purely continuous families use scipy's ppf/isf, which invert scipy's cdf/sf only up
to rounding (a few ulps), so for them the quantile is allowed a relative slack of 1e-10.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from jitter_models import (
    Clip,
    Constant,
    Empirical,
    Exponential,
    Gamma,
    Lognormal,
    Mixture,
    Normal,
    Pareto,
    Shifted,
    Uniform,
    Weibull,
    parse,
    to_table,
)

ALPHA = 1e-3  # significance of every KS and chi-square assertion (see module docstring)
N_DRAWS = 20_000
N_MOMENTS = 400_000
REL_SLACK = 1e-10  # relative slack of scipy-backed quantiles (see module docstring)

# The empirical sample file used throughout: repeated values make atoms of mass .3/.2/.4/.1.
EMPIRICAL_US = [1, 1, 1, 2, 2, 5, 5, 5, 5, 9]


@pytest.fixture(scope="session")
def sample_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("empirical") / "samples.txt"
    path.write_text("latency_us\n" + "\n".join(map(str, EMPIRICAL_US)) + "\n")
    return str(path)


@dataclass(frozen=True)
class Case:
    """A named spec; ``{file}`` stands for the empirical sample file."""

    id: str
    spec: str
    exact: bool  # all mass on atoms: the inverse properties must hold exactly everywhere

    def build(self, sample_file: str):
        return parse(self.spec.format(file=sample_file))


CONTINUOUS = [
    Case("uniform", "uniform(low=1us, high=9us)", False),
    Case("normal", "normal(mean=50us, std=20us)", False),
    Case("lognormal", "lognormal(median=50us, sigma=0.8)", False),
    Case("exponential", "exponential(20us)", False),
    Case("gamma", "gamma(shape=2.0, mean=30us)", False),
    Case("weibull", "weibull(shape=0.7, scale=20us)", False),
    Case("pareto", "pareto(alpha=2.5, scale=10us)", False),
    Case("shifted_exponential", "shifted(offset=5us, dist=exponential(20us))", False),
    Case("mixture_continuous",
         "mixture(0.7*lognormal(median=50us, sigma=0.5), 0.3*gamma(shape=2.0, mean=200us))",
         False),
]
WITH_ATOMS = [
    Case("constant", "constant(5us)", True),
    Case("mixture_atoms",
         "mixture(0.7*constant(5us), 0.2*constant(50us), 0.1*constant(2ms))", True),
    # Mixed laws: exact at their atoms (test_atoms_invert_exactly), and elsewhere as exact
    # as the scipy-backed continuous part (whose cdf is not even monotone to the last bit).
    Case("mixture_exponential_atom",
         "mixture(0.9*exponential(20us), 0.1*constant(1ms))", False),
    Case("clip", "clip(dist=pareto(alpha=1.5, scale=7us), max=50us)", False),
    Case("shifted_constant", "shifted(offset=5us, dist=constant(20us))", True),
    Case("shifted_mixture",
         "shifted(offset=3us, dist=mixture(0.9*exponential(20us), 0.1*constant(1ms)))", False),
    Case("empirical", 'empirical(file="{file}")', True),
]
ALL = CONTINUOUS + WITH_ATOMS


def by_id(pool, *ids):
    return [c for c in pool if c.id in ids]


def cases(selected):
    """Parametrize a test over ``selected`` Case objects, named by their ids."""
    return pytest.mark.parametrize("case", selected, ids=lambda c: c.id)


def below(x):
    return np.nextafter(np.asarray(x, dtype=np.float64), -np.inf)


def above(x):
    return np.nextafter(np.asarray(x, dtype=np.float64), np.inf)


def draws(d, seed: int, n: int = N_DRAWS) -> np.ndarray:
    return np.asarray(d.sample(np.random.default_rng(seed), n), dtype=np.float64)


# --- sampling: continuous families (KS) -------------------------------------------------


@cases(CONTINUOUS + [Case("normal_low_acceptance", "normal(mean=5us, std=20us)", False)])
def test_continuous_samples_pass_ks(case, sample_file):
    d = case.build(sample_file)
    x = draws(d, seed=20240601)
    assert x.shape == (N_DRAWS,)
    assert stats.kstest(x, d.cdf).pvalue >= ALPHA


@pytest.mark.parametrize("mean_us, std_us", [(50, 20), (5, 20), (0, 3)])
def test_truncated_normal_cdf_matches_independent_formula(mean_us, std_us):
    m, s = mean_us * 1e-6, std_us * 1e-6
    d = Normal(mean_s=m, std_s=s)
    x = np.concatenate([np.linspace(0, m + 10 * s, 401), [1e-12, 1e-9]])
    phi0 = stats.norm.cdf(-m / s)
    expected = (stats.norm.cdf((x - m) / s) - phi0) / (1 - phi0)
    np.testing.assert_allclose(d.cdf(x), expected, rtol=1e-9, atol=1e-15)
    assert d.cdf(0.0) == 0.0  # conditioning on X >= 0 leaves no atom at 0
    assert d.sf(0.0) == 1.0
    assert d.cdf(-1e-9) == 0.0


@cases(by_id(CONTINUOUS, "exponential", "lognormal", "normal", "shifted_exponential",
             "mixture_continuous"))
def test_sample_max_follows_cdf_to_the_n(case, sample_file):
    d, n = case.build(sample_file), 7
    x = d.sample_max(np.random.default_rng(7), np.full(N_DRAWS, n))
    assert stats.kstest(x, lambda t: np.asarray(d.cdf(t)) ** n).pvalue >= ALPHA


@cases(ALL)
def test_samples_lie_in_support(case, sample_file):
    d = case.build(sample_file)
    lo, hi = d.support()
    x = draws(d, seed=5, n=2000)
    assert np.all((x >= lo) & (x <= hi))


# --- sampling: families with atoms (chi-square) ----------------------------------------


def atom_masses(d, atoms) -> np.ndarray:
    """P(X == a) for each atom a, from cdf differences."""
    atoms = np.asarray(atoms, dtype=np.float64)
    return np.asarray(d.cdf(atoms)) - np.asarray(d.cdf(below(atoms)))


def assert_atom_frequencies(d, x: np.ndarray, atoms) -> None:
    """Chi-square of the counts on each atom (plus the rest, if there is mass off the
    atoms) against the masses given by the cdf."""
    p = atom_masses(d, atoms)
    counts = np.array([np.count_nonzero(x == a) for a in atoms])
    rest_p, rest_n = 1.0 - p.sum(), x.size - counts.sum()
    if rest_p < 1e-12:  # all the mass is on the atoms: nothing may fall elsewhere
        assert rest_n == 0
        f_obs, f_exp = counts, p / p.sum()
    else:
        f_obs, f_exp = np.append(counts, rest_n), np.append(p, rest_p)
    if f_obs.size == 1:  # a single atom: every draw must be on it
        assert f_obs[0] == x.size
    else:
        assert stats.chisquare(f_obs, f_exp * x.size).pvalue >= ALPHA


def assert_continuous_part_ks(d, x: np.ndarray, atoms) -> None:
    """KS of the draws off the atoms against the cdf with the atoms' mass removed."""
    atoms = np.asarray(atoms, dtype=np.float64)
    p = atom_masses(d, atoms)
    rest = x[~np.isin(x, atoms)]

    def continuous_cdf(t):
        t = np.asarray(t, dtype=np.float64)
        on_atoms = (p * (t[..., None] >= atoms)).sum(axis=-1)
        return (np.asarray(d.cdf(t)) - on_atoms) / (1.0 - p.sum())

    assert stats.kstest(rest, continuous_cdf).pvalue >= ALPHA


def test_constant_samples_are_the_value():
    d = parse("constant(5us)")
    assert np.all(draws(d, seed=1) == 5e-6)
    assert atom_masses(d, [5e-6])[0] == 1.0


@pytest.mark.parametrize("spec, atoms", [
    ("mixture(0.7*constant(5us), 0.2*constant(50us), 0.1*constant(2ms))",
     [5e-6, 50e-6, 2e-3]),
    ("shifted(offset=5us, dist=constant(20us))", [20e-6 + 5e-6]),
    ("shifted(offset=3us, dist=mixture(0.7*constant(5us), 0.3*constant(2ms)))",
     [5e-6 + 3e-6, 2e-3 + 3e-6]),
], ids=["mixture", "shifted_constant", "shifted_mixture"])
def test_atom_frequencies(spec, atoms):
    d = parse(spec)
    assert_atom_frequencies(d, draws(d, seed=11), atoms)


def test_atom_masses_of_mixture_are_its_weights():
    d = parse("mixture(0.7*constant(5us), 0.2*constant(50us), 0.1*constant(2ms))")
    np.testing.assert_allclose(atom_masses(d, [5e-6, 50e-6, 2e-3]), [0.7, 0.2, 0.1],
                               rtol=1e-12)


def test_empirical_atom_frequencies(sample_file):
    d = Empirical(file=sample_file)
    atoms = sorted({float(f"{v}e-6") for v in EMPIRICAL_US})
    np.testing.assert_allclose(atom_masses(d, atoms), [0.3, 0.2, 0.4, 0.1], rtol=1e-12)
    assert_atom_frequencies(d, draws(d, seed=12), atoms)


def test_clip_has_an_atom_of_the_clipped_tail_at_max():
    base = Pareto(alpha=1.5, scale_s=7e-6)
    d = Clip(dist=base, max_s=50e-6)
    x = draws(d, seed=13)
    assert x.max() == 50e-6
    assert atom_masses(d, [50e-6])[0] == pytest.approx(base.sf(50e-6), rel=1e-9)
    assert_atom_frequencies(d, x, [50e-6])
    assert_continuous_part_ks(d, x, [50e-6])


def test_mixture_of_continuous_and_atom():
    d = parse("mixture(0.9*exponential(20us), 0.1*constant(1ms))")
    x = draws(d, seed=14)
    assert atom_masses(d, [1e-3])[0] == pytest.approx(0.1, rel=1e-9)
    assert_atom_frequencies(d, x, [1e-3])
    assert_continuous_part_ks(d, x, [1e-3])


# --- generalized inverses ---------------------------------------------------------------

# q grid: 0, 1, tiny, near 1. Subnormal and near-underflow levels only for the exact
# families: a subnormal q has no relative precision, and a continuous quantile below the
# smallest subnormal rounds to 0, so scipy cannot meet even the relative slack there.
Q_COMMON = np.array([0.0, 1e-200, 1e-15, 1e-12, 1e-6, 1e-3, 0.1, 0.25, 0.5, 0.75, 0.9,
                     0.999, 1 - 1e-12, np.nextafter(1.0, 0.0), 1.0])
Q_EXACT_ONLY = np.array([5e-324, 1e-300])
TINY = np.finfo(np.float64).tiny  # smallest normal float: below it, no relative precision


def q_grid(d, exact: bool) -> np.ndarray:
    """Fixed levels plus the cdf/sf levels at and just below every breakpoint."""
    bp = np.asarray(d.breakpoints(), dtype=np.float64)
    parts = [Q_COMMON, d.cdf(bp), d.cdf(below(bp)), d.sf(bp), d.sf(below(bp))]
    if exact:
        parts.append(Q_EXACT_ONLY)
    return np.unique(np.concatenate([np.atleast_1d(p) for p in parts]))


# Ordinary delays: every "k ns" for k = 1..9999, then coarser up to 10 s (the tail).
ROUND_DELAYS = np.unique(np.concatenate(
    [np.array([float(f"{k}e{e}") for k in range(1, 10_000)]) for e in (-9, -6, -3)]))


def x_grid(d, q: np.ndarray) -> np.ndarray:
    """Atoms exactly, their float neighbours, quantiles and their neighbours, ordinary
    delays from 1 ns into the tail."""
    bp = np.asarray(d.breakpoints(), dtype=np.float64)
    inner = q[(q > 0) & (q < 1)]
    quantiles = np.concatenate([np.atleast_1d(d.ppf(inner)), np.atleast_1d(d.isf(inner))])
    x = np.concatenate([[0.0], ROUND_DELAYS, bp, below(bp), above(bp),
                        quantiles, below(quantiles)])
    return np.unique(x[np.isfinite(x)])


def slack(case: Case) -> float:
    return 1.0 if case.exact else 1.0 + REL_SLACK


def fail_list(**columns) -> str:
    rows = zip(*columns.values())
    return "; ".join(", ".join(f"{k}={v!r}" for k, v in zip(columns, r)) for r in list(rows)[:5])


# (level function, its generalized inverse, "level reached at x" for a target level)
SIDES = {
    "ppf_of_cdf": ("cdf", "ppf", lambda level, q: level >= q, lambda level: level > 0),
    "isf_of_sf": ("sf", "isf", lambda level, q: level <= q, lambda level: level < 1),
}


@cases(ALL)
@pytest.mark.parametrize("side", SIDES)
def test_quantiles_are_generalized_inverses(case, side, sample_file):
    """ppf(q) is the smallest x with cdf(x) >= q; isf(q) the smallest x with sf(x) <= q.
    So level(inverse(q)) reaches q, and inverse(level(x)) <= x."""
    level_name, inverse_name, reached, invertible = SIDES[side]
    d = case.build(sample_file)
    level, inverse = getattr(d, level_name), getattr(d, inverse_name)
    q = q_grid(d, case.exact)
    x = x_grid(d, q)
    k = slack(case)

    p = np.asarray(inverse(q))
    assert not np.isnan(p).any()
    bad = ~reached(np.asarray(level(p * k)), q)
    problems = ([f"{level_name}({inverse_name}(q)) misses q at "
                 + fail_list(q=q[bad], inverse=p[bad])] if bad.any() else [])

    # The inverse at level 0 (cdf) or 1 (sf) is the bottom of the support, so only x
    # above it can come back. For scipy-backed families, the level near 1 has only
    # absolute precision (1e-16) and cannot pin down x (each tail is checked from the
    # side where its level is small), and a subnormal level has no relative precision.
    lv = np.asarray(level(x))
    keep = invertible(lv) if case.exact else (lv >= TINY) & (lv <= 0.5)
    xs, back = x[keep], np.asarray(inverse(lv[keep]))
    bad = back > xs * k
    if bad.any():
        problems.append(f"{inverse_name}({level_name}(x)) > x at {bad.sum()} points, e.g. "
                        + fail_list(x=xs[bad], level=lv[keep][bad], inverse=back[bad]))
    assert not problems, "\n".join(problems)


@cases(ALL)
def test_sf_log_sf_and_log_cdf_agree_with_cdf(case, sample_file):
    d = case.build(sample_file)
    x = np.concatenate([[-1.0], x_grid(d, q_grid(d, case.exact))])
    cdf, sf = np.asarray(d.cdf(x)), np.asarray(d.sf(x))
    assert np.all((cdf >= 0) & (cdf <= 1) & (sf >= 0) & (sf <= 1))
    np.testing.assert_allclose(sf, 1 - cdf, rtol=0, atol=1e-12)
    keep = sf > 1e-300
    np.testing.assert_allclose(np.asarray(d.logsf(x))[keep], np.log(sf[keep]),
                               rtol=1e-12, atol=1e-15)
    keep = cdf > 1e-300
    np.testing.assert_allclose(np.asarray(d.logcdf(x))[keep], np.log(cdf[keep]),
                               rtol=1e-12, atol=1e-15)


@cases(ALL + [Case("shifted_zero_offset_atom_at_zero",
                   "shifted(offset=0s, dist=constant(0s))", True)])
def test_cdf_and_sf_at_the_infinities(case, sample_file):
    d = case.build(sample_file)
    assert d.cdf(-np.inf) == 0.0 and d.sf(-np.inf) == 1.0
    assert d.cdf(np.inf) == 1.0 and d.sf(np.inf) == 0.0


def test_mixture_sf_is_exactly_one_below_its_support():
    # These weights sum to 1.0000000000000002 in floats; once divided by that, their float
    # sum is 1 - 2**-53. Below every atom the law puts all its mass above x, so sf must
    # be exactly 1 (as cdf is exactly 0); at and above the last atom, cdf is exactly 1.
    d = parse("mixture(0.561*constant(1us), 0.339*constant(2us), 0.1*constant(3us))")
    x = below(1e-6)
    assert d.cdf(x) == 0.0
    assert d.sf(x) == 1.0
    assert d.sf(np.inf) == 0.0 and d.cdf(3e-6) == 1.0


@pytest.mark.parametrize("spec, discrete", [
    ("constant(5us)", True),
    ("mixture(0.7*constant(5us), 0.3*constant(2ms))", True),
    ("shifted(offset=5us, dist=constant(20us))", True),
    ("clip(dist=constant(20us), max=10us)", True),
    ("exponential(20us)", False),
    ("mixture(0.9*exponential(20us), 0.1*constant(1ms))", False),
    ("clip(dist=pareto(alpha=1.5, scale=7us), max=50us)", False),
])
def test_is_discrete(spec, discrete):
    assert parse(spec).is_discrete is discrete


def test_breakpoints_include_atoms_and_support_ends(sample_file):
    assert parse("mixture(0.9*exponential(20us), 0.1*constant(1ms))").breakpoints() == [0.0, 1e-3]
    assert parse("clip(dist=pareto(alpha=1.5, scale=7us), max=50us)").breakpoints() == [
        7e-6, 50e-6]
    assert parse("uniform(low=1us, high=9us)").breakpoints() == [1e-6, 9e-6]
    assert Empirical(file=sample_file).breakpoints() == [1e-6, 2e-6, 5e-6, 9e-6]


# --- moments ----------------------------------------------------------------------------


def assert_moments_match_monte_carlo(d, seed: int) -> None:
    """|sample mean - mean| <= 5 SE and |sample var - var| <= 5 SE(var), with
    SE(var) = sqrt((m4 - var^2) / n) from the sample's fourth central moment."""
    x = draws(d, seed, N_MOMENTS)
    n, mean = x.size, x.mean()
    dev2 = (x - mean) ** 2
    var, m4 = dev2.mean(), (dev2 ** 2).mean()
    assert abs(mean - d.mean()) <= 5 * math.sqrt(var / n)
    assert abs(var - d.std() ** 2) <= 5 * math.sqrt((m4 - var ** 2) / n)


@cases(by_id(ALL, "uniform", "normal", "lognormal", "exponential", "gamma", "weibull",
             "shifted_exponential", "mixture_continuous", "mixture_atoms",
             "mixture_exponential_atom", "clip", "shifted_mixture", "empirical")
       + [Case("normal_low_acceptance", "normal(mean=5us, std=20us)", False),
          Case("pareto_alpha5", "pareto(alpha=5, scale=10us)", False),
          Case("clip_10ms", "clip(dist=pareto(alpha=1.5, scale=7us), max=10ms)", True)])
def test_mean_and_std_match_monte_carlo(case, sample_file):
    assert_moments_match_monte_carlo(case.build(sample_file), seed=99)


@pytest.mark.parametrize("alpha, mean_finite, std_finite", [
    (0.5, False, False), (1.0, False, False), (1.5, True, False), (2.0, True, False),
    (2.5, True, True),
])
def test_pareto_infinite_moments(alpha, mean_finite, std_finite):
    d = Pareto(alpha=alpha, scale_s=10e-6)
    assert math.isfinite(d.mean()) is mean_finite
    assert math.isfinite(d.std()) is std_finite
    if mean_finite:
        assert d.mean() == pytest.approx(alpha * 10e-6 / (alpha - 1), rel=1e-12)
    if not mean_finite:
        assert d.mean() == math.inf and d.std() == math.inf


def test_infinite_moments_propagate_through_composites():
    heavy = "pareto(alpha=1, scale=10us)"
    for spec in (f"mixture(0.99*constant(5us), 0.01*{heavy})",
                 f"shifted(offset=5us, dist={heavy})"):
        d = parse(spec)
        assert d.mean() == math.inf and d.std() == math.inf
    d = parse("mixture(0.99*constant(5us), 0.01*pareto(alpha=2, scale=10us))")
    assert math.isfinite(d.mean()) and d.std() == math.inf


@pytest.mark.parametrize("alpha", [1.0, 1.5, 3.0])
def test_clip_of_pareto_moments_match_closed_form(alpha):
    # Y = min(X, M), X Pareto(alpha, s): E[Y] = int_0^M sf, E[Y^2] = int_0^M 2x sf, with
    # sf = 1 below s and (s/x)^alpha above.
    s, m = 7e-6, 10e-3
    if alpha == 1.0:
        m1 = s + s * math.log(m / s)
    else:
        m1 = s + s ** alpha * (m ** (1 - alpha) - s ** (1 - alpha)) / (1 - alpha)
    m2 = s * s + 2 * s ** alpha * (m ** (2 - alpha) - s ** (2 - alpha)) / (2 - alpha)
    d = Clip(dist=Pareto(alpha=alpha, scale_s=s), max_s=m)
    assert d.mean() == pytest.approx(m1, rel=1e-9)
    assert d.std() == pytest.approx(math.sqrt(m2 - m1 * m1), rel=1e-8)


def test_exact_means_of_atoms(sample_file):
    assert Constant(value_s=5e-6).mean() == 5e-6
    assert Constant(value_s=5e-6).std() == 0.0
    d = parse("mixture(0.7*constant(5us), 0.2*constant(50us), 0.1*constant(2ms))")
    mean = 0.7 * 5e-6 + 0.2 * 50e-6 + 0.1 * 2e-3
    var = 0.7 * 5e-6 ** 2 + 0.2 * 50e-6 ** 2 + 0.1 * 2e-3 ** 2 - mean ** 2
    assert d.mean() == pytest.approx(mean, rel=1e-12)
    assert d.std() == pytest.approx(math.sqrt(var), rel=1e-9)
    assert parse("shifted(offset=5us, dist=constant(20us))").mean() == pytest.approx(
        25e-6, rel=1e-15)
    samples = np.array([float(f"{v}e-6") for v in EMPIRICAL_US])
    e = Empirical(file=sample_file)
    assert e.mean() == pytest.approx(samples.mean(), rel=1e-15)
    assert e.std() == pytest.approx(samples.std(), rel=1e-12)  # the law's std (ddof=0)


# --- round trips (hypothesis) -----------------------------------------------------------

durations = st.floats(min_value=1e-9, max_value=1.0)
durations_or_zero = st.one_of(st.just(0.0), durations)
shapes = st.floats(min_value=0.05, max_value=50.0)
weights = st.floats(min_value=1e-3, max_value=1 - 1e-3)


def dist_strategy(sample_file: str):
    leaves = st.one_of(
        st.builds(Constant, value_s=durations_or_zero),
        st.builds(lambda lo, width: Uniform(low_s=lo, high_s=lo + width),
                  durations_or_zero, durations),
        st.builds(Normal, mean_s=durations_or_zero, std_s=durations),
        st.builds(Lognormal, median_s=durations, sigma=shapes),
        st.builds(Exponential, mean_s=durations),
        st.builds(Gamma, shape=shapes, mean_s=durations),
        st.builds(Weibull, shape=shapes, scale_s=durations),
        st.builds(Pareto, alpha=shapes, scale_s=durations),
        st.just(Empirical(file=sample_file)),
    )

    def nest(children):
        return st.one_of(
            st.builds(lambda w, a, b: Mixture(components=((w, a), (1 - w, b))),
                      weights, children, children),
            st.builds(Shifted, offset_s=durations_or_zero, dist=children),
            st.builds(Clip, dist=children, max_s=durations_or_zero),
        )

    return st.recursive(leaves, nest, max_leaves=4)


@given(data=st.data())
def test_text_form_round_trips(sample_file, data):
    d = data.draw(dist_strategy(sample_file))
    text = str(d)
    again = parse(text)
    assert again == d
    assert str(again) == text


@given(data=st.data())
def test_table_form_round_trips(sample_file, data):
    d = data.draw(dist_strategy(sample_file))
    assert parse(to_table(d)) == d


# --- errors -----------------------------------------------------------------------------

BARE = "a bare number needs a unit (ns, us (or µs), ms or s)"


@pytest.mark.parametrize("spec, message", [
    ("foo(1us)", "unknown distribution family 'foo' (known: clip, constant, empirical, "
                 "exponential, gamma, lognormal, mixture, normal, pareto, shifted, uniform, "
                 "weibull)"),
    ("lognormal(median=50us)", "lognormal: missing parameter 'sigma'"),
    ({"family": "gamma", "shape": 2.0}, "gamma: missing parameter 'mean'"),
    ("lognormal(median=50us, sigma=0.8, mu=1)",
     "lognormal: unknown parameter 'mu' (parameters: median, sigma)"),
    ({"family": "exponential", "mean": "20us", "rate": 1.0},
     "exponential: unknown parameter 'rate' (parameters: mean)"),
    ("exponential(0us)", "exponential: mean: must be > 0, got 0.0"),
    ("lognormal(median=5us, sigma=-1)", "lognormal: sigma: must be > 0, got -1.0"),
    ("pareto(alpha=0, scale=1us)", "pareto: alpha: must be > 0, got 0.0"),
    ("weibull(shape=0.7, scale=0us)", "weibull: scale: must be > 0, got 0.0"),
    ("normal(mean=1us, std=0us)", "normal: std: must be > 0, got 0.0"),
    ("mixture(0.5*constant(5us), 0.4*constant(2ms))", "mixture: weights must sum to 1, got 0.9"),
    ("mixture(0*constant(1us), 1*constant(2us))",
     "mixture: components[0].weight: must be > 0, got 0.0"),
    ({"family": "lognormal", "median": "50us", "sigma": True},
     "lognormal: sigma: a bool is not a number: True"),
    ({"family": "lognormal", "median": "50us", "sigma": float("nan")},
     "lognormal: sigma: must be a finite number, got nan"),
    ("lognormal(median=50us, sigma=inf)", "lognormal: sigma: must be a finite number, got inf"),
    ("lognormal(median=50us, sigma=abc)", "lognormal: sigma: expected a number, got 'abc'"),
    ("lognormal(median=50us sigma=0.8)",
     "malformed spec 'lognormal(median=50us sigma=0.8)': column 23: expected ',' or ')', "
     "found 'sigma'"),
    ("constant(5us) extra", "column 15: expected end of text, found 'extra'"),
    ('empirical(file="abc)', "malformed spec 'empirical(file=\"abc)': column 16: "
                             "unterminated string"),
    ({"family": "lognormal", "median": 50, "sigma": 0.8},
     f"lognormal: median: invalid duration 50: {BARE}"),
    ("constant(5)", f"constant: value: invalid duration '5': {BARE}"),
    ("constant(-5us)", "constant: value: invalid duration '-5us': durations cannot be negative"),
    ("normal(mean=-1us, std=1us)",
     "normal: mean: invalid duration '-1us': durations cannot be negative"),
    ("uniform(low=9us, high=1us)", "uniform: high: must be > low (9e-06), got 1e-06"),
    ("uniform(low=5us, high=5us)", "uniform: high: must be > low (5e-06), got 5e-06"),
    ("lognormal(50us, 0.8, 3)", "lognormal: too many arguments (parameters: median, sigma)"),
    ("lognormal(sigma=0.8, 50us)", "lognormal: positional argument after keyword (column 22)"),
    ("lognormal(median=50us, median=5us)", "lognormal: parameter 'median' given twice"),
])
def test_error_messages(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(spec)


@pytest.mark.parametrize("name, content, message", [
    ("bad_header.txt", "latency_ms\n1\n",
     "line 1: the header must be latency_us or latency_ns, got 'latency_ms'"),
    ("not_a_number.txt", "latency_us\n1\n# note\n2\nabc\n", "line 5: not a number: 'abc'"),
    ("negative.txt", "latency_us\n1\n-2\n", "line 3: samples must be finite and >= 0, got '-2'"),
    ("empty.txt", "", "no samples"),
    ("header_only.txt", "latency_ns\n# nothing recorded\n", "no samples"),
])
def test_empirical_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"empirical: file {str(path)!r}: {message}")):
        parse(f'empirical(file="{path}")')


def test_empirical_missing_file(tmp_path):
    path = str(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=re.escape(f"empirical: file {path!r}: cannot read it")):
        parse({"family": "empirical", "file": path})


# --- exact values -----------------------------------------------------------------------


def test_durations_parse_exactly():
    d = parse("lognormal(median=50us, sigma=0.8)")
    assert d.median_s == 50e-6 and d.sigma == 0.8
    assert parse({"family": "lognormal", "median": "50\u00b5s", "sigma": 0.8}) == d
    assert parse("constant(3ns)").value_s == 3e-9  # not 3 * 1e-9 == 3.0000000000000004e-09
    assert parse("constant(1.5ms)").value_s == 1.5e-3


def test_bare_and_positional_arguments():
    assert parse("exponential(20us)") == Exponential(mean_s=20e-6)
    assert parse("constant(5us)") == Constant(value_s=5e-6)
    assert parse("lognormal(50us, 0.8)") == Lognormal(median_s=50e-6, sigma=0.8)
    assert parse("pareto(2.5, scale=10us)") == Pareto(alpha=2.5, scale_s=10e-6)
    assert parse("shifted(5us, exponential(20us))") == Shifted(
        offset_s=5e-6, dist=Exponential(mean_s=20e-6))


def test_canonical_text_and_table():
    d = Lognormal(median_s=50e-6, sigma=0.8)
    assert str(d) == "lognormal(median=50us, sigma=0.8)"
    assert to_table(d) == {"family": "lognormal", "median": "50us", "sigma": 0.8}
    m = parse("mixture(0.99*constant(5us), 0.01*constant(2ms))")
    assert str(m) == "mixture(0.99*constant(5us), 0.01*constant(2ms))"
    assert to_table(m) == {"family": "mixture", "components": [
        {"weight": 0.99, "dist": {"family": "constant", "value": "5us"}},
        {"weight": 0.01, "dist": {"family": "constant", "value": "2ms"}}]}
    assert parse({"family": "mixture", "components": [
        {"weight": 0.99, "dist": "constant(5us)"},
        {"weight": 0.01, "dist": {"family": "constant", "value": "2ms"}}]}) == m


def test_empirical_quantiles_are_exact(tmp_path):
    path = tmp_path / "one_to_ten.txt"
    path.write_text("latency_us\n# comment\n\n" + "\n".join(str(i) for i in range(10, 0, -1)))
    d = parse(f'empirical(file="{path}")')
    assert d.ppf(0.3) == 3e-6  # 0.3 * 10 is 3.0000000000000004 in floats: still 3us
    assert d.ppf(0.31) == 4e-6
    assert d.ppf(0.0) == 1e-6 and d.ppf(1.0) == 10e-6
    assert d.cdf(3e-6) == 0.3 and d.cdf(below(3e-6)) == 0.2
    assert d.isf(0.7) == 3e-6 and d.isf(0.69) == 4e-6
    np.testing.assert_array_equal(d.ppf([0.1, 0.5, 0.95]), [1e-6, 5e-6, 10e-6])


def test_empirical_nanosecond_header(tmp_path):
    path = tmp_path / "ns.txt"
    path.write_text("latency_ns\n1500\n2500\n3\n")
    d = Empirical(file=str(path))
    assert d.support() == (3e-9, 2.5e-6)
    assert d.ppf(0.5) == 1.5e-6
    assert d.mean() == pytest.approx((1.5e-6 + 2.5e-6 + 3e-9) / 3, rel=1e-15)


# --- atoms of mixed laws invert exactly -------------------------------------------------


@cases([c for c in ALL if c.id in (
    "mixture_exponential_atom", "clip", "shifted_mixture", "constant", "mixture_atoms",
    "shifted_constant", "empirical")])
def test_atoms_invert_exactly(case, sample_file):
    """At an atom a with mass F(a) - F(a-) > 0, every level q in (F(a-), F(a)] has
    ppf(q) == a exactly, and every level s in [sf(a), sf(a-)) has isf(s) == a exactly."""
    d = case.build(sample_file)
    # (Masses below 1e-9 are float artefacts, e.g. the sums offset + tiny that round to
    # the offset itself, and lie below the resolution of sf near 1.)
    atoms = [a for a in d.breakpoints() if d.cdf(a) - d.cdf(below(a)) > 1e-9]
    assert atoms, "every case here has at least one atom"
    for a in atoms:
        lo_c, hi_c = float(d.cdf(below(a))), float(d.cdf(a))
        levels = [hi_c, above(lo_c), (lo_c + hi_c) / 2]
        assert all(d.ppf(q) == a for q in levels), (a, levels, [d.ppf(q) for q in levels])
        lo_s, hi_s = float(d.sf(a)), float(d.sf(below(a)))
        levels = [lo_s, below(hi_s), (lo_s + hi_s) / 2]
        assert all(d.isf(s) == a for s in levels), (a, levels, [d.isf(s) for s in levels])


# --- regressions found in review ---------------------------------------------------------


def test_clip_moments_when_max_is_far_above_the_bulk():
    # A linear-axis quadrature over [0, 1 s] once missed the 20 us bulk (19.80 for 20).
    c = parse("clip(dist=exponential(20us), max=1s)")
    assert c.mean() == pytest.approx(20e-6, rel=1e-9) and c.std() == pytest.approx(20e-6,
                                                                                    rel=1e-9)
    alpha, s, m = 3.0, 20e-6, 100.0  # E[min(X, m)] = a s/(a-1) - s^a m^(1-a)/(a-1)
    c = parse("clip(dist=pareto(alpha=3, scale=20us), max=100s)")
    assert c.mean() == pytest.approx(alpha * s / (alpha - 1) - s**alpha * m ** (1 - alpha)
                                     / (alpha - 1), rel=1e-9)


def test_nested_errors_name_the_path_to_the_field():
    with pytest.raises(ValueError, match=r"^clip: dist: lognormal: sigma: must be > 0, got -1"):
        parse("clip(dist=lognormal(median=5us, sigma=-1), max=1ms)")
    with pytest.raises(ValueError, match=r"^clip: dist: expected a distribution spec .*got 5"):
        parse({"family": "clip", "dist": 5, "max": "1ms"})


def test_empirical_file_with_a_byte_order_mark(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufefflatency_us\n3\n1\n".encode())
    assert parse(f'empirical("{f}")').ppf(1.0) == 3e-6


def test_a_space_between_number_and_unit_is_accepted_as_in_toml():
    assert parse("constant(50 us)") == parse({"family": "constant", "value": "50 us"}) \
        == Constant(value_s=50e-6)
    assert parse("lognormal(median = 50 µs, sigma=1)").median_s == 50e-6
