"""Per-hop jitter (scope = "link"): the schedule's link streams, how a rank's messages
get their draws, and the bad inputs named by field."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from collectives.explicit import link_delays
from jitter_models import parse_schedule, schedule_from_table
from jitter_models.algorithms import pattern
from launch.plan import Plan

LINK = "lognormal(median=1ms, sigma=0.5); scope=link"


def test_a_links_draws_depend_on_the_seed_and_the_pair_only():
    s = parse_schedule(LINK)
    a = s.link_delays(3, 0, 1, 50)
    assert np.array_equal(a, s.link_delays(3, 0, 1, 50))
    assert np.array_equal(a[:20], s.link_delays(3, 0, 1, 20))  # a prefix: paired across N
    assert not np.array_equal(a, s.link_delays(3, 1, 0, 50))  # each direction its own
    assert not np.array_equal(a, s.link_delays(4, 0, 1, 50))
    # The rank stream of a link schedule asks nothing before the collective.
    assert not s.delays(3, 0, 0, 4, 5, 2).any()


@pytest.mark.parametrize("text", [
    "exponential(1ms); scope=link; temporal=ar1(rho=0.9)",
    "exponential(1ms); scope=link; temporal=bursty(p_enter=0.2, p_exit=0.3, "
    "burst=constant(5ms))",
    "mixture(0.7*exponential(1ms), 0.3*lognormal(median=2ms, sigma=1)); scope=link",
    "mixture(0.9*exponential(1ms), 0.1*constant(9ms)); scope=link; "
    "temporal=bursty(p_enter=0.1, p_exit=0.5, burst=uniform(1ms, 2ms))",
])
def test_a_links_kth_draw_is_the_same_however_many_messages_follow(text):
    # Paired across N: at a larger world size a link carries more messages per run, and
    # its first k must still get the same draws (before the fix, mixtures and bursty
    # redrew every position when the length changed).
    s = parse_schedule(text)
    long = s.link_delays(5, 0, 1, 4000)
    for k in (1, 7, 300, 3999):
        assert np.array_equal(long[:k], s.link_delays(5, 0, 1, k)), k


def test_a_slow_link_is_a_straggler_with_its_own_law():
    s = schedule_from_table({"dist": "constant(10us)", "scope": "link",
                             "stragglers": {"links": [[0, 1]], "dist": "constant(500us)"}})
    assert set(s.link_delays(0, 0, 1, 5)) == {500e-6}
    assert set(s.link_delays(0, 1, 0, 5)) == {10e-6}
    assert parse_schedule(str(s)) == s  # the one-line form carries the links
    assert "stragglers.links=0-1" in str(s)


def test_temporal_structure_runs_along_each_links_messages():
    s = parse_schedule("exponential(1ms); scope=link; temporal=ar1(rho=0.95)")
    x = s.link_delays(0, 2, 3, 4000)
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    # iid draws would give a lag-1 correlation of 0 +- 1/sqrt(4000) = 0.016 (0.5 is 30
    # standard deviations away: this cannot pass by chance); ar1 with rho 0.95 keeps a
    # high correlation under the exponential marginal.
    assert lag1 > 0.5, lag1


@pytest.mark.parametrize("table,message", [
    ({"dist": "constant(1us)", "scope": "link",
      "stragglers": {"ranks": [1], "dist": "constant(2us)"}},
     "jitter: stragglers: links go with scope = 'link'"),
    ({"dist": "constant(1us)", "stragglers": {"links": [[0, 1]], "dist": "constant(2us)"}},
     "jitter: stragglers: links go with scope = 'link'"),
    ({"dist": "constant(1us)", "scope": "link",
      "stragglers": {"links": [[0, 0]], "dist": "constant(2us)"}},
     "stragglers: links: expected a non-empty list of [sender, receiver] rank pairs"),
])
def test_bad_straggler_links_are_named(table, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        schedule_from_table(table)


def test_link_scope_with_a_native_collective_is_bad_input_naming_both():
    with pytest.raises(ValueError, match=r"^algorithm: 'native' cannot take jitter with "
                                         r"scope = 'link'"):
        Plan(workload="microbench", out_dir="x", jitter="constant(1ms); scope=link")
    Plan(workload="microbench", out_dir="x", jitter="constant(1ms); scope=link",
         algorithms=("ring",))  # explicit: fine


def _fake(algorithm: str, world_size: int, rank: int) -> SimpleNamespace:
    """What link_delays reads of an Explicit collective, from the real pattern."""
    links, count, sends = [], {}, []
    for _, out, _ in pattern(algorithm, "all_reduce", world_size).rank_steps(rank):
        for t in out:
            if t.dst not in count:
                count[t.dst] = 0
                links.append(t.dst)
            sends.append((t.dst, count[t.dst]))
            count[t.dst] += 1
    return SimpleNamespace(links=links, messages_per_link=[count[d] for d in links],
                           sends=sends)


def test_the_kth_message_on_a_link_gets_the_links_kth_draw_across_the_run():
    s = parse_schedule(LINK)
    ring, rd = _fake("ring", 4, 0), _fake("recursive_doubling", 4, 0)
    tables, clipped = link_delays(s, 7, 0, [(ring, 3), (rd, 2)])
    assert clipped == 0 and [t.shape for t in tables] == [(3, 6), (2, 2)]
    ns = {dst: s.link_delays_ns(7, 0, dst, 100)[0] for dst in (1, 2)}
    # Ring: rank 0 sends 6 messages per call, all to rank 1: the call's draws in order.
    assert np.array_equal(tables[0].reshape(-1), ns[1][:18])
    # Recursive doubling at N = 4: rank 0 sends to 1, then to 2. Link 0->1 goes on after
    # the ring's 18 messages; link 0->2 starts at its first draw.
    assert np.array_equal(tables[1][:, 0], ns[1][18:20])
    assert np.array_equal(tables[1][:, 1], ns[2][:2])
