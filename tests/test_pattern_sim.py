"""The vectorized recurrence against two references written apart from it (the event
simulation and pattern.finish_times), the array builders against the built patterns, and
the hop delays against what real ranks draw (collectives.explicit.link_delays)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from collectives.explicit import Explicit, link_delays
from jitter_models import parse_schedule
from jitter_models.algorithm_builders import BUILDERS
from jitter_models.algorithms import finish_times, pattern
from jitter_models.network import Network, Tier
from jitter_models.pattern_sim import (
    compile_algorithm,
    compile_pattern,
    finish,
    finish_events,
    hop_times,
    link_delays_bulk,
    link_delays_exact,
)

NET = Network(inter=Tier(alpha_s=3e-6, bandwidth_Bps=25e9),
              intra=Tier(alpha_s=7e-7, bandwidth_Bps=400e9), ranks_per_node=3)


def cases(sizes: range, per_node: tuple[int, ...]) -> list[tuple[str, str, int, int]]:
    return [(a, c, n, k) for a, c in BUILDERS for n in sizes
            for k in (per_node if a == "hierarchical" else (3,))]


ALL = cases(range(1, 18), (1, 2, 3, 4))


def _same_arrays(a, b) -> None:
    assert a.world_size == b.world_size and a.messages == b.messages
    assert len(a.steps) == len(b.steps)
    for s, t in zip(a.steps, b.steps):
        for name in ("src", "dst", "frac", "link_index"):
            np.testing.assert_array_equal(getattr(s, name), getattr(t, name), err_msg=name)
        assert (s.kind, s.shift, s.unique_src, s.unique_dst) == (
            t.kind, t.shift, t.unique_src, t.unique_dst)


@pytest.mark.parametrize(("algorithm", "collective", "n", "k"),
                         cases(range(1, 34), (1, 2, 3, 5, 8)))
def test_array_builders_are_the_patterns(algorithm, collective, n, k):
    p = pattern(algorithm, collective, n, k)
    compiled = compile_pattern(p)
    _same_arrays(compile_algorithm(algorithm, collective, n, k), compiled)
    assert compiled.messages == p.messages()
    for step, s in zip(p.steps, compiled.steps):
        assert s.frac.tolist() == [(t.hi - t.lo) / p.n_chunks for t in step]


def test_step_kinds_and_caches():
    ring = compile_algorithm("ring", "all_reduce", 6)
    assert {(s.kind, s.shift) for s in ring.steps} == {("shift", 1)}
    doubling = compile_algorithm("recursive_doubling", "all_reduce", 8)
    assert [s.kind for s in doubling.steps] == ["permutation"] * 2 + ["shift"]  # q ^ 4
    rabenseifner = compile_algorithm("rabenseifner", "all_reduce", 8)
    assert [s.kind for s in rabenseifner.steps] == (["permutation"] * 2 + ["shift"] * 2
                                                    + ["permutation"] * 2)
    assert [s.link_index.tolist() for s in rabenseifner.steps] == [[0] * 8] * 3 + [[1] * 8] * 3
    tree = compile_algorithm("tree", "all_reduce", 7)
    assert [(s.unique_src, s.unique_dst) for s in tree.steps] == [(True, False)] * 2 + [
        (False, True)] * 2
    p = pattern("ring", "all_reduce", 5)
    assert compile_pattern(p) is compile_pattern(p)
    assert compile_algorithm("tree", "all_reduce", 7) is tree


@pytest.mark.parametrize(("algorithm", "collective", "n", "k"), ALL)
def test_three_simulations_agree_from_a_common_start(algorithm, collective, n, k):
    """finish, the event simulation and pattern.finish_times on the same random hop delays
    and one hop time (what finish_times takes): the same numbers, exactly."""
    p = pattern(algorithm, collective, n, k)
    compiled = compile_pattern(p)
    rng = np.random.default_rng([n, k, len(algorithm), len(collective)])
    delays = [rng.exponential(2e-6, s.src.size) for s in compiled.steps]
    hop = float(rng.uniform(1e-6, 5e-6))
    want = finish_times(p, lambda kk, j: delays[kk][j], hop) if p.steps else np.zeros(n)
    got = finish(compiled, np.zeros(n), [np.full(s.src.size, hop) for s in compiled.steps],
                 delays)
    events = finish_events(p, np.zeros(n), lambda kk, j: hop, lambda kk, j: delays[kk][j])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(events, want)


@pytest.mark.parametrize(("algorithm", "collective", "n", "k"), ALL)
def test_recurrence_is_the_event_simulation(algorithm, collective, n, k):
    """Random start times, two-tier hop times of the bytes each transfer carries, random
    hop delays: finish and the event simulation give the same numbers, exactly."""
    p = pattern(algorithm, collective, n, k)
    compiled = compile_algorithm(algorithm, collective, n, k)
    network = Network(inter=NET.inter, intra=NET.intra, ranks_per_node=k)
    rng = np.random.default_rng([n, k, 7])
    start = rng.uniform(0, 20e-6, n)
    hops = hop_times(compiled, network, 1 << 20)
    delays = [rng.lognormal(np.log(2e-6), 1.0, s.src.size) for s in compiled.steps]
    got = finish(compiled, start, hops, delays)
    events = finish_events(p, start, lambda kk, j: hops[kk][j], lambda kk, j: delays[kk][j])
    np.testing.assert_array_equal(got, events)
    assert np.all(got >= start)
    np.testing.assert_array_equal(finish(compiled, start, hops),
                                  finish(compiled, start, hops, [0 * d for d in delays]))


def test_hop_times_are_the_bytes_each_transfer_carries():
    p = pattern("hierarchical", "all_reduce", 11, 3)
    hops = hop_times(compile_pattern(p), NET, 3e6)
    for step, h in zip(p.steps, hops):
        want = [NET.hop_time(t.src, t.dst, 3e6 * (t.hi - t.lo) / p.n_chunks) for t in step]
        np.testing.assert_array_equal(h, want)


def test_one_rank_and_bad_shapes():
    one = compile_algorithm("ring", "all_reduce", 1)
    assert one.steps == () and one.messages == 0
    np.testing.assert_array_equal(finish(one, [4e-6], []), [4e-6])
    ring = compile_algorithm("ring", "all_reduce", 4)
    hops = hop_times(ring, NET, 100)
    with pytest.raises(ValueError, match=r"^start: expected shape \(4,\)"):
        finish(ring, np.zeros(3), hops)
    with pytest.raises(ValueError, match="^hop_time: expected one array per step"):
        finish(ring, np.zeros(4), hops[:-1])
    with pytest.raises(ValueError, match="^hop_delay: expected one array per step"):
        finish(ring, np.zeros(4), hops, [np.zeros((1, 4))] * len(hops))
    with pytest.raises(ValueError, match="^world_size: must be an integer >= 1"):
        compile_algorithm("ring", "all_reduce", 0)
    with pytest.raises(ValueError, match="^ranks_per_node: hierarchical needs an integer >= 1"):
        compile_algorithm("hierarchical", "all_reduce", 4)


# --- hop delays ---------------------------------------------------------------------------

LINK = ("lognormal(median=2us, sigma=0.5); scope=link; temporal=ar1(rho=0.9); "
        "stragglers.links=0-1,3-2; stragglers.dist=exponential(50us)")


def _rank_view(compiled, per_step: list[np.ndarray], rank: int) -> np.ndarray:
    """One rank's sends of each call, in pattern order (Explicit.sends' columns)."""
    return np.concatenate([d[:, s.src == rank] for s, d in zip(compiled.steps, per_step)],
                          axis=1)


@pytest.mark.parametrize(("algorithm", "collective", "n", "k"), [
    ("ring", "all_reduce", 5, 1), ("ring", "all_gather", 4, 1),
    ("ring", "reduce_scatter", 3, 1), ("recursive_doubling", "all_reduce", 6, 1),
    ("rabenseifner", "all_reduce", 6, 1),
    ("tree", "all_reduce", 7, 1), ("hierarchical", "all_reduce", 8, 3),
    ("hierarchical", "all_reduce", 4, 1)])
def test_exact_delays_are_what_real_ranks_draw(algorithm, collective, n, k):
    """collectives.explicit.link_delays on a real Explicit (its counting of messages per
    link across calls and steps), on a stand-in backend with no communication."""
    schedule, calls = parse_schedule(LINK), 4
    compiled = compile_algorithm(algorithm, collective, n, k)
    ours = link_delays_exact(schedule, 11, compiled, calls)
    assert [d.shape for d in ours] == [(calls, s.src.size) for s in compiled.steps]
    for rank in range(n):
        backend = SimpleNamespace(world_size=n, rank=rank,
                                  empty=lambda count, dtype: np.empty(count, np.float32))
        ex = Explicit(backend, algorithm=algorithm, collective=collective, count=6 * n,
                      dtype="float32", ranks_per_node=k)
        (theirs,), clipped = link_delays(schedule, 11, rank, [(ex, calls)])
        mine = _rank_view(compiled, ours, rank)
        assert clipped == 0 and theirs.shape == mine.shape
        np.testing.assert_array_equal(np.rint(mine * 1e9).astype(np.int64), theirs)


def test_exact_delays_run_on_along_each_link():
    """Ring at N = 3: link 0->1 carries 4 messages per call, so call c's message i is
    the link's draw 4c + i (AR(1): consecutive draws are correlated, order matters)."""
    schedule = parse_schedule(LINK)
    ours = link_delays_exact(schedule, 2, compile_algorithm("ring", "all_reduce", 3), 3)
    stream = schedule.link_delays(2, 0, 1, 12)
    np.testing.assert_array_equal(np.stack([d[:, 0] for d in ours], axis=1).ravel(), stream)


