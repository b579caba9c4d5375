"""Multi-node sweeps: one agent per node, coordinated through a small TCP key-value store.

Every node runs the same command with its own node rank::

    jitterlab run SPEC --out DIR --nnodes K --node-rank R --master HOST:PORT

``jitterlab run --print-commands`` prints these lines; inside a SLURM allocation of several
nodes, a plain ``jitterlab run SPEC`` starts them itself with one srun task per node.

Node 0's agent is the coordinator. It hosts the store on HOST:PORT (``node_store``: it
listens on that address only, and every message is authenticated with the sweep's key,
``$JITTERLAB_SWEEP_KEY`` or the 0600 file ``$JITTERLAB_SWEEP_KEY_FILE`` names, the same on
every node; without one, a multi-node sweep is refused), owns the result folder (lock,
manifest, points, failures, report), decides which points still have to run, and gives
each multi-node point a fresh rendezvous port. A point
of N ranks fills ceil(N / ranks_per_node) nodes from node 0 (N must then be a multiple of
ranks_per_node); each of those nodes starts torchrun with a static rendezvous for its own
ranks, the rest sit the point out. Points that fit on one node run on node 0 as in a
single-node sweep.

Keys (values are JSON; ``claim`` and ``beat`` are counters)::

    claim/<r>        agent r: its first request; a second agent for node r is refused
    token            coordinator: a file it made in the result folder (shared folder test)
    hello/<r>        agent r: its host, the digest of its points, whether it saw the token
    go               coordinator: {"shared": bool, "hosts": [...]}, or {"error": reason}
    point/<i>        coordinator: {"id", "nodes", "port"} for the i-th multi-node point, or
                     {"end": true}
    abort/<i>        coordinator: why its own part of point i failed
    report/<i>/<r>   agent r: {"ok": bool, "error": text} for point i
    beat/<r>         agent r: a counter bumped every second (a dead agent stops it); node 0
                     counts its deadline from the claim or the hello, so an agent that
                     dies before its first beat is found dead too
    bye/<r>          agent r: leaving

When every node sees the same result folder (a shared file system), each rank writes its
own records there and only node 0 creates the point folders; otherwise each agent keeps a
private temporary folder per point and the ranks send their records to rank 0, on node 0.
Each node's ranks use a progress board of their own (``progress-node<r>.bin``), and each
agent watches only its own ranks: a failure elsewhere arrives as that node's report. A
message that does not have the shape its key promises is logged and dropped, never
trusted: a point this node does not know is skipped, a report that does not read is a
failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.bootstrap import free_port
from launch.plan import Plan
from launch.runner import RunFailed, run_plan, torchrun_node_argv, worker_argv

from . import node_store
from .atomic import make_dirs, write_text_atomic
from .locks import RunLock, take_lock
from .node_store import KEY_ENV, KeyRefused, StoreClient, StoreServer, log_dropped
from .spec import Spec
from .sweep import Point, expand

DEFAULT_PORT = 29400
JOIN_TIMEOUT_S = 600.0
BEAT_S = 1.0
DEAD_AFTER_S = 10.0       # an agent whose beat has not moved for this long is gone
REPORT_GRACE_S = 60.0     # after node 0's part ends, how long the others may take to report
PLAN_WAIT_S = 30.0        # a shared folder: how long a new plan may take to become visible
_POLL_S = 0.1


@dataclass(frozen=True)
class NodeSetup:
    """Where this agent stands in a multi-node sweep."""

    nnodes: int
    node_rank: int
    master_host: str
    master_port: int
    join_timeout_s: float = JOIN_TIMEOUT_S
    key: bytes | None = field(default=None, repr=False)
    """The sweep's secret; None: ``sweep_key()`` (the environment)."""


