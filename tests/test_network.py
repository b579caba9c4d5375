"""The network: its [network] table, per-hop times, and the native collectives' model
checked against the pattern recurrence (pattern_sim.finish) run on the same network."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from jitter_models.algorithms import pattern
from jitter_models.layout import node_of
from jitter_models.network import Network, Tier, doubling_crossings
from jitter_models.pattern_sim import compile_algorithm, compile_pattern, finish, hop_times
from jitter_models.units import format_duration

SLOW = Tier(alpha_s=5e-6, bandwidth_Bps=25e9)
FAST = Tier(alpha_s=1e-6, bandwidth_Bps=400e9)


def net(k: int) -> Network:
    return Network(inter=SLOW, intra=FAST, ranks_per_node=k)


def recurrence_s(network: Network, algorithm: str, collective: str, n: int, nbytes: float,
                 *, slowest: bool = False) -> float:
    """The pattern's last finish with no hop delays; ``slowest``: every hop of a step takes
    the step's slowest hop time (a synchronous step)."""
    compiled = compile_algorithm(algorithm, collective, n)
    hops = hop_times(compiled, network, nbytes)
    if slowest:
        hops = [np.full(h.shape, h.max()) for h in hops]
    return float(finish(compiled, np.zeros(n), hops).max())


# --- the table ------------------------------------------------------------------------

def test_table_gives_tiers_in_seconds_and_bytes_per_second():
    n = Network.from_table({"alpha": "2us", "bandwidth_gbps": 50,
                            "intra": {"alpha": "500ns", "bandwidth_gbps": 450}}, 4)
    assert n.inter == Tier(alpha_s=2e-6, bandwidth_Bps=50e9)
    assert n.intra == Tier(alpha_s=5e-7, bandwidth_Bps=450e9)
    assert n.ranks_per_node == 4
    same = Network.from_table({"alpha": 0, "bandwidth_gbps": 1e9}, 8)
    assert same.intra == same.inter == Tier(alpha_s=0.0, bandwidth_Bps=1e18)


def test_canonical_table():
    given = {"alpha": "2000ns", "bandwidth_gbps": 50, "intra": {"alpha": "2us",
                                                              "bandwidth_gbps": 50.0}}
    assert Network.from_table(given, 8).to_table() == {"alpha": "2us", "bandwidth_gbps": 50.0}
    two = {"alpha": "0s", "bandwidth_gbps": 12.5, "intra": {"alpha": "1.5us",
                                                            "bandwidth_gbps": 900.0}}
    assert Network.from_table(two, 2).to_table() == two


def test_round_trip_is_exact_for_every_table():
    rng = np.random.default_rng(4)
    for _ in range(3000):
        gbps = float(np.exp(rng.uniform(np.log(1e-6), np.log(1e9))))
        alpha = format_duration(float(rng.uniform(0, 1e-3)))
        table = {"alpha": alpha, "bandwidth_gbps": gbps,
                 "intra": {"alpha": "0s", "bandwidth_gbps": float(rng.uniform(1, 1e3))}}
        n = Network.from_table(table, 3)
        again = n.to_table()
        assert Network.from_table(again, 3) == n and again["alpha"] == alpha


def test_a_tier_built_in_bytes_per_second_comes_back_within_one_ulp():
    rng = np.random.default_rng(5)
    for bps in np.exp(rng.uniform(np.log(1e3), np.log(1e18), 3000)):
        tier = Tier(alpha_s=0.0, bandwidth_Bps=float(bps))
        n = Network(inter=tier, intra=tier, ranks_per_node=1)
        back = Network.from_table(n.to_table(), 1).inter.bandwidth_Bps
        assert abs(back - bps) <= np.spacing(bps)


FULL = {"alpha": "2us", "bandwidth_gbps": 50}
BAD_TABLES = [
    ({"alpha": "2us"}, "network.bandwidth_gbps: missing"),
    ({"bandwidth_gbps": 50}, "network.alpha: missing"),
    ({**FULL, "latency": "1us"}, "network.latency: unknown key (known: alpha, "
                                 "bandwidth_gbps, intra, call)"),
    ({**FULL, "alpha": "-2us"}, "network.alpha: invalid duration '-2us': durations cannot "
                                "be negative"),
    ({**FULL, "alpha": 2}, "network.alpha: invalid duration 2: a bare number needs a unit"),
    ({**FULL, "bandwidth_gbps": -1}, "network.bandwidth_gbps: must be > 0, got -1"),
    ({**FULL, "bandwidth_gbps": 0}, "network.bandwidth_gbps: must be > 0, got 0"),
    ({**FULL, "bandwidth_gbps": math.nan}, "network.bandwidth_gbps: must be > 0, got nan"),
    ({**FULL, "bandwidth_gbps": math.inf}, "network.bandwidth_gbps: must be finite"),
    ({**FULL, "bandwidth_gbps": 1e300}, "network.bandwidth_gbps: must be finite"),
    ({**FULL, "bandwidth_gbps": 10**400}, "network.bandwidth_gbps: must be finite"),
    ({**FULL, "bandwidth_gbps": "50"}, "network.bandwidth_gbps: expected a number of GB/s, "
                                       "got '50'"),
    ({**FULL, "bandwidth_gbps": True}, "network.bandwidth_gbps: expected a number"),
    ({**FULL, "intra": "fast"}, "network.intra: expected a table"),
    ({**FULL, "intra": {"alpha": "1us"}}, "network.intra.bandwidth_gbps: missing"),
    ({**FULL, "intra": {**FULL, "intra": {}}}, "network.intra.intra: unknown key (known: "
                                               "alpha, bandwidth_gbps)"),
    ({**FULL, "intra": {**FULL, "bandwidth_gbps": -3}},
     "network.intra.bandwidth_gbps: must be > 0, got -3"),
    (["alpha"], "network: expected a table"),
]


