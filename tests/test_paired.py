"""Paired networks (jitter_models/paired.py, hop_laws.py) and the study's own logic
(experiments/study.py): the vectorized recurrence, the laws' means and tails, paired
calls, the barrier-and-pool approximation against the reference, crossover and
break-even, and the study spec's errors. Statistical checks use fixed seeds; their
bounds are at least 5 standard errors (false-failure rate < 1e-6 each)."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
import tomllib

from experiments.study import break_even, crossover, parse_study
from jitter_models import pattern_sim
from jitter_models.errors import BadInput
from jitter_models.hop_laws import HopLaw, lognormal_sigma_for_ratio
from jitter_models.network import Network, Tier
from jitter_models.paired import (
    PairedNetwork,
    PairedTier,
    SiteCall,
    SiteCalls,
    call_times,
    full_steps,
    steps,
)
from jitter_models.simulate import Site

US = 1e-6


@pytest.mark.parametrize("algorithm, collective, n", [
    ("ring", "all_reduce", 6), ("recursive_doubling", "all_reduce", 6),
    ("tree", "all_reduce", 7), ("pairwise", "all_to_all", 5),
    ("rabenseifner", "all_reduce", 8), ("rabenseifner", "all_reduce", 6)])
def test_finish_over_trailing_axes_is_one_call_per_index(algorithm, collective, n):
    net = Network(inter=Tier(alpha_s=US, bandwidth_Bps=1e9),
                  intra=Tier(alpha_s=US, bandwidth_Bps=1e9), ranks_per_node=2)
    c = pattern_sim.compile_algorithm(algorithm, collective, n, 2)
    hops = pattern_sim.hop_times(c, net, 1000)
    rng = np.random.default_rng(1)
    delays = [rng.random((s.src.size, 5)) * US for s in c.steps]
    start = rng.random((n, 5)) * US
    out = pattern_sim.finish(c, start, hops, delays)
    for j in range(5):
        one = pattern_sim.finish(c, start[:, j], hops, [d[:, j] for d in delays])
        assert np.array_equal(out[:, j], one)


LAWS = [HopLaw("lognormal", 4 * US, sigma=0.8),
        HopLaw("pareto", 4 * US, shape=1.5, clip=200),
        HopLaw("spikes", 4 * US, sigma=0.1, p=0.02, factor=25)]


@pytest.mark.parametrize("law", LAWS, ids=lambda x: x.family)
def test_each_law_has_its_stated_mean_and_is_increasing_in_z(law):
    rng = np.random.default_rng(3)
    z, v = rng.standard_normal(1 << 20), rng.random(1 << 20)
    x = law.sample(z, v)
    se = x.std() / math.sqrt(x.size)
    assert abs(x.mean() - law.mean_s) < 6 * se
    zs = np.linspace(-4, 4, 101)
    y = law.sample(zs, np.ones_like(zs))  # no spike: monotone in z
    assert np.all(np.diff(y) >= 0)


def test_the_fast_variants_of_the_preset_are_jittery_and_the_steady_law_is_not():
    doc = tomllib.loads(resources.files("experiments.presets").joinpath(
        "bandwidth-vs-predictability.toml").read_text())
    study = parse_study(doc)
    assert all(law.ratio_p99_p50() >= 3 for _, law in study.variants)  # the floor
    assert study.steady.latency.ratio_p99_p50() < 1.3
    assert {name for name, _ in study.variants} == {"lognormal", "pareto", "spikes"}
    assert all(law.mean_s == study.steady.latency.mean_s for _, law in study.variants)
    assert study.fast_bandwidth_Bps == 2 * study.steady.bandwidth_Bps
    assert lognormal_sigma_for_ratio(math.exp(2.3263478740408408 * 0.8)) == \
        pytest.approx(0.8)


def _nets(inter_sigma: float = 0.8, k: int = 2) -> list[PairedNetwork]:
    intra = PairedTier(450e9, HopLaw("lognormal", 1.5 * US, sigma=0.1))
    steady = PairedTier(50e9, HopLaw("lognormal", 4 * US, sigma=0.1))
    fast = PairedTier(100e9, HopLaw("lognormal", 4 * US, sigma=inter_sigma))
    return [PairedNetwork("steady", intra, steady, k), PairedNetwork("fast", intra, fast, k)]


def test_a_constant_latency_call_takes_its_hand_computed_time():
    law = HopLaw("lognormal", 3 * US, sigma=0.0)
    net = PairedNetwork("x", PairedTier(1e9, law), PairedTier(1e9, law), 1)
    c = pattern_sim.compile_algorithm("recursive_doubling", "all_reduce", 4)
    t = call_times(c, [net], np.random.default_rng(0), 3, nbytes=1000.0)
    # two exchanges of the whole buffer: 2 x (3 us + 1000 B / 1 GB/s)
    assert np.allclose(t, 2 * (3 * US + 1e-6))


def test_inside_one_node_the_two_networks_are_the_same_message_by_message():
    c = pattern_sim.compile_algorithm("recursive_doubling", "all_reduce", 2)
    t = call_times(c, _nets(k=8), np.random.default_rng(0), 64, nbytes=1 << 20)
    assert np.array_equal(t[0], t[1])
    c = pattern_sim.compile_algorithm("recursive_doubling", "all_reduce", 16)
    t = call_times(c, _nets(k=8), np.random.default_rng(0), 64, nbytes=1 << 20)
    assert not np.array_equal(t[0], t[1])


def _sites_calls(n: int, sites: int, nbytes: float, compute_s: float, overlap: bool):
    c = pattern_sim.compile_algorithm("recursive_doubling", "all_reduce", n)
    call = SiteCall(c, ("recursive_doubling", "all_reduce"), nbytes)
    entry = [(call, np.full(n, compute_s))]
    group = ("g", nbytes)
    ss = tuple(Site(compute_s, int(nbytes), overlap=overlap and j > 0) for j in range(sites))
    return ss, (lambda j: SiteCalls(own=entry, group=group, pool=entry))


@pytest.mark.parametrize("overlap, bound", [(False, 1.15), (True, 1.25)])
def test_the_barrier_approximation_is_close_to_the_reference_and_never_below_it(overlap,
                                                                                bound):
    """Communication-bound sites (20 us of compute, 64 KiB all-reduces on 16 ranks): the
    worst case for the barrier, which re-synchronizes the ranks at every collective; with
    overlap the skew on the communication stream goes on too (measured here: +22% on the
    jittery network). The study's checks report the error on each workload's own sites."""
    sites, calls = _sites_calls(16, 12, 1 << 16, 20 * US, overlap)
    nets = _nets()
    approx = steps(sites, calls, nets, np.random.default_rng(1), 400, 256)
    ref = full_steps(sites, calls, nets, np.random.default_rng(2), 100)
    for c in range(2):
        # a barrier before every collective can only delay: the mean is no lower (up to
        # Monte Carlo error: se of the reference's mean below 0.5%)
        ratio = approx[c].mean() / ref[c].mean()
        assert 0.99 < ratio < bound, (c, ratio)


def test_the_reference_takes_step_k_from_entry_k_mod_their_number():
    """full_steps runs its steps side by side: with constant hops each step's latency is
    known by hand, so a step given another step's entry (compute or per-pair bytes) or a
    rank's clock leaking from one step into the next shows. Recursive doubling on 4 ranks:
    every rank finishes 2 hops after the last rank is ready; the pairwise all-to-all on 2
    ranks: one exchange of the entry's per-pair bytes."""
    law = HopLaw("lognormal", 3 * US, sigma=0.0)
    net = PairedNetwork("x", PairedTier(1e9, law), PairedTier(1e9, law), 1)
    rd = pattern_sim.compile_algorithm("recursive_doubling", "all_reduce", 4)
    call = SiteCall(rd, ("recursive_doubling", "all_reduce"), 1000.0)
    own = [(call, np.array([1.0, 2.0, 3.0, 4.0]) * US), (call, np.array([5.0, 0, 0, 0]) * US)]
    sites = (Site(0.0, 1000),)
    lat = full_steps(sites, lambda j: SiteCalls(own=own, group=("g",), pool=own, varies=True),
                     [net], np.random.default_rng(0), 5)
    hop = 3 * US + 1000 / 1e9
    assert np.allclose(lat[0], [4 * US + 2 * hop, 5 * US + 2 * hop] * 2 + [4 * US + 2 * hop])
    pw = pattern_sim.compile_algorithm("pairwise", "all_to_all", 2)
    entries = [(SiteCall(pw, ("pairwise", "all_to_all"), 0.0, np.full((2, 2), b)),
                np.zeros(2)) for b in (1000.0, 5000.0, 2000.0)]
    lat = full_steps(sites, lambda j: SiteCalls(own=entries, group=("a",), pool=entries,
                                                varies=True),
                     [net], np.random.default_rng(0), 4)
    assert np.allclose(lat[0], [3 * US + b / 1e9 for b in (1000.0, 5000.0, 2000.0, 1000.0)])
    # entries of different calls (bytes, pattern, per-pair bytes or not) run apart
    ring = pattern_sim.compile_algorithm("ring", "all_reduce", 2)
    mixed = [(SiteCall(pw, ("pairwise", "all_to_all"), 0.0, np.full((2, 2), 4000.0)),
              np.zeros(2)), (SiteCall(ring, ("ring", "all_reduce"), 9000.0), np.zeros(2)),
             (SiteCall(pw, ("pairwise", "all_to_all"), 0.0, np.full((2, 2), 1000.0)),
              np.zeros(2))]
    lat = full_steps(sites, lambda j: SiteCalls(own=mixed, group=("m",), pool=mixed,
                                                varies=True),
                     [net], np.random.default_rng(0), 3)
    ring_s = 2 * (3 * US + 4500 / 1e9)  # N = 2: one reduce-scatter and one all-gather hop
    assert np.allclose(lat[0], [3 * US + 4e-6, ring_s, 3 * US + 1e-6]), lat[0]