def parse_master(text: str) -> tuple[str, int]:
    """'host:port' or '[v6addr]:port' -> (host, port); ValueError naming the flag."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)|([^\s:\[\]]+):([0-9]+)", text or "")
    if not m:
        raise ValueError(f"master: expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"master: port must be in [1, 65535], got {port}")
    return host, port


def layout(world_size: int, ranks_per_node: int) -> tuple[int, int]:
    """(nodes, ranks on each) for a point of ``world_size`` ranks: one node while it fits,
    else whole nodes."""
    if world_size <= ranks_per_node:
        return 1, world_size
    if world_size % ranks_per_node:
        raise ValueError(f"world_sizes: {world_size} is not a multiple of ranks_per_node="
                         f"{ranks_per_node} (a multi-node point fills whole nodes)")
    return world_size // ranks_per_node, ranks_per_node


def check_layout(spec: Spec, nnodes: int) -> None:
    """Bad input for a K-node sweep, found before anything starts or is written."""
    if spec.backend == "mpi":
        raise ValueError("backend: a multi-node sweep starts torchrun on each node (gloo or "
                         "nccl); for mpi, run on one host with launcher = \"mpirun\"")
    if spec.launcher not in ("auto", "torchrun"):
        raise ValueError(f"launcher: a multi-node sweep starts torchrun on each node; got "
                         f"{spec.launcher!r} (use auto or torchrun)")
    for n in spec.world_sizes:
        k, _ = layout(n, spec.ranks_per_node)
        if k > nnodes:
            raise ValueError(f"world_sizes: {n} needs {k} nodes of ranks_per_node="
                             f"{spec.ranks_per_node}, the sweep has nnodes={nnodes}")


def digest(spec: Spec, nnodes: int) -> str:
    """What every node must agree on: the points (their ids hash their content)."""
    text = json.dumps([nnodes, spec.ranks_per_node, [p.id for p in expand(spec)]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ SLURM and commands

def expand_hostlist(expr: str) -> list[str]:
    """Slurm's compressed host list, e.g. 'gpu[01-03,07],login1' -> gpu01, gpu02, gpu03,
    gpu07, login1 (zero padding kept; several bracket groups in one name multiply)."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"SLURM_JOB_NODELIST: empty host list {expr!r}")
    items, depth, start = [], 0, 0
    for i, c in enumerate(expr):
        depth += c == "["
        depth -= c == "]"
        if depth < 0 or depth > 1:
            raise ValueError(f"SLURM_JOB_NODELIST: unbalanced brackets in {expr!r}")
        if c == "," and depth == 0:
            items.append(expr[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"SLURM_JOB_NODELIST: unbalanced brackets in {expr!r}")
    items.append(expr[start:])
    hosts: list[str] = []
    for item in items:
        hosts += _expand_one(item.strip(), expr)
    return hosts


def _expand_one(item: str, whole: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", item)
    if not m:
        if not item:
            raise ValueError(f"SLURM_JOB_NODELIST: empty host name in {whole!r}")
        return [item]
    head, tail = item[:m.start()], item[m.end():]
    out = []
    for part in m.group(1).split(","):
        r = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part.strip())
        if not r:
            raise ValueError(f"SLURM_JOB_NODELIST: bad range {part!r} in {whole!r}")
        lo, hi = r.group(1), r.group(2) or r.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"SLURM_JOB_NODELIST: descending range {part!r} in {whole!r}")
        width = len(lo) if lo.startswith("0") else 0
        out += [f"{head}{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    return [h for name in out for h in _expand_one(name + tail, whole)]


@dataclass(frozen=True)
class SlurmJob:
    """A SLURM allocation of several nodes, seen from its batch script or salloc shell."""

    job_id: str
    hosts: tuple[str, ...]
    gpus_per_node: str | None = None
    """The allocation's GPUs per node (--gpus-per-node, or the count a --gres request gave),
    asked for again by the agents' step: clusters give a step only what it asks for."""
    cpus_per_node: int | None = None
    """The allocation's CPUs on a node: the agent's step asks for all of them, else a
    cluster that confines steps to their CPUs would put every rank of a node on one."""

    @property
    def port(self) -> int:
        """The store's port: derived from the job id, so concurrent jobs sharing a node
        rarely collide (override with --master)."""
        digits = re.sub(r"[^0-9]", "", self.job_id) or "0"
        return 20000 + int(digits) % 20000


def slurm_job(env: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The allocation to start agents in: several nodes, and not already inside a job step
    (an srun task would otherwise start srun again)."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or "SLURM_STEP_ID" in env or "SLURM_STEPID" in env:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    hosts = tuple(expand_hostlist(nodelist))
    gpus = env.get("SLURM_GPUS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or None
    cpus = env.get("SLURM_CPUS_ON_NODE", "")
    return SlurmJob(env["SLURM_JOB_ID"], hosts, gpus,
                    int(cpus) if cpus.isdigit() and int(cpus) > 0 else None
                    ) if len(hosts) > 1 else None


def agent_argv(spec_arg: str, out: str, *, nnodes: int, node_rank: int | str, master: str,
               jitterlab: str = "jitterlab",
               join_timeout_s: float = JOIN_TIMEOUT_S) -> list[str]:
    """The command one node runs."""
    extra = [] if join_timeout_s == JOIN_TIMEOUT_S else ["--join-timeout", f"{join_timeout_s:g}"]
    return [jitterlab, "run", spec_arg, "--out", out, "--nnodes", str(nnodes),
            "--node-rank", str(node_rank), "--master", master, *extra]


def srun_agents_argv(job: SlurmJob, spec_arg: str, out: str, master: str,
                     jitterlab: str = "jitterlab",
                     join_timeout_s: float = JOIN_TIMEOUT_S) -> list[str]:
    """One agent per node of the allocation, each learning its node rank from SLURM; the
    step asks for the node's CPUs and GPUs, which the agent's ranks share."""
    k = len(job.hosts)
    gpus = [f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []
    cpus = [f"--cpus-per-task={job.cpus_per_node}"] if job.cpus_per_node else []
    return ["srun", f"--nodes={k}", f"--ntasks={k}", "--ntasks-per-node=1", *cpus, *gpus,
            *agent_argv(spec_arg, out, nnodes=k, node_rank="slurm", master=master,
                        jitterlab=jitterlab, join_timeout_s=join_timeout_s)]


KEY_NOTE = (f"# every node needs the same secret in {KEY_ENV} (e.g. export {KEY_ENV}="
            f"$(openssl rand -hex 32)), or {node_store.KEY_FILE_ENV} naming a file of mode "
            "0600")


def print_commands(argvs: Sequence[Sequence[str]], header: str) -> str:
    """The header, then one line per command; agents of a multi-node sweep are reminded
    of the key they need."""
    note = [KEY_NOTE] if any("--nnodes" in a for a in argvs) else []
    return "\n".join([header, *note, *(shlex.join(a) for a in argvs)])


def node_rank_from(value: str, nnodes: int, env: Mapping[str, str] | None = None) -> int:
    """--node-rank: an integer, or 'slurm' (SLURM_NODEID of this srun task)."""
    env = os.environ if env is None else env
    raw = env.get("SLURM_NODEID") if value == "slurm" else value
    if raw is None:
        raise ValueError("node-rank: 'slurm' needs SLURM_NODEID (run it as an srun task)")
    try:
        rank = int(raw)
    except ValueError:
        raise ValueError(f"node-rank: expected an integer or 'slurm', got {value!r}") from None
    if not 0 <= rank < nnodes:
        raise ValueError(f"node-rank: must be in [0, {nnodes - 1}] for nnodes={nnodes}, "
                         f"got {rank}")
    return rank


# ------------------------------------------------------------------ the store

class Link:
    """This agent's connection to the store: node 0 serves it (and uses it in-process),
    the others connect to it."""

    def __init__(self, setup: NodeSetup):
        self.setup = setup
        self.key = setup.key if setup.key is not None else node_store.sweep_key()
        self._unreadable: set[str] = set()
        where = f"{setup.master_host}:{setup.master_port}"
        if setup.node_rank == 0:
            try:
                self.server = StoreServer(setup.master_host, setup.master_port, self.key,
                                          max_connections=2 * setup.nnodes + 32)
            except OSError as exc:
                raise ValueError(f"master: cannot listen on {where} "
                                 f"({exc.strerror or exc})") from None
            self._request = self.server.apply
            return
        try:
            self._request = StoreClient(setup.master_host, setup.master_port, self.key,
                                        setup.join_timeout_s).request
        except KeyRefused:
            raise RuntimeError(f"node 0's agent at {where} refused this node's key (give "
                               f"every node the same {KEY_ENV})") from None
        except OSError as exc:
            raise RuntimeError(f"cannot reach node 0's agent at {where} within "
                               f"{setup.join_timeout_s:g} s ({exc})") from None

    def put(self, key: str, value: Any) -> None:
        self._call("set", key, json.dumps(value))

    def has(self, key: str) -> bool:
        return self._call("get", key) is not None

    def get(self, key: str) -> Any:
        """The key's value; None when it is absent or does not parse (logged once)."""
        text = self._call("get", key)
        try:
            return None if text is None else json.loads(text)
        except (TypeError, ValueError):
            if key not in self._unreadable:
                self._unreadable.add(key)
                log_dropped("the store", f"{key} holds {text!r:.60}, not JSON")
            return None

    def add(self, key: str, amount: int) -> int:
        """Atomically add to a counter (made at 0); its new value."""
        return int(self._call("add", key, amount))

    def _call(self, op: str, key: str, value: Any = None) -> Any:
        try:
            return self._request(op, key, value)
        except OSError as exc:
            who = ("an agent" if self.setup.node_rank == 0 else
                   f"node 0's agent at {self.setup.master_host}:{self.setup.master_port}")
            raise RuntimeError(f"lost the connection to {who} ({exc})") from None

    def wait(self, key: str, deadline: float | None = None,
             poll: Callable[[], None] | None = None) -> Any:
        """The key's value once it exists and parses; None past ``deadline``
        (time.monotonic)."""
        while (value := self.get(key)) is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            if poll is not None:
                poll()
            time.sleep(_POLL_S)
        return value


def _shaped(value: Any, **types: type) -> bool:
    """A JSON object whose fields have these types (what a message of a key promises)."""
    return isinstance(value, dict) and all(isinstance(value.get(k), t)
                                           for k, t in types.items())


class _Heart:
    """Agent side: bumps beat/<r> every second over a connection of its own."""

    def __init__(self, link: Link):
        setup = link.setup
        self._store = StoreClient(setup.master_host, setup.master_port, link.key,
                                  setup.join_timeout_s)
        self._key = f"beat/{setup.node_rank}"
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="jitterlab-agent-beat", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                self._store.request("add", self._key, 1)
            except (OSError, RuntimeError):
                return  # node 0 is gone; the main loop finds out on its next request

    def stop(self) -> None:
        self._stop.set()


class _Pulse:
    """Coordinator side: when did each agent's beat last move. An agent's deadline runs
    from its join (``joined``) or its first beat, whichever node 0 sees first: one that
    dies before it ever beats is dead too. One not seen at all is not started (yet)."""

    def __init__(self, link: Link, nodes: range):
        self.link = link
        self.seen: dict[int, tuple[int, float | None]] = {r: (0, None) for r in nodes}

    def joined(self, r: int) -> None:
        last, when = self.seen[r]
        if when is None:
            self.seen[r] = (last, time.monotonic())

    def dead(self, nodes: Sequence[int]) -> list[int]:
        now = time.monotonic()
        out = []
        for r in nodes:
            value = self.link.add(f"beat/{r}", 0)
            last, when = self.seen[r]
            if value != last:
                self.seen[r] = (value, now)
            elif when is not None and now - when > DEAD_AFTER_S:
                out.append(r)
        return out


class _Remote(RunFailed):
    """Node 0 stopped its part because another node failed: that node's report says why."""


# ------------------------------------------------------------------ node 0

class Coordinator:
    """Node 0's side: joins the agents, then runs each multi-node point with them."""

    def __init__(self, setup: NodeSetup, spec: Spec):
        self.setup = setup
        self.spec = spec
        self.link = Link(setup)
        self.pulse = _Pulse(self.link, range(1, setup.nnodes))
        self.hosts: list[str] = [platform.node()]
        self.shared = False
        self._seq = 0            # the next point/<i> to publish
        self._in_flight: int | None = None
        self._went = False
        self._joined: list[int] = []

    def nodes_for(self, point: Point) -> int:
        return layout(point.world_size, self.spec.ranks_per_node)[0]

    def join(self, root: Path) -> None:
        """Wait for every agent; agree on the points and on whether the folder is shared."""
        token = f".join-{uuid.uuid4().hex[:12]}"
        (root / token).write_text("jitterlab\n")
        try:
            self.link.put("token", token)
            deadline = time.monotonic() + self.setup.join_timeout_s
            hellos = {}
            for r in range(1, self.setup.nnodes):
                def gone(r: int = r) -> None:
                    if self.link.has(f"claim/{r}"):  # its deadline runs from here
                        self.pulse.joined(r)
                    if self.pulse.dead([r]):
                        raise RuntimeError(self._refuse(
                            f"node {r}'s agent started, then stopped before joining"))
                hello = self.link.wait(f"hello/{r}", deadline, poll=gone)
                if hello is None:
                    raise RuntimeError(self._refuse(
                        f"node {r} did not join within {self.setup.join_timeout_s:g} s "
                        f"(start its command: jitterlab run ... --node-rank {r})"))
                self.pulse.joined(r)
                hellos[r] = hello
                self._joined.append(r)
        finally:
            (root / token).unlink(missing_ok=True)
        for r, hello in hellos.items():
            if not (_shaped(hello, host=str) and (_shaped(hello, digest=str)
                                                 or _shaped(hello, error=str))):
                log_dropped(f"node {r}", f"an unreadable hello: {hello!r:.80}")
                raise ValueError(self._refuse(f"node {r} sent an unreadable hello (the same "
                                              "jitterlab version on every node?)"))
            if hello.get("error"):
                raise ValueError(self._refuse(f"node {r} ({hello.get('host')}): "
                                              f"{hello['error']}"))
        mine = digest(self.spec, self.setup.nnodes)
        for r, hello in hellos.items():
            if hello.get("digest") != mine:
                raise ValueError(self._refuse(
                    f"spec: node {r} ({hello.get('host')}) has a different spec or nnodes "
                    "(its points differ from node 0's); give every node the same command"))
        # Only when all see node 0's folder is it shared; otherwise every other node works
        # in private folders and its ranks send their records to rank 0 (safe either way).
        self.shared = all(h.get("shared") for h in hellos.values())
        self.hosts += [hellos[r]["host"] for r in range(1, self.setup.nnodes)]
        self.link.put("go", {"shared": self.shared, "hosts": self.hosts})
        self._went = True

    def _refuse(self, reason: str) -> str:
        self.link.put("go", {"error": reason})
        self._went = True
        return reason

    def run_point(self, point: Point, plan_path: Path, plan: Plan,
                  on_start: Callable[[int], None]) -> None:
        """Node 0's part of a multi-node point, then every other node's report."""
        n = point.world_size
        k, per = layout(n, self.spec.ranks_per_node)
        dead = self.pulse.dead(range(1, k))
        if dead:  # refused before anything is published: the agents' count is unchanged
            raise RunFailed(f"node {dead[0]}'s agent ({self.hosts[dead[0]]}) stopped "
                            "responding")
        port = free_port("0.0.0.0")
        seq = self._seq
        self._in_flight = seq
        self.link.put(f"point/{seq}", {"id": point.id, "nodes": k, "port": port})
        self._seq = seq + 1
        argv = torchrun_node_argv(worker_argv(plan_path), nproc_per_node=per, nnodes=k,
                                  node_rank=0, master_addr=self.setup.master_host,
                                  master_port=port)
        errors = []
        try:
            run_plan(plan_path, launcher="torchrun", nproc=n, timeout_s=plan.timeout_s,
                     on_start=on_start, argv=argv, watch_ranks=range(per),
                     expect_ranks=range(per) if self.shared else range(n),
                     should_stop=lambda: self._remote_failure(seq, k))
        except _Remote:
            self.link.put(f"abort/{seq}", "another node failed")
        except RunFailed as exc:
            errors.append(f"node 0: {exc}")
            self.link.put(f"abort/{seq}", errors[0])
        reports, dead = self._reports(seq, k, time.monotonic() + plan.timeout_s
                                      + REPORT_GRACE_S)
        self._in_flight = None
        for r in range(1, k):
            if r in reports:
                if not reports[r]["ok"]:
                    errors.append(f"node {r}: {reports[r].get('error')}")
            elif r in dead:
                errors.append(f"node {r}'s agent ({self.hosts[r]}) stopped responding")
            else:
                errors.append(f"node {r} ({self.hosts[r]}) did not report")
        if errors:
            raise RunFailed("; ".join(errors))
        files = [plan.rank_file(r) for r in range(n)]
        if self.shared and not _await_files(files, PLAN_WAIT_S):  # a network file system
            missing = [r for r, f in enumerate(files) if not f.exists()]  # may be late
            raise RunFailed(f"every node finished, but the records of ranks {missing} did "
                            f"not appear in {plan.out_dir} within {PLAN_WAIT_S:g} s")

    def _remote_failure(self, seq: int, k: int) -> None:
        """Polled while node 0's ranks run: stop them when another node has failed."""
        for r in range(1, k):
            report = self._report(seq, r)
            if report is not None and not report["ok"]:
                raise _Remote(f"node {r} failed")
        if self.pulse.dead(range(1, k)):
            raise _Remote("an agent stopped responding")

    def _reports(self, seq: int, k: int, deadline: float) -> tuple[dict[int, dict], set[int]]:
        out: dict[int, dict] = {}
        dead: set[int] = set()
        while len(out) + len(dead) < k - 1 and time.monotonic() < deadline:
            for r in range(1, k):
                if r not in out and (report := self._report(seq, r)) is not None:
                    out[r] = report
            dead = set(self.pulse.dead(range(1, k))) - set(out)
            if len(out) + len(dead) < k - 1:
                time.sleep(_POLL_S)
        return out, dead

    def _report(self, seq: int, r: int) -> dict | None:
        """Node r's report on point seq; None while there is none. One that does not read
        counts as a failure, so that a broken node fails its points, not node 0."""
        report = self.link.get(f"report/{seq}/{r}")
        if report is None or _shaped(report, ok=bool):
            return report
        log_dropped(f"node {r}", f"an unreadable report on point {seq}: {report!r:.80}")
        return {"ok": False, "error": "its report did not read"}

    def finish(self, reason: str = "the sweep ended") -> None:
        """Tell every agent to leave (a point in flight is aborted), then wait briefly for
        them to go, so the store outlives their last request."""
        try:
            if not self._went:
                self._refuse(f"node 0 stopped: {reason}")
            end = self._seq
            if self._in_flight is not None:
                self.link.put(f"abort/{self._in_flight}", f"node 0 stopped: {reason}")
                end = max(end, self._in_flight + 1)
            self.link.put(f"point/{end}", {"end": True})
            deadline = time.monotonic() + 20.0  # an agent may take ~10 s to stop its ranks
            for r in self._joined:
                while not self.link.has(f"bye/{r}") and time.monotonic() < deadline:
                    if self.pulse.dead([r]):
                        break
                    time.sleep(_POLL_S)
        except (RuntimeError, KeyboardInterrupt):
            pass  # the store goes away with this process anyway


# ------------------------------------------------------------------ nodes 1..K-1

def run_agent(spec: Spec, out: Path, setup: NodeSetup, *, progress: bool = True) -> int:
    """Take part in node 0's sweep until it ends; 0 when every part this node ran
    succeeded, 1 otherwise."""
    from .store import Store

    r = setup.node_rank
    link = Link(setup)
    if link.add(f"claim/{r}", 1) != 1:
        raise ValueError(f"node-rank: node {r} has already joined this sweep (another agent "
                         f"with --node-rank {r}, or this one restarted: rerun every node)")
    heart = _Heart(link)
    store = Store(out)
    lock = f".lock-node-{r}"
    board = f"progress-node{r}.bin"
    held: RunLock | None = None
    try:
        deadline = time.monotonic() + setup.join_timeout_s
        token = link.wait("token", deadline)
        if token is None:
            raise RuntimeError(f"node 0 did not start the sweep within "
                               f"{setup.join_timeout_s:g} s")
        hello: dict[str, Any] = {"host": platform.node(),
                                 "digest": digest(spec, setup.nnodes)}
        try:
            held = take_lock(out, name=lock, board=board)
            # the token names a file: only node 0's own kind of name is looked for
            hello["shared"] = (isinstance(token, str) and
                               re.fullmatch(r"\.join-[0-9a-f]{12}", token) is not None and
                               (out / token).exists())
        except (ValueError, OSError) as exc:  # node 0 refuses the sweep with the reason
            hello["error"] = str(exc)
        link.put(f"hello/{r}", hello)
        go = link.wait("go")
        if not _shaped(go, shared=bool):
            link.put(f"bye/{r}", {})
            why = go.get("error") if isinstance(go, dict) else None
            raise RuntimeError(f"node 0 ended the sweep: "
                               f"{why or f'an unreadable start message ({go!r:.80})'}")
        shared = go["shared"]
        if not shared:  # this node's private folders only (node 0's may be here too)
            for tmp in store.points.glob(f".tmp-*-node{r}"):
                shutil.rmtree(tmp, ignore_errors=True)
        points = {p.id: p for p in expand(spec)}
        failures = runs = 0
        seq = 0
        while True:
            msg = link.wait(f"point/{seq}")
            if _shaped(msg, end=bool) and msg["end"]:
                break
            if not (_shaped(msg, id=str, nodes=int, port=int) and msg["id"] in points):
                log_dropped(f"node 0 (point/{seq})", f"not a point of this sweep: {msg!r:.80}")
                link.put(f"report/{seq}/{r}", {"ok": False, "error": "its point message did "
                                               "not read"})  # node 0 need not wait for it
            elif r < msg["nodes"]:
                runs += 1
                error = _run_part(link, setup, seq, points[msg["id"]], msg, store, shared,
                                  held, board)
                failures += error is not None
                link.put(f"report/{seq}/{r}", {"ok": error is None, "error": error})
                if progress:
                    state = "ok" if error is None else f"failed: {error}"
                    print(f"node {r}: point {msg['id']} ({msg['nodes']} nodes) {state}",
                          file=sys.stderr, flush=True)
            seq += 1
        link.put(f"bye/{r}", {})
        print(f"node {r}: the sweep ended; this node ran its part of {runs} points, "
              f"{failures} failed (node 0 writes the report)")
        return 1 if failures else 0
    finally:
        heart.stop()
        if held is not None:
            held.release()


def _run_part(link: Link, setup: NodeSetup, seq: int, point: Point, msg: dict, store,
              shared: bool, lock: RunLock, board: str) -> str | None:
    """This node's ranks of one point; None on success, else why not (one line)."""
    from .runner import plan_for

    r = setup.node_rank
    k, per = layout(point.world_size, point.spec.ranks_per_node)
    # Shared: node 0's folder. Otherwise a private one, so that a folder node 0 does use
    # (seen late through a network file system, or shared by only some nodes) is never
    # touched here.
    tmp = store.tmp_dir(point.id) if shared else store.points / f".tmp-{point.id}-node{r}"
    try:
        if shared:
            plan_path = tmp / "plan.json"
            if not _await_files([plan_path], PLAN_WAIT_S):
                return f"plan {plan_path} did not appear within {PLAN_WAIT_S:g} s"
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            make_dirs(tmp)
            plan_path = tmp / "plan.json"
            write_text_atomic(plan_path, plan_for(point, tmp).to_json() + "\n")
        plan = Plan.load(plan_path)
        argv = torchrun_node_argv(worker_argv(plan_path), nproc_per_node=per, nnodes=k,
                                  node_rank=r, master_addr=setup.master_host,
                                  master_port=int(msg["port"]))

        def remember(pgid: int) -> None:  # a rerun after a crash stops this group
            lock.record(pgid=pgid, folder=tmp, board=board)

        def aborted() -> str | None:
            key = f"abort/{seq}"
            return f"stopped: {link.get(key)}" if link.has(key) else None

        run_plan(plan_path, launcher="torchrun", nproc=point.world_size,
                 timeout_s=plan.timeout_s, on_start=remember, argv=argv, board=board,
                 watch_ranks=range(r * per, (r + 1) * per), expect_ranks=(),
                 should_stop=aborted, log_name=f"launcher-node{r}.log")
        return None
    except RunFailed as exc:
        text = str(exc)
        if not shared:  # the private folder goes: its log stays on this host, cited there
            for old, new in store.keep_logs(point.id, tmp).items():
                text = text.replace(old, f"{new} on {platform.node()}")
        return text
    except (OSError, ValueError) as exc:  # a folder, a plan: say so rather than vanish
        return f"{type(exc).__name__}: {exc}"
    finally:
        lock.record()
        if not shared:  # records went to rank 0 on node 0; nothing here is kept
            shutil.rmtree(tmp, ignore_errors=True)


def _await_files(paths: Sequence[Path], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while True:
        if all(p.exists() for p in paths):
            return True
        if time.monotonic() > deadline:
            return False
        for p in paths:  # refresh a network file system's view of the folder
            try:
                os.listdir(p.parent)
            except OSError:
                pass
        time.sleep(_POLL_S)
