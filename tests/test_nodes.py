"""Multi-node sweeps, the pure parts: SLURM host lists and allocations, node layouts,
command lines, and the checks a K-node spec must pass before anything starts."""

from __future__ import annotations

import pytest

from experiments import coordinator
from experiments.agent import run_agent
from experiments.coordinator import Coordinator
from experiments.node_protocol import (
    Link,
    NodeSetup,
    agent_argv,
    check_layout,
    digest,
    layout,
    node_rank_from,
    parse_master,
    srun_agents_argv,
)
from experiments.spec import parse_spec
from experiments.sweep import expand
from launch.slurm import SlurmJob, expand_hostlist, slurm_job

BASE = {"name": "t", "model": "tiny", "compute": "none", "backend": "gloo",
        "jitter": [{"name": "none", "dist": "constant(0s)"}]}


KEY = "test-sweep-key-0123456789abcdef0123456"


def spec(**kw):
    return parse_spec(BASE | kw)


def setup(rank, port, **kw):
    return NodeSetup(nnodes=2, node_rank=rank, master_host="127.0.0.1", master_port=port,
                     **({"join_timeout_s": 5} | kw))


@pytest.mark.parametrize("expr,hosts", [
    ("node1", ["node1"]),
    ("a,b", ["a", "b"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("gpu[8-11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
    ("gpu[098-101],login", ["gpu098", "gpu099", "gpu100", "gpu101", "login"]),
    ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
    ("x[3]", ["x3"]),
])
def test_slurm_host_lists_expand_as_slurm_does(expr, hosts):
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize("expr,message", [
    ("", "empty host list"),
    ("gpu[01-03", "unbalanced brackets"),
    ("gpu]1[", "unbalanced brackets"),
    ("gpu[3-1]", "descending range '3-1'"),
    ("gpu[a-b]", "bad range 'a-b'"),
    ("a,,b", "empty host name"),
])
def test_bad_host_lists_are_named(expr, message):
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST: ") as err:
        expand_hostlist(expr)
    assert message in str(err.value)


def test_a_slurm_allocation_is_seen_only_outside_a_step_and_with_several_nodes():
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[1-2]"}
    job = slurm_job(env)
    assert job == SlurmJob("4242", ("gpu1", "gpu2"))
    assert job.port == 20000 + 4242 % 20000
    assert slurm_job(env | {"SLURM_STEP_ID": "0"}) is None      # an srun task
    assert slurm_job(env | {"SLURM_JOB_NODELIST": "gpu1"}) is None  # one node
    assert slurm_job({"SLURM_JOB_NODELIST": "gpu[1-2]"}) is None    # no job
    assert slurm_job({"SLURM_JOB_ID": "7", "SLURM_NODELIST": "a,b"}).hosts == ("a", "b")
    assert slurm_job(env | {"SLURM_GPUS_PER_NODE": "8"}).gpus_per_node == "8"


def test_the_srun_line_starts_one_agent_per_node():
    job = SlurmJob("9", ("n1", "n2", "n3"))
    argv = srun_agents_argv(job, "/s/spec.toml", "/r/out", "n1:20009")
    assert argv == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "jitterlab",
                    "run", "/s/spec.toml", "--out", "/r/out", "--nnodes", "3",
                    "--node-rank", "slurm", "--master", "n1:20009"]
    gpus = srun_agents_argv(SlurmJob("9", ("n1", "n2"), "h100:8"), "s", "o", "n1:1")
    assert gpus[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                        "--gpus-per-node=h100:8"]


def test_node_rank_from_a_flag_or_from_slurm():
    assert node_rank_from("1", 2, env={}) == 1
    assert node_rank_from("slurm", 4, env={"SLURM_NODEID": "3"}) == 3
    with pytest.raises(ValueError, match=r"node-rank: must be in \[0, 1\] for nnodes=2, "
                                         r"got 2"):
        node_rank_from("2", 2, env={})
    with pytest.raises(ValueError, match="node-rank: 'slurm' needs SLURM_NODEID"):
        node_rank_from("slurm", 2, env={})
    with pytest.raises(ValueError, match="node-rank: expected an integer or 'slurm', "
                                         "got 'x'"):
        node_rank_from("x", 2, env={})


@pytest.mark.parametrize("text,parsed", [
    ("node0:29400", ("node0", 29400)), ("10.0.0.1:1", ("10.0.0.1", 1)),
    ("[fe80::1]:29500", ("fe80::1", 29500)),
])
def test_master_addresses_parse(text, parsed):
    assert parse_master(text) == parsed


@pytest.mark.parametrize("text,message", [
    ("node0", "expected HOST:PORT, got 'node0'"), ("node0:", "expected HOST:PORT"),
    ("node0:70000", "port must be in [1, 65535], got 70000"), ("::1:5", "expected HOST:PORT"),
])
def test_bad_master_addresses_are_named(text, message):
    with pytest.raises(ValueError, match="master: ") as err:
        parse_master(text)
    assert message in str(err.value)


def test_points_fill_node_zero_then_whole_nodes():
    assert layout(1, 8) == (1, 1)
    assert layout(8, 8) == (1, 8)
    assert layout(16, 8) == (2, 8)
    assert layout(3, 1) == (3, 1)
    with pytest.raises(ValueError, match="world_sizes: 12 is not a multiple of "
                                         "ranks_per_node=8"):
        layout(12, 8)


@pytest.mark.parametrize("kw,nnodes,message", [
    ({"model": "llama-3-8b", "world_sizes": [8, 16, 32]}, 2,
     "world_sizes: 32 needs 4 nodes of ranks_per_node=8, the sweep has nnodes=2"),
    ({"world_sizes": [2, 4], "ranks_per_node": 3}, 2,
     "world_sizes: 4 is not a multiple of ranks_per_node=3"),
    ({"backend": "mpi", "world_sizes": [1, 2]}, 2, "backend: a multi-node sweep starts "
                                                    "torchrun"),
    ({"launcher": "mpirun", "world_sizes": [1, 2]}, 2, "launcher: a multi-node sweep starts "
                                                        "torchrun on each node; got 'mpirun'"),
])
def test_a_spec_that_cannot_run_on_k_nodes_is_refused(kw, nnodes, message):
    with pytest.raises(ValueError) as err:
        check_layout(spec(**kw), nnodes)
    assert str(err.value).startswith(message)


def test_fitting_specs_pass_and_nodes_agree_only_on_identical_points():
    a = spec(world_sizes=[2, 4, 8], ranks_per_node=2)
    check_layout(a, 4)
    assert digest(a, 4) == digest(spec(world_sizes=[2, 4, 8], ranks_per_node=2), 4)
    assert digest(a, 4) != digest(a, 5)
    assert digest(a, 4) != digest(spec(world_sizes=[2, 4, 8], ranks_per_node=2,
                                             steps=51), 4)


def test_a_point_refused_for_a_dead_agent_publishes_nothing_and_keeps_the_count(
        tmp_path, monkeypatch):
    """Agents read point/0, point/1, ... in order: a point node 0 refuses before starting
    (an agent it needs has stopped) must not use up a number, or every later point would
    wait on a message that never comes. A real store on loopback; nothing is launched."""
    from launch.bootstrap import free_port
    from launch.supervise import RunFailed

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)

    setup = NodeSetup(nnodes=3, node_rank=0, master_host="127.0.0.1",
                      master_port=free_port(), join_timeout_s=5)
    c = Coordinator(setup, spec(world_sizes=[1, 2, 4], ranks_per_node=1,
                                model="small"))
    c.hosts += ["h1", "h2"]
    c.pulse.dead = lambda ranks: [r for r in ranks if r == 2]  # node 2 stopped beating
    point = next(p for p in expand(c.spec) if p.world_size == 4)
    with pytest.raises(RunFailed, match="node 2's agent \\(h2\\) stopped responding"):
        c.run_point(point, tmp_path / "plan.json", None, on_start=lambda pgid: None)
    assert c._seq == 0 and not c.link.has("point/0")
    c._joined = []
    c.finish("test")
    assert c.link.get("point/0") == {"end": True}  # where the agents are waiting


def test_the_slurm_step_asks_for_the_nodes_cpus_and_gpus_and_passes_the_join_timeout():
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "g[1-2]", "SLURM_CPUS_ON_NODE": "64",
           "SLURM_GPUS_ON_NODE": "8"}
    job = slurm_job(env)
    argv = srun_agents_argv(job, "s.toml", "/o", "g1:1", join_timeout_s=30)
    assert argv[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                        "--cpus-per-task=64", "--gpus-per-node=8"]
    assert argv[-2:] == ["--join-timeout", "30"]
    assert "--join-timeout" not in agent_argv("s", "o", nnodes=2, node_rank=1,
                                              master="h:1")


