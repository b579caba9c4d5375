"""A real two-node SLURM cluster on this host, and a sweep run inside an allocation.

Two network namespaces joined by a veth pair (the link is called ``jl0`` in both) stand
for two hosts; each runs a real ``slurmd`` under its own host name (a UTS namespace, with
a private /etc/hosts naming both nodes), and node A also runs ``slurmctld``, with munge for
authentication. ``salloc -N2 jitterlab run SPEC`` must then start one agent per node with
srun, and the two-rank points must run one rank on each node.

Needs root, iproute2, util-linux (nsenter, unshare) and the Debian packages slurm-wlm and
munge (``make slurm-deps`` installs them); skipped with the reason otherwise. Everything
it starts is stopped and the namespaces are removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import sweep_specs  # beside this file: pytest puts its folder on sys.path
from namespaces import netns_unavailable  # beside this file, as sweep_specs

from collectives.timing import read_rank_file

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
NEEDED = ("ip", "nsenter", "unshare", "mount", "munged", "slurmctld", "slurmd", "salloc",
          "sbatch", "squeue", "srun", "sinfo", "runuser")
NODES = {"nodea": "169.254.79.1", "nodeb": "169.254.79.2"}

CONF = """ClusterName=jl
SlurmctldHost=nodea({a})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=nodea NodeAddr={a} CPUs={cpus} State=UNKNOWN
NodeName=nodeb NodeAddr={b} CPUs={cpus} State=UNKNOWN
PartitionName=jl Nodes=nodea,nodeb Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "a SLURM cluster in network namespaces needs root"
    absent = [n for n in NEEDED if shutil.which(n) is None]
    if absent:
        return (f"not installed here: {', '.join(absent)} (make slurm-deps installs "
                "slurm-wlm and munge)")
    if not Path("/etc/munge/munge.key").exists():
        return "munge has no key (/etc/munge/munge.key)"
    reason = netns_unavailable()
    if reason:
        return reason
    ns = subprocess.run(["unshare", "--uts", "--mount", "true"], capture_output=True,
                        text=True)
    if ns.returncode != 0:
        return f"UTS and mount namespaces cannot be made here: {ns.stderr.strip()}"
    return None


class Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jl-slurm-"))
        self.dir.chmod(0o755)  # munged runs as the munge user and must reach its socket
        tag = uuid.uuid4().hex[:6]
        self.ns = {"nodea": f"jl-sa-{tag}", "nodeb": f"jl-sb-{tag}"}
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf"),
                    "GLOO_SOCKET_IFNAME": "jl0"}

    def on(self, node: str, *argv: str) -> list[str]:
        """argv run as host ``node``: its network, its host name, its /etc/hosts."""
        script = ('mount --bind "$0" /etc/hosts && hostname "$1" && shift && '
                  'exec "$@"')
        return ["nsenter", f"--net=/run/netns/{self.ns[node]}", "unshare", "--uts",
                "--mount", "sh", "-c", script, str(self.dir / "hosts"), node, *argv]

    def start(self) -> None:
        d = self.dir
        for sub in ("state", "spool-nodea", "spool-nodeb", "munge"):
            (d / sub).mkdir()
        shutil.chown(d / "munge", "munge", "munge")
        (d / "hosts").write_text("127.0.0.1 localhost\n" +
                                 "".join(f"{ip} {n}\n" for n, ip in NODES.items()))
        (d / "slurm.conf").write_text(CONF.format(d=d, a=NODES["nodea"], b=NODES["nodeb"],
                                                  cpus=os.cpu_count() or 1))
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={d}/munge/"
                        "munge.sock", f"--pid-file={d}/munge/munged.pid",
                        f"--log-file={d}/munge/munged.log", f"--seed-file={d}/munge/seed"],
                       check=True, capture_output=True, text=True)
        for ns in self.ns.values():
            _ip("netns", "add", ns)
        tag = self.ns["nodea"][-6:]
        _ip("link", "add", f"jlva{tag}", "type", "veth", "peer", "name", f"jlvb{tag}")
        for (node, ns), veth in zip(self.ns.items(), (f"jlva{tag}", f"jlvb{tag}")):
            _ip("link", "set", veth, "netns", ns)
            _ip("-n", ns, "link", "set", veth, "name", "jl0")
            _ip("-n", ns, "addr", "add", f"{NODES[node]}/30", "dev", "jl0")
            _ip("-n", ns, "link", "set", "jl0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        conf = str(d / "slurm.conf")
        self._daemon(self.on("nodea", "slurmctld", "-D", "-f", conf), "slurmctld")
        time.sleep(0.5)
        for node in NODES:
            self._daemon(self.on(node, "slurmd", "-D", "-f", conf), f"slurmd-{node}")
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run(self.on("nodea", "sinfo", "-h", "-N", "-o", "%N %T"),
                                 capture_output=True, text=True, env=self.env)
            states = dict(line.split() for line in res.stdout.strip().splitlines()
                          if len(line.split()) == 2)
            if states.get("nodea") == "idle" and states.get("nodeb") == "idle":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"SLURM nodes did not come up: {states or res.stderr}\n"
                                   + self.logs())
            time.sleep(0.5)

    def _daemon(self, argv: list[str], name: str) -> None:
        log = open(self.dir / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self.dir.glob("*.out")))

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        pid_file = self.dir / "munge" / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def cluster():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    c = Cluster()
    try:
        try:
            c.start()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            # The cluster is the environment, not jitterlab: say why it did not come up.
            detail = getattr(exc, "stderr", None) or str(exc)
            pytest.skip(f"a SLURM cluster could not be started here: {detail.strip()[:500]}")
        yield c
    finally:
        c.stop()