def test_bulk_delays_follow_the_link_law():
    """Per message the law of the link (AR(1) keeps the lognormal marginal), straggler
    links their own, drawn per step in step order. KS tests at a fixed seed; each fails
    falsely with probability 1e-3."""
    schedule = parse_schedule(LINK)
    compiled = compile_algorithm("ring", "all_reduce", 64)
    rng = np.random.default_rng(3)
    draws = [d for _ in range(5) for d in link_delays_bulk(schedule, rng, compiled)]
    assert [d.shape for d in draws] == [(64,)] * (5 * len(compiled.steps))
    flat = np.concatenate(draws)
    slow = np.concatenate([s.src == 0 for s in compiled.steps] * 5)
    # 0 -> 1 is a straggler link; 3 -> 2 is not in a ring
    assert stats.kstest(flat[~slow], stats.lognorm(s=0.5, scale=2e-6).cdf).pvalue > 1e-3
    assert stats.kstest(flat[slow], stats.expon(scale=50e-6).cdf).pvalue > 1e-3
    assert stats.kstest(flat[~slow], stats.expon(scale=50e-6).cdf).pvalue < 1e-3  # power


def test_streamed_delays_drive_the_recurrence_like_a_list():
    """finish takes the per-step iterator as it takes the list of the same draws, and
    refuses one a step short or long, with None for a step, or a step of the wrong size."""
    schedule = parse_schedule(LINK)
    compiled = compile_algorithm("ring", "all_reduce", 9)
    hops = hop_times(compiled, NET, 4096)
    start = np.linspace(0, 1e-5, 9)
    listed = list(link_delays_bulk(schedule, np.random.default_rng(8), compiled))
    streamed = finish(compiled, start, hops, link_delays_bulk(
        schedule, np.random.default_rng(8), compiled))
    np.testing.assert_array_equal(streamed, finish(compiled, start, hops, listed))
    assert np.all(streamed > finish(compiled, start, hops))
    for wrong in (listed[:-1], listed + listed[:1], [None] * len(listed),
                  listed[:-1] + [listed[-1][:-1]]):
        with pytest.raises(ValueError, match="^hop_delay: expected one array per step"):
            finish(compiled, start, hops, iter(wrong))


def test_delays_need_a_link_schedule():
    compiled = compile_algorithm("ring", "all_reduce", 4)
    rank_scoped = parse_schedule("lognormal(median=2us, sigma=0.5)")
    with pytest.raises(ValueError, match="link delays need scope = 'link'"):
        link_delays_exact(rank_scoped, 0, compiled, 1)
    with pytest.raises(ValueError, match="link delays need scope = 'link'"):
        link_delays_bulk(rank_scoped, np.random.default_rng(0), compiled)
    with pytest.raises(ValueError, match="^n_calls: must be an integer >= 0"):
        link_delays_exact(parse_schedule(LINK), 0, compiled, -1)
