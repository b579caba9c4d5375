"""Node membership: one function decides which ranks share a node-scoped draw, and the
model counts the same nodes."""

from __future__ import annotations

import numpy as np
import pytest

from jitter_models import Stragglers, node_of, parse, parse_schedule


def test_node_of_is_blocks_of_consecutive_ranks():
    assert [node_of(r, 3) for r in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert [node_of(r, 1) for r in range(4)] == [0, 1, 2, 3]
    assert node_of(np.int64(17), 8) == 2


@pytest.mark.parametrize("rank, k, message", [
    (-1, 8, "rank: must be an integer >= 0, got -1"),
    (0, 0, "ranks_per_node: must be an integer >= 1, got 0"),
    (True, 8, "rank: must be an integer >= 0, got True"),
    (1, 2.0, "ranks_per_node: must be an integer >= 1, got 2.0"),
])
def test_node_of_rejects_bad_input(rank, k, message):
    with pytest.raises(ValueError) as e:
        node_of(rank, k)
    assert str(e.value) == message


def test_draws_are_shared_exactly_by_ranks_of_one_node_and_the_model_counts_those_nodes():
    sched = parse_schedule("exponential(20us); scope=node")
    for n in range(1, 21):
        for k in range(1, 9):
            nodes = [node_of(r, k) for r in range(n)]
            draws = [sched.delays(7, r, nodes[r], n, 3, 4) for r in range(n)]
            for r in range(n):
                for s in range(r + 1, n):
                    same = np.array_equal(draws[r], draws[s])
                    assert same == (nodes[r] == nodes[s]), (n, k, r, s)
            ((_, streams),) = sched.site_groups(7, n, k)
            assert streams == len(set(nodes)), (n, k)


def test_stragglers_leave_the_nodes_they_empty_out_of_the_count():
    sched = parse_schedule("exponential(20us); scope=node")
    sched = type(sched)(dist=sched.dist, scope="node",
                        stragglers=Stragglers(dist=parse("constant(1ms)"), ranks=(0, 1, 5)))
    # k = 2, n = 6: nodes {0,1} {2,3} {4,5}; the stragglers empty node 0 only
    groups = sched.site_groups(0, 6, 2)
    assert [count for _, count in groups] == [2, 3]
