"""Multi-node sweeps, what node 0 and the agents share: the store's keys, the messages,
the connection, the node layout of a point and the command each node runs.

Every node runs the same command with its own node rank::

    jitterlab run SPEC --out DIR --nnodes K --node-rank R --master HOST:PORT

``jitterlab run --print-commands`` prints these lines; inside a SLURM allocation of several
nodes, a plain ``jitterlab run SPEC`` starts them itself with one srun task per node.

Node 0's agent is the coordinator (``coordinator.py``). It hosts the store on HOST:PORT
(``node_store``: it listens on that address only, and every message is authenticated with
the sweep's key, ``$JITTERLAB_SWEEP_KEY`` or the 0600 file ``$JITTERLAB_SWEEP_KEY_FILE``
names, the same on every node; without one, a multi-node sweep is refused), owns the
result folder (lock, manifest, points, failures, report), decides which points still have
to run, and gives each multi-node point a fresh rendezvous port. A point of N ranks fills
ceil(N / ranks_per_node) nodes from node 0 (N must then be a multiple of ranks_per_node);
each of those nodes starts torchrun with a static rendezvous for its own ranks, the rest
sit the point out. Points that fit on one node run on node 0 as in a single-node sweep.
The other nodes' agents (``agent.py``) run their part of each multi-node point.

When every node sees the same result folder (a shared file system), each rank writes its
own records there and only node 0 creates the point folders; otherwise each agent keeps a
private temporary folder per point and the ranks send their records to rank 0, on node 0.

The two sides talk only through the keys of ``Key``. A message that does not have the
shape its key promises is logged and dropped, never trusted: a point an agent does not
know is skipped, a report that does not read is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from jitter_models.errors import BadInput
from launch.slurm import SlurmJob, srun_per_node_argv

from . import node_store
from .node_store import KEY_ENV, KeyRefused, StoreClient, StoreServer, log_dropped
from .spec import Spec
from .sweep import expand

DEFAULT_PORT = 29400
JOIN_TIMEOUT_S = 600.0
BEAT_S = 1.0              # how often an agent bumps its beat
PLAN_WAIT_S = 30.0        # a shared folder: how long a new file may take to become visible
POLL_S = 0.1


class Key(Enum):
    """Every key of the store, once: its name (``{node}``: an agent's node rank; ``{seq}``:
    a multi-node point's number, 0, 1, ... in run order), who writes it, what it holds.
    Values are JSON; CLAIM and BEAT are counters."""

    CLAIM = ("claim/{node}", "agent", "its first request; a second agent for a node is refused")
    TOKEN = ("token", "coordinator", "a file it made in the result folder (shared folder test)")
    HELLO = ("hello/{node}", "agent", '{"host", "digest" of its points, "shared": saw the '
             'token}, or {"host", "error"}')
    GO = ("go", "coordinator", '{"shared": bool, "hosts": [...]}, or {"error": reason}')
    POINT = ("point/{seq}", "coordinator", '{"id", "nodes", "port"} of the seq-th multi-node '
             'point, or {"end": true}')
    ABORT = ("abort/{seq}", "coordinator", "why its own part of point seq failed")
    REPORT = ("report/{seq}/{node}", "agent", '{"ok": bool, "error": text} for point seq')
    BEAT = ("beat/{node}", "agent", "bumped every BEAT_S; dead: unmoved since the claim, "
            "hello or last beat")
    BYE = ("bye/{node}", "agent", "leaving")

    def __init__(self, template: str, writer: str, holds: str) -> None:
        self.template = template
        self.writer = writer
        self.holds = holds

    def at(self, **parts: int) -> str:
        """This key's name: ``Key.REPORT.at(seq=3, node=1)`` is ``report/3/1``."""
        return self.template.format(**parts)


def shaped(value: Any, **types: type) -> bool:
    """A JSON object whose fields have these types (what a message of a key promises)."""
    return isinstance(value, dict) and all(isinstance(value.get(k), t)
                                           for k, t in types.items())


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
        raise BadInput(f"master: expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise BadInput(f"master: port must be in [1, 65535], got {port}")
    return host, port


def layout(world_size: int, ranks_per_node: int) -> tuple[int, int]:
    """(nodes, ranks on each) for a point of ``world_size`` ranks: one node while it fits,
    else whole nodes."""
    if world_size <= ranks_per_node:
        return 1, world_size
    if world_size % ranks_per_node:
        raise BadInput(f"world_sizes: {world_size} is not a multiple of ranks_per_node="
                         f"{ranks_per_node} (a multi-node point fills whole nodes)")
    return world_size // ranks_per_node, ranks_per_node


def check_layout(spec: Spec, nnodes: int) -> None:
    """Bad input for a K-node sweep, found before anything starts or is written."""
    if spec.backend == "mpi":
        raise BadInput("backend: a multi-node sweep starts torchrun on each node (gloo or "
                         "nccl); for mpi, run on one host with launcher = \"mpirun\"")
    if spec.launcher not in ("auto", "torchrun"):
        raise BadInput(f"launcher: a multi-node sweep starts torchrun on each node; got "
                         f"{spec.launcher!r} (use auto or torchrun)")
    for n in spec.world_sizes:
        k, _ = layout(n, spec.ranks_per_node)
        if k > nnodes:
            raise BadInput(f"world_sizes: {n} needs {k} nodes of ranks_per_node="
                             f"{spec.ranks_per_node}, the sweep has nnodes={nnodes}")


def digest(spec: Spec, nnodes: int) -> str:
    """What every node must agree on: the points (their ids hash their content)."""
    text = json.dumps([nnodes, spec.ranks_per_node, [p.id for p in expand(spec)]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ commands

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
    return srun_per_node_argv(job, agent_argv(
        spec_arg, out, nnodes=len(job.hosts), node_rank="slurm", master=master,
        jitterlab=jitterlab, join_timeout_s=join_timeout_s))


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
        raise BadInput("node-rank: 'slurm' needs SLURM_NODEID (run it as an srun task)")
    try:
        rank = int(raw)
    except ValueError:
        raise BadInput(f"node-rank: expected an integer or 'slurm', got {value!r}") from None
    if not 0 <= rank < nnodes:
        raise BadInput(f"node-rank: must be in [0, {nnodes - 1}] for nnodes={nnodes}, "
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
                raise BadInput(f"master: cannot listen on {where} "
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
            time.sleep(POLL_S)
        return value


def await_files(paths: Sequence[Path], within_s: float) -> bool:
    """Whether every file exists within ``within_s`` (a shared folder: a network file
    system may show another node's new files late)."""
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
        time.sleep(POLL_S)