def test_jitterlab_run_in_an_allocation_starts_one_agent_per_node(cluster):
    spec = sweep_specs.write_spec(cluster.dir / "spec.toml", name="slurm", backend="gloo",
                                  ranks_per_node=1, timeout_s=60,
                                  jitter=(("none", "constant(0s)"),
                                          ("lognormal", "lognormal(median=20us, sigma=0.5)")))
    out = cluster.dir / "out"
    shown = subprocess.run(cluster.on("nodea", "salloc", "-N2", JITTERLAB, "run", str(spec),
                                      "--out", str(out), "--print-commands"),
                           capture_output=True, text=True, env=cluster.env, timeout=120)
    assert shown.returncode == 0, shown.stderr + cluster.logs()
    srun = [ln for ln in shown.stdout.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 1 and srun[0].startswith(
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 ")
    assert srun[0].endswith(f"--nnodes 2 --node-rank slurm --master nodea:{20000 + 1}")
    assert not out.exists()

    res = subprocess.run(cluster.on("nodea", "salloc", "-N2", JITTERLAB, "run", str(spec),
                                    "--out", str(out)),
                         capture_output=True, text=True, env=cluster.env, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:] + cluster.logs()
    assert "4 points run, 0 already complete, 0 failed" in res.stdout
    assert "node 1: the sweep ended; this node ran its part of 2 points, 0 failed" in \
        res.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    run_entry = manifest["runs"][-1]
    assert run_entry["nodes"] == [{"node": 0, "host": "nodea"}, {"node": 1, "host": "nodeb"}]
    assert run_entry["shared_folder"] is True
    assert run_entry["environment"]["SLURM_JOB_ID"]
    hosts = {}
    for p in (out / "points").iterdir():
        summary = json.loads((p / "summary.json").read_text())
        metas = [read_rank_file(p / f"rank-{r:05d}.parquet")[1]
                 for r in range(summary["world_size"])]
        hosts[(summary["schedule"], summary["world_size"])] = [
            (m["hostname"], m["node"], m["launcher"]) for m in metas]
    for name in ("none", "lognormal"):
        assert hosts[(name, 1)] == [("nodea", 0, "single")]
        assert hosts[(name, 2)] == [("nodea", 0, "torchrun"), ("nodeb", 1, "torchrun")]
    assert (out / "report.html").exists()


def test_a_batch_script_runs_the_sweep_and_a_rerun_resumes(cluster):
    """The usual way in: sbatch a two-line script (the batch step is no srun step, so
    jitterlab starts the agents itself), then the same again: nothing left to run. One
    point, on both nodes (the salloc test above runs the N = 1 points and several
    schedules)."""
    spec = sweep_specs.write_spec(cluster.dir / "batch.toml", name="batch", backend="gloo",
                                  ranks_per_node=1, timeout_s=60, world_sizes=[2],
                                  jitter=(("exp", "exponential(20us)"),))
    out = cluster.dir / "batch-out"
    script = cluster.dir / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --nodes=2\n{JITTERLAB} run {spec} --out {out}\n")
    for attempt, expected in ((1, "1 points run, 0 already complete, 0 failed"),
                              (2, "0 points run, 1 already complete, 0 failed")):
        log = cluster.dir / f"job-{attempt}.log"
        res = subprocess.run(cluster.on("nodea", "sbatch", "--parsable", f"--output={log}",
                                        str(script)),
                             capture_output=True, text=True, env=cluster.env, timeout=60)
        assert res.returncode == 0, res.stderr + cluster.logs()
        job = res.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 300  # (sbatch --wait polls every few tens of seconds)
        while True:
            state = subprocess.run(cluster.on("nodea", "squeue", "-h", "-j", job, "-o", "%T"),
                                   capture_output=True, text=True, env=cluster.env).stdout
            if not state.strip():
                break
            assert time.monotonic() < deadline, f"job {job} still {state.strip()}"
            time.sleep(0.5)
        text = log.read_text(errors="replace") if log.exists() else ""
        assert expected in text, text[-3000:] + cluster.logs()
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert len(runs) == 2, runs
    for run_entry in runs:
        assert [h["host"] for h in run_entry["nodes"]] == ["nodea", "nodeb"], run_entry
    (point,) = (out / "points").iterdir()  # its ranks ran one on each node
    metas = [read_rank_file(point / f"rank-{r:05d}.parquet")[1] for r in (0, 1)]
    assert [(m["hostname"], m["node"]) for m in metas] == [("nodea", 0), ("nodeb", 1)]
