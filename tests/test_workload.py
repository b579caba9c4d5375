"""The workload registry: names, ``module:Class`` paths, and what a spec and a plan ask
of a workload."""

from __future__ import annotations

import sys

import pytest

from collectives.workload import BaseWorkload, get_workload, known
from experiments.spec import parse_spec
from launch.plan import Plan

JITTER = [{"name": "none", "dist": "constant(0s)"}]


def test_registered_workloads_resolve_by_name():
    assert get_workload("tp_decode").name == "tp_decode"
    assert get_workload("microbench").name == "microbench"
    assert known()[:2] == ["tp_decode", "microbench"]


def test_an_unknown_name_or_a_class_that_is_no_workload_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^workload: unknown 'tp-decode' \(known: "
                                         r"tp_decode, microbench"):
        get_workload("tp-decode")
    with pytest.raises(ValueError, match=r"^workload: 'json' has no 'Nope'"):
        get_workload("json:Nope")
    with pytest.raises(ValueError, match=r"^workload: 'json:JSONDecoder' is not a workload "
                                         r"\(no name, spec_keys, parse, check_params"):
        get_workload("json:JSONDecoder")
    with pytest.raises(ValueError, match=r"^workload: cannot make 'subprocess:Popen' "
                                         r"\(TypeError: "):
        get_workload("subprocess:Popen")


def test_a_module_in_the_current_directory_is_found_as_python_m_finds_one(tmp_path,
                                                                          monkeypatch):
    (tmp_path / "here_wl.py").write_text(
        "from collectives.workload import BaseWorkload\n"
        "class W(BaseWorkload):\n"
        "    name = 'here'\n"
        "    def sites_per_step(self, params): return 1\n"
        "    def message_bytes(self, params, **kw): return 4\n"
        "    def run(self, rank): raise NotImplementedError\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    w = get_workload("here_wl:W")
    assert isinstance(w, BaseWorkload) and w.name == "here"
    # A spec naming it: the common keys, its own none; its plan carries batch and steps.
    spec = parse_spec({"workload": "here_wl:W", "world_sizes": [1, 3], "steps": 7,
                       "jitter": JITTER})
    assert spec.work is w and spec.params == {}
    with pytest.raises(ValueError, match=r"^model: unknown key \(keys: name, workload"):
        parse_spec({"workload": "here_wl:W", "model": "tiny", "jitter": JITTER})


def test_a_spec_takes_the_keys_of_its_workload_and_the_plan_its_params():
    spec = parse_spec({"workload": "tp_decode", "model": "tiny", "compute": "none",
                       "world_sizes": [1, 2], "jitter": JITTER})
    assert spec.params["compute"] == "none" and spec.params["model"]["name"] == "tiny"
    assert spec.work.sites_per_step(spec.params) == 2 * spec.params["model"]["layers"]
    with pytest.raises(ValueError, match=r"^compute: must be one of real, emulated, none, "
                                         r"got 'fast'"):
        parse_spec({"compute": "fast", "jitter": JITTER})
    with pytest.raises(ValueError, match=r"^workload: 'microbench' runs through `jitterlab "
                                         r"bench`"):
        parse_spec({"workload": "microbench", "jitter": JITTER})


def test_plan_build_puts_what_is_not_a_plan_field_into_the_workloads_params():
    p = Plan.build(workload="microbench", out_dir="x", sizes=[64], iters=3, seed=2)
    assert p.seed == 2 and p.params["sizes"] == [64] and p.params["iters"] == 3
    assert p.params["colls"] == ["all_reduce"]  # the workload's defaults filled in
    assert Plan.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match=r"^model: not a microbench parameter"):
        Plan.build(workload="microbench", out_dir="x", model="tiny")
    with pytest.raises(ValueError, match=r"^iters: must be an integer >= 1, got 0"):
        Plan.build(workload="microbench", out_dir="x", iters=0)
    with pytest.raises(ValueError, match=r"^steps: must be an integer >= 1, got 0"):
        Plan.build(workload="tp_decode", out_dir="x", steps=0)


def test_a_workload_registered_as_an_entry_point_resolves_by_its_name(monkeypatch):
    # What `pip install` of a package declaring [project.entry-points."jitterlab.workloads"]
    # gives importlib.metadata; the registry asks it for names it does not ship.
    import importlib.metadata

    from collectives import workload

    class EP:
        name, value = "outside", "collectives.microbench:Microbench"

    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [EP] if group == workload.ENTRY_POINT_GROUP
                        else real(group=group))
    workload._resolve.cache_clear()
    try:
        assert get_workload("outside").name == "microbench"
        assert "outside" in known()
    finally:
        workload._resolve.cache_clear()
