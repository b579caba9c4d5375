"""Schedules (jitter_models.schedules): determinism, scopes, world-size invariance,
stragglers, temporal structure (AR(1), bursty), round trips and error messages.

Statistical tests use fixed seeds, so each is deterministic; each names the rate at
which it would fail for a correct implementation under a random seed.
"""

import hashlib
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from jitter_models import (
    AR1,
    IID,
    Bursty,
    Constant,
    Exponential,
    Lognormal,
    Mixture,
    Schedule,
    Stragglers,
    parse,
    parse_schedule,
    parse_temporal,
    schedule_from_table,
    schedules_from_toml,
)

LOGNORMAL = "lognormal(median=50us, sigma=0.8)"
MIXTURE = "mixture(0.99*constant(5us), 0.01*lognormal(median=2ms, sigma=0.5))"
STRAGGLER = "constant(500us)"
STRAGGLER_S = 5e-4
TEMPORALS = {
    "iid": "iid",
    "ar1": "ar1(rho=0.9)",
    "bursty": "bursty(p_enter=0.05, p_exit=0.3, burst=constant(2ms))",
}
SCOPES = ("rank", "node", "global")
BASE, STRAG = parse(LOGNORMAL), parse(STRAGGLER)


def make(dist=LOGNORMAL, temporal="iid", scope="rank", **stragglers) -> Schedule:
    """A schedule from its table form; keyword arguments give the straggler table."""
    table = {"dist": dist, "scope": scope, "temporal": temporal}
    if stragglers:
        table["stragglers"] = {"dist": STRAGGLER, **stragglers}
    return schedule_from_table(table)


def draw(schedule, *, seed=11, rank=0, node=None, world_size=8, n_steps=40, n_sites=5):
    """Delays with defaults; ranks sit on nodes of 2 unless ``node`` is given."""
    node = rank // 2 if node is None else node
    return schedule.delays(seed, rank, node, world_size, n_steps, n_sites)


def straggling_ranks(schedule, seed, world_size) -> set[int]:
    """Ranks that draw the constant straggler value (with a bursty temporal, between
    bursts); the base distribution is continuous, so it never gives that value."""
    return {r for r in range(world_size)
            if np.any(draw(schedule, seed=seed, rank=r, world_size=world_size) == STRAGGLER_S)}


def run_lengths(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of the maximal runs of True and of False in a boolean sequence."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(flags.astype(np.int8))) + 1])
    lengths = np.diff(np.concatenate([starts, [flags.size]]))
    values = flags[starts]
    return lengths[values], lengths[~values]


def normal_scores(dist, x: np.ndarray) -> np.ndarray:
    """Phi^-1(F(x)), through the survival function in the upper half for precision."""
    return np.where(dist.cdf(x) < 0.5, stats.norm.ppf(dist.cdf(x)), stats.norm.isf(dist.sf(x)))


def lag1_corr(x: np.ndarray) -> float:
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


# --- determinism ----------------------------------------------------------------------

DETERMINISM_CASES = [(LOGNORMAL, "iid"), (LOGNORMAL, "ar1"), (LOGNORMAL, "bursty"),
                     (MIXTURE, "iid"), (MIXTURE, "ar1"), (MIXTURE, "bursty")]


@pytest.mark.parametrize("dist, temporal", DETERMINISM_CASES)
def test_same_arguments_give_bit_identical_delays(dist, temporal):
    a = draw(make(dist, TEMPORALS[temporal]), rank=3)
    b = draw(make(dist, TEMPORALS[temporal]), rank=3)  # a separately parsed schedule
    assert a.dtype == np.float64 and a.shape == (40, 5)
    assert np.all(np.isfinite(a)) and np.all(a >= 0)
    assert np.array_equal(a, b)
    assert a.tobytes() == b.tobytes()


_HASH_SCRIPT = """
import hashlib
from jitter_models import parse_schedule
for spec in {specs!r}:
    d = parse_schedule(spec).delays(11, 3, 1, 8, 40, 5)
    print(hashlib.sha256(d.tobytes()).hexdigest())
"""


def test_delays_are_identical_in_another_process():
    """Ranks are separate processes: nothing may depend on the process (e.g. hash seeds)."""
    specs = [f"{dist}; temporal={TEMPORALS[t]}" for dist, t in DETERMINISM_CASES]
    here = [hashlib.sha256(parse_schedule(s).delays(11, 3, 1, 8, 40, 5).tobytes()).hexdigest()
            for s in specs]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT.format(specs=specs)], env=env,
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == here


