"""Communication patterns of the explicit algorithms (jitter_models.algorithms).

Every result is exact: inputs are small integers (in int64 and float32, where every partial
sum, max, min and product over at most 9 ranks is representable), so ``execute`` must equal
the numpy reduction bit for bit, whatever order the algorithm combines in.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import pytest

from jitter_models.algorithms import (
    ALGORITHMS,
    COLLECTIVES,
    Pattern,
    Transfer,
    check_algorithm,
    chunk_bounds,
    execute,
    finish_times,
    pattern,
)

WORLD_SIZES = range(1, 10)
RANKS_PER_NODE = (1, 2, 3, 4)
REDUCE = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}


@dataclass(frozen=True)
class Config:
    """One buildable pattern: algorithm, collective, world size, ranks per node."""

    algorithm: str
    collective: str
    n: int
    k: int | None = None

    def build(self) -> Pattern:
        return pattern(self.algorithm, self.collective, self.n, self.k)

    def __str__(self) -> str:
        k = f"-k{self.k}" if self.k is not None else ""
        return f"{self.algorithm}-{self.collective}-n{self.n}{k}"


CONFIGS = [
    Config(algorithm, collective, n, k)
    for algorithm, collectives in ALGORITHMS.items() if algorithm != "native"
    for collective in collectives
    for n in WORLD_SIZES
    for k in (RANKS_PER_NODE if algorithm == "hierarchical" else (None,))
]


def _counts(n: int) -> list[int]:
    return sorted({c for c in (1, n - 1, n, 7 * n + 3) if c >= 1})


def _expected(config: Config, inputs: list[np.ndarray], redop: str) -> list[np.ndarray]:
    n = config.n
    if config.collective == "all_gather":
        return [np.concatenate(inputs)] * n
    if config.collective == "all_to_all":  # rank r's output block j: rank j's input block r
        return [np.concatenate([np.split(x, n)[r] for x in inputs]) for r in range(n)]
    total = REDUCE[redop](np.stack(inputs), axis=0).astype(inputs[0].dtype)
    if config.collective == "reduce_scatter":
        return np.split(total, n)
    return [total] * n


@pytest.mark.parametrize("redop", list(REDUCE))
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_execute_equals_numpy_reduction(config: Config, redop: str):
    p = config.build()
    rng = np.random.default_rng(20240611 + config.n)
    for count in _counts(config.n):
        for dtype in (np.int64, np.float32):
            inputs = [rng.integers(-4, 5, count).astype(dtype) for _ in range(config.n)]
            if config.collective in ("reduce_scatter", "all_to_all"):
                inputs = [rng.integers(-4, 5, config.n * count).astype(dtype)
                          for _ in range(config.n)]
            expected = _expected(config, inputs, redop)
            buffers = inputs
            if config.collective == "all_gather":  # rank r's input in chunk r, rest garbage
                buffers = []
                for r, x in enumerate(inputs):
                    b = np.full(config.n * count, 99, dtype=dtype)
                    b[r * count:(r + 1) * count] = x
                    buffers.append(b)
            before = [b.copy() for b in buffers]
            got = execute(p, buffers, redop)
            for r in range(config.n):
                assert got[r].dtype == dtype
                assert np.array_equal(got[r], expected[r]), (count, dtype, r)
            assert all(np.array_equal(a, b) for a, b in zip(before, buffers))  # not modified


@dataclass(frozen=True)
class Shape:
    """Expected number of steps and depth (longest chain of messages) of one pattern."""

    config: Config
    steps: int
    depth: int


def _log2(n: int) -> int:
    return n.bit_length() - 1


SHAPES = (
    [Shape(Config("ring", "all_reduce", n), 2 * (n - 1), 2 * (n - 1)) for n in WORLD_SIZES]
    + [Shape(Config("ring", c, n), n - 1, n - 1) for c in ("all_gather", "reduce_scatter")
       for n in WORLD_SIZES]
    + [Shape(Config("recursive_doubling", "all_reduce", n), _log2(n), _log2(n))
       for n in (1, 2, 4, 8)]
    # Not a power of two: fold, log2(p) exchanges, unfold = log2(p) + 2 steps. The fold's
    # hop only lengthens the chain by one more when, in the last exchange, a folded rank's
    # partner was folded too (rem > p/2, here N = 7); otherwise the depth is log2(p) + 1.
    + [Shape(Config("recursive_doubling", "all_reduce", n), _log2(n) + 2, d)
       for n, d in ((3, 2), (5, 3), (6, 3), (7, 4), (9, 4))]
    # Halving at distance 1, 2 ... p/2, doubling back: 2 log2 p steps; not a power of two,
    # + fold and unfold, and the chain takes every step (the folded rank 1's chain hops at
    # each of them: to 1 ^ (p - 1) in the halving and back in the doubling).
    + [Shape(Config("rabenseifner", "all_reduce", n), 2 * _log2(n) + 2 * (n & (n - 1) > 0),
             2 * _log2(n) + 2 * (n & (n - 1) > 0)) for n in WORLD_SIZES]
    # A single binary tree of height floor(log2 N): up, then down.
    + [Shape(Config("tree", "all_reduce", n), 2 * _log2(n), 2 * _log2(n)) for n in WORLD_SIZES]
    + [
        Shape(Config("hierarchical", "all_reduce", 8, 4), 6, 6),  # 2 up, ring of 2, 2 down
        Shape(Config("hierarchical", "all_reduce", 9, 3), 6, 6),  # 1 up, ring of 3, 1 down
        # nodes of 4, 4, 1: the lone leader starts the ring early but still waits for both
        Shape(Config("hierarchical", "all_reduce", 9, 4), 8, 8),
        Shape(Config("hierarchical", "all_reduce", 4, 1), 6, 6),  # a ring
        Shape(Config("hierarchical", "all_reduce", 4, 4), 4, 4),  # a tree
        Shape(Config("hierarchical", "all_reduce", 1, 4), 0, 0),
    ]
)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(s.config))
def test_step_count_and_depth(shape: Shape):
    p = shape.config.build()
    assert len(p.steps) == shape.steps
    assert p.depth() == shape.depth


def _longest_chain(p: Pattern) -> int:
    """Depth computed independently: a message depends on every message its sender
    received in its earlier steps; the chain length of a message is 1 + its deps' max."""
    held = [0] * p.world_size  # longest chain that has reached each rank so far
    for step in p.steps:
        lengths = [held[t.src] + 1 for t in step]
        for t, length in zip(step, lengths):
            held[t.dst] = max(held[t.dst], length)
    return max(held)


