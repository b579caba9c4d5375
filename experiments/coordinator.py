"""Node 0 of a multi-node sweep: it hosts the store, joins the other nodes' agents, and runs
each multi-node point with them (see ``node_protocol.py`` for the keys and the layout).

The sweep loop (``sweep_loop.run_sweep``) owns the result folder and decides which points
run; for a point that needs several nodes it calls ``Coordinator.run_point``, which
publishes the point with a fresh rendezvous port, runs node 0's ranks, and gathers every
other node's report. Each agent watches only its own node's ranks: a failure elsewhere
arrives as that node's report, and an agent whose beat stops is declared dead.
"""

from __future__ import annotations

import platform
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jitter_models.errors import BadInput
from launch.bootstrap import free_port
from launch.plan import Plan
from launch.supervise import (
    Launch,
    RunFailed,
    run_plan,
    seconds_from_env,
    torchrun_node_argv,
    worker_argv,
)

from .node_protocol import (
    PLAN_WAIT_S,
    POLL_S,
    Key,
    Link,
    NodeSetup,
    await_files,
    digest,
    layout,
    shaped,
)
from .node_store import log_dropped
from .spec import Spec
from .sweep import Point

# An agent whose beat has not moved for this long is gone ($JITTERLAB_DEAD_AFTER_S: the
# tests' shorter wait; BEAT_S is 1 s).
DEAD_AFTER_S = seconds_from_env("JITTERLAB_DEAD_AFTER_S", 10.0)
REPORT_GRACE_S = 60.0     # after node 0's part ends, how long the others may take to report


class _Pulse:
    """When did each agent's beat last move. An agent's deadline runs from its join
    (``joined``) or its first beat, whichever node 0 sees first: one that dies before it
    ever beats is dead too. One not seen at all is not started (yet)."""

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
            value = self.link.add(Key.BEAT.at(node=r), 0)
            last, when = self.seen[r]
            if value != last:
                self.seen[r] = (value, now)
            elif when is not None and now - when > DEAD_AFTER_S:
                out.append(r)
        return out


class _Remote(RunFailed):
    """Node 0 stopped its part because another node failed: that node's report says why."""