@pytest.mark.parametrize("temporal", TEMPORALS)
def test_different_seeds_give_different_delays(temporal):
    s = make(temporal=TEMPORALS[temporal])
    assert not np.array_equal(draw(s, seed=0), draw(s, seed=1))
    assert not np.array_equal(draw(s, seed=1), draw(s, seed=2**40))


@pytest.mark.parametrize("n_steps, n_sites", [(0, 5), (3, 0), (1, 1), (7, 3)])
@pytest.mark.parametrize("temporal", TEMPORALS)
def test_shape_and_flattened_sequence(temporal, n_steps, n_sites):
    """[n_steps, n_sites] is the one stream of n_steps * n_sites values, row-major."""
    s = make(temporal=TEMPORALS[temporal])
    d = draw(s, n_steps=n_steps, n_sites=n_sites)
    assert d.shape == (n_steps, n_sites) and d.dtype == np.float64
    assert np.array_equal(d.ravel(), draw(s, n_steps=n_steps * n_sites, n_sites=1).ravel())


# --- scopes ---------------------------------------------------------------------------


@pytest.mark.parametrize("temporal", TEMPORALS)
def test_rank_scope_each_rank_its_own_stream(temporal):
    s = make(temporal=TEMPORALS[temporal], scope="rank")
    assert not np.array_equal(draw(s, rank=0, node=0), draw(s, rank=1, node=0))
    # the node argument plays no part in rank scope
    assert np.array_equal(draw(s, rank=1, node=0), draw(s, rank=1, node=5))


@pytest.mark.parametrize("temporal", TEMPORALS)
def test_node_scope_ranks_of_a_node_share(temporal):
    s = make(temporal=TEMPORALS[temporal], scope="node")
    assert np.array_equal(draw(s, rank=0, node=0), draw(s, rank=1, node=0))
    assert np.array_equal(draw(s, rank=2, node=1), draw(s, rank=7, node=1))
    assert not np.array_equal(draw(s, rank=0, node=0), draw(s, rank=1, node=1))


@pytest.mark.parametrize("temporal", TEMPORALS)
def test_global_scope_all_ranks_share(temporal):
    s = make(temporal=TEMPORALS[temporal], scope="global")
    first = draw(s, rank=0, node=0, world_size=8)
    for rank, node, world_size in [(1, 0, 8), (5, 2, 8), (7, 7, 8), (0, 0, 1), (30, 3, 64)]:
        assert np.array_equal(draw(s, rank=rank, node=node, world_size=world_size), first)


def test_scopes_and_stragglers_use_separate_streams():
    """Rank 0's stream, node 0's stream, the global stream and straggler rank 0's stream
    are all different draws (same base distribution for the first three)."""
    base = [draw(make(scope=scope), rank=0, node=0) for scope in SCOPES]
    strag = draw(Schedule(dist=BASE, stragglers=Stragglers(dist=BASE, ranks=(0,))), rank=0)
    arrays = base + [strag]
    for i in range(len(arrays)):
        for j in range(i):
            assert not np.array_equal(arrays[i], arrays[j]), (i, j)


# --- world-size invariance ------------------------------------------------------------

WORLD_PAIRS = [(2, 4), (1, 8), (3, 16)]


def assert_shared_ranks_match(schedule, small, large, seed=5):
    for rank in range(small):
        a = draw(schedule, seed=seed, rank=rank, world_size=small)
        b = draw(schedule, seed=seed, rank=rank, world_size=large)
        assert np.array_equal(a, b), (rank, small, large)


@pytest.mark.parametrize("small, large", WORLD_PAIRS)
@pytest.mark.parametrize("temporal", TEMPORALS)
@pytest.mark.parametrize("scope", SCOPES)
def test_rank_draws_do_not_depend_on_world_size(scope, temporal, small, large):
    assert_shared_ranks_match(make(temporal=TEMPORALS[temporal], scope=scope), small, large)


@pytest.mark.parametrize("small, large", WORLD_PAIRS)
@pytest.mark.parametrize("temporal", TEMPORALS)
@pytest.mark.parametrize("scope", SCOPES)
def test_explicit_stragglers_do_not_depend_on_world_size(scope, temporal, small, large):
    s = make(temporal=TEMPORALS[temporal], scope=scope, ranks=[1, 3, 9])
    assert_shared_ranks_match(s, small, large)
    assert straggling_ranks(s, 5, small) == {1, 3, 9} & set(range(small))