def test_overlap_hides_the_collectives_behind_the_compute():
    nets = _nets()
    plain = steps(*_sites_calls(16, 8, 1 << 20, 200 * US, False), nets,
                  np.random.default_rng(1), 100, 64)
    over = steps(*_sites_calls(16, 8, 1 << 20, 200 * US, True), nets,
                 np.random.default_rng(1), 100, 64)
    compute = 8 * 200 * US
    assert np.all(over >= compute) and np.all(over < plain)


def test_crossover_is_the_start_of_the_final_run_where_steady_is_no_slower():
    ns = [1, 2, 4, 8, 16]
    assert crossover(ns, [1, 5, 5, 3, 3], [1, 4, 4, 4, 4]) == 8
    assert crossover(ns, [1, 1, 1, 1, 5], [1, 2, 2, 2, 4]) is None  # fast wins at the top
    assert crossover(ns, [1, 2, 5, 2, 2], [1, 2, 4, 2, 3]) == 8  # a fast win at 4 breaks it
    assert crossover(ns, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]) == 2  # ties count, N = 1 does not


def test_break_even_interpolates_in_log_ratio_and_bounds_otherwise():
    r = [1.26, 2.0, 4.0]
    got = break_even(r, [1.0, 2.0, 4.0], 3.0)
    assert got["value"] == pytest.approx(math.exp((math.log(2) + math.log(4)) / 2))
    assert break_even(r, [3.0, 4.0, 5.0], 3.0)["bound"] == "below"
    assert break_even(r, [1.0, 1.5, 2.0], 3.0)["bound"] == "above"