# ------------------------------------------------------------------ nobody gets in

def listeners(port):
    """Local addresses listening on TCP ``port``, from /proc/net/tcp and tcp6."""
    import ipaddress

    found = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)  # kernel order: 32-bit words in host byte order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words)))
    return found


def test_the_store_listens_only_on_the_master_address(monkeypatch):
    """torch's TCPStore listened on every interface whatever --master said."""
    from launch.bootstrap import free_port

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)
    port = free_port()
    link = Link(setup(0, port))
    assert listeners(port) == {"127.0.0.1"}
    link.server.close()


def test_a_client_without_the_key_changes_nothing_and_the_store_goes_on(monkeypatch, capfd):
    """What an attacker on the network tried: torch's own client forging a join and a
    claim, bytes that are no frame, a frame of 4 GiB, and a client with another key. None
    of it is stored, each is logged in one line, and the sweep's nodes are still served."""
    import socket
    from datetime import timedelta

    from torch.distributed import TCPStore

    from launch.bootstrap import free_port

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)
    port = free_port()
    zero = Link(setup(0, port))
    try:
        forger = TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=1))
        forger.set("hello/1", '{"host": "evil", "digest": "0"}')
        forger.add("claim/1", 1)
    except RuntimeError:
        pass  # refused at its handshake: what should happen
    assert zero.get("hello/1") is None and not zero.has("claim/1")
    for junk in (b"GET / HTTP/1.0\r\n\r\n", b"\xff\xff\xff\xff", b"\x00\x00\x00\x40" + 64 * b"x"):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(junk)
            sock.settimeout(5)
            while sock.recv(1024):  # the server answers nothing useful, then closes
                pass
    with pytest.raises(RuntimeError, match="refused this node's key \\(give every node the "
                                           "same JITTERLAB_SWEEP_KEY\\)"):
        Link(setup(1, port, key=b"another-key-of-16-chars"))
    one = Link(setup(1, port))
    assert one.add("claim/1", 1) == 1
    one.put("hello/1", {"host": "h1"})
    assert zero.get("hello/1") == {"host": "h1"}
    dropped = [ln for ln in capfd.readouterr().err.splitlines()
               if ln.startswith("jitterlab: store: dropped a message from 127.0.0.1:")]
    assert len(dropped) >= 4, dropped
    assert any("a frame of 4294967295 bytes" in ln for ln in dropped)
    assert any("fails the HMAC check" in ln for ln in dropped)
    zero.server.close()