def test_explicit_straggler_ranks_beyond_the_world_are_absent():
    s = make(ranks=[5, 9])
    assert s.stragglers.chosen(0, 4) == frozenset()
    assert s.stragglers.chosen(0, 6) == frozenset({5})
    assert s.stragglers.chosen(0, 10) == frozenset({5, 9})
    assert straggling_ranks(s, 0, 4) == set()
    assert s.site_groups(0, 4) == [(s.dist, 4)]
    no_stragglers = make()
    for rank in range(4):
        assert np.array_equal(draw(s, rank=rank, world_size=4),
                              draw(no_stragglers, rank=rank, world_size=4))


# --- stragglers by count --------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("scope", SCOPES)
def test_count_stragglers_are_a_seeded_choice_of_the_requested_size(scope, world_size):
    seed, count = 7, 3
    s = make(scope=scope, count=count)
    chosen = s.stragglers.chosen(seed, world_size)
    assert len(chosen) == min(count, world_size)
    assert chosen <= set(range(world_size))
    # a deterministic function of (seed, world_size), also for a freshly parsed schedule
    assert make(scope=scope, count=count).stragglers.chosen(seed, world_size) == chosen
    # chosen ranks draw from the straggler distribution, the others exactly as without
    # stragglers
    assert straggling_ranks(s, seed, world_size) == chosen
    for rank in chosen:
        assert np.all(draw(s, seed=seed, rank=rank, world_size=world_size) == STRAGGLER_S)
    plain = make(scope=scope)
    for rank in set(range(world_size)) - chosen:
        assert np.array_equal(draw(s, seed=seed, rank=rank, world_size=world_size),
                              draw(plain, seed=seed, rank=rank, world_size=world_size))


def test_count_stragglers_depend_on_the_seed():
    s = make(count=3)
    choices = {s.stragglers.chosen(seed, 16) for seed in range(10)}
    assert len(choices) > 1


def test_straggler_delays_keep_the_temporal_structure():
    """A straggler with a bursty schedule is bursty around the straggler distribution."""
    s = make(temporal="bursty(p_enter=0.2, p_exit=0.2, burst=constant(2ms))", ranks=[0])
    d = draw(s, rank=0, n_steps=100, n_sites=10)
    assert set(np.unique(d)) == {STRAGGLER_S, 2e-3}


# --- rank_dist and site_groups --------------------------------------------------------


@pytest.mark.parametrize("temporal", TEMPORALS)
def test_rank_dist_is_the_temporal_marginal_of_the_right_distribution(temporal):
    s = make(temporal=TEMPORALS[temporal], ranks=[3])
    t, straggler = parse_temporal(TEMPORALS[temporal]), parse(STRAGGLER)
    assert s.rank_dist(0, 3, 8) == t.marginal(straggler)
    assert s.rank_dist(0, 2, 8) == t.marginal(parse(LOGNORMAL))
    assert s.rank_dist(0, 3, 3) == t.marginal(parse(LOGNORMAL))  # rank 3 absent at N=3


def test_rank_dist_iid_straggler_is_the_straggler_dist():
    s = make(ranks=[3])
    assert s.rank_dist(0, 3, 8) == Constant(value_s=STRAGGLER_S)
    assert s.rank_dist(0, 0, 8) == Lognormal(median_s=50e-6, sigma=0.8)


def test_rank_dist_follows_the_count_choice():
    s = make(count=2)
    chosen = s.stragglers.chosen(4, 10)
    for rank in range(10):
        expected = Constant(value_s=STRAGGLER_S) if rank in chosen else s.dist
        assert s.rank_dist(4, rank, 10) == expected


@pytest.mark.parametrize("scope, stragglers, world_size, rpn, groups", [
    ("rank", {}, 8, 4, [(BASE, 8)]),
    ("rank", {"ranks": [3]}, 8, 4, [(BASE, 7), (STRAG, 1)]),
    ("rank", {"ranks": [0, 1]}, 2, 4, [(STRAG, 2)]),
    ("rank", {"count": 3}, 10, 4, [(BASE, 7), (STRAG, 3)]),
    ("rank", {"count": 3}, 2, 4, [(STRAG, 2)]),
    ("node", {}, 8, 4, [(BASE, 2)]),
    ("node", {}, 10, 4, [(BASE, 3)]),
    ("node", {}, 3, 8, [(BASE, 1)]),
    ("node", {"ranks": [0]}, 10, 4, [(BASE, 3), (STRAG, 1)]),
    ("node", {"ranks": [0, 1, 2, 3]}, 10, 4, [(BASE, 2), (STRAG, 4)]),
    ("node", {"ranks": [8, 9]}, 10, 4, [(BASE, 2), (STRAG, 2)]),
    ("node", {"ranks": [0, 1, 2]}, 3, 4, [(STRAG, 3)]),
    ("global", {}, 64, 8, [(BASE, 1)]),
    ("global", {"ranks": [1]}, 4, 2, [(BASE, 1), (STRAG, 1)]),
    ("global", {"ranks": [0, 1]}, 2, 2, [(STRAG, 2)]),
])
def test_site_groups_count_independent_streams(scope, stragglers, world_size, rpn, groups):
    assert make(scope=scope, **stragglers).site_groups(0, world_size, rpn) == groups


