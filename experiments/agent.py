"""Nodes 1..K-1 of a multi-node sweep: an agent joins node 0's coordinator, then runs its
node's ranks of every multi-node point node 0 publishes (``node_protocol.py``: the keys).

Each node's ranks use a progress board of their own (``progress-node<r>.bin``), and each
agent watches only its own ranks: a failure elsewhere arrives as node 0's abort. In a
shared result folder the agent uses node 0's point folders; otherwise it keeps a private
temporary folder per point, and its ranks send their records to rank 0, on node 0.
"""

from __future__ import annotations

import platform
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jitter_models.errors import BadInput
from launch.plan import Plan
from launch.supervise import Launch, RunFailed, run_plan, torchrun_node_argv, worker_argv

from .atomic import make_dirs, write_text_atomic
from .locks import RunLock, take_lock
from .node_protocol import (
    BEAT_S,
    PLAN_WAIT_S,
    Key,
    Link,
    NodeSetup,
    await_files,
    digest,
    layout,
    shaped,
)
from .node_store import StoreClient, log_dropped
from .spec import Spec
from .sweep import Point, expand

if TYPE_CHECKING:
    from .store import Store


class _Heart:
    """Bumps beat/<r> every BEAT_S over a connection of its own."""

    def __init__(self, link: Link):
        setup = link.setup
        self._store = StoreClient(setup.master_host, setup.master_port, link.key,
                                  setup.join_timeout_s)
        self._key = Key.BEAT.at(node=setup.node_rank)
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


@dataclass(frozen=True)
class _Joined:
    """An agent that has joined: what each of its points needs."""

    link: Link
    setup: NodeSetup
    store: Store
    shared: bool
    """Every node sees node 0's result folder."""
    lock: RunLock
    board: str
    """This node's progress board."""


def run_agent(spec: Spec, out: Path, setup: NodeSetup, *, progress: bool = True) -> int:
    """Take part in node 0's sweep until it ends; 0 when every part this node ran
    succeeded, 1 otherwise."""
    from .store import Store

    r = setup.node_rank
    link = Link(setup)
    if link.add(Key.CLAIM.at(node=r), 1) != 1:
        raise BadInput(f"node-rank: node {r} has already joined this sweep (another agent "
                         f"with --node-rank {r}, or this one restarted: rerun every node)")
    heart = _Heart(link)
    store = Store(out)
    board = f"progress-node{r}.bin"
    held: RunLock | None = None
    try:
        token = link.wait(Key.TOKEN.at(), time.monotonic() + setup.join_timeout_s)
        if token is None:
            raise RuntimeError(f"node 0 did not start the sweep within "
                               f"{setup.join_timeout_s:g} s")
        hello: dict[str, Any] = {"host": platform.node(),
                                 "digest": digest(spec, setup.nnodes)}
        try:
            held = take_lock(out, name=f".lock-node-{r}", board=board)
            # the token names a file: only node 0's own kind of name is looked for
            hello["shared"] = (isinstance(token, str) and
                               re.fullmatch(r"\.join-[0-9a-f]{12}", token) is not None and
                               (out / token).exists())
        except (ValueError, OSError) as exc:  # node 0 refuses the sweep with the reason
            hello["error"] = str(exc)
        link.put(Key.HELLO.at(node=r), hello)
        shared = _await_go(link, r)
        if not shared:  # this node's private folders only (node 0's may be here too)
            for tmp in store.points.glob(f".tmp-*-node{r}"):
                shutil.rmtree(tmp, ignore_errors=True)
        runs, failures = _serve(_Joined(link, setup, store, shared, held, board), spec,
                                progress)
        link.put(Key.BYE.at(node=r), {})
        print(f"node {r}: the sweep ended; this node ran its part of {runs} points, "
              f"{failures} failed (node 0 writes the report)")
        return 1 if failures else 0
    finally:
        heart.stop()
        if held is not None:
            held.release()