def test_a_multi_node_sweep_without_a_key_is_refused(monkeypatch):
    from launch.bootstrap import free_port

    monkeypatch.delenv("JITTERLAB_SWEEP_KEY", raising=False)
    monkeypatch.delenv("JITTERLAB_SWEEP_KEY_FILE", raising=False)
    for rank in (0, 1):
        with pytest.raises(ValueError, match="sweep key: a multi-node sweep needs a secret "
                                             "only its nodes know: set JITTERLAB_SWEEP_KEY"):
            Link(setup(rank, free_port(), join_timeout_s=1))


def test_an_agent_that_never_beats_is_dead_counted_from_its_join(tmp_path, monkeypatch):
    """It joined, then died before its first beat: node 0 must not wait for it forever
    (it used to count the deadline only from a first beat)."""
    import time

    from launch.bootstrap import free_port

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)
    monkeypatch.setattr(coordinator, "DEAD_AFTER_S", 2.0)
    s = spec(world_sizes=[1, 2], ranks_per_node=1)
    port = free_port()
    c = Coordinator(setup(0, port), s)
    fake = Link(setup(1, port))
    assert fake.add("claim/1", 1) == 1
    fake.put("hello/1", {"host": "h1", "digest": digest(s, 2), "shared": False})
    c.join(tmp_path)
    assert c.pulse.dead([1]) == []
    time.sleep(2.5)
    assert c.pulse.dead([1]) == [1]
    c.link.server.close()


def test_an_agent_that_claims_then_dies_before_its_hello_stops_the_join(tmp_path,
                                                                        monkeypatch):
    import time

    from launch.bootstrap import free_port

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)
    monkeypatch.setattr(coordinator, "DEAD_AFTER_S", 1.0)
    port = free_port()
    c = Coordinator(setup(0, port, join_timeout_s=30), spec(world_sizes=[1, 2],
                                                            ranks_per_node=1))
    Link(setup(1, port)).add("claim/1", 1)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="node 1's agent started, then stopped before "
                                           "joining"):
        c.join(tmp_path)
    assert time.monotonic() - start < 10
    assert c.link.get("go") == {"error": "node 1's agent started, then stopped before joining"}
    c.link.server.close()


@pytest.mark.parametrize("msg", [
    {"planted": True}, {"id": "no-such-point", "nodes": 2, "port": 1}, ["not", "a", "dict"],
    {"id": 5, "nodes": "2", "port": None},
])
def test_a_point_message_of_the_wrong_shape_is_dropped_and_reported(tmp_path, monkeypatch,
                                                                    capfd, msg):
    """An agent once crashed (KeyError) on a planted point/0; now it logs it, reports the
    point failed, and reads the next one."""
    import threading

    from launch.bootstrap import free_port

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)
    port = free_port()
    s = spec(world_sizes=[1], ranks_per_node=1)
    zero = Link(setup(0, port))
    zero.put("token", ".join-000000000000")
    zero.put("go", {"shared": False, "hosts": ["h0", "h1"]})
    zero.put("point/0", msg)
    zero.put("point/1", {"end": True})
    result = []
    agent = threading.Thread(target=lambda: result.append(
        run_agent(s, tmp_path / "one", setup(1, port), progress=False)))
    agent.start()
    agent.join(60)
    assert result == [0]
    assert zero.get("report/0/1") == {"ok": False, "error": "its point message did not read"}
    assert zero.has("bye/1")
    assert "jitterlab: store: dropped a message from node 0 (point/0): not a point of this " \
           "sweep" in capfd.readouterr().err
    zero.server.close()
