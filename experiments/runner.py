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
    take_lock(store.root)
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
        if coordinator is not None:
            coordinator.finish(ended)
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
        write_text_atomic(lock, f"{os.getpid()} {pgid} {tmp}\n")

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
        write_text_atomic(lock, f"{os.getpid()}\n")
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


def take_lock(root: Path, name: str = ".lock", board: str = BOARD) -> None:
    """Refuse a folder a live sweep uses; after a dead one, stop what it left running.

    The lock holds the runner's pid, and while a point runs also its launcher's process
    group, the point's folder and the progress board there (``pid [pgid folder [board]]``).
    Each node of a multi-node sweep keeps its own (``.lock-node-<r>``)."""
    root.mkdir(parents=True, exist_ok=True)
    lock = root / name
    if lock.exists():
        try:
            fields = lock.read_text().split()
            pid = int(fields[0])
        except (ValueError, IndexError, OSError):
            fields, pid = [], -1
        if pid > 0 and _alive(pid):
            raise ValueError(f"out: {str(root)!r} is in use by a running sweep (pid {pid})")
        if len(fields) >= 3:
            stop_stale(int(fields[1]), fields[2], fields[3] if len(fields) > 3 else board)
    write_text_atomic(lock, f"{os.getpid()}\n")


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
