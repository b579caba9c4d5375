"""The bulk-synchronous workload (collectives.bsp): its spec keys and their errors, the
params its plan carries, and the sites the simulator runs; plus ``simulated_sites`` of
the other workloads (the protocol's default, tp_decode's roofline)."""

from __future__ import annotations

import pytest

from collectives.workload import SimSite, get_workload
from experiments.spec import parse_spec
from launch.plan import Plan

JITTER = [{"name": "none", "dist": "constant(0s)"}]


def spec(**keys):
    return parse_spec({"workload": "bsp", "world_sizes": [1, 2], "jitter": JITTER, **keys})


def test_the_spec_keys_become_params_with_defaults_and_canonical_units():
    s = spec(sites_per_step=3, compute_per_site="1.5ms", message_bytes=64)
    assert s.params == {"sites_per_step": 3, "compute_per_site_ns": 1_500_000,
                        "message_bytes": 64}
    assert spec().params == {"sites_per_step": 1, "compute_per_site_ns": 100_000,
                             "message_bytes": 8}
    assert spec(compute_per_site="0s", message_bytes=0).params["compute_per_site_ns"] == 0
    assert s.work.describe(s.params) == "bsp: 3 x (compute 1.5ms, all-reduce of 64 B)"


@pytest.mark.parametrize("keys,message", [
    ({"sites_per_step": 0}, "sites_per_step: must be an integer >= 1, got 0"),
    ({"sites_per_step": 2.0}, "sites_per_step: must be an integer >= 1, got 2.0"),
    ({"sites_per_step": 5000}, "sites_per_step: must be at most 1024, got 5000"),
    ({"compute_per_site": "10 parsecs"}, "compute_per_site: "),
    ({"compute_per_site": "-1ms"}, "compute_per_site: "),
    ({"compute_per_site": "7200s"}, "compute_per_site: must be at most 1 hour, got 7200s"),
    ({"message_bytes": -1}, "message_bytes: must be an integer >= 0, got -1"),
    ({"message_bytes": True}, "message_bytes: must be an integer >= 0, got True"),
    ({"message_bytes": 6}, "message_bytes: must be a multiple of 4 (one float32 element), "
                           "got 6"),
    ({"message_bytes": 6, "dtype": "float64"}, "message_bytes: must be a multiple of 8 "
                                               "(one float64 element), got 6"),
    ({"batch": [1, 2]}, "batch: bsp has no batch (message_bytes sizes its all-reduces): "
                        "leave it at 1, got [1, 2]"),
    ({"model": "tiny"}, "model: unknown key"),
])
def test_a_bad_key_is_a_one_line_error_naming_it(keys, message):
    with pytest.raises(ValueError) as err:
        spec(**keys)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text, text


def test_message_bytes_is_checked_against_every_dtype_of_the_run():
    assert spec(message_bytes=6, dtype="float16").params["message_bytes"] == 6


def test_the_plan_carries_the_params_with_steps_and_warmup_and_checks_them():
    w = get_workload("bsp")
    p = w.plan_params(spec(sites_per_step=2).params, batch=1, steps=9, warmup=2)
    assert p == {"sites_per_step": 2, "compute_per_site_ns": 100_000, "message_bytes": 8,
                 "batch": 1, "steps": 9, "warmup": 2}
    assert w.check_params(p) == p
    plan = Plan.build(workload="bsp", out_dir="x", sites_per_step=4, steps=3)
    assert plan.params["sites_per_step"] == 4 and plan.params["warmup"] == 5
    assert Plan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match=r"^compute_per_site: not a bsp parameter"):
        w.check_params({**p, "compute_per_site": "1ms"})  # the plan holds ns
    with pytest.raises(ValueError, match=r"^compute_per_site_ns: must be an integer >= 0"):
        w.check_params({**p, "compute_per_site_ns": -5})
    with pytest.raises(ValueError, match=r"^batch: bsp has no batch, must be 1, got 2"):
        w.plan_params(p, batch=2, steps=1, warmup=0)
    # Every key of a point's content: two spellings of one compute are one point.
    assert w.content(spec(compute_per_site="1000us").params, 1) \
        == w.content(spec(compute_per_site="1ms").params, 1)


def test_simulated_sites_are_the_compute_and_all_reduce_of_each_site():
    w = get_workload("bsp")
    params = spec(sites_per_step=3, compute_per_site="250us", message_bytes=32).params
    sites = w.simulated_sites(params, batch=1, dtype="float32", world_size=64)
    assert sites == (SimSite(compute_s=250e-6, message_bytes=32, collective="all_reduce"),) * 3
    assert w.sites_per_step(params) == 3
    # No bytes: a 1-element all-reduce (an empty one does not wait on gloo or MPI).
    empty = spec(message_bytes=0).params
    assert w.simulated_sites(empty, batch=1, dtype="float64", world_size=2) \
        == (SimSite(compute_s=100e-6, message_bytes=8, collective="all_reduce"),)
    assert w.message_bytes(empty, batch=1, dtype="float16", world_size=2) == 2
    assert "1 element (message_bytes = 0" in w.describe(empty)


def test_the_default_simulated_sites_have_no_compute_and_the_workloads_bytes():
    from collectives.workload import BaseWorkload

    class Two(BaseWorkload):
        name = "two"

        def sites_per_step(self, params):
            return 2

        def message_bytes(self, params, *, batch, dtype, world_size):
            return 4 * batch

    assert Two().simulated_sites({}, batch=3, dtype="float32", world_size=8) \
        == (SimSite(0.0, 12, "all_reduce"),) * 2


def test_tp_decode_simulates_emulated_compute_as_the_roofline_it_spins():
    from collectives.hardware import hardware
    from collectives.models import model_config, shard_layout
    from collectives.tp_decode import site_costs

    w = get_workload("tp_decode")
    base = parse_spec({"workload": "tp_decode", "model": "tiny", "compute": "emulated",
                       "hardware": "a100", "jitter": JITTER}).params
    cfg, hw = model_config(base["model"]), hardware("a100")
    layout = shard_layout(cfg, 2)
    sites = w.simulated_sites(base, batch=2, dtype="float32", world_size=2)
    assert len(sites) == 2 * cfg.layers
    attention, mlp = site_costs(layout, 2, 0, 2)  # spec params: position 0
    assert [s.compute_s for s in sites[:2]] == [hw.seconds(*attention), hw.seconds(*mlp)]
    assert all(s.message_bytes == 2 * cfg.hidden * 4 for s in sites)
    # Plan params: the mean over the recorded steps' positions (warmup .. warmup+steps-1).
    plan = w.plan_params(base, batch=2, steps=3, warmup=4)
    att = [hw.seconds(*site_costs(layout, 2, pos, 2)[0]) for pos in (4, 5, 6)]
    got = w.simulated_sites(plan, batch=2, dtype="float32", world_size=2)[0].compute_s
    assert got == pytest.approx(sum(att) / 3, rel=1e-12)
    # Real (or no) compute: 0, the simulator takes it from a fit.
    real = parse_spec({"workload": "tp_decode", "model": "tiny", "compute": "real",
                       "jitter": JITTER}).params
    assert {s.compute_s for s in w.simulated_sites(real, batch=1, dtype="float32",
                                                   world_size=1)} == {0.0}