def test_site_groups_use_the_temporal_marginals():
    t = parse_temporal(TEMPORALS["bursty"])
    s = make(temporal=TEMPORALS["bursty"], ranks=[0])
    assert s.site_groups(0, 4, 2) == [(t.marginal(BASE), 3), (t.marginal(STRAG), 1)]


def test_site_groups_default_eight_ranks_per_node():
    assert make(scope="node").site_groups(0, 17) == [(BASE, 3)]


@pytest.mark.parametrize("scope", SCOPES)
def test_site_groups_match_the_distinct_streams_of_delays(scope):
    """Distinct delay arrays over ranks placed on nodes in blocks of ranks_per_node."""
    s = make(scope=scope, ranks=[0, 1, 5])
    world_size, rpn = 12, 4
    arrays = {draw(s, rank=r, node=r // rpn, world_size=world_size).tobytes()
              for r in range(world_size)}
    (base, n_base), (strag, n_strag) = s.site_groups(0, world_size, rpn)
    assert (base, strag, n_strag) == (BASE, STRAG, 3)
    # the stragglers' constant delays coincide: one distinct array for the three
    assert len(arrays) == n_base + 1


# --- AR(1) ----------------------------------------------------------------------------

KS_ALPHA = 1e-3  # false-failure rate of each KS test under a random seed


@pytest.mark.parametrize("dist", [LOGNORMAL, "weibull(shape=0.5, scale=20us)"])
def test_ar1_keeps_the_marginal_thinned_sequence(dist):
    """Every 80th value of a rho=0.9 stream: rho**80 = 2e-4, so the 2,500 values are
    practically independent and the KS p-value is valid."""
    s = make(dist=dist, temporal="ar1(rho=0.9)")
    x = draw(s, n_steps=1000, n_sites=200).ravel()
    assert 0.9**80 < 1e-3
    assert stats.kstest(x[::80], s.dist.cdf).pvalue > KS_ALPHA


def test_ar1_stationary_start_pooled_over_ranks():
    """The first value of each of 2,000 independent rank streams has the marginal."""
    s = make(temporal="ar1(rho=0.9)")
    first = np.array([draw(s, rank=r, world_size=2000, n_steps=1, n_sites=1)[0, 0]
                      for r in range(2000)])
    assert stats.kstest(first, s.dist.cdf).pvalue > KS_ALPHA


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9, -0.5])
def test_ar1_latent_lag1_correlation_is_rho(rho):
    """Within 4 standard errors, SE = sqrt((1 - rho^2) / n) for an AR(1)'s lag-1 sample
    autocorrelation (false-failure rate about 6e-5)."""
    s = make(temporal=f"ar1(rho={rho})")
    x = draw(s, seed=3, n_steps=1000, n_sites=200).ravel()
    z = normal_scores(s.dist, x)
    assert np.all(np.isfinite(z))
    se = math.sqrt((1 - rho**2) / x.size)
    assert abs(lag1_corr(z) - rho) < 4 * se


def test_ar1_marginal_is_the_distribution():
    assert AR1(rho=0.5).marginal(BASE) == BASE


# --- bursty ---------------------------------------------------------------------------

P_ENTER, P_EXIT, BURST_S = 0.01, 0.2, 2e-3
BURSTY = f"bursty(p_enter={P_ENTER}, p_exit={P_EXIT}, burst=constant(2ms))"


@pytest.fixture(scope="module")
def bursty_flags() -> np.ndarray:
    """Burst indicator of one long stream: the constant burst value never occurs in the
    continuous base distribution."""
    s = make(dist="exponential(5us)", temporal=BURSTY)
    return draw(s, seed=9, n_steps=1000, n_sites=500).ravel() == BURST_S