@dataclass(frozen=True)
class Timing:
    """finish_times with hop_time = 0 and every hop_delay = d: the slowest rank."""

    config: Config
    hops: int  # finish time of the slowest rank, in units of d


TIMINGS = [
    Timing(Config("ring", "all_reduce", 4), 6),
    Timing(Config("recursive_doubling", "all_reduce", 4), 2),  # log2 N: link jitter adds 2d
    Timing(Config("tree", "all_reduce", 4), 4),  # height 2: two levels up, two down
    Timing(Config("rabenseifner", "all_reduce", 4), 4),  # one send a step: 2 log2 N
    Timing(Config("rabenseifner", "all_reduce", 6), 6),  # + fold in and out
    Timing(Config("tree", "all_reduce", 3), 2),  # root's two broadcast sends cost d, not 2d
    Timing(Config("ring", "reduce_scatter", 5), 4),
    Timing(Config("hierarchical", "all_reduce", 8, 4), 6),
]


@pytest.mark.parametrize("timing", TIMINGS, ids=lambda t: str(t.config))
def test_constant_hop_delay(timing: Timing):
    d = 2.5
    times = finish_times(timing.config.build(), hop_delay=lambda k, j: d, hop_time=0.0)
    assert times.max() == pytest.approx(timing.hops * d)


def test_sends_of_one_step_wait_concurrently():
    p = pattern("tree", "all_reduce", 3)
    (k, sends, receives), = [s for s in p.rank_steps(0) if len(s[1]) == 2]
    assert {t.dst for t in sends} == {1, 2} and receives == ()
    d = 1.0
    times = finish_times(p, hop_delay=lambda k, j: d, hop_time=0.0)
    # up: both children depart at d; down: rank 0 starts at d, both sends depart at 2d
    assert times.tolist() == [2 * d, 2 * d, 2 * d]


