"""Two torchrun agents as two nodes (--nnodes 2, static rendezvous): on 127.0.0.1, and,
where network namespaces can be made (root with iproute2), one node in each of two
namespaces joined by a veth pair. The test removes the namespaces it creates."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from namespaces import netns_unavailable  # beside this file: pytest puts it on sys.path

from collectives import microbench
from collectives.timing import read_rank_file
from launch.bootstrap import free_port
from launch.commands import torchrun_cmd
from launch.plan import Plan

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def two_node_plan(tmp_path: Path) -> Path:
    p = Plan.build(workload="microbench", out_dir=str(tmp_path / "run"), backend="gloo",
             colls=("all_reduce", "all_gather"), sizes=(256,), iters=5, warmup=1, check=True,
             timeout_s=60)
    Path(p.out_dir).mkdir(parents=True)
    path = tmp_path / "plan.json"
    path.write_text(p.to_json())
    return path


def agent_argv(plan_path: Path, node_rank: int, addr: str, port: int) -> list[str]:
    cmd = torchrun_cmd([JITTERLAB, "worker", str(plan_path)], nproc_per_node=1, nnodes=2,
                       node_rank=node_rank, master_addr=addr, master_port=port, rdzv="static")
    return [TORCHRUN, *cmd[1:]]


def run_agents(argvs: list[list[str]], envs: list[dict[str, str]]) -> None:
    procs = [subprocess.Popen(a, env={**os.environ, **e}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for a, e in zip(argvs, envs)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-2000:]


def check_two_node_records(plan_path: Path) -> None:
    plan = Plan.load(plan_path)
    tables, metas = zip(*(read_rank_file(plan.rank_file(r)) for r in range(2)))
    assert [(m["rank"], m["node"], m["launcher"]) for m in metas] == [
        (0, 0, "torchrun"), (1, 1, "torchrun")]
    rows = microbench.summarize(list(tables), colls=plan.params["colls"], world_size=2,
                                offsets_ns=[m["clock_offset_ns"] for m in metas],
                                wrong=[m["wrong"] for m in metas])
    assert [r["wrong"] for r in rows] == [0, 0]


def test_two_torchrun_agents_on_loopback(tmp_path):
    plan_path = two_node_plan(tmp_path)
    port = free_port()
    env = {"GLOO_SOCKET_IFNAME": "lo"}
    run_agents([agent_argv(plan_path, i, "127.0.0.1", port) for i in (0, 1)], [env, env])
    check_two_node_records(plan_path)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_namespaces():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns = [f"jl-a-{tag}", f"jl-b-{tag}"]
    veth = [f"jla{tag}", f"jlb{tag}"]
    # Link-local addresses on a link that exists only between our two namespaces.
    addrs = ["169.254.77.1", "169.254.77.2"]
    try:
        for n in ns:
            _ip("netns", "add", n)
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for n, v, a in zip(ns, veth, addrs):
            _ip("link", "set", v, "netns", n)
            _ip("-n", n, "addr", "add", f"{a}/30", "dev", v)
            _ip("-n", n, "link", "set", v, "up")
            _ip("-n", n, "link", "set", "lo", "up")
        yield ns, veth, addrs
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_two_torchrun_agents_in_two_network_namespaces(tmp_path, two_namespaces):
    ns, veth, addrs = two_namespaces
    plan_path = two_node_plan(tmp_path)
    port = 29517
    argvs = [["ip", "netns", "exec", n, *agent_argv(plan_path, i, addrs[0], port)]
             for i, n in enumerate(ns)]
    run_agents(argvs, [{"GLOO_SOCKET_IFNAME": v} for v in veth])
    check_two_node_records(plan_path)