@pytest.mark.parametrize(("table", "message"), BAD_TABLES)
def test_bad_table_names_the_key(table, message):
    with pytest.raises(ValueError) as info:
        Network.from_table(table, 8)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Tier(alpha_s=-1e-6, bandwidth_Bps=1e9), "alpha_s: must be a finite number >= 0"),
    (lambda: Tier(alpha_s=0.0, bandwidth_Bps=-1.0), "bandwidth_Bps: must be a finite number "
                                                    "> 0, got -1.0"),
    (lambda: Tier(alpha_s=0.0, bandwidth_Bps=math.inf), "bandwidth_Bps: must be a finite"),
    (lambda: Network(inter=SLOW, intra=FAST, ranks_per_node=0),
     "ranks_per_node: must be an integer >= 1, got 0"),
    (lambda: Network(inter=SLOW, intra=FAST, ranks_per_node=True), "ranks_per_node: must be"),
    (lambda: Network(inter=SLOW, intra=None, ranks_per_node=2), "intra: not a Tier"),
    (lambda: Network.from_table(FULL, 0), "ranks_per_node: must be an integer >= 1, got 0"),
])
def test_bad_fields_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(message)


# --- hop times ----------------------------------------------------------------------------

def test_hop_time_picks_the_tier_by_node():
    network = net(3)
    src, dst = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    nbytes = np.arange(49.0).reshape(7, 7) * 1000
    got = network.hop_time(src, dst, nbytes)
    for a in range(7):
        for b in range(7):
            tier = FAST if node_of(a, 3) == node_of(b, 3) else SLOW
            assert got[a, b] == tier.alpha_s + nbytes[a, b] / tier.bandwidth_Bps


# --- the native model against the recurrence ------------------------------------------

def test_native_is_the_recurrence_where_every_step_uses_one_tier():
    """Ring within a node, ring with one rank per node (every hop inter), recursive
    doubling with powers of two (distances 1, 2 intra, 4, 8 inter at 4 per node): the
    recurrence with the true hop times is the native model exactly."""
    big = 1 << 30  # the ring wins (from N = 3)
    for n in range(3, 9):
        assert net(8).native_time("all_reduce", n, big) == pytest.approx(
            recurrence_s(net(8), "ring", "all_reduce", n, big), rel=1e-12)
        assert net(1).native_time("all_reduce", n, big) == pytest.approx(
            recurrence_s(net(1), "ring", "all_reduce", n, big), rel=1e-12)
    small = 1024  # recursive doubling wins
    for n, k in ((16, 4), (32, 2), (64, 8), (8, 8), (16, 1)):
        doubling = recurrence_s(net(k), "recursive_doubling", "all_reduce", n, small)
        assert doubling < recurrence_s(net(k), "ring", "all_reduce", n, small)
        assert net(k).native_time("all_reduce", n, small) == pytest.approx(doubling,
                                                                          rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8])
def test_native_all_reduce_is_the_faster_of_two_synchronous_recurrences(k):
    """Each step as slow as its slowest hop (so the ring's busbw is its bottleneck link):
    the native model is that recurrence of the faster algorithm, at every N and size."""
    network = net(k)
    chosen = set()
    for n in range(2, 41):
        for nbytes in (0, 64, 1 << 20, 1 << 30):
            ring = recurrence_s(network, "ring", "all_reduce", n, nbytes, slowest=True)
            doubling = recurrence_s(network, "recursive_doubling", "all_reduce", n, nbytes,
                                    slowest=True)
            got = network.native_time("all_reduce", n, nbytes)
            assert got == pytest.approx(min(ring, doubling), rel=1e-12, abs=0.0)
            chosen.add("ring" if ring < doubling else "doubling")
    assert chosen == {"ring", "doubling"}


