"""The result directory of a sweep.

```
runs/<spec name>/
  manifest.json            the spec, the machine, versions, environment, git revision
  points/<id>/             a finished point: plan.json, rank-*.parquet, summary.json
  points/.tmp-<id>/        a point being run (renamed into place only when complete)
  failed/<id>.json         a point that failed: what, which rank, the log's tail
  .lock                    the running sweep's pid and its launcher's process group
```
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic

SCHEMA_VERSION = 1
ENV_PREFIXES = ("NCCL_", "OMPI_", "UCX_", "GLOO_", "PMIX_", "SLURM_")


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.points = self.root / "points"
        self.failed = self.root / "failed"

    def point_dir(self, point_id: str) -> Path:
        return self.points / point_id

    def tmp_dir(self, point_id: str) -> Path:
        return self.points / f".tmp-{point_id}"

    def is_complete(self, point_id: str) -> bool:
        return (self.point_dir(point_id) / "summary.json").exists()

    def prepare(self) -> None:
        """Create the folders; remove partial points a killed sweep left behind."""
        self.points.mkdir(parents=True, exist_ok=True)
        self.failed.mkdir(parents=True, exist_ok=True)
        for tmp in self.points.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, point_id: str) -> Path:
        """The finished temporary folder becomes points/<id>/ in one rename."""
        dest = self.point_dir(point_id)
        os.replace(self.tmp_dir(point_id), dest)
        (self.failed / f"{point_id}.json").unlink(missing_ok=True)
        return dest

    def record_failure(self, point_id: str, info: dict[str, Any]) -> None:
        write_text_atomic(self.failed / f"{point_id}.json", json.dumps(info, indent=2) + "\n")

    def write_manifest(self, spec_doc: dict[str, Any], name: str,
                       extra: dict[str, Any] | None = None) -> None:
        doc = {"name": name, **manifest(spec_doc), **(extra or {})}
        write_text_atomic(self.root / "manifest.json",
                          json.dumps(doc, indent=2, default=str) + "\n")


def manifest(spec_doc: dict[str, Any]) -> dict[str, Any]:
    """What a reader needs to trust or reproduce the numbers."""
    return {
        "schema_version": SCHEMA_VERSION,
        "spec": spec_doc,
        "start_time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