def test_finish_times_by_hand():
    # tree on 3 ranks: step 0 is 1->0 and 2->0, step 1 is 0->1 and 0->2
    p = pattern("tree", "all_reduce", 3)
    assert p.steps[0] == (Transfer(1, 0, 0, 1, True), Transfer(2, 0, 0, 1, True))
    delays = {(0, 0): 1.0, (0, 1): 5.0, (1, 0): 1.0, (1, 1): 3.0}
    times = finish_times(p, hop_delay=lambda k, j: delays[k, j], hop_time=10.0)
    # 1 departs 1, 2 departs 5 -> rank 0 has both at 15; departs 16 and 18 -> 26, 28;
    # rank 0 finishes its step 1 at its own last departure, 18
    assert times.tolist() == [18.0, 26.0, 28.0]


def test_receive_never_ends_a_step_before_it_starts():
    # rank 0 sends late at step 0 (departs 7); rank 2's independent message of step 1 has
    # been waiting since 1: rank 0 takes it at once, at 7, not back in time at 1
    p = Pattern("ring", "all_reduce", 3, 1,
                ((Transfer(0, 1, 0, 1, True),), (Transfer(2, 0, 0, 1, True),)))
    times = finish_times(p, hop_delay=lambda k, j: 7.0 if k == 0 else 0.0, hop_time=1.0)
    assert times.tolist() == [7.0, 8.0, 0.0]


def test_array_valued_hop_delay_matches_one_sample_at_a_time():
    p = pattern("hierarchical", "all_reduce", 7, 3)
    rng = np.random.default_rng(7)
    draws = rng.exponential(size=(len(p.steps), max(map(len, p.steps)), 5))
    together = finish_times(p, hop_delay=lambda k, j: draws[k, j], hop_time=0.5)
    assert together.shape == (7, 5)
    for s in range(5):
        alone = finish_times(p, hop_delay=lambda k, j, s=s: float(draws[k, j, s]), hop_time=0.5)
        assert np.array_equal(together[:, s], alone)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_structure(config: Config):
    p = config.build()
    assert p.messages() == sum(len(step) for step in p.steps)
    assert p.depth() == _longest_chain(p)
    per_link: dict[tuple[int, int], list[int]] = {}
    for step, indices in zip(p.steps, p.link_index()):
        assert len(indices) == len(step) > 0
        for t, i in zip(step, indices):
            assert t.src != t.dst
            assert 0 <= t.src < p.world_size and 0 <= t.dst < p.world_size
            assert 0 <= t.lo < t.hi <= p.n_chunks
            per_link.setdefault((t.src, t.dst), []).append(i)
    assert all(v == list(range(len(v))) for v in per_link.values())
    # rank_steps is the steps seen from one rank, in order, each transfer seen twice in all
    seen = 0
    for r in range(p.world_size):
        ks = [k for k, _, _ in p.rank_steps(r)]
        assert ks == sorted(ks)
        for k, sends, receives in p.rank_steps(r):
            assert all(t.src == r and t in p.steps[k] for t in sends)
            assert all(t.dst == r and t in p.steps[k] for t in receives)
            seen += len(sends) + len(receives)
    assert seen == 2 * p.messages()


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_hierarchical_limits_are_ring_and_tree(n: int):
    assert pattern("hierarchical", "all_reduce", n, 1).steps == \
        pattern("ring", "all_reduce", n).steps
    assert pattern("hierarchical", "all_reduce", n, n).steps == \
        pattern("tree", "all_reduce", n).steps


def test_hierarchical_nodes_share_step_slots():
    # nodes {0,1,2,3} and {4,5,6,7}: each node's tree uses the same global steps
    p = pattern("hierarchical", "all_reduce", 8, 4)
    assert p.n_chunks == 2
    assert p.steps[0] == (Transfer(3, 1, 0, 2, True), Transfer(7, 5, 0, 2, True))
    assert {(t.src, t.dst) for t in p.steps[1]} == {(1, 0), (2, 0), (5, 4), (6, 4)}
    assert {(t.src, t.dst) for step in p.steps[2:4] for t in step} == {(0, 4), (4, 0)}


