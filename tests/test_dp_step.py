"""The data-parallel step workload (collectives.dp_step): its spec keys and errors, the
buckets and roofline compute of the Llama 3 presets against hand computations, the
sites the simulator runs and what overlap buys there, the timer's polled sites, and the
rank loop on a fake backend (its exact-result check must catch a missing all-reduce)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import collectives.timing as timing
from collectives.dp_step import (
    DEFAULT_BUCKET_BYTES,
    bucket_bytes,
    parse_bucket_size,
    pass_seconds,
    site_compute_s,
)
from collectives.timing import STEP_SITE, Records, SiteTimer
from collectives.workload import RankRun, get_workload
from experiments.spec import parse_spec
from jitter_models.network import Network
from jitter_models.simulate import Site, simulate

JITTER = [{"name": "none", "dist": "constant(0s)"}]
H100_FLOPS, H100_HBM = 989e12, 3.35e12


def spec(**keys):
    return parse_spec({"workload": "dp_step", "world_sizes": [1, 2], "jitter": JITTER,
                       **keys})


def test_the_presets_give_ddps_bucket_count_and_the_dtype_sizes_the_gradient():
    s = spec(dtype="bfloat16")
    p = s.params
    assert p == {"model": "llama-3-8b", "parameters": 8_030_000_000, "tokens_per_rank": 8192,
                 "bucket_bytes": 25 * 2**20, "overlap": True, "hardware": "h100",
                 "compute_efficiency": 0.4, "grad_bytes": 2}
    sizes = bucket_bytes(p)
    assert len(sizes) == math.ceil(8.03e9 * 2 / 26214400) == 613
    assert sizes[:-1] == [26214400] * 612 and sum(sizes) == 8.03e9 * 2
    assert s.work.sites_per_step(p) == 613
    big = spec(model="llama-3-70b", dtype="bfloat16").params
    assert s.work.sites_per_step(big) == math.ceil(70.6e9 * 2 / 26214400) == 5387
    assert s.work.sites_per_step(spec(dtype="float32").params) == math.ceil(8.03e9 * 4 /
                                                                           26214400)
    assert s.work.describe(p) == ("dp_step of llama-3-8b (8.03e+09 parameters, 8192 "
                                  "tokens/rank, 613 buckets of 25 MiB, overlap on, h100 "
                                  "roofline at 0.4 of peak)")
    # parameters override the preset (tiny models for tests); alone they are 'custom'
    assert spec(parameters=1000).params["model"] == "custom"
    assert spec(model="llama-3-70b", parameters=10).params["parameters"] == 10


@pytest.mark.parametrize("text,nbytes", [("25MB", 25 * 2**20), ("25M", 25 * 2**20),
                                         ("512KiB", 512 * 1024), ("1G", 2**30),
                                         ("100", 100), (4096, 4096), (" 2 kb ", 2048)])
def test_bucket_sizes_are_powers_of_1024_as_ddps_bucket_cap_mb(text, nbytes):
    assert parse_bucket_size(text) == nbytes
    assert DEFAULT_BUCKET_BYTES == 25 * 1024 * 1024


@pytest.mark.parametrize("keys,message", [
    ({"model": "gpt-5"}, "model: must be one of llama-3-8b, llama-3-70b (or custom, with "
                         "parameters), got 'gpt-5'"),
    ({"parameters": 0}, "parameters: must be an integer >= 1, got 0"),
    ({"parameters": True}, "parameters: must be an integer >= 1, got True"),
    ({"parameters": 8.03e9}, "parameters: must be an integer >= 1, got 8030000000.0"),
    ({"parameters": 10**14}, "parameters: must be at most 10000000000000, got "),
    ({"tokens_per_rank": 0}, "tokens_per_rank: must be an integer >= 1, got 0"),
    ({"tokens_per_rank": 2**29}, "tokens_per_rank: a step's compute must be at most 1 hour"),
    ({"bucket_size": "25 parsecs"}, "bucket_size: expected bytes such as '25MB'"),
    ({"bucket_size": 0}, "bucket_size: must be 1 B to 1 GiB, got 0"),
    ({"bucket_size": "2G"}, "bucket_size: must be 1 B to 1 GiB, got '2G'"),
    ({"bucket_size": 1.5}, "bucket_size: expected bytes such as '25MB' (powers of 1024)"),
    ({"bucket_size": "1K"}, "bucket_size: 31367188 buckets per step is over the limit"),
    ({"overlap": "yes"}, "overlap: must be true or false, got 'yes'"),
    ({"hardware": "tpu"}, "hardware: unknown preset 'tpu'"),
    ({"hardware": {"peak_flops": 1e15}}, "hardware: "),
    ({"compute_efficiency": 0}, "compute_efficiency: must be in (0, 1], got 0"),
    ({"compute_efficiency": 1.5}, "compute_efficiency: must be in (0, 1], got 1.5"),
    ({"dtype": "int32"}, "dtype: dp_step's gradients are floating point"),
    ({"batch": [1, 2]}, "batch: dp_step has no batch (tokens_per_rank sizes its compute): "
                        "leave it at 1, got [1, 2]"),
    ({"algorithm": "ring"}, "overlap: takes the backend's own all-reduce only"),
    ({"heads": 8}, "heads: unknown key"),
])
def test_a_bad_key_is_a_one_line_error_naming_it(keys, message):
    with pytest.raises(ValueError) as err:
        spec(**keys)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text, text


def test_an_explicit_algorithm_runs_without_overlap():
    assert spec(algorithm="ring", overlap=False).params["overlap"] is False


def test_the_plan_carries_the_params_and_checks_them():
    w = get_workload("dp_step")
    p = w.plan_params(spec(parameters=5000).params, batch=1, steps=9, warmup=2)
    assert p["steps"] == 9 and p["warmup"] == 2 and p["batch"] == 1
    assert w.check_params(p) == p
    with pytest.raises(ValueError, match=r"^bucket_size: not a dp_step parameter"):
        w.check_params({**p, "bucket_size": "1MB"})  # the plan holds bytes
    with pytest.raises(ValueError, match=r"^grad_bytes: must be 2, 4 or 8, got 3"):
        w.check_params({**p, "grad_bytes": 3})
    with pytest.raises(ValueError, match=r"^batch: dp_step has no batch, must be 1"):
        w.plan_params(p, batch=4, steps=1, warmup=0)
    assert w.content(spec(bucket_size="1024K").params, 1) \
        == w.content(spec(bucket_size="1M").params, 1)


def test_the_roofline_is_6pt_flops_at_the_efficiency_or_the_weights_read_per_pass():
    p = spec().params
    rate = H100_FLOPS * 0.4
    forward, backward = pass_seconds(p)
    assert forward == pytest.approx(2 * 8.03e9 * 8192 / rate, rel=1e-12)  # 0.333 s
    assert backward == pytest.approx(4 * 8.03e9 * 8192 / rate, rel=1e-12)
    # One token: each pass is bound by reading the bf16 weights once.
    one = {**p, "tokens_per_rank": 1}
    assert pass_seconds(one) == pytest.approx((8.03e9 * 2 / H100_HBM,) * 2, rel=1e-12)
    # A custom roofline and the efficiency scale the FLOP rate only.
    custom = {**p, "hardware": {"hbm_bytes_per_s": 1e12, "peak_flops": 1e14},
              "compute_efficiency": 0.5}
    assert pass_seconds(custom)[0] == pytest.approx(2 * 8.03e9 * 8192 / 5e13, rel=1e-12)


def test_site_zero_holds_the_forward_pass_and_each_site_its_buckets_backward_share():
    p = spec(parameters=1000, bucket_size=1024).params  # 4000 B: 3 x 1024 + 928
    assert bucket_bytes(p) == [1024, 1024, 1024, 928]
    forward, backward = pass_seconds(p)
    compute = site_compute_s(p)
    want = [forward + backward * 1024 / 4000] + [backward * 1024 / 4000] * 2 \
        + [backward * 928 / 4000]
    assert compute == pytest.approx(want, rel=1e-12)
    w = get_workload("dp_step")
    sites = w.simulated_sites(p, batch=1, dtype="float32", world_size=8)
    assert [s.message_bytes for s in sites] == [1024, 1024, 1024, 928]
    assert [s.overlap for s in sites] == [False, True, True, True]
    assert {s.collective for s in sites} == {"all_reduce"}
    assert w.message_bytes(p, batch=1, dtype="float32", world_size=8) == 1024
    off = w.simulated_sites({**p, "overlap": False}, batch=1, dtype="float32", world_size=8)
    assert [s.overlap for s in off] == [False] * 4


def _simulate(params, n: int, network: Network) -> float:
    sites = get_workload("dp_step").simulated_sites(params, batch=1, dtype="bfloat16",
                                                    world_size=n)
    out = simulate(None, n, tuple(Site(compute_s=s.compute_s, message_bytes=s.message_bytes,
                                       overlap=s.overlap) for s in sites),
                   network=network, steps=2, seed=0)
    return float(out.latency_s.mean())


def test_overlap_hides_all_but_the_last_buckets_all_reduce_and_never_beats_compute():
    p = spec(dtype="bfloat16").params  # Llama-3-8B, 613 buckets, 0.998 s of compute
    compute_s = sum(site_compute_s(p))
    net = Network.from_table({"alpha": "1us", "bandwidth_gbps": 100}, 8)
    n = 64
    comm = [net.native_time("all_reduce", n, b) for b in bucket_bytes(p)]
    blocking = _simulate({**p, "overlap": False}, n, net)
    overlapped = _simulate(p, n, net)
    assert blocking == pytest.approx(compute_s + sum(comm), rel=1e-9)
    # each all-reduce (0.64 ms) is shorter than the next bucket's backward share (1.1 ms,
    # the last 0.70 ms): only the last is exposed
    assert max(comm[:-1]) < min(site_compute_s(p)[1:])
    assert overlapped == pytest.approx(compute_s + comm[-1], rel=1e-9)
    assert blocking - overlapped == pytest.approx(sum(comm[:-1]), rel=1e-9)
    # A slow network: the all-reduces, not the compute, set the step, which is still
    # at least the compute and at least the forward pass plus every all-reduce.
    slow = Network.from_table({"alpha": "10us", "bandwidth_gbps": 1}, 8)
    slow_comm = sum(slow.native_time("all_reduce", n, b) for b in bucket_bytes(p))
    t = _simulate(p, n, slow)
    assert t >= compute_s and t == pytest.approx(site_compute_s(p)[0] + slow_comm, rel=1e-9)
    # One rank: no communication, overlap or not the step is the compute.
    assert _simulate(p, 1, net) == pytest.approx(compute_s, rel=1e-12)
    assert _simulate({**p, "overlap": False}, 1, net) == pytest.approx(compute_s, rel=1e-12)


def test_weak_scaling_compute_per_rank_is_held_and_the_speedup_is_n_t1_over_tn():
    from jitter_models.sim_stats import useful_work

    w = get_workload("dp_step")
    p = spec().params
    share = w.compute_share(p)
    assert share(1) == share(1024) == 1.0
    assert useful_work(share)(64) == 64.0
    one = w.simulated_sites(p, batch=1, dtype="float32", world_size=1)
    many = w.simulated_sites(p, batch=1, dtype="float32", world_size=512)
    assert [s.compute_s for s in one] == [s.compute_s for s in many]


# --- the timer's polled sites --------------------------------------------------------


class StillClock:
    def __init__(self, t: int):
        self.t = t

    def __call__(self) -> int:
        return self.t


class NoDevice:
    rank = 0

    def synchronize(self) -> None:
        pass


def test_a_polled_site_waits_through_the_workloads_wait_and_records_later(monkeypatch):
    clock = StillClock(10_000)
    monkeypatch.setattr(timing, "now_ns", clock)
    waits: list[int] = []

    def wait_until(deadline_ns: int) -> None:
        waits.append(deadline_ns)
        clock.t = deadline_ns + 3  # the wait ends a little late

    records, mark = Records(2), np.zeros(1, dtype=np.int64)
    timer = SiteTimer(NoDevice(), None, records, mark=mark)
    timer.begin_step(0)
    span = timer.polled_site(compute_ns=5_000, delay_ns=2_000, wait_until=wait_until,
                             index=4)
    assert waits == [15_000, 15_003 + 2_000] and mark[0] == 4
    assert span == timing.PolledSpan(10_000, 15_003, 17_006, 0)
    timer.record_polled(1, span, delay_ns=2_000, t_arrive_ns=18_000, t_done_ns=19_000,
                        nbytes=64)
    t = records.table()
    assert t["site"].tolist() == [1] and t["delay_ns"].tolist() == [2_003]
    assert t["t_arrive_ns"].tolist() == [18_000] and t["t_done_ns"].tolist() == [19_000]
    timer.record_sites = False
    timer.record_polled(2, span, delay_ns=0, t_arrive_ns=1, t_done_ns=2)
    assert records.n == 1
    with pytest.raises(ValueError, match=r"^overlap: a polled site runs on the host clock"):
        SiteTimer(NoDevice(), None, records, event=object).polled_site(
            compute_ns=1, delay_ns=0, wait_until=wait_until)


# --- the rank loop on a fake backend -------------------------------------------------


class FakeBackend:
    """numpy buffers; ``world_size`` ranks of which this is rank 0; all-reduces that do
    nothing (right on one rank, wrong on two: the other rank's values are missing)."""

    name, device = "fake", "cpu"

    def __init__(self, world_size: int):
        self.rank, self.world_size = 0, world_size
        self.posted = 0

    def from_numpy(self, array, dtype):
        return np.ascontiguousarray(array, dtype=dtype)

    def to_numpy(self, buf):
        return np.array(buf, copy=True)

    def copy(self, dst, src):
        dst[...] = src

    def all_reduce(self, buf, op="sum"):
        self.posted += 1

    def iall_reduce(self, buf, op="sum"):
        self.posted += 1
        return [2]  # done at the second test

    def done(self, request):
        request[0] -= 1
        return request[0] <= 0

    def wait(self, request):
        request[0] = 0

    def barrier(self):
        pass

    def synchronize(self):
        pass


def _run(world_size: int, overlap: bool, tmp_path):
    from collectives.inject import NoInjector

    w = get_workload("dp_step")
    params = w.plan_params(spec(parameters=3000, bucket_size=4096, tokens_per_rank=1,
                                overlap=overlap).params, batch=1, steps=3, warmup=1)
    backend = FakeBackend(world_size)
    result = w.run(RankRun(backend=backend, params=params, dtype="float32", seed=0,
                           schedule=None, injector=NoInjector(), node=0,
                           algorithms=("native",), ranks_per_node=8, out_dir=str(tmp_path)))
    return result, backend


@pytest.mark.parametrize("overlap", [False, True])
def test_the_rank_loop_records_each_bucket_and_its_check_catches_a_missing_reduce(
        overlap, tmp_path):
    result, backend = _run(1, overlap, tmp_path)
    assert result.wrong == [0, 0, 0]  # 12000 B: 4096, 4096, 3808; one rank sums itself
    assert backend.posted == 4 * 3  # warm-up step included
    t = result.records.table()
    sites = t["site"] != STEP_SITE
    assert t["site"][sites].tolist() == [0, 1, 2] * 3
    assert t["bytes"][sites].tolist() == [4096, 4096, 3808] * 3
    assert t["step"][~sites].tolist() == [0, 1, 2]
    assert np.all(t["t_done_ns"][sites] >= t["t_arrive_ns"][sites])
    assert np.all(t["t_arrive_ns"][sites] >= t["t_start_ns"][sites])
    two, _ = _run(2, overlap, tmp_path)
    # half of each sample is the other rank's, missing: 1024 of 1024, 1024, 952 elements
    assert two.wrong == [4 * 512, 4 * 512, 4 * 476]
    w = get_workload("dp_step")
    assert w.summary([], [{"wrong": result.wrong}, {"wrong": two.wrong}]) == {
        "wrong": sum(two.wrong)}
    assert w.summary([], [{"wrong": [0]}, {"wrong": [-1]}]) == {"wrong": -1}


def test_with_overlap_a_bucket_is_posted_only_after_the_previous_is_done(tmp_path):
    result, _ = _run(1, True, tmp_path)
    t = result.records.table()
    sites = t["site"] != STEP_SITE
    arrive = t["t_arrive_ns"][sites].reshape(3, 3)
    done = t["t_done_ns"][sites].reshape(3, 3)
    assert np.all(arrive[:, 1:] >= done[:, :-1])  # one in flight, in order