def test_crossing_ring_is_as_slow_as_its_slowest_link():
    """16 ranks on 4 nodes: the pattern's own chain mixes intra and inter hops; the
    native ring runs every step at the inter tier, and its busbw is the inter bandwidth."""
    n, nbytes = 16, float(1 << 30)
    free = dataclasses.replace(net(4), inter=Tier(alpha_s=0.0, bandwidth_Bps=25e9))
    got = free.native_time("all_reduce", n, nbytes)
    assert got > recurrence_s(free, "ring", "all_reduce", n, nbytes)
    busbw = nbytes / got * 2 * (n - 1) / n
    assert busbw == pytest.approx(25e9, rel=1e-12)


@pytest.mark.parametrize("collective", ["all_gather", "reduce_scatter"])
def test_native_ring_collectives_are_the_ring_recurrence(collective):
    for k in (1, 2, 3, 8):
        for n in range(2, 20):
            want = recurrence_s(net(k), "ring", collective, n, 3e6, slowest=True)
            assert net(k).native_time(collective, n, 3e6) == pytest.approx(want, rel=1e-12)


def _steps_s(network: Network, steps: list[list[tuple[int, int]]], nbytes: float) -> float:
    """Dependent synchronous steps of (src, dst) pairs, each at its slowest hop."""
    return sum(max(float(network.hop_time(a, b, nbytes)) for a, b in step) for step in steps)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6])
def test_native_broadcast_and_all_to_all_against_their_pairs(k):
    network = net(k)
    for n in range(2, 40):
        rounds = [[(r, r + 2**j) for r in range(2**j) if r + 2**j < n]
                  for j in range(math.ceil(math.log2(n)))]
        assert network.native_time("broadcast", n, 5e5) == pytest.approx(
            _steps_s(network, rounds, 5e5), rel=1e-12)
        exchange = [[(r, (r + s) % n) for r in range(n)] for s in range(1, n)]
        assert network.native_time("all_to_all", n, 5e5) == pytest.approx(
            _steps_s(network, exchange, 5e5 / n), rel=1e-12)


def test_one_rank_and_bad_arguments():
    for collective in ("all_reduce", "all_gather", "reduce_scatter", "broadcast",
                       "all_to_all"):
        assert net(2).native_time(collective, 1, 1e9) == 0.0
    free = Network.from_table({"alpha": "0s", "bandwidth_gbps": 1e6}, 8)
    assert free.native_time("all_reduce", 4096, 0) == 0.0  # a free synchronization
    for args, message in ((("gather", 4, 1), "collective: unknown 'gather'"),
                          (("all_reduce", 0, 1), "world_size: must be an integer >= 1"),
                          (("all_reduce", 4, -1), "nbytes: must be a finite number >= 0")):
        with pytest.raises(ValueError, match=f"^{message}"):
            net(2).native_time(*args)


def test_doubling_crossings_match_the_pattern():
    for n in range(1, 101):
        steps = compile_pattern(pattern("recursive_doubling", "all_reduce", n)).steps
        for k in range(1, 13):
            want = tuple(bool(np.any(s.src // k != s.dst // k)) for s in steps)
            assert doubling_crossings(n, k) == want, (n, k)


@pytest.mark.parametrize("n", [(1 << 17) + 5, (1 << 16) + (1 << 15) - 1, 1 << 16])
def test_doubling_crossings_at_large_n(n):
    steps = compile_algorithm("recursive_doubling", "all_reduce", n).steps
    for k in (3, 6, 7, 8, 12, 100):
        want = tuple(bool(np.any(s.src // k != s.dst // k)) for s in steps)
        assert doubling_crossings(n, k) == want, (n, k)


# --- the per-call host cost ---------------------------------------------------------------

def test_call_cost_is_paid_by_every_native_call_on_one_rank_too():
    base = net(4)
    costly = dataclasses.replace(base, call_s=120e-6)
    for collective in ("all_reduce", "all_gather", "reduce_scatter", "broadcast",
                       "all_to_all"):
        assert costly.native_time(collective, 1, 1e6) == 120e-6
        for n in (2, 5, 16):
            assert costly.native_time(collective, n, 1e6) == pytest.approx(
                base.native_time(collective, n, 1e6) + 120e-6, rel=1e-12)
    rng = np.random.default_rng(3)
    pairs = rng.integers(0, 1 << 20, size=(6, 6)).astype(float)
    assert costly.all_to_all_v_time(pairs) == pytest.approx(
        base.all_to_all_v_time(pairs) + 120e-6, rel=1e-12)
    assert costly.all_to_all_v_time(np.zeros((1, 1))) == 120e-6


def test_call_cost_in_the_table_round_trips_and_bad_values_are_named():
    table = {**FULL, "call": "180us"}
    network = Network.from_table(table, 8)
    assert network.call_s == pytest.approx(180e-6, rel=1e-12)
    assert Network.from_table(network.to_table(), 8) == network
    assert "call" not in Network.from_table(FULL, 8).to_table()
    with pytest.raises(ValueError, match="^network.call: "):
        Network.from_table({**FULL, "call": "fast"}, 8)
    with pytest.raises(ValueError, match="^call_s: must be a finite number >= 0, got -1"):
        Network(inter=SLOW, intra=FAST, ranks_per_node=2, call_s=-1e-6)