def _await_go(link: Link, r: int) -> bool:
    """Node 0's start message: whether the result folder is shared. RuntimeError when it
    refused the sweep (or sent what does not read)."""
    go = link.wait(Key.GO.at())
    if not shaped(go, shared=bool):
        link.put(Key.BYE.at(node=r), {})
        why = go.get("error") if isinstance(go, dict) else None
        raise RuntimeError(f"node 0 ended the sweep: "
                           f"{why or f'an unreadable start message ({go!r:.80})'}")
    return go["shared"]


def _serve(joined: _Joined, spec: Spec, progress: bool) -> tuple[int, int]:
    """Read point/0, point/1, ... until the end; run this node's part of each point that
    needs it and report on it. (points run, of them failed)."""
    link, r = joined.link, joined.setup.node_rank
    points = {p.id: p for p in expand(spec)}
    failures = runs = 0
    seq = 0
    while True:
        msg = link.wait(Key.POINT.at(seq=seq))
        if shaped(msg, end=bool) and msg["end"]:
            break
        if not (shaped(msg, id=str, nodes=int, port=int) and msg["id"] in points):
            log_dropped(f"node 0 (point/{seq})", f"not a point of this sweep: {msg!r:.80}")
            link.put(Key.REPORT.at(seq=seq, node=r), {
                "ok": False, "error": "its point message did not read"})  # node 0 need not wait
        elif r < msg["nodes"]:
            runs += 1
            error = _run_part(joined, seq, points[msg["id"]], msg)
            failures += error is not None
            link.put(Key.REPORT.at(seq=seq, node=r), {"ok": error is None, "error": error})
            if progress:
                state = "ok" if error is None else f"failed: {error}"
                print(f"node {r}: point {msg['id']} ({msg['nodes']} nodes) {state}",
                      file=sys.stderr, flush=True)
        seq += 1
    return runs, failures


def _run_part(joined: _Joined, seq: int, point: Point, msg: dict) -> str | None:
    """This node's ranks of one point; None on success, else why not (one line)."""
    j, r = joined, joined.setup.node_rank
    k, per = layout(point.world_size, point.spec.ranks_per_node)
    # Shared: node 0's folder. Otherwise a private one, so that a folder node 0 does use
    # (seen late through a network file system, or shared by only some nodes) is never
    # touched here.
    tmp = j.store.tmp_dir(point.id) if j.shared else j.store.points / f".tmp-{point.id}-node{r}"
    try:
        plan_path = tmp / "plan.json"
        if j.shared:
            if not await_files([plan_path], PLAN_WAIT_S):
                return f"plan {plan_path} did not appear within {PLAN_WAIT_S:g} s"
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            make_dirs(tmp)
            write_text_atomic(plan_path, point.plan(tmp).to_json() + "\n")
        plan = Plan.load(plan_path)
        argv = torchrun_node_argv(worker_argv(plan_path), nproc_per_node=per, nnodes=k,
                                  node_rank=r, master_addr=j.setup.master_host,
                                  master_port=int(msg["port"]))

        def remember(pgid: int) -> None:  # a rerun after a crash stops this group
            j.lock.record(pgid=pgid, folder=tmp, board=j.board)

        def aborted() -> str | None:
            key = Key.ABORT.at(seq=seq)
            return f"stopped: {j.link.get(key)}" if j.link.has(key) else None

        run_plan(plan_path, Launch(
            launcher="torchrun", nproc=point.world_size, timeout_s=plan.timeout_s,
            on_start=remember, argv=argv, board=j.board,
            watch_ranks=range(r * per, (r + 1) * per), expect_ranks=(),
            should_stop=aborted, log_name=f"launcher-node{r}.log"))
        return None
    except RunFailed as exc:
        text = str(exc)
        if not j.shared:  # the private folder goes: its log stays on this host, cited there
            for old, new in j.store.keep_logs(point.id, tmp).items():
                text = text.replace(old, f"{new} on {platform.node()}")
        return text
    except (OSError, ValueError) as exc:  # a folder, a plan: say so rather than vanish
        return f"{type(exc).__name__}: {exc}"
    finally:
        j.lock.record()
        if not j.shared:  # records went to rank 0 on node 0; nothing here is kept
            shutil.rmtree(tmp, ignore_errors=True)