def test_bursty_fraction_is_the_stationary_probability(bursty_flags):
    """Within 5 SE; SE is the binomial one inflated by the chain's integrated
    autocorrelation (1 + lambda) / (1 - lambda), lambda = 1 - p_enter - p_exit
    (false-failure rate about 6e-7)."""
    pi = P_ENTER / (P_ENTER + P_EXIT)
    lam = 1 - P_ENTER - P_EXIT
    n = bursty_flags.size
    se = math.sqrt(pi * (1 - pi) / n * (1 + lam) / (1 - lam))
    assert abs(bursty_flags.mean() - pi) < 5 * se
    assert 5 * se < 0.2 * pi  # the tolerance is meaningful


def test_bursty_run_lengths_are_geometric_means(bursty_flags):
    """Mean burst run ~ 1/p_exit, mean calm run ~ 1/p_enter, within 10% (about 9 and 6
    standard errors for ~2,400 runs of each kind)."""
    burst_runs, calm_runs = run_lengths(bursty_flags)
    assert len(burst_runs) > 1000
    assert burst_runs.mean() == pytest.approx(1 / P_EXIT, rel=0.10)
    assert calm_runs.mean() == pytest.approx(1 / P_ENTER, rel=0.10)


def test_bursty_stationary_start_pooled_over_ranks():
    """The first value of 2,000 rank streams is a burst with probability pi (5 binomial
    SE, false-failure rate about 6e-7)."""
    s = make(dist="exponential(5us)",
             temporal="bursty(p_enter=0.1, p_exit=0.2, burst=constant(2ms))")
    n = 2000
    first = np.array([draw(s, rank=r, world_size=n, n_steps=1, n_sites=1)[0, 0]
                      for r in range(n)])
    pi = 1 / 3
    assert abs(np.mean(first == BURST_S) - pi) < 5 * math.sqrt(pi * (1 - pi) / n)


def test_bursty_with_certain_switches_alternates():
    s = make(dist="exponential(5us)", temporal="bursty(p_enter=1, p_exit=1, burst=constant(2ms))")
    flags = draw(s, n_steps=50, n_sites=3).ravel() == BURST_S
    assert np.all(flags[1:] != flags[:-1])


def test_bursty_marginal_is_the_mixture():
    t = parse_temporal(BURSTY)
    pi = P_ENTER / (P_ENTER + P_EXIT)
    base = Exponential(mean_s=5e-6)
    assert t.burst_fraction == pytest.approx(pi, rel=1e-15)
    m = t.marginal(base)
    assert isinstance(m, Mixture)
    assert m == Mixture(components=((1 - pi, base), (pi, Constant(value_s=BURST_S))))
    x = np.array([0.0, 1e-6, 5e-6, 1e-3, 2e-3, 3e-3])
    np.testing.assert_allclose(m.cdf(x), (1 - pi) * base.cdf(x) + pi * (x >= BURST_S),
                               rtol=1e-12)


# --- round trips ----------------------------------------------------------------------

ROUND_TRIP_SPECS = [
    "exponential(5us)",
    "lognormal(median=50us, sigma=0.8); scope=node; temporal=ar1(rho=0.9); "
    "stragglers.ranks=3; stragglers.dist=constant(500us); name=x",
    f"{MIXTURE}; scope=global; temporal={TEMPORALS['bursty']}",
    "gamma(shape=2.0, mean=10us); stragglers.count=2; stragglers.dist=exponential(1ms)",
    "constant(0s); temporal=ar1(rho=-0.5); stragglers.ranks=0,4,7; "
    "stragglers.dist=lognormal(median=1ms, sigma=0.1); name=a = b, c",
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS)
def test_round_trip_examples(spec):
    s = parse_schedule(spec)
    assert str(s) == spec  # these are canonical spellings
    assert parse_schedule(str(s)) == s
    assert schedule_from_table(s.to_table()) == s
    assert parse_schedule(s.to_table()) == s


def test_one_line_and_table_forms_agree():
    line = parse_schedule(ROUND_TRIP_SPECS[1])
    table = schedule_from_table({
        "name": "x", "dist": LOGNORMAL, "scope": "node",
        "temporal": {"kind": "ar1", "rho": 0.9},
        "stragglers": {"ranks": [3], "dist": STRAGGLER}})
    assert line == table
    assert line == Schedule(dist=BASE, name="x", scope="node", temporal=AR1(rho=0.9),
                            stragglers=Stragglers(dist=STRAG, ranks=(3,)))
    assert line.to_table() == {"name": "x", "dist": LOGNORMAL, "scope": "node",
                               "temporal": "ar1(rho=0.9)",
                               "stragglers": {"ranks": [3], "dist": STRAGGLER}}


