"""The result directory of a sweep.

```
runs/<spec name>/
  manifest.json            the spec, and one entry per run (what ran, when, on what)
  points/<id>/             a finished point: plan.json, rank-*.parquet, summary.json
  points/.tmp-<id>/        a point being run (renamed into place only when complete)
  failed/<id>.json         a point that failed: what, which rank, the log's tail
  failed/<id>.<name>.log   that point's launcher log(s), kept beside the record
  corrupt/<id>-<time>/     a point whose files did not read back, moved aside
  .lock                    the running sweep (see locks.py)
```

A point's ``summary.json`` lists the size and SHA-256 of every file it covers; a point is
complete only when its summary parses, has the expected fields and every file matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jitter_models.errors import BadInput

from .atomic import make_dirs, write_text_atomic

SCHEMA_VERSION = 2
ENV_PREFIXES = ("NCCL_", "OMPI_", "UCX_", "GLOO_", "PMIX_", "SLURM_")
_CHUNK = 1 << 20


class BadPoint(BadInput):
    """A point's files do not read back; ``file`` names the first bad one."""

    def __init__(self, file: Path, why: str):
        super().__init__(f"{file}: {why}")
        self.file = file
        self.why = why


def file_record(path: Path) -> dict[str, Any]:
    """What the summary keeps of one file: its size and SHA-256."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


# The summary's fields: what report and show rely on. Inside the three tables, a key
# ending in ``_ci_us`` is an interval [lo, hi] (an end may be null), any other ``_us`` key
# a finite number (or null), and ``n``, ``n_ranks``, ``n_steps`` counts.
_SUMMARY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "point": str, "schedule": str, "world_size": int, "batch": int, "step_latency": dict,
    "decomposition_us": dict, "site_max_us": dict, "hosts": list}
_TABLE_NEEDS = {"step_latency": ("n", "p50_us", "p99_us", "p99_ci_us", "mean_us"),
                "decomposition_us": ("compute_us", "delay_us", "collective_us"),
                "site_max_us": ("requested_us",)}
_NOT_NULL = {"n", "p50_us", "p99_us", "mean_us", "compute_us", "delay_us", "collective_us",
             "requested_us"}
SUMMARY_SCHEMA = 2
MAX_SUMMARY_BYTES = 16 * 2**20
MAX_MANIFEST_BYTES = 64 * 2**20


def rank_file_name(rank: int) -> str:
    return f"rank-{rank:05d}.parquet"


def summary_digest(summary: dict[str, Any]) -> str:
    """SHA-256 of the summary's canonical JSON without its own digest: an edited number
    (or a file list) no longer matches. It detects damage and careless edits; someone who
    recomputes it on purpose is not stopped (that needs a secret, which a folder of
    results shared with colleagues does not have)."""
    body = {k: v for k, v in summary.items() if k != "summary_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def read_json_file(path: Path, *, max_bytes: int) -> Any:
    """A JSON document from a regular file of at most ``max_bytes`` (no FIFO, no device:
    ``read_input_file``); ValueError says why not, OSError where it cannot be opened."""
    from jitter_models.files import read_input_file

    text = read_input_file(path, what=str(path), max_bytes=max_bytes)
    try:
        return json.loads(text)
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply") from None
    except ValueError:
        raise BadInput(f"{path}: not JSON (empty or garbled)") from None


def _check_tables(summary: dict[str, Any], where: Path) -> None:
    def bad(why: str) -> BadPoint:
        return BadPoint(where, why)

    for table, needs in _TABLE_NEEDS.items():
        values = summary[table]
        for key in needs:
            if key not in values:
                raise bad(f"field {table!r} lacks {key!r}")
        for key, v in values.items():
            if key in ("n", "n_ranks", "n_steps"):
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            elif key.endswith("_ci_us"):
                ok = isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v)
            elif key.endswith("_us"):
                ok = _number(v) and not (v is None and key in _NOT_NULL)
            else:
                ok = True
            if not ok:
                raise bad(f"field {table}.{key} is not what it should be: {v!r:.40}")
    if not all(isinstance(h, str) for h in summary["hosts"]):
        raise bad("field 'hosts' is not a list of names")


def _number(v: object) -> bool:
    """A finite number, or null."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v))