def _bytes_sent(p: Pattern, crossing=lambda src, dst: True) -> list[float]:
    """Per rank, the share of the working buffer it sends (over messages ``crossing``)."""
    sent = [0.0] * p.world_size
    for step in p.steps:
        for t in step:
            if crossing(t.src, t.dst):
                sent[t.src] += (t.hi - t.lo) / p.n_chunks
    return sent


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64])
def test_rabenseifner_is_bandwidth_optimal(n: int):
    # each rank sends 1/2 + 1/4 + ... + 1/p of the buffer twice: 2 (p - 1) / p
    assert _bytes_sent(pattern("rabenseifner", "all_reduce", n)) == \
        pytest.approx([2 * (n - 1) / n] * n, rel=1e-12)


def test_rabenseifner_keeps_the_largest_messages_inside_a_node():
    # distance 1 first: with 8 consecutive ranks a node, only distances 8, 16, 32 (1/16,
    # 1/32, 1/64 of the buffer, each way) cross nodes; recursive halving at distance p/2
    # first would send half the buffer across
    p = pattern("rabenseifner", "all_reduce", 64)
    inter = _bytes_sent(p, lambda src, dst: src // 8 != dst // 8)
    assert inter == pytest.approx([2 * (1 / 16 + 1 / 32 + 1 / 64)] * 64, rel=1e-12)
    assert [t.hi - t.lo for t in p.steps[0][:2]] == [32, 32]  # half of 64 chunks, 0 <-> 1


def test_rabenseifner_leaves_rank_q_the_bit_reversed_chunk():
    # after the halving (the first log2 p steps) rank q holds chunk bitreverse(q) reduced:
    # its last halving receive is that chunk, of one chunk
    p = pattern("rabenseifner", "all_reduce", 8)
    last = {t.dst: (t.lo, t.hi) for t in p.steps[2]}
    assert [last[q] for q in range(8)] == [(c, c + 1) for c in (0, 4, 2, 6, 1, 5, 3, 7)]
    assert all(t.reduce for step in p.steps[:3] for t in step)
    assert not any(t.reduce for step in p.steps[3:] for t in step)


@pytest.mark.parametrize("count", range(0, 21))
@pytest.mark.parametrize("n_chunks", range(1, 10))
def test_chunk_bounds_like_array_split(count: int, n_chunks: int):
    parts = np.array_split(np.arange(count), n_chunks)
    starts = np.cumsum([0] + [len(x) for x in parts])
    assert chunk_bounds(count, n_chunks) == list(zip(starts[:-1].tolist(), starts[1:].tolist()))


ERRORS = [
    (lambda: pattern("foo", "all_reduce", 4),
     "algorithm: unknown 'foo' (known: native, ring, recursive_doubling, rabenseifner, tree, "
     "hierarchical, pairwise)"),
    (lambda: pattern("tree", "all_gather", 4),
     "algorithm: 'tree' does not implement all_gather (tree implements: all_reduce)"),
    (lambda: check_algorithm("ring", "broadcast"),
     "algorithm: 'ring' does not implement broadcast (ring implements: all_reduce, "
     "all_gather, reduce_scatter)"),
    (lambda: check_algorithm("native", "gather"),
     "collective: unknown 'gather' (known: all_reduce, all_gather, reduce_scatter, "
     "all_to_all, broadcast)"),
    (lambda: pattern("native", "all_reduce", 4),
     "algorithm: 'native' has no pattern (it is the backend's own call)"),
    (lambda: pattern("hierarchical", "all_reduce", 4),
     "ranks_per_node: hierarchical needs an integer >= 1, got None"),
    (lambda: pattern("hierarchical", "all_reduce", 4, 0),
     "ranks_per_node: hierarchical needs an integer >= 1, got 0"),
    (lambda: pattern("ring", "all_reduce", 0), "world_size: must be an integer >= 1, got 0"),
    (lambda: execute(pattern("ring", "all_reduce", 2), [np.zeros(3)] * 2, "avg"),
     "redop: unknown 'avg' (known: sum, max, min, prod)"),
    (lambda: execute(pattern("ring", "reduce_scatter", 2), [np.zeros(3)] * 2),
     "inputs: reduce_scatter needs a multiple of world_size (2) elements, got 3"),
    (lambda: Pattern("ring", "all_reduce", 2, 2, ((Transfer(0, 0, 0, 1, True),),)),
     "steps: step 0: Transfer(src=0, dst=0, lo=0, hi=1, reduce=True) sends to itself"),
    (lambda: Pattern("ring", "all_reduce", 2, 2, ((Transfer(0, 2, 0, 1, True),),)),
     "steps: step 0: Transfer(src=0, dst=2, lo=0, hi=1, reduce=True) has a rank outside 0..1"),
    (lambda: Pattern("ring", "all_reduce", 2, 2, ((Transfer(0, 1, 1, 3, True),),)),
     "steps: step 0: Transfer(src=0, dst=1, lo=1, hi=3, reduce=True) reaches past n_chunks (2)"),
    (lambda: Pattern("ring", "all_reduce", 3, 2,
                     ((Transfer(0, 2, 0, 2, False), Transfer(1, 2, 1, 2, False)),)),
     "steps: step 0: two receives overwrite the same chunk of rank 2"),
    (lambda: Pattern("ring", "all_reduce", 2, 2, ((),)), "steps: step 0 is empty"),
    (lambda: Pattern("ring", "all_gather", 2, 1, ()),
     "n_chunks: all_gather needs n_chunks == world_size (2), got 1"),
    (lambda: Transfer(0, 1, 2, 2, True), "Transfer: needs 0 <= lo < hi, got lo=2, hi=2"),
]


@pytest.mark.parametrize("call, message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_errors(call, message: str):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()


def test_reducing_receives_may_share_chunks():
    # two children reducing into one parent in one step is legal; it is the tree's up step
    p = Pattern("tree", "all_reduce", 3, 1,
                ((Transfer(1, 0, 0, 1, True), Transfer(2, 0, 0, 1, True)),))
    got = execute(p, [np.array([1]), np.array([2]), np.array([4])])
    assert got[0].tolist() == [7]


def test_check_algorithm_accepts_every_declared_pair():
    # native: every collective of collectives.ops, the patterned ones among them
    assert set(ALGORITHMS["native"]) == set(COLLECTIVES) | {"broadcast"}
    assert "all_to_all" in COLLECTIVES and ALGORITHMS["pairwise"] == ("all_to_all",)
    for algorithm, collectives in ALGORITHMS.items():
        for collective in collectives:
            assert check_algorithm(algorithm, collective) == algorithm


def test_patterns_are_frozen_hashable_and_cached():
    p = pattern("recursive_doubling", "all_reduce", 6)
    assert pattern("recursive_doubling", "all_reduce", 6) is p
    assert pattern("recursive_doubling", "all_reduce", 6, ranks_per_node=2) is p  # ignored
    assert pattern("hierarchical", "all_reduce", 6, 2) is pattern("hierarchical", "all_reduce",
                                                                 6, 2)
    assert p.ranks_per_node is None and pattern("hierarchical", "all_reduce", 6, 2) \
        .ranks_per_node == 2
    rebuilt = Pattern(p.algorithm, p.collective, p.world_size, p.n_chunks,
                      [list(step) for step in p.steps])  # lists are frozen into tuples
    assert rebuilt == p and hash(rebuilt) == hash(p)
    assert len({p, rebuilt, pattern("ring", "all_reduce", 6)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.world_size = 7  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.steps[0][0].src = 3  # type: ignore[misc]


def test_world_size_one_has_no_steps():
    for algorithm, collectives in ALGORITHMS.items():
        if algorithm == "native":
            continue
        for collective in collectives:
            p = pattern(algorithm, collective, 1, 1)
            assert p.steps == () and p.messages() == 0 and p.depth() == 0
            assert finish_times(p).tolist() == [0.0]
            assert execute(p, [np.array([3, -1])])[0].tolist() == [3, -1]
