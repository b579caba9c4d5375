"""A spec's points: the product of world sizes, jitter schedules and batch variants, each
with a stable id (a hash of exactly what it runs), so a rerun finds finished points."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitter_models import Schedule, input_files
from jitter_models.algorithms import has_pattern
from jitter_models.composite import MAX_SAMPLE_FILE_BYTES
from jitter_models.errors import BadInput
from jitter_models.files import read_input_file
from launch.plan import Plan

from .spec import Spec

ID_LENGTH = 12
_COMMON_CONTENT = {"inputs", "algorithm", "record_hops"}  # (present only in some points)


@dataclass(frozen=True, kw_only=True)
class Point:
    """One run: a schedule at a world size and batch."""

    spec: Spec
    """The sweep it belongs to."""
    schedule: Schedule
    """The jitter model."""
    world_size: int
    """Ranks."""
    batch: int
    """Sequences per step."""

    def content(self) -> dict[str, Any]:
        """Everything that determines the point's results (and nothing that does not, such
        as the spec's name or timeout)."""
        s = self.spec
        inputs = self.inputs
        # (the algorithm only when explicit, so points of earlier sweeps keep their ids)
        common = {**({"inputs": inputs} if inputs else {}),
                  **({"algorithm": s.algorithm} if has_pattern(s.algorithm) else {}),
                  **({"record_hops": True} if s.record_hops else {}),  # (its clock reads)
                  "workload": s.workload, "dtype": s.dtype, "backend": s.backend,
                  "steps": s.steps, "warmup": s.warmup, "seed": s.seed,
                  "world_size": self.world_size, "ranks_per_node": s.ranks_per_node,
                  "jitter": self.schedule.to_table() | {"name": self.schedule.name}}
        own = s.work.content(s.params, self.batch)
        clash = sorted(set(own) & (set(common) | _COMMON_CONTENT))
        if clash:
            raise BadInput(f"workload: {s.workload!r} names its content {clash[0]!r}, a key "
                           "every point's id has: rename it")
        return {**common, **own}

    @functools.cached_property
    def inputs(self) -> dict[str, str]:
        """SHA-256 of each file the schedule reads, when the sweep expanded."""
        return _input_digests(self.schedule)

    def check_inputs(self) -> None:
        """Raise ValueError if a file the point's id covers has changed since: the ranks
        read it by name, so results of edited samples would be kept under the old id."""
        now = _input_digests(self.schedule)
        for path, digest in self.inputs.items():
            if now.get(path) != digest:
                raise BadInput(f"jitter: {path!r} changed while the sweep ran (a point's "
                                 "id covers its contents): rerun to run it as it is now")

    def identity(self) -> dict[str, Any]:
        """What the point's summary must say of itself (a summary copied or edited in
        from another point does not pass)."""
        return {"schedule": self.schedule.name, "world_size": self.world_size,
                "batch": self.batch}

    @functools.cached_property
    def id(self) -> str:  # cached: it reads the input files
        text = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]

    def plan(self, out_dir: Path) -> Plan:
        """What every rank of this point runs, writing its records into ``out_dir``."""
        s = self.spec
        params = s.work.plan_params(s.params, batch=self.batch, steps=s.steps,
                                    warmup=s.warmup)
        return Plan(workload=s.workload, out_dir=str(out_dir), params=params,
                    backend=s.backend, seed=s.seed,
                    jitter=str(self.schedule) if self.schedule else None, dtype=s.dtype,
                    timeout_s=s.timeout_s, ranks_per_node=s.ranks_per_node,
                    algorithms=(s.algorithm,), record_hops=s.record_hops)


def _input_digests(schedule: Schedule) -> dict[str, str]:
    """SHA-256 of the contents of every file the schedule reads (an ``empirical`` sample
    file): editing the samples makes a new point, never a reused stale one."""
    out = {}
    for path in input_files(schedule):
        try:  # a regular file within the sample files' bound, as the parser read it
            data = read_input_file(path, what=f"jitter: file {path!r}",
                                   max_bytes=MAX_SAMPLE_FILE_BYTES)
        except OSError as exc:
            raise BadInput(f"jitter: cannot read {path!r} ({exc.strerror or exc})") from None
        out[path] = hashlib.sha256(data.encode()).hexdigest()
    return out


def expand(spec: Spec) -> list[Point]:
    """Points in run order: by schedule, then batch, then world size (small first, so a
    partial sweep already has each schedule's N = 1 baseline)."""
    return [Point(spec=spec, schedule=sched, world_size=n, batch=b)
            for sched in spec.schedules for b in spec.batches for n in spec.world_sizes]
