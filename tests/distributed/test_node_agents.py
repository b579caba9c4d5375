"""Multi-node sweeps with real agents: two ``jitterlab run --nnodes 2`` processes on this
host, each starting torchrun for its node's ranks (gloo on loopback). Separate --out
folders behave as nodes with local disks (records gathered to rank 0 on node 0); one
shared --out as nodes on a shared file system. Failures: a killed agent, a spec that
differs between nodes, a node that never joins, an agent that dies before its first beat,
and someone without the sweep's key writing to the store.

Node 0 declares an agent dead after $JITTERLAB_DEAD_AFTER_S without a beat: 4 s here (the
default is 10 s; agents beat every second), so a live agent would have to miss four beats
in a row to be taken for dead."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sweep_specs  # beside this file: pytest puts its folder on sys.path

from collectives.timing import read_rank_file
from launch.bootstrap import free_port

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
KEY = "test-sweep-key-0123456789abcdef0123456"
DEAD_AFTER_S = 4
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "JITTERLAB_SWEEP_KEY": KEY,
       "JITTERLAB_DEAD_AFTER_S": str(DEAD_AFTER_S)}
# A point long enough that node 1's ranks are still starting or running when an agent is
# killed 1 s after its launcher started: ~3.5 s of start-up here, then ~10 ms a step.
LONG_STEPS = 150
ONE = (("exp", "exponential(20us)"),)  # one schedule: a point at N = 1, one on both nodes


def write_spec(tmp_path: Path, steps: int = 5, name: str = "spec.toml",
               **keys: object) -> Path:
    return sweep_specs.write_spec(tmp_path / name, **{
        "name": "mn", "backend": "gloo", "steps": steps, "ranks_per_node": 1,
        "timeout_s": 60, **keys})


def agent(spec: Path, out: Path, rank: int, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([JITTERLAB, "run", str(spec), "--out", str(out), "--nnodes", "2",
                             "--node-rank", str(rank), "--master", f"127.0.0.1:{port}",
                             *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(*procs: subprocess.Popen, timeout: float = 240) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def two_agents_in_a_multi_node_point(spec: Path, a: Path, b: Path, port: int
                                     ) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Both agents started, returned once node 1's ranks are running a point."""
    zero, one = agent(spec, a, 0, port), agent(spec, b, 1, port)
    deadline = time.monotonic() + 120
    while not list(b.glob("points/.tmp-*/progress-node1.bin")):
        for proc in (zero, one):
            assert time.monotonic() < deadline and proc.poll() is None, \
                finish(proc)[0][2][-2000:]
        time.sleep(0.2)
    return zero, one


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (our tmp folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def points(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "points").iterdir())


@dataclass
class LocalSweep:
    root: Path
    spec: Path
    a: Path
    b: Path
    results: list[tuple[int, str, str]]
    """(returncode, stdout, stderr) of node 0's and node 1's agents."""
    again: tuple[int, str, str]
    """The second agent for node 1, started while the first took part."""


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> LocalSweep:
    """One sweep of two agents with local folders (a point at N = 1, one on both nodes),
    which three tests read: while it runs, someone without the key forges messages to
    node 0's store (before node 1 joins and after), and a second agent for node 1 tries
    to join. (Several multi-node points in a row: the killed-agent test's rerun.)"""
    from datetime import timedelta

    from torch.distributed import TCPStore

    root = tmp_path_factory.mktemp("local")
    spec = write_spec(root, jitter=ONE)
    a, b, c = root / "node0", root / "node1", root / "again"
    port = free_port()
    zero = agent(spec, a, 0, port)
    wait_listening(port, zero)

    def attack() -> None:
        try:
            forger = TCPStore("127.0.0.1", port, is_master=False,
                              timeout=timedelta(seconds=1))
            forger.set("hello/1", json.dumps({"host": "evil", "digest": "0" * 16}))
            forger.add("claim/1", 1)
            forger.set("point/0", json.dumps({"planted": True}))
            forger.set("report/0/1", "{not json")
        except RuntimeError:
            pass  # refused: what should happen
        for junk in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x30" + os.urandom(48), b"hi"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(junk)

    attack()
    one = agent(spec, b, 1, port)
    try:
        attack()
        deadline = time.monotonic() + 60
        while not (b / ".lock-node-1").exists():  # the first node 1 has claimed its rank
            assert time.monotonic() < deadline and one.poll() is None, \
                finish(one)[0][2][-2000:]
            time.sleep(0.1)
        (again,) = finish(agent(spec, c, 1, port))
        results = finish(zero, one)
    finally:
        for proc in (zero, one):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return LocalSweep(root, spec, a, b, results, again)