def test_default_name_is_the_one_line_text():
    s = parse_schedule("exponential(5us); scope=node")
    assert s.name == "exponential(5us); scope=node" == str(s)
    assert Schedule(dist=BASE).name == LOGNORMAL
    assert "name=" not in str(s)
    assert "name" not in s.to_table()  # the default name is implied by the dist
    assert schedule_from_table(s.to_table()).name == "exponential(5us); scope=node"
    assert s.scope == "node" and s.temporal == IID() and s.stragglers is None


# hypothesis strategies for schedules
positive_s = st.floats(min_value=1e-9, max_value=10.0)
sigmas = st.floats(min_value=1e-3, max_value=5.0)
simple_dists = st.one_of(
    st.builds(Constant, value_s=st.floats(min_value=0.0, max_value=10.0)),
    st.builds(Exponential, mean_s=positive_s),
    st.builds(Lognormal, median_s=positive_s, sigma=sigmas),
)
mixtures = st.builds(
    lambda w, a, b: Mixture(components=((w, a), (1.0 - w, b))),
    st.floats(min_value=1e-6, max_value=1 - 1e-6), simple_dists, simple_dists)
dists = st.one_of(simple_dists, mixtures)
probabilities = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)
temporals = st.one_of(
    st.just(IID()),
    st.builds(AR1, rho=st.floats(min_value=-1.0, max_value=1.0, exclude_min=True,
                                 exclude_max=True)),
    st.builds(Bursty, p_enter=probabilities, p_exit=probabilities, burst=simple_dists),
)
stragglers = st.one_of(
    st.none(),
    st.builds(Stragglers, dist=simple_dists,
              ranks=st.lists(st.integers(0, 4096), min_size=1, max_size=5).map(tuple)),
    st.builds(Stragglers, dist=simple_dists, count=st.integers(1, 4096)),
)
# Names: any text the constructor accepts (no ';', no surrounding whitespace, printable:
# no control, format or separator characters but the space).
names = st.one_of(st.just(""), st.text(
    st.one_of(st.just(" "), st.characters(blacklist_categories=("C", "Z"),
                                          blacklist_characters=";")), min_size=1)
                  .filter(lambda n: n == n.strip() and n != ""))
schedules = st.builds(Schedule, dist=dists, name=names, scope=st.sampled_from(SCOPES),
                      temporal=temporals, stragglers=stragglers)


@given(schedules)
def test_round_trips_one_line_and_table(s):
    assert parse_schedule(str(s)) == s
    assert schedule_from_table(s.to_table()) == s
    assert str(parse_schedule(str(s))) == str(s)


@pytest.mark.parametrize("name", [" padded", "padded ", "\tx", "\x85"])
def test_names_with_edge_whitespace_are_rejected(name):
    """The one-line form strips its values, so such names could not round-trip: they are
    refused at construction, naming the value."""
    with pytest.raises(ValueError, match=r"jitter: name: .*surrounding spaces, got "
                                         + re.escape(repr(name))):
        Schedule(dist=Exponential(mean_s=5e-6), name=name)


def test_schedules_from_toml_reads_every_table():
    doc = {"jitter": [{"dist": "exponential(5us)"},
                      {"dist": LOGNORMAL, "name": "ln", "scope": "global"},
                      {"dist": "exponential(5us)", "name": "again",
                       "temporal": {"kind": "bursty", "p_enter": 0.1, "p_exit": 0.5,
                                    "burst": "constant(1ms)"}}]}
    got = schedules_from_toml(doc)
    assert [s.name for s in got] == ["exponential(5us)", "ln", "again"]
    assert got[1].scope == "global"
    assert got[2].temporal == Bursty(p_enter=0.1, p_exit=0.5, burst=Constant(value_s=1e-3))


# --- errors ---------------------------------------------------------------------------


def raises(message: str):
    return pytest.raises(ValueError, match=re.escape(message))


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"seed": True}, "seed must be an integer >= 0, got True"),
    ({"seed": 1.0}, "seed must be an integer >= 0, got 1.0"),
    ({"rank": 4, "world_size": 4}, "rank must be < world_size (4), got 4"),
    ({"rank": -1}, "rank must be an integer >= 0, got -1"),
    ({"rank": 0, "world_size": 0}, "world_size must be an integer >= 1, got 0"),
    ({"node": -1}, "node must be an integer >= 0, got -1"),
    ({"n_steps": -1}, "n_steps must be an integer >= 0, got -1"),
    ({"n_sites": 1.5}, "n_sites must be an integer >= 0, got 1.5"),
])
def test_delays_argument_validation(kwargs, message):
    with raises(message):
        draw(make(), **kwargs)


