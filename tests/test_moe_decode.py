"""moe_decode without ranks: its spec keys, routing law, sites and simulated loads; and
the pairwise all-to-all's uneven (alltoallv) execution in the simulator's network model.
Real ranks: tests/distributed/test_moe_ranks.py."""

from __future__ import annotations

import numpy as np
import pytest

from collectives.moe_decode import (
    PRESETS,
    MoEDecode,
    attention_site_cost,
    expert_params,
    model_config,
)
from collectives.workload import SweepCommon, get_workload
from jitter_models.network import Network, Tier
from jitter_models.routing import EXACT_DRAWS, ExpertCost, Router, rank_matrix
from jitter_models.simulate import Site, simulate

WORK = MoEDecode()


def _common(**kw) -> SweepCommon:
    base = {"dtype": "float32", "world_sizes": (1, 2, 4, 8), "batches": (4,), "steps": 8,
            "warmup": 2, "algorithm": "native", "ranks_per_node": 8}
    return SweepCommon(**{**base, **kw})


def test_registered_and_presets_match_the_papers():
    assert isinstance(get_workload("moe_decode"), MoEDecode)
    ds, mx = PRESETS["deepseek-v3"], PRESETS["mixtral-8x7b"]
    assert (ds["layers"], ds["dense_layers"], ds["hidden"], ds["experts"], ds["top_k"],
            ds["expert_ffn"], ds["shared_experts"]) == (61, 3, 7168, 256, 8, 2048, 1)
    assert (mx["layers"], mx["hidden"], mx["experts"], mx["top_k"], mx["expert_ffn"]) == \
        (32, 4096, 8, 2, 14336)
    # DeepSeek-V3's routed experts: 58 layers x 256 x 3 x 7168 x 2048 = 653.8 B of its
    # 671 B parameters (the rest: attention, shared experts, dense layers, embeddings)
    assert 58 * 256 * expert_params(ds) == pytest.approx(653.8e9, rel=1e-3)