def test_two_agents_with_local_folders_run_report_and_resume(local_sweep):
    spec, a, b = local_sweep.spec, local_sweep.a, local_sweep.b
    (rc0, out0, err0), (rc1, out1, err1) = local_sweep.results
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert "2 points run, 0 already complete, 0 failed" in out0
    assert "this node ran its part of 1 points, 0 failed" in out1
    manifest = json.loads((a / "manifest.json").read_text())
    assert [n["node"] for n in manifest["runs"][0]["nodes"]] == [0, 1]
    assert manifest["runs"][0]["shared_folder"] is False
    assert len(points(a)) == 2 and not any(p.startswith(".") for p in points(a))
    assert points(b) == []  # node 1 keeps nothing: its ranks sent their records to rank 0
    assert not list(b.glob(".lock*")) and not list(a.glob(".lock*"))
    two = [p for p in points(a)
           if json.loads((a / "points" / p / "summary.json").read_text())["world_size"] == 2]
    assert len(two) == 1
    for p in two:
        metas = [read_rank_file(a / "points" / p / f"rank-{r:05d}.parquet")[1] for r in (0, 1)]
        assert [(m["rank"], m["node"], m["launcher"]) for m in metas] == [
            (0, 0, "torchrun"), (1, 1, "torchrun")]
        assert metas[1]["written_by"] == 0
        assert [m["algorithm"] for m in metas] == ["native", "native"]
        summary = json.loads((a / "points" / p / "summary.json").read_text())
        assert summary["step_latency"]["n"] == 5
    assert (a / "report.html").exists() and (a / "report.md").exists()
    port = free_port()
    (rc0, out0, _), (rc1, out1, _) = finish(agent(spec, a, 0, port), agent(spec, b, 1, port))
    assert (rc0, rc1) == (0, 0)
    assert "0 points run, 2 already complete, 0 failed" in out0
    assert "this node ran its part of 0 points" in out1
    assert leftovers(str(local_sweep.root)) == []


def test_two_agents_sharing_one_folder(tmp_path):
    spec = write_spec(tmp_path, jitter=ONE)
    out = tmp_path / "shared"
    port = free_port()
    one = agent(spec, out, 1, port)  # any start order
    time.sleep(1.0)
    (rc1, _, err1), (rc0, out0, err0) = finish(one, agent(spec, out, 0, port))
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["shared_folder"] is True
    assert len(points(out)) == 2
    shared = []
    for p in points(out):
        summary = json.loads((out / "points" / p / "summary.json").read_text())
        files = sorted(f.name for f in (out / "points" / p).glob("rank-*.parquet"))
        assert len(files) == summary["world_size"]
        if summary["world_size"] == 2:  # each rank wrote its own file; node 1 its own log
            shared.append(p)
            meta = read_rank_file(out / "points" / p / "rank-00001.parquet")[1]
            assert "written_by" not in meta and meta["node"] == 1
            assert (out / "points" / p / "launcher-node1.log").exists()
            assert (out / "points" / p / "progress-node1.bin").exists()
    assert len(shared) == 1


