"""A spec's points: the product of world sizes, jitter schedules and batch variants, each
with a stable id (a hash of exactly what it runs), so a rerun finds finished points."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from jitter_models import Schedule

from .spec import Spec

ID_LENGTH = 12


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
        return {"workload": s.workload, "model": asdict(s.model), "batch": self.batch,
                "compute": s.compute, "hardware": s.hardware, "dtype": s.dtype,
                "backend": s.backend, "steps": s.steps, "warmup": s.warmup, "seed": s.seed,
                "world_size": self.world_size, "ranks_per_node": s.ranks_per_node,
                "jitter": self.schedule.to_table() | {"name": self.schedule.name}}

    @property
    def id(self) -> str:
        text = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def expand(spec: Spec) -> list[Point]:
    """Points in run order: by schedule, then batch, then world size (small first, so a
    partial sweep already has each schedule's N = 1 baseline)."""
    return [Point(spec=spec, schedule=sched, world_size=n, batch=b)
            for sched in spec.schedules for b in spec.batches for n in spec.world_sizes]