@pytest.mark.parametrize("doc, message", [
    ({"model": "gpt-4"}, "model: unknown preset 'gpt-4'"),
    ({"model": {"preset": "mixtral-8x7b", "heads": 4}}, "model.heads: not a moe_decode"),
    ({"model": {"preset": "mixtral-8x7b", "top_k": 9}}, "model.top_k: must be at most"),
    ({"routing": "zipf"}, "routing: must be one of uniform, skewed, got 'zipf'"),
    ({"routing_skew": -1}, "routing_skew: must be a finite number >= 0, got -1"),
    ({"compute": "real"}, "compute: must be one of emulated, none, got 'real'"),
    ({"check": "yes"}, "check: must be true or false, got 'yes'"),
])
def test_bad_keys_name_the_key(doc, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        WORK.parse(doc, _common())


def test_world_sizes_must_divide_the_experts_and_algorithm_must_do_all_to_all():
    with pytest.raises(ValueError, match="^world_sizes: 3 ranks do not divide the 8 experts"):
        WORK.parse({"model": "mixtral-8x7b"}, _common(world_sizes=(1, 3)))
    with pytest.raises(ValueError, match="^algorithm: 'ring' does not implement all_to_all"):
        WORK.parse({"model": "mixtral-8x7b"}, _common(algorithm="ring"))
    assert WORK.parse({"model": "mixtral-8x7b"}, _common(algorithm="pairwise"))["model"][
        "experts"] == 8


def test_uniform_routing_is_uniform_and_skewed_follows_its_law():
    # 4000 tokens x top-2 of 8 experts: each expert's share 1/8; binomial sd of a share
    # ~0.0037, bound 0.02 (5 sd: false-failure rate < 1e-6 per expert)
    uni = Router(8, 2, 0.0, seed=3).choices(0, 0, 4000)
    assert all(len(set(row)) == 2 for row in uni.tolist())  # distinct experts per token
    share = np.bincount(uni.reshape(-1), minlength=8) / uni.size
    assert np.all(np.abs(share - 1 / 8) < 0.02)
    # skew 1.0, top-1: P(expert of popularity rank i) = i^-1 / H_8 exactly
    r = Router(8, 1, 1.0, seed=3)
    picks = r.choices(0, 0, 20000).reshape(-1)
    rank_of = np.argsort(np.argsort(-r.log_weights(0)))  # 0: the most popular
    got = np.bincount(rank_of[picks], minlength=8) / picks.size
    law = 1 / np.arange(1, 9) / np.sum(1 / np.arange(1, 9))
    assert np.all(np.abs(got - law) < 0.015)  # sd <= 0.0035: > 4 sd
    # the first tokens' choices do not depend on how many tokens there are (paired N)
    assert np.array_equal(r.choices(5, 1, 8), r.choices(5, 1, 64)[:8])


def test_rank_matrix_counts_every_copy_once():
    router = Router(8, 2, 0.5, seed=1)
    counts = router.counts(0, 0, 4, 3)
    pairs = rank_matrix(counts, 4)
    assert pairs.sum(axis=1).tolist() == [3 * 2] * 4  # each rank's tokens x top_k copies
    assert pairs[:, 1].sum() == counts[:, 2:4].sum()  # rank 1 holds experts 2 and 3


def test_sites_carry_the_roofline_and_the_routing_loads():
    p = WORK.params({"model": {"preset": "mixtral-8x7b", "layers": 3}, "batch": 4})
    sites = WORK.simulated_sites(p, batch=4, dtype="float32", world_size=2)
    assert len(sites) == 6 and {s.collective for s in sites} == {"all_to_all"}
    cfg = p["model"]
    hbm = 3.35e12  # h100
    attn = attention_site_cost(cfg, 4, False)[0] / hbm  # memory-bound at decode
    assert sites[2].compute_s == pytest.approx(attn)
    assert sites[1].compute_s == 0.0  # the experts' compute is in the combine's load
    combine = sites[1].load.draw(2, 0)
    # per rank: each of its experts that got a token reads 352 MB of weights
    w = expert_params(cfg) * 2 / hbm
    assert np.all(combine.compute_s >= w) and np.all(combine.compute_s <= 4 * w + 1e-12)
    dispatch = sites[0].load.draw(2, 0)
    assert np.array_equal(dispatch.bytes.T, combine.bytes)  # the copies come back
    assert dispatch.bytes.sum() == 2 * 4 * 2 * 4096 * 4  # ranks x batch x top_k x hidden x 4 B


def test_expert_cost_roofline():
    cost = ExpertCost(params=1e6, hbm_bytes_per_s=1e12, peak_flops=1e15)
    t = cost.seconds(np.array([0, 1, 10_000, 0]), 2)
    # rank 0: one active expert, memory-bound 2e6 B / 1e12; rank 1: 10000 tokens:
    # 2 * 1e6 * 1e4 / 1e15 = 2e-5 s > 2e-6 s of weights
    assert t.tolist() == pytest.approx([2e-6, 2e-5])


def _net(alpha=1e-6, gbps=50.0) -> Network:
    tier = Tier(alpha_s=alpha, bandwidth_Bps=gbps * 1e9)
    return Network(inter=tier, intra=tier, ranks_per_node=8)


def test_uneven_all_to_all_native_and_pairwise_agree_with_a_hand_computation():
    net = _net()
    b = np.array([[0, 1e6, 2e6], [3e6, 0, 0], [0, 5e5, 0]])
    # step 1 (r -> r+1): 1e6, 0, 0 -> slowest 1e6; step 2 (r -> r+2): 2e6, 3e6, 5e5 -> 3e6
    want = 2 * 1e-6 + (1e6 + 3e6) / 50e9
    assert net.all_to_all_v_time(b) == pytest.approx(want)
    from jitter_models.collective_sim import SiteCollective

    site = Site(0.0, 1, "all_to_all", "pairwise")
    from jitter_models import Schedule
    from jitter_models.parametric import Constant

    coll = SiteCollective(site, 3, net, Schedule(dist=Constant(value_s=0.0)), 0,
                          np.random.default_rng(0),
                          exact_links=True)
    end = coll.run(np.zeros(3), b)
    # pairwise pattern: no global barrier between steps, so the last rank is done no
    # later than the synchronous model, and its own chain is at least its slowest hop
    assert np.max(end) <= want + 1e-15 and np.max(end) >= 1e-6 + 3e6 / 50e9


def test_simulator_sees_load_imbalance():
    """With skewed routing the combine waits for the busiest rank: a step is longer
    than with uniform routing, compute alone (no network) shows it."""
    def step(routing: str) -> float:
        p = WORK.params({"model": {"preset": "mixtral-8x7b", "layers": 2}, "batch": 64,
                         "routing": routing, "routing_skew": 1.5})
        sites = tuple(Site(s.compute_s, s.message_bytes, s.collective, load=s.load)
                      for s in WORK.simulated_sites(p, batch=64, dtype="float32",
                                                    world_size=8))
        return float(simulate(None, 8, sites, network=_net(0.0, 1e9), steps=20,
                              seed=1).latency_s.mean())
    # 64 tokens x top-2 over 8 experts, one per rank: every expert is active, so the
    # memory-bound roofline is the same; the FLOPs side grows with the busiest expert
    assert step("skewed") > step("uniform") * 1.02


def test_pool_past_the_exact_budget_is_stated():
    assert EXACT_DRAWS == 1 << 18
    ds = model_config("deepseek-v3")
    assert 256 * 32 * ds["experts"] > EXACT_DRAWS  # N = 256, batch 32: the pool