class Coordinator:
    """Node 0's side: joins the agents, then runs each multi-node point with them."""

    def __init__(self, setup: NodeSetup, spec: Spec):
        self.setup = setup
        self.spec = spec
        self.link = Link(setup)
        self.pulse = _Pulse(self.link, range(1, setup.nnodes))
        self.hosts: list[str] = [platform.node()]
        self.shared = False
        self._seq = 0            # the next point/<seq> to publish
        self._in_flight: int | None = None
        self._went = False
        self._joined: list[int] = []

    def nodes_for(self, point: Point) -> int:
        return layout(point.world_size, self.spec.ranks_per_node)[0]

    # -------------------------------------------------------------- joining

    def join(self, root: Path) -> None:
        """Wait for every agent; agree on the points and on whether the folder is shared."""
        hellos = self._hellos(root)
        self._check(hellos)
        # Only when all see node 0's folder is it shared; otherwise every other node works
        # in private folders and its ranks send their records to rank 0 (safe either way).
        self.shared = all(h.get("shared") for h in hellos.values())
        self.hosts += [hellos[r]["host"] for r in range(1, self.setup.nnodes)]
        self.link.put(Key.GO.at(), {"shared": self.shared, "hosts": self.hosts})
        self._went = True

    def _hellos(self, root: Path) -> dict[int, Any]:
        """Every agent's hello, in node order, with a token file in ``root`` meanwhile (an
        agent that sees it shares the folder)."""
        token = f".join-{uuid.uuid4().hex[:12]}"
        (root / token).write_text("jitterlab\n")
        try:
            self.link.put(Key.TOKEN.at(), token)
            deadline = time.monotonic() + self.setup.join_timeout_s
            hellos = {}
            for r in range(1, self.setup.nnodes):
                def gone(r: int = r) -> None:
                    if self.link.has(Key.CLAIM.at(node=r)):  # its deadline runs from here
                        self.pulse.joined(r)
                    if self.pulse.dead([r]):
                        raise RuntimeError(self._refuse(
                            f"node {r}'s agent started, then stopped before joining"))
                hello = self.link.wait(Key.HELLO.at(node=r), deadline, poll=gone)
                if hello is None:
                    raise RuntimeError(self._refuse(
                        f"node {r} did not join within {self.setup.join_timeout_s:g} s "
                        f"(start its command: jitterlab run ... --node-rank {r})"))
                self.pulse.joined(r)
                hellos[r] = hello
                self._joined.append(r)
            return hellos
        finally:
            (root / token).unlink(missing_ok=True)

    def _check(self, hellos: dict[int, Any]) -> None:
        """Refuse the sweep (telling every agent why) unless each hello reads, reports no
        error, and has node 0's points."""
        for r, hello in hellos.items():
            if not (shaped(hello, host=str) and (shaped(hello, digest=str)
                                                or shaped(hello, error=str))):
                log_dropped(f"node {r}", f"an unreadable hello: {hello!r:.80}")
                raise BadInput(self._refuse(f"node {r} sent an unreadable hello (the same "
                                              "jitterlab version on every node?)"))
            if hello.get("error"):
                raise BadInput(self._refuse(f"node {r} ({hello.get('host')}): "
                                              f"{hello['error']}"))
        mine = digest(self.spec, self.setup.nnodes)
        for r, hello in hellos.items():
            if hello.get("digest") != mine:
                raise BadInput(self._refuse(
                    f"spec: node {r} ({hello.get('host')}) has a different spec or nnodes "
                    "(its points differ from node 0's); give every node the same command"))

    def _refuse(self, reason: str) -> str:
        self.link.put(Key.GO.at(), {"error": reason})
        self._went = True
        return reason

    # -------------------------------------------------------------- one point

    def run_point(self, point: Point, plan_path: Path, plan: Plan,
                  on_start: Callable[[int], None]) -> None:
        """Node 0's part of a multi-node point, then every other node's report."""
        k, _ = layout(point.world_size, self.spec.ranks_per_node)
        dead = self.pulse.dead(range(1, k))
        if dead:  # refused before anything is published: the agents' count is unchanged
            raise RunFailed(f"node {dead[0]}'s agent ({self.hosts[dead[0]]}) stopped "
                            "responding")
        port = free_port("0.0.0.0")
        seq = self._seq
        self._in_flight = seq
        self.link.put(Key.POINT.at(seq=seq), {"id": point.id, "nodes": k, "port": port})
        self._seq = seq + 1
        errors = self._own_part(seq, point, plan_path, plan, on_start, port)
        reports, dead = self._reports(seq, k, time.monotonic() + plan.timeout_s
                                      + REPORT_GRACE_S)
        self._in_flight = None
        errors += self._failures(reports, dead, k)
        if errors:
            raise RunFailed("; ".join(errors))
        files = [plan.rank_file(r) for r in range(point.world_size)]
        if self.shared and not await_files(files, PLAN_WAIT_S):  # a network file system
            missing = [r for r, f in enumerate(files) if not f.exists()]  # may be late
            raise RunFailed(f"every node finished, but the records of ranks {missing} did "
                            f"not appear in {plan.out_dir} within {PLAN_WAIT_S:g} s")

    def _own_part(self, seq: int, point: Point, plan_path: Path, plan: Plan,
                  on_start: Callable[[int], None], port: int) -> list[str]:
        """Node 0's ranks of point ``seq``; its error, if it failed (none when it stopped
        because another node failed: that node's report says why)."""
        n = point.world_size
        k, per = layout(n, self.spec.ranks_per_node)
        argv = torchrun_node_argv(worker_argv(plan_path), nproc_per_node=per, nnodes=k,
                                  node_rank=0, master_addr=self.setup.master_host,
                                  master_port=port)
        launch = Launch(launcher="torchrun", nproc=n, timeout_s=plan.timeout_s,
                        on_start=on_start, argv=argv, watch_ranks=range(per),
                        expect_ranks=range(per) if self.shared else range(n),
                        should_stop=lambda: self._remote_failure(seq, k))
        try:
            run_plan(plan_path, launch)
        except _Remote:
            self.link.put(Key.ABORT.at(seq=seq), "another node failed")
        except RunFailed as exc:
            error = f"node 0: {exc}"
            self.link.put(Key.ABORT.at(seq=seq), error)
            return [error]
        return []

    def _failures(self, reports: dict[int, dict], dead: set[int], k: int) -> list[str]:
        """What went wrong on nodes 1..k-1, one entry per node that failed."""
        errors = []
        for r in range(1, k):
            if r in reports:
                if not reports[r]["ok"]:
                    errors.append(f"node {r}: {reports[r].get('error')}")
            elif r in dead:
                errors.append(f"node {r}'s agent ({self.hosts[r]}) stopped responding")
            else:
                errors.append(f"node {r} ({self.hosts[r]}) did not report")
        return errors

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
                time.sleep(POLL_S)
        return out, dead

    def _report(self, seq: int, r: int) -> dict | None:
        """Node r's report on point seq; None while there is none. One that does not read
        counts as a failure, so that a broken node fails its points, not node 0."""
        report = self.link.get(Key.REPORT.at(seq=seq, node=r))
        if report is None or shaped(report, ok=bool):
            return report
        log_dropped(f"node {r}", f"an unreadable report on point {seq}: {report!r:.80}")
        return {"ok": False, "error": "its report did not read"}

    # -------------------------------------------------------------- the end

    def finish(self, reason: str = "the sweep ended") -> None:
        """Tell every agent to leave (a point in flight is aborted), then wait briefly for
        them to go, so the store outlives their last request."""
        try:
            if not self._went:
                self._refuse(f"node 0 stopped: {reason}")
            end = self._seq
            if self._in_flight is not None:
                self.link.put(Key.ABORT.at(seq=self._in_flight), f"node 0 stopped: {reason}")
                end = max(end, self._in_flight + 1)
            self.link.put(Key.POINT.at(seq=end), {"end": True})
            deadline = time.monotonic() + 20.0  # an agent may take ~10 s to stop its ranks
            for r in self._joined:
                while not self.link.has(Key.BYE.at(node=r)) and time.monotonic() < deadline:
                    if self.pulse.dead([r]):
                        break
                    time.sleep(POLL_S)
        except (RuntimeError, KeyboardInterrupt):
            pass  # the store goes away with this process anyway