def _doc(**study) -> dict:
    doc = tomllib.loads(resources.files("experiments.presets").joinpath(
        "bandwidth-vs-predictability.toml").read_text())
    doc["study"].update(study)
    return doc


@pytest.mark.parametrize("change, message", [
    ({"variant": [{"name": "x", "latency": {"family": "lognormal", "mean": "5us",
                                             "sigma": 1}}]},
     "study.variant[0].latency.mean: must equal the steady network's mean latency (4us)"),
    ({"variant": [{"name": "steady", "latency": {"mean": "4us"}}]},
     "study.variant[0].name: expected a name other than 'steady'"),
    ({"variant": [{"name": "x", "latency": {"mean": "4us", "sigmaa": 1}}]},
     "study.variant[0].latency.sigmaa: unknown key"),
    ({"steps": 1}, "study.steps: must be an integer >= 2, got 1"),
    ({"workload": [{"workload": "tp_decode", "world_sizes": [2, 4]}]},
     "study.workload[0].world_sizes: must start at 1"),
    ({"workload": [{"workload": "moe_decode", "world_sizes": [1, 3],
                    "algorithm": "pairwise"}]},
     "study.workload[0].world_sizes: 3 ranks do not divide the 256 experts"),
    ({"workload": [{"workload": "tp_decode", "world_sizes": [1, 2],
                    "algorithm": "pairwise"}]},
     "study.workload[0].algorithm: 'pairwise' does not implement all_reduce"),
])
def test_bad_study_specs_name_the_key(change, message):
    with pytest.raises(BadInput) as exc:
        parse_study(_doc(**change))
    assert str(exc.value).startswith(message), str(exc.value)