def test_a_killed_agent_fails_its_points_and_a_rerun_resumes(tmp_path):
    spec = write_spec(tmp_path, steps=LONG_STEPS)
    a, b = tmp_path / "node0", tmp_path / "node1"
    port = free_port()
    zero, one = two_agents_in_a_multi_node_point(spec, a, b, port)
    time.sleep(1.0)
    one.send_signal(signal.SIGKILL)
    one.communicate()
    (rc0, out0, err0), = finish(zero)
    assert rc0 == 1, err0[-3000:]
    assert "2 points run, 0 already complete, 2 failed" in out0
    failures = [json.loads(f.read_text()) for f in sorted((a / "failed").glob("*.json"))]
    assert len(failures) == 2 and all(f["world_size"] == 2 for f in failures)
    assert all("node 1" in f["error"] for f in failures), failures
    assert not any("node 0: node" in f["error"] for f in failures), failures  # said once
    assert len(points(a)) == 2  # the one-node points completed
    deadline = time.monotonic() + 60  # node 1's orphaned rank ends once its peer is gone
    while leftovers(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers(str(tmp_path)) == []
    spec = write_spec(tmp_path, steps=LONG_STEPS)
    port = free_port()
    (rc0, out0, err0), (rc1, _, err1) = finish(agent(spec, a, 0, port), agent(spec, b, 1, port))
    assert (rc0, rc1) == (0, 0), (err0[-2000:], err1[-2000:])
    assert "2 points run, 2 already complete, 0 failed" in out0
    assert len(points(a)) == 4 and not list((a / "failed").iterdir())


def test_a_killed_coordinator_stops_the_other_agents_and_a_rerun_resumes(tmp_path):
    spec = write_spec(tmp_path, steps=LONG_STEPS, jitter=ONE)
    a, b = tmp_path / "node0", tmp_path / "node1"
    port = free_port()
    zero, one = two_agents_in_a_multi_node_point(spec, a, b, port)
    time.sleep(1.0)
    zero.send_signal(signal.SIGKILL)
    zero.communicate()
    (rc1, _, err1), = finish(one, timeout=60)
    assert rc1 == 1
    assert f"jitterlab: run failed: lost the connection to node 0's agent at 127.0.0.1:{port}" \
        in err1
    deadline = time.monotonic() + 30  # node 0's ranks die with its torchrun
    while leftovers(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers(str(tmp_path)) == []
    port = free_port()
    (rc0, out0, err0), (rc1, _, err1) = finish(agent(spec, a, 0, port), agent(spec, b, 1, port))
    assert (rc0, rc1) == (0, 0), (err0[-2000:], err1[-2000:])
    done = int(out0.split(" points run, ")[1].split(" already complete")[0])
    # the N = 1 point, done before node 1's ranks started the N = 2 one
    assert done == 1 and "1 points run, 1 already complete, 0 failed" in out0
    assert len(points(a)) == 2


def test_a_second_agent_for_the_same_node_is_refused_and_the_sweep_goes_on(local_sweep):
    rc, _, err = local_sweep.again
    assert rc == 2 and "jitterlab: error: node-rank: node 1 has already joined this sweep" \
        in err
    (rc0, out0, err0), (rc1, _, _) = local_sweep.results
    assert (rc0, rc1) == (0, 0), err0[-2000:]
    assert "2 points run, 0 already complete, 0 failed" in out0
    assert not (local_sweep.root / "again").exists()


def test_a_node_whose_folder_is_in_use_makes_node_0_refuse_with_its_reason(tmp_path):
    spec = write_spec(tmp_path)
    a, b = tmp_path / "node0", tmp_path / "node1"
    from experiments.locks import take_lock

    held = take_lock(b, ".lock-node-1")  # another sweep's agent holds node 1's folder
    port = free_port()
    try:
        (rc0, _, err0), (rc1, _, err1) = finish(agent(spec, a, 0, port),
                                                agent(spec, b, 1, port))
        assert (b / ".lock-node-1").exists()  # the other sweep's lock kept
    finally:
        held.release()
    assert rc0 == 2 and "jitterlab: error: node 1 (" in err0
    assert f"out: {str(b)!r} is in use by a running sweep (pid {os.getpid()} on " in err0
    assert rc1 == 1 and "node 0 ended the sweep: node 1" in err1
    assert not a.exists()


def test_nodes_with_different_specs_are_refused_and_nothing_is_written(tmp_path):
    spec = write_spec(tmp_path)
    other = write_spec(tmp_path, steps=6, name="other.toml")
    a, b = tmp_path / "node0", tmp_path / "node1"
    port = free_port()
    (rc0, out0, err0), (rc1, _, err1) = finish(agent(spec, a, 0, port),
                                               agent(other, b, 1, port))
    assert rc0 == 2 and out0 == ""
    assert "jitterlab: error: spec: node 1 (" in err0
    assert "has a different spec or nnodes" in err0
    assert rc1 == 1 and "node 0 ended the sweep: spec: node 1" in err1
    assert not a.exists()


def test_a_node_that_never_joins_times_out(tmp_path):
    spec = write_spec(tmp_path)
    a = tmp_path / "node0"
    (rc0, _, err0), = finish(agent(spec, a, 0, free_port(), "--join-timeout", "1"))
    assert rc0 == 1
    assert "node 1 did not join within 1 s (start its command: jitterlab run ... " \
           "--node-rank 1)" in err0
    assert not a.exists()


@pytest.mark.parametrize("args,message", [
    (["--nnodes", "2", "--master", "h:1"], "node-rank: needed with --nnodes 2"),
    (["--nnodes", "2", "--node-rank", "0"], "master: needed with --nnodes 2"),
    (["--nnodes", "2", "--node-rank", "2", "--master", "h:1"],
     "node-rank: must be in [0, 1] for nnodes=2, got 2"),
    (["--node-rank", "1"], "node-rank: needs --nnodes"),
    (["--nnodes", "0"], "nnodes: must be >= 1, got 0"),
    (["--nnodes", "3", "--node-rank", "0", "--master", "h:1", "--join-timeout", "0"],
     "join-timeout: must be > 0"),
    (["--nnodes", "2", "--node-rank", "0", "--master", "h"], "master: expected HOST:PORT"),
])
def test_bad_node_flags_fail_before_anything_starts(tmp_path, args, message, capsys,
                                                    monkeypatch):
    from experiments.cli import main

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)
    spec = write_spec(tmp_path)
    # In this process: the CLI's own handling, without a console script's start-up each
    # (the other tests here run the console script).
    code = main(["run", str(spec), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [f"jitterlab: error: {message}"] or \
        err.startswith(f"jitterlab: error: {message}")
    assert not (tmp_path / "o").exists()


def test_print_commands_gives_each_node_its_line(tmp_path, jitterlab):
    spec = write_spec(tmp_path)
    # in this process (``jitterlab``, conftest.py): nothing starts, only the lines print
    res = jitterlab("run", str(spec), "--out", "o", "--nnodes", "2", "--master", "head:29400",
                    "--print-commands", cwd=tmp_path, env=ENV)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("# 2 nodes")
    assert lines[1] == ("# every node needs the same secret in JITTERLAB_SWEEP_KEY (e.g. "
                        "export JITTERLAB_SWEEP_KEY=$(openssl rand -hex 32)), or "
                        "JITTERLAB_SWEEP_KEY_FILE naming a file of mode 0600")
    for r, line in enumerate(lines[2:]):
        assert line == (f"jitterlab run {spec} --out {tmp_path / 'o'} --nnodes 2 "
                        f"--node-rank {r} --master head:29400")
    assert len(lines) == 4 and not (tmp_path / "o").exists()
    assert KEY not in res.stdout


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, \
                finish(proc)[0][2][-2000:]
            time.sleep(0.2)


def test_forged_and_garbage_messages_are_dropped_and_the_sweep_completes(local_sweep):
    """Once, a forged join ended a sweep and a planted point crashed an agent. Here someone
    without the key forges a join, a claim, a point and a report with torch's own client,
    and sends bytes that are no message, before and while the agents work (``local_sweep``)."""
    a = local_sweep.a
    (rc0, out0, err0), (rc1, out1, err1) = local_sweep.results
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert "2 points run, 0 already complete, 0 failed" in out0
    assert "this node ran its part of 1 points, 0 failed" in out1
    assert "Traceback" not in err0 + err1
    dropped = [ln for ln in err0.splitlines()
               if ln.startswith("jitterlab: store: dropped a message from 127.0.0.1:")]
    assert len(dropped) >= 6, err0[-3000:]
    assert len(points(a)) == 2 and "evil" not in (a / "manifest.json").read_text()


def test_an_agent_that_dies_before_its_first_beat_fails_its_points_within_seconds(
        tmp_path, monkeypatch):
    """An agent that joined and never beat was never declared dead: node 0 waited the
    point's timeout and a grace (>90 s) for each of its points. Here it joins through the
    protocol, then nothing: its point fails DEAD_AFTER_S (4 s) after the join, the one at
    N = 1 runs."""
    from experiments.node_protocol import Link, NodeSetup, digest
    from experiments.spec import load_spec

    monkeypatch.setenv("JITTERLAB_SWEEP_KEY", KEY)
    spec = write_spec(tmp_path, jitter=ONE)
    a = tmp_path / "node0"
    port = free_port()
    zero = agent(spec, a, 0, port)
    try:
        fake = Link(NodeSetup(nnodes=2, node_rank=1, master_host="127.0.0.1",
                              master_port=port, join_timeout_s=60))
        assert fake.add("claim/1", 1) == 1
        assert fake.wait("token", time.monotonic() + 60) is not None
        fake.put("hello/1", {"host": "doomed", "shared": False,
                             "digest": digest(load_spec(spec), 2)})
        joined = time.monotonic()
        (rc0, out0, err0), = finish(zero, timeout=90)
        elapsed = time.monotonic() - joined
    finally:
        if zero.poll() is None:
            zero.kill()
            zero.communicate()
    assert rc0 == 1, err0[-3000:]
    assert "1 points run, 0 already complete, 1 failed" in out0
    failures = [json.loads(f.read_text()) for f in sorted((a / "failed").glob("*.json"))]
    assert len(failures) == 1 and all(f["world_size"] == 2 for f in failures)
    assert all("node 1's agent (doomed) stopped responding" in f["error"] for f in failures)
    assert elapsed < 60, elapsed  # the deadline counts from the join (the old wait: >120 s)