def test_numpy_integers_are_accepted():
    s = make()
    assert np.array_equal(s.delays(np.int64(11), np.int32(1), np.int64(0), np.int64(8), 4, 2),
                          s.delays(11, 1, 0, 8, 4, 2))


def test_site_groups_validation():
    with raises("ranks_per_node must be an integer >= 1, got 0"):
        make().site_groups(0, 8, 0)
    with raises("world_size must be an integer >= 1, got 0"):
        make().site_groups(0, 0)


KNOWN_TEMPORALS = "(known: ar1, bursty, iid)"
BURST = "burst=constant(2ms)"


@pytest.mark.parametrize("table, message", [
    ({"dist": "exponential(5us)", "scope": "cluster"},
     "jitter: scope: must be one of rank, node, global, link, got 'cluster'"),
    ({"dist": "exponential(5us)", "temporal": "markov"},
     f"jitter: temporal: unknown kind 'markov' {KNOWN_TEMPORALS}"),
    ({"dist": "exponential(5us)", "temporal": {"kind": "markov"}},
     f"jitter: temporal: unknown kind 'markov' {KNOWN_TEMPORALS}"),
    ({"dist": "exponential(5us)", "temporal": "ar1(rho=1)"},
     "ar1: rho: must be in (-1, 1), got 1.0"),
    ({"dist": "exponential(5us)", "temporal": "ar1(rho=-1)"},
     "ar1: rho: must be in (-1, 1), got -1.0"),
    ({"dist": "exponential(5us)", "temporal": {"kind": "ar1", "rho": 1.5}},
     "ar1: rho: must be in (-1, 1), got 1.5"),
    ({"dist": "exponential(5us)", "temporal": "ar1"}, "ar1: missing parameter 'rho'"),
    ({"dist": "exponential(5us)", "temporal": f"bursty(p_enter=0, p_exit=0.2, {BURST})"},
     "bursty: p_enter: must be in (0, 1], got 0.0"),
    ({"dist": "exponential(5us)", "temporal": f"bursty(p_enter=-0.1, p_exit=0.2, {BURST})"},
     "bursty: p_enter: must be in (0, 1], got -0.1"),
    ({"dist": "exponential(5us)", "temporal": f"bursty(p_enter=0.1, p_exit=1.2, {BURST})"},
     "bursty: p_exit: must be in (0, 1], got 1.2"),
    ({"dist": "exponential(5us)",
      "stragglers": {"ranks": [1], "count": 1, "dist": STRAGGLER}},
     "stragglers: give exactly one of 'ranks', 'count' and 'links'"),
    ({"dist": "exponential(5us)", "stragglers": {"dist": STRAGGLER}},
     "stragglers: give exactly one of 'ranks', 'count' and 'links'"),
    ({"dist": "exponential(5us)", "stragglers": {"ranks": [1]}},
     "jitter: stragglers: missing key 'dist'"),
    ({"dist": "exponential(5us)", "stragglers": {"ranks": [1], "dist": STRAGGLER, "who": 1}},
     "jitter: stragglers: unknown key 'who' (keys: ranks, count, links, dist)"),
    ({"dist": "exponential(5us)", "stragglers": {"ranks": 3, "dist": STRAGGLER}},
     "stragglers: ranks: expected a list of ranks, got 3"),
    ({"dist": "exponential(5us)", "stragglers": {"ranks": [], "dist": STRAGGLER}},
     "stragglers: ranks: expected a non-empty list of ranks (integers >= 0), got ()"),
    ({"dist": "exponential(5us)", "stragglers": {"ranks": [-1], "dist": STRAGGLER}},
     "stragglers: ranks: expected a non-empty list of ranks (integers >= 0), got (-1,)"),
    ({"dist": "exponential(5us)", "stragglers": {"count": 0, "dist": STRAGGLER}},
     "stragglers: count: must be an integer >= 1, got 0"),
    ({"dist": "exponential(5us)", "stragglers": "rank 3"},
     "jitter: stragglers: expected a table, got 'rank 3'"),
    ({"dist": "exponential(5us)", "seed": 3},
     "jitter: unknown key 'seed' (keys: name, dist, scope, temporal, stragglers, detours)"),
    ({"name": "x", "scope": "node"}, "jitter: missing key 'dist'"),
    ({"dist": "exponential(5us)", "name": "a;b"},
     "jitter: name: must be text without ';', newlines or surrounding spaces, got 'a;b'"),
])
def test_table_errors(table, message):
    with raises(message):
        schedule_from_table(table)