def test_the_study_summary_reads_the_99th_percentile_not_the_minimum():
    from experiments.study import _summ

    assert _summ(np.arange(1.0, 101.0)) == (50.5, 99.0)


SMALL = """
name = "small-study"
seed = 3
[study]
steps = 30
samples = 8
check_n = 2
check_steps = 4
[study.intra]
bandwidth_gbps = 450
latency = { family = "lognormal", mean = "1.5us", sigma = 0.1 }
[study.steady]
bandwidth_gbps = 50
latency = { family = "lognormal", mean = "4us", sigma = 0.1 }
[study.fast]
bandwidth_gbps = 100
[[study.variant]]
name = "lognormal"
latency = { family = "lognormal", mean = "4us", sigma = 0.8 }
[[study.workload]]
workload = "tp_decode"
model = "Llama-3-70B"
algorithm = "recursive_doubling"
world_sizes = [1, 2, 16, 32]
sensitivity_n = [32]
params = { model = "llama-3-70b", compute = "emulated" }
"""


def test_jitterlab_simulate_runs_a_study_spec_end_to_end(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    jitterlab = str(Path(sys.executable).parent / "jitterlab")
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL)
    res = subprocess.run([jitterlab, "simulate", str(spec), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "o" / "study.json").read_text())
    (row,) = data["rows"]
    assert set(row) >= {"workload", "model", "variant", "crossover_n", "crossover_n_p99",
                        "useful_n_steady", "useful_n_fast"}
    assert row["workload"] == "tp_decode" and row["variant"] == "lognormal"
    # one node (N <= 8): both networks the same; past it the jittery one is slower here
    by = {(p["network"], p["world_size"]): p for p in data["points"]}
    assert by["steady", 2]["mean_us"] == by["lognormal", 2]["mean_us"]
    assert by["steady", 32]["p99_us"] >= by["steady", 32]["mean_us"] * 0.99
    assert (tmp_path / "o" / "report.html").is_file()
    bad = tmp_path / "bad.toml"
    bad.write_text(SMALL.replace('sigma = 0.8 }', 'sigma = 0.8, mean2 = 1 }'))
    res = subprocess.run([jitterlab, "simulate", str(bad), "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "study.variant[0].latency.mean2: unknown key" in res.stderr
    assert not (tmp_path / "b").exists()
