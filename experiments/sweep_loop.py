"""The sweep loop of ``jitterlab run``: every point of a sweep, resumable, one failure at
a time.

For each point not already complete: a Plan in ``points/.tmp-<id>/``, the ranks started
through ``launch`` (auto: in-process-style local launch for one rank, mpirun for the mpi
backend, torchrun otherwise), then the folder renamed to ``points/<id>/`` once every rank's
records file reads back and the summary is written. A failed point leaves
``failed/<id>.json`` and the sweep goes on. A lock file holds this runner's pid, so a
second runner on the same folder is refused and a rerun after a crash knows the folder is
free; partial folders are removed at start. Rerunning the same command resumes.
A multi-node sweep's points that need several nodes run through node 0's coordinator
(``coordinator.py``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collectives.files import DIR_MODE
from collectives.timing import read_rank_file
from jitter_models.errors import BadInput
from launch.plan import Plan
from launch.progress import BOARD
from launch.supervise import Launch, RunFailed, run_plan

from .analysis import decompose, latency_stats, measured_site_max_us, step_latencies
from .atomic import make_dirs, write_text_atomic
from .locks import RunLock, take_lock
from .spec import Spec
from .store import (
    SUMMARY_SCHEMA,
    Store,
    file_record,
    new_run_id,
    rank_file_name,
    run_entry,
    summary_digest,
)
from .sweep import Point, expand

if TYPE_CHECKING:
    from .coordinator import Coordinator


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


def run_sweep(spec: Spec, spec_doc: dict[str, Any], out: str | Path, *,
              progress: bool = True, coordinator: Coordinator | None = None) -> Outcome:
    """Run every point not yet complete. With a ``coordinator`` (node 0 of a multi-node
    sweep, see ``coordinator.py``), points that need several nodes run with the other
    agents."""
    store = Store(out)
    fresh = not store.root.exists()
    try:
        lock = take_lock(store.root)
    except ValueError as exc:
        if coordinator is not None:
            coordinator.finish(str(exc))  # the agents learn why, instead of losing node 0
        raise
    ended = "the sweep was interrupted"
    entry = run_entry(new_run_id())
    if coordinator is not None:
        entry |= _nodes(coordinator, shared=None)
    wrote_manifest = False
    try:
        if coordinator is not None:
            coordinator.join(store.root)
            entry |= _nodes(coordinator, shared=coordinator.shared)
        store.prepare()
        _warn(store.write_manifest(spec_doc, spec.name, entry))
        wrote_manifest = True
        points = expand(spec)
        todo = []
        for p in points:
            complete, warning = store.settle(p.id, p.identity())
            _warn(warning)
            if not complete:
                todo.append(p)
        failed = _run_points(store, todo, lock, entry, coordinator, progress)
        ended = "the sweep ended"
        return Outcome(done=len(todo) - len(failed), skipped=len(points) - len(todo),
                       failed=failed)
    finally:
        try:
            if coordinator is not None:
                coordinator.finish(ended)
            if wrote_manifest:  # when it ended, and how
                _close_manifest(store, spec_doc, spec.name, entry, ended)
        finally:
            lock.release()
            if fresh and store.root.is_dir() and not any(store.root.iterdir()):
                store.root.rmdir()  # refused before anything was written: leave no trace


def _nodes(coordinator: Coordinator, *, shared: bool | None) -> dict[str, Any]:
    """The run entry's view of a multi-node sweep: the hosts, and whether they share the
    result folder (None: not known yet)."""
    return {"nodes": [{"node": r, "host": h} for r, h in enumerate(coordinator.hosts)],
            "shared_folder": shared}


def _warn(warning: str | None) -> None:
    if warning:
        print(f"jitterlab: warning: {warning}", file=sys.stderr)


def _close_manifest(store: Store, spec_doc: dict[str, Any], name: str,
                    entry: dict[str, Any], ended: str) -> None:
    entry |= {"end_time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "ended": ended}
    try:
        store.write_manifest(spec_doc, name, entry)
    except OSError as exc:
        print(f"jitterlab: warning: could not update the manifest ({exc})", file=sys.stderr)


def _run_points(store: Store, todo: list[Point], lock: RunLock, entry: dict[str, Any],
                coordinator: Coordinator | None, progress: bool) -> list[str]:
    """Each point in turn; the ids of those that failed (each one recorded in
    ``failed/``, and the sweep goes on)."""
    failed: list[str] = []
    t_begin = time.monotonic()
    for i, point in enumerate(todo):
        if progress:
            _progress(i, len(todo), t_begin, point)
        try:
            _run_point(store, point, lock, entry["run"], coordinator)
            entry["points_run"].append(point.id)
        except (RunFailed, BadInput) as exc:  # any other error is a bug: it stops the sweep
            failed.append(point.id)
            entry["points_failed"].append(point.id)
            store.record_failure(point.id, {
                "point": point.id, "schedule": point.schedule.name,
                "world_size": point.world_size, "batch": point.batch,
                "run": entry["run"], "error": str(exc),
                "logs": sorted(getattr(exc, "kept_logs", {}).values())})
            if progress:
                print(f"\n  point {point.id} failed: {exc}", file=sys.stderr)
    if progress and todo:
        _progress(len(todo), len(todo), t_begin, None)
        print(file=sys.stderr)
    return failed


def _run_point(store: Store, point: Point, lock: RunLock, run_id: str,
               coordinator: Coordinator | None = None) -> None:
    tmp = store.tmp_dir(point.id)
    make_dirs(tmp.parent)
    tmp.mkdir(mode=DIR_MODE)
    plan = point.plan(tmp)
    write_text_atomic(tmp / "plan.json", plan.to_json() + "\n")

    def remember(pgid: int) -> None:  # a rerun after a crash stops this group
        lock.record(pgid=pgid, folder=tmp, board=BOARD)

    try:
        point.check_inputs()  # the files its id covers are still what they were
        if coordinator is not None and coordinator.nodes_for(point) > 1:
            coordinator.run_point(point, tmp / "plan.json", plan, on_start=remember)
        else:
            run_plan(tmp / "plan.json", Launch(
                launcher=launcher_for(point.spec, point.world_size), nproc=point.world_size,
                timeout_s=plan.timeout_s, on_start=remember))
    except RunFailed as exc:
        _keep_logs(store, point.id, tmp, exc)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the failure is recorded by the caller
        raise
    finally:
        lock.record()
    try:
        point.check_inputs()  # (the ranks read them while they ran)
        summary = _summarize(point, plan, run_id)
    except BaseException as exc:
        _keep_logs(store, point.id, tmp, exc)
        raise
    write_text_atomic(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
    store.commit(point.id)


def _keep_logs(store: Store, point_id: str, tmp: Path, exc: BaseException) -> None:
    """A failed point's logs go beside its failure record (the temporary folder goes), and
    the error cites them where they now are."""
    moved = store.keep_logs(point_id, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    if moved and exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]
        for old, new in moved.items():
            text = text.replace(old, new)
        exc.args = (text, *exc.args[1:])
    exc.kept_logs = moved  # type: ignore[attr-defined]


def _summarize(point: Point, plan: Plan, run_id: str) -> dict[str, Any]:
    """The point's summary.json: its statistics, which run made it, and the size and
    checksum of every file it covers (so a later read can tell if one changed)."""
    tables, metas = [], []
    for rank in range(point.world_size):
        try:  # every file must read back
            cols, meta = read_rank_file(plan.rank_file(rank))
        except (OSError, ValueError) as exc:
            raise RunFailed(f"rank {rank}'s records do not read back: {exc}") from exc
        tables.append(cols)
        metas.append(meta)
    offsets = metas  # each rank's clock metadata: offsets interpolated in time
    folder = Path(plan.out_dir)
    covered = ["plan.json", *(rank_file_name(r) for r in range(point.world_size)),
               *(plan.hops_file(r).name for r in range(point.world_size)
                 if plan.record_hops)]
    summary = {"point": point.id, "schedule": point.schedule.name,
               "world_size": point.world_size, "batch": point.batch, "run": run_id,
               "step_latency": latency_stats(step_latencies(tables)),
               "decomposition_us": decompose(tables, offsets),
               "site_max_us": measured_site_max_us(tables),
               "delays_clipped": sum(int(m.get("delays_clipped", 0)) for m in metas),
               "hosts": sorted({m["hostname"] for m in metas}),
               "injectors": sorted({str(m["injector"]) for m in metas if m.get("injector")}),
               "files": {name: file_record(folder / name) for name in covered},
               "schema": SUMMARY_SCHEMA}
    extra = point.spec.work.summary(tables, metas)
    clash = sorted(set(extra) & (set(summary) | {"summary_sha256"}))
    if clash:
        raise BadInput(f"workload: {point.spec.workload!r} adds {clash[0]!r} to a point's "
                       "summary, a field every summary has: rename it")
    summary |= extra
    summary["summary_sha256"] = summary_digest(summary)
    return summary


def _progress(i: int, n: int, t_begin: float, point: Point | None) -> None:
    elapsed = time.monotonic() - t_begin
    eta = f", ETA {elapsed / i * (n - i):.0f} s" if 0 < i < n else ""
    bar = "#" * (20 * i // max(n, 1))
    what = f" {point.schedule.name} N={point.world_size}" if point else " done"
    print(f"\r[{bar:<20}] {i}/{n} points, {elapsed:.0f} s{eta}{what}\033[K", end="",
          file=sys.stderr, flush=True)