def check_point(folder: Path, expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """The point's summary, after checking that it is whole and that every file it covers
    is intact; raise ``BadPoint`` naming the first file that is not. ``expect``: fields
    the summary must have (the point's schedule, world size and batch)."""
    summary_path = folder / "summary.json"
    if not folder.is_dir() or folder.is_symlink():
        raise BadPoint(folder, "not a folder")
    if not summary_path.exists() and not summary_path.is_symlink():
        raise BadPoint(summary_path, "missing (the point never finished)")
    try:
        summary = read_json_file(summary_path, max_bytes=MAX_SUMMARY_BYTES)
    except (OSError, ValueError) as exc:
        why = str(exc).removeprefix(f"{summary_path}: ").removeprefix(f"{summary_path}")
        raise BadPoint(summary_path, why or "unreadable") from None
    if not isinstance(summary, dict):
        raise BadPoint(summary_path, "not a JSON object")
    for key, kind in _SUMMARY_FIELDS.items():
        value = summary.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadPoint(summary_path, f"field {key!r} missing or not a "
                                         f"{getattr(kind, '__name__', kind)}")
    _check_tables(summary, summary_path)
    if summary["point"] != folder.name:
        raise BadPoint(summary_path, f"belongs to point {summary['point']!r:.40}, not "
                                     f"{folder.name!r}")
    for key, want in (expect or {}).items():
        if summary.get(key) != want:
            raise BadPoint(summary_path, f"field {key!r} is {summary.get(key)!r:.40}, the "
                                         f"point's is {want!r}")
    if not 1 <= summary["world_size"] <= 1 << 20:
        raise BadPoint(summary_path, f"world_size {summary['world_size']} out of range")
    needed = ["plan.json", *(rank_file_name(r) for r in range(summary["world_size"]))]
    if not {"schema", "files", "summary_sha256", "run"} & summary.keys():
        # written before summaries had checksums (or a run id): read the ranks back
        _read_back(folder, needed[1:])
        return summary
    if summary.get("summary_sha256") != summary_digest(summary):
        raise BadPoint(summary_path, "its checksum does not match its content (edited or "
                                     "corrupted)")
    files = summary.get("files")
    if not isinstance(files, dict):
        raise BadPoint(summary_path, "field 'files' missing or not an object")
    for name in needed:
        if name not in files:
            raise BadPoint(summary_path, f"does not cover {name}")
    for name, rec in files.items():
        if not isinstance(name, str) or "/" in name or name.startswith(".") or \
                not isinstance(rec, dict):
            raise BadPoint(summary_path, f"bad entry in 'files': {name!r:.60}")
        path = folder / name
        if not path.is_file() or path.is_symlink():
            raise BadPoint(path, "missing (or not a regular file)")
        if path.stat().st_size != rec.get("bytes"):
            raise BadPoint(path, f"{path.stat().st_size} bytes, the summary says "
                                 f"{rec.get('bytes')!r:.20} (truncated or replaced)")
        if file_record(path)["sha256"] != rec.get("sha256"):
            raise BadPoint(path, "checksum differs from the summary's (edited or corrupted)")
    return summary


def _read_back(folder: Path, rank_files: list[str]) -> None:
    from collectives.timing import read_rank_file

    for name in rank_files:
        path = folder / name
        if not path.is_file():
            raise BadPoint(path, "missing")
        try:
            read_rank_file(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise BadPoint(path, f"does not read back ({type(exc).__name__})") from None


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(root))
        self.points = self.root / "points"
        self.failed = self.root / "failed"
        self.corrupt = self.root / "corrupt"

    def point_dir(self, point_id: str) -> Path:
        return self.points / point_id

    def tmp_dir(self, point_id: str) -> Path:
        return self.points / f".tmp-{point_id}"

    def prepare(self) -> None:
        """Create the folders; remove partial points a killed sweep left behind (call only
        while holding the lock)."""
        make_dirs(self.points)
        make_dirs(self.failed)
        for tmp in self.points.glob(".tmp-*"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

    def settle(self, point_id: str, expect: dict[str, Any] | None = None
               ) -> tuple[bool, str | None]:
        """Before a point runs or is skipped: (complete, warning). Complete and intact:
        (True, None); nothing there: (False, None); anything else under its name (a bad
        point, a folder without summary, a file) is moved to ``corrupt/<id>-<time>/`` and
        the warning names the bad file."""
        where = self.point_dir(point_id)
        if not where.exists() and not where.is_symlink():
            return False, None
        try:
            check_point(where, expect)
            return True, None
        except BadPoint as exc:
            dest = self.set_aside(point_id)
            return False, f"point {point_id}: {exc}; moved to {dest}, to run again"

    def set_aside(self, point_id: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        make_dirs(self.corrupt)
        dest = self.corrupt / f"{point_id}-{stamp}"
        n = 1
        while dest.exists():
            n += 1
            dest = self.corrupt / f"{point_id}-{stamp}-{n}"
        src = self.point_dir(point_id)
        if src.is_dir() and not src.is_symlink():
            os.replace(src, dest)
        else:  # a file (or a link) where the folder should be: keep it inside the folder
            make_dirs(dest)
            os.replace(src, dest / src.name)
        return dest

    def commit(self, point_id: str) -> Path:
        """The finished temporary folder becomes points/<id>/ in one rename."""
        dest = self.point_dir(point_id)
        os.replace(self.tmp_dir(point_id), dest)
        (self.failed / f"{point_id}.json").unlink(missing_ok=True)
        for log in self.failed.glob(f"{point_id}.*.log"):
            log.unlink(missing_ok=True)
        return dest

    def keep_logs(self, point_id: str, folder: Path) -> dict[str, str]:
        """Move a failed point's launcher logs beside its failure record, before its
        temporary folder goes; old path -> new path."""
        moved = {}
        make_dirs(self.failed)
        for log in sorted(folder.glob("*.log")):
            dest = self.failed / f"{point_id}.{log.name}"
            try:
                shutil.move(str(log), dest)
            except OSError:
                continue
            moved[str(log)] = str(dest)
        return moved

    def record_failure(self, point_id: str, info: dict[str, Any]) -> None:
        write_text_atomic(self.failed / f"{point_id}.json", json.dumps(info, indent=2) + "\n")

    def read_manifest(self) -> tuple[dict[str, Any] | None, str | None]:
        """(the manifest, None), (None, None) when there is none, or (None, why) when
        it does not read as one."""
        path = self.root / "manifest.json"
        if not path.exists() and not path.is_symlink():
            return None, None
        try:
            doc = read_json_file(path, max_bytes=MAX_MANIFEST_BYTES)
        except (OSError, ValueError) as exc:
            return None, str(exc)
        if not isinstance(doc, dict) or not isinstance(doc.get("runs", []), list):
            return None, f"{path}: not a jitterlab manifest (no list of runs)"
        return doc, None

    def write_manifest(self, spec_doc: dict[str, Any], name: str,
                       run: dict[str, Any]) -> str | None:
        """The spec now, and ``run`` added to (or, by its id, updated in) the list of runs
        that made this folder's points. A manifest that does not read is moved to
        ``corrupt/`` (its history is kept there, not overwritten); the warning says so."""
        old, why = self.read_manifest()
        warning = None
        if why is not None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            make_dirs(self.corrupt)
            dest = self.corrupt / f"manifest-{stamp}-{os.urandom(2).hex()}.json"
            os.replace(self.root / "manifest.json", dest)
            warning = f"{why}; moved to {dest}, and a new manifest started"
        old = old or {}
        runs = [r for r in old.get("runs", []) if isinstance(r, dict)
                and r.get("run") != run["run"]]
        if old and "runs" not in old:  # a manifest from before runs were kept: its one run
            runs.append({"run": "unknown", **{k: v for k, v in old.items()
                                              if k not in ("name", "spec", "schema_version")}})
        doc = {"name": name, "schema_version": SCHEMA_VERSION, "spec": spec_doc,
               "runs": [*runs, run]}
        write_text_atomic(self.root / "manifest.json",
                          json.dumps(doc, indent=2, default=str) + "\n")
        return warning


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.urandom(3).hex()}"


def run_entry(run_id: str) -> dict[str, Any]:
    """One run of a sweep: what a reader needs to trust or reproduce the points it made."""
    return {
        "run": run_id,
        "start_time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "end_time_utc": None,
        "command": sys.argv[:],
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "python": sys.version.split()[0],
        "versions": _versions(),
        "stack": _stack(),
        "environment": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith(ENV_PREFIXES)},
        "git_revision": _git_revision(),
        "points_run": [],
        "points_failed": [],
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _stack() -> dict[str, dict[str, Any]]:
    """What ``jitterlab doctor`` sees, per component: torch and its build, the GPUs (CUDA),
    NCCL, gloo, mpi4py and the MPI library's own version string."""
    from .doctor import stack_checks

    return {c.component: {"available": c.available, "version": c.version, "detail": c.detail}
            for c in stack_checks()}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("jitterlab", "torch", "numpy", "scipy", "mpi4py", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parents[1]
    try:
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None
