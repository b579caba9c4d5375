"""``jitterlab run``: every point of a sweep, resumable, one failure at a time.

For each point not already complete: a Plan in ``points/.tmp-<id>/``, the ranks started
through ``launch`` (auto: in-process-style local launch for one rank, mpirun for the mpi
backend, torchrun otherwise), then the folder renamed to ``points/<id>/`` once every rank's
records file reads back and the summary is written. A failed point leaves
``failed/<id>.json`` and the sweep goes on. A lock file holds this runner's pid, so a
second runner on the same folder is refused and a rerun after a crash knows the folder is
free; partial folders are removed at start. Rerunning the same command resumes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collectives.timing import read_rank_file
from launch.plan import Plan
from launch.progress import BOARD
from launch.runner import RunFailed, run_plan, stop_stale

from .analysis import decompose, latency_stats, measured_site_max_us, step_latencies
from .atomic import write_text_atomic
from .spec import Spec
from .store import Store
from .sweep import Point, expand

if TYPE_CHECKING:
    from .nodes import Coordinator


@dataclass(frozen=True)
class Outcome:
    done: int
    skipped: int
    failed: list[str]


def launcher_for(spec: Spec, world_size: int) -> str:
    if spec.launcher != "auto":
        return spec.launcher
    if world_size == 1:
        return "local"
    return "mpirun" if spec.backend == "mpi" else "torchrun"


def plan_for(point: Point, out_dir: Path) -> Plan:
    s = point.spec
    return Plan(workload="tp_decode", out_dir=str(out_dir), backend=s.backend, seed=s.seed,
                jitter=str(point.schedule) if point.schedule else None, dtype=s.dtype,
                model=asdict(s.model), batch=point.batch, steps=s.steps, warmup=s.warmup,
                compute=s.compute, hardware=s.hardware, timeout_s=s.timeout_s)


def run_sweep(spec: Spec, spec_doc: dict[str, Any], out: str | Path, *,
              progress: bool = True, coordinator: Coordinator | None = None) -> Outcome:
    """Run every point not yet complete. With a ``coordinator`` (node 0 of a multi-node
    sweep, see ``nodes.py``), points that need several nodes run with the other agents."""
    if spec.workload != "tp_decode":
        raise ValueError(f"workload: jitterlab run drives tp_decode sweeps, got "
                         f"{spec.workload!r} (use jitterlab bench for microbenchmarks)")
    store = Store(out)
    fresh = not store.root.exists()
    try:
        take_lock(store.root)
    except ValueError as exc:
        if coordinator is not None:
            coordinator.finish(str(exc))  # the agents learn why, instead of losing node 0
        raise
    ended = "the sweep was interrupted"
    try:
        if coordinator is not None:
            coordinator.join(store.root)
        store.prepare()
        nodes = None if coordinator is None else [
            {"node": r, "host": h} for r, h in enumerate(coordinator.hosts)]
        store.write_manifest(spec_doc, spec.name,
                             extra={"nodes": nodes, "shared_folder": coordinator.shared}
                             if coordinator is not None else None)
        points = expand(spec)
        todo = [p for p in points if not store.is_complete(p.id)]
        failed: list[str] = []
        t_begin = time.monotonic()
        for i, point in enumerate(todo):
            if progress:
                _progress(i, len(todo), t_begin, point)
            try:
                _run_point(store, point, coordinator)
            except (RunFailed, ValueError) as exc:
                failed.append(point.id)
                store.record_failure(point.id, {
                    "point": point.id, "schedule": point.schedule.name,
                    "world_size": point.world_size, "batch": point.batch,
                    "error": str(exc)})
                if progress:
                    print(f"\n  point {point.id} failed: {exc}", file=sys.stderr)
        if progress and todo:
            _progress(len(todo), len(todo), t_begin, None)
            print(file=sys.stderr)
        ended = "the sweep ended"
        return Outcome(done=len(todo) - len(failed), skipped=len(points) - len(todo),
                       failed=failed)
    finally:
        try:
            if coordinator is not None:
                coordinator.finish(ended)
        finally:
            release_lock(store.root)
            if fresh and not any(store.root.iterdir()):
                store.root.rmdir()  # refused before anything was written: leave no trace


def _run_point(store: Store, point: Point, coordinator: Coordinator | None = None) -> None:
    tmp = store.tmp_dir(point.id)
    tmp.mkdir(parents=True)
    plan = plan_for(point, tmp)
    write_text_atomic(tmp / "plan.json", plan.to_json() + "\n")
    lock = store.root / ".lock"

    def remember(pgid: int) -> None:  # a rerun after a crash stops this group
        write_lock(lock, pgid=pgid, folder=tmp, board=BOARD)

    try:
        if coordinator is not None and coordinator.nodes_for(point) > 1:
            coordinator.run_point(point, tmp / "plan.json", plan, on_start=remember)
        else:
            run_plan(tmp / "plan.json", launcher=launcher_for(point.spec, point.world_size),
                     nproc=point.world_size, timeout_s=plan.timeout_s, on_start=remember)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the failure is recorded by the caller
        raise
    finally:
        write_lock(lock)
    tables, metas = [], []
    for rank in range(point.world_size):
        cols, meta = read_rank_file(plan.rank_file(rank))  # every file must read back
        tables.append(cols)
        metas.append(meta)
    offsets = [m.get("clock_offset_ns") for m in metas]
    summary = {"point": point.id, "schedule": point.schedule.name,
               "world_size": point.world_size, "batch": point.batch,
               "step_latency": latency_stats(step_latencies(tables)),
               "decomposition_us": decompose(tables, offsets),
               "site_max_us": measured_site_max_us(tables),
               "hosts": sorted({m["hostname"] for m in metas})}
    write_text_atomic(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
    store.commit(point.id)


def write_lock(path: Path, *, pgid: int | None = None, folder: Path | None = None,
               board: str | None = None) -> None:
    """The lock's content (JSON): this runner's host and pid, and while a point runs its
    launcher's process group, the point's folder and the progress board there."""
    doc = {"host": platform.node(), "pid": os.getpid()}
    if pgid is not None:
        doc |= {"pgid": pgid, "folder": str(folder), "board": board or BOARD}
    write_text_atomic(path, json.dumps(doc) + "\n")


def take_lock(root: Path, name: str = ".lock", board: str = BOARD) -> None:
    """Refuse a folder a live sweep uses; after a dead one, stop what it left running.

    Each node of a multi-node sweep keeps its own lock (``.lock-node-<r>``). A lock that
    another host wrote (a shared file system) cannot be checked from here: it is refused
    with what to do, and nothing is signalled."""
    root.mkdir(parents=True, exist_ok=True)
    lock = root / name
    if lock.exists():
        doc = _read_lock(lock)
        host, pid = doc.get("host"), doc.get("pid", -1)
        if host not in (None, platform.node()):
            raise ValueError(f"out: {str(root)!r} is locked by a sweep on host {host} (pid "
                             f"{pid}); if that sweep has ended, remove {str(lock)!r}")
        if pid > 0 and _alive(pid):
            raise ValueError(f"out: {str(root)!r} is in use by a running sweep (pid {pid})")
        if "pgid" in doc and "folder" in doc:
            stop_stale(int(doc["pgid"]), doc["folder"], doc.get("board") or board)
    write_lock(lock)


def _read_lock(path: Path) -> dict[str, Any]:
    """The lock's fields; older plain ``pid [pgid folder]`` text is read too."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, dict) else {}
    except ValueError:
        fields = text.split(maxsplit=2)
        try:
            out: dict[str, Any] = {"pid": int(fields[0])}
            if len(fields) == 3:
                out |= {"pgid": int(fields[1]), "folder": fields[2].strip()}
            return out
        except (ValueError, IndexError):
            return {}


def release_lock(root: Path, name: str = ".lock") -> None:
    (root / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _progress(i: int, n: int, t_begin: float, point: Point | None) -> None:
    elapsed = time.monotonic() - t_begin
    eta = f", ETA {elapsed / i * (n - i):.0f} s" if 0 < i < n else ""
    bar = "#" * (20 * i // max(n, 1))
    what = f" {point.schedule.name} N={point.world_size}" if point else " done"
    print(f"\r[{bar:<20}] {i}/{n} points, {elapsed:.0f} s{eta}{what}\033[K", end="",
          file=sys.stderr, flush=True)