def test_constructor_errors():
    with raises("ar1: rho: must be in (-1, 1), got True"):
        AR1(rho=True)
    with raises("bursty: burst: not a distribution: 'constant(1ms)'"):
        Bursty(p_enter=0.1, p_exit=0.1, burst="constant(1ms)")
    with raises("stragglers: give exactly one of 'ranks', 'count' and 'links'"):
        Stragglers(dist=STRAG)
    with raises("jitter: temporal: not a temporal model: 'iid'"):
        Schedule(dist=BASE, temporal="iid")
    with raises("jitter: dist: not a distribution: 'exponential(5us)'"):
        Schedule(dist="exponential(5us)")


@pytest.mark.parametrize("doc, message", [
    ({"jitter": [{"dist": "constant(5us)", "name": "a"}, {"dist": "constant(6us)", "name": "a"}]},
     "jitter: name: 'a' is used twice"),
    ({"jitter": [{"dist": "constant(5us)"}, {"dist": "constant(5us)"}]},
     "jitter: name: 'constant(5us)' is used twice"),  # default names collide too
    ({"jitter": []}, "jitter: expected at least one [[jitter]] table"),
    ({}, "jitter: expected at least one [[jitter]] table"),
])
def test_schedules_from_toml_errors(doc, message):
    with raises(message):
        schedules_from_toml(doc)


KEYS = ("dist, name, scope, temporal, stragglers.ranks, stragglers.count, stragglers.links, "
        "stragglers.dist, detours")


@pytest.mark.parametrize("spec, message", [
    ("exponential(5us); foo=1", f"expected key=value with a key among {KEYS}, got 'foo=1'"),
    ("exponential(5us); scope", f"expected key=value with a key among {KEYS}, got 'scope'"),
    ("exponential(5us); scope=node; scope=global", "scope given twice"),
    ("exponential(5us); dist=constant(1us)", "dist given twice"),
    ("exponential(5us); stragglers.ranks=1; stragglers.ranks=2; stragglers.dist=constant(1ms)",
     "stragglers.ranks given twice"),
    ("exponential(5us); stragglers.ranks=a; stragglers.dist=constant(1ms)",
     "stragglers.ranks: expected integers, got 'a'"),
])
def test_one_line_errors_name_the_spec(spec, message):
    with raises(f"jitter {spec!r}: {message}"):
        parse_schedule(spec)


def test_one_line_errors_from_the_table_rules():
    with raises("jitter: stragglers: missing key 'dist'"):
        parse_schedule("exponential(5us); stragglers.ranks=3")
    with raises("jitter: scope: must be one of rank, node, global, link, got 'cluster'"):
        parse_schedule("exponential(5us); scope=cluster")
    with raises(f"jitter: temporal: unknown kind 'markov' {KNOWN_TEMPORALS}"):
        parse_schedule("exponential(5us); temporal=markov(p=1)")
    with raises("jitter: expected text or a table, got 5"):
        parse_schedule(5)


def test_default_names_tell_schedules_with_the_same_dist_apart():
    doc = {"jitter": [{"dist": "constant(5us)"}, {"dist": "constant(5us)", "scope": "node"}]}
    assert [s.name for s in schedules_from_toml(doc)] == [
        "constant(5us)", "constant(5us); scope=node"]


# --- regressions found in review ---------------------------------------------------------


def test_bursty_with_very_rare_bursts_costs_only_the_requested_length():
    # Runs of ~1e10 collectives were once expanded in full before being cut (MemoryError).
    s = parse_schedule("exponential(5us); "
                       "temporal=bursty(p_enter=1e-10, p_exit=0.5, burst=constant(1ms))")
    x = s.delays(0, 0, 0, 1, 2, 5)
    assert x.shape == (2, 5) and np.all(x < 1e-3)  # P(any burst) ~ 1e-9 at this seed


def test_quotes_in_a_name_are_text_at_the_top_level_of_the_one_line_form():
    s = parse_schedule("exponential(5us); name=bob's run; scope=node")
    assert (s.name, s.scope) == ("bob's run", "node")
    assert parse_schedule(str(s)) == s


def test_default_name_may_hold_a_semicolon_and_still_round_trip(tmp_path):
    f = tmp_path / "a;b.txt"
    f.write_text("latency_us\n1\n2\n")
    s = parse_schedule(f'empirical("{f}")')
    assert schedule_from_table(s.to_table()) == s and parse_schedule(str(s)) == s
