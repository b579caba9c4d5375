"""The Plan: everything a worker needs, written as JSON before the ranks start.

Every rank reads the same file and derives everything else (its delays from the seed,
its buffers, its output file name) with no communication beyond the collectives.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from collectives.backends import BACKENDS
from collectives.ops import DTYPES
from jitter_models.errors import BadInput, reading_input

INJECTORS = ("auto", "host", "cuda", "none")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One point's instructions for every rank."""

    workload: str
    """What to run: a name of ``collectives.workload.WORKLOADS``, an entry point's, or a
    ``module:Class`` path (importable by every rank)."""
    out_dir: str
    """Where each rank writes rank-NNNNN.parquet."""
    params: dict[str, Any] = field(default_factory=dict)
    """The workload's own parameters (its ``plan_params``; e.g. microbench: colls, sizes,
    redop, root, iters, warmup, check; tp_decode: model, batch, steps, warmup, compute,
    hardware, save_logits), validated by the workload."""
    backend: Literal["auto", "gloo", "nccl", "mpi"] = "auto"
    """auto: nccl with CUDA, else gloo; mpi only on request."""
    seed: int = 0
    """Seed of the jitter schedule (and of the check inputs)."""
    jitter: str | None = None
    """One-line jitter schedule injected before each collective; None: no delay."""
    injector: Literal["auto", "host", "cuda", "none"] = "auto"
    """How delays are applied: host (sleep, then spin on CLOCK_MONOTONIC), cuda (a
    kernel on the stream), auto (cuda for GPU buffers, else host)."""
    algorithms: tuple[str, ...] = ("native",)
    """How each collective runs: native (the backend's own call) or an explicit algorithm
    over point-to-point messages (jitter_models.algorithms); each with the collectives it
    implements."""
    dtype: str = "float32"
    """Element type."""
    timeout_s: float = 300.0
    """Init and collective timeout: a run with no rank making progress for this long
    fails, naming the rank that stopped."""
    gather_records: Literal["auto", "always"] = "auto"
    """auto: each rank writes its own file when every rank sees the run folder (checked
    at start), else rank 0 gathers and writes them all; always: gather (for tests)."""
    ranks_per_node: int = 8
    """Ranks per node: node-scoped jitter is shared by blocks of this many consecutive
    ranks (``jitter_models.node_of``), as the model and a multi-node placement assume."""
    clock_pingpong: bool = False
    """Estimate clock offsets by ping-pong even between ranks on one host (a self-check:
    the true offset there is 0). Ranks on other hosts are always measured."""
    record_hops: bool = False
    """Explicit algorithms: also write one row per message (``hops-NNNNN.parquet``,
    ``collectives.explicit.HopLog``); for small runs."""
    fault: str | None = None
    """Testing aid: ``exit@RANK:N`` or ``hang@RANK:N`` makes RANK exit or hang on
    reaching timed collective N, to exercise failure handling."""

    def __post_init__(self) -> None:
        with reading_input():
            self._validate()

    def _validate(self) -> None:
        from collectives.workload import get_workload

        workload = get_workload(self.workload)
        if not isinstance(self.params, dict):
            raise ValueError(f"params: expected a table, got {self.params!r}")
        object.__setattr__(self, "params", workload.check_params(self.params))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: unknown {self.backend!r} (known: {', '.join(BACKENDS)})")
        if self.injector not in INJECTORS:
            raise ValueError(f"injector: must be one of {', '.join(INJECTORS)}, got "
                             f"{self.injector!r}")
        for name, low in (("seed", 0), ("ranks_per_node", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        _check_algorithms(self.algorithms, workload.collectives(self.params), self.jitter)
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s)
                and 0 < self.timeout_s <= 86_400):
            raise ValueError(f"timeout_s: must be > 0 s and at most a day, got "
                             f"{self.timeout_s!r}")
        check_record_hops(self.record_hops, self.algorithms)
        if self.gather_records not in ("auto", "always"):
            raise ValueError(f"gather_records: must be auto or always, got "
                             f"{self.gather_records!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: unknown {self.dtype!r} (known: {', '.join(DTYPES)})")
        if self.backend == "mpi" and self.dtype == "bfloat16":
            raise ValueError("dtype: MPI has no bfloat16 type; use float16 or float32 with "
                             "backend mpi, or a torch backend for bfloat16")
        if self.fault is not None:
            from collectives.microbench import Fault

            Fault.parse(self.fault)

    @classmethod
    def build(cls, **kw: Any) -> Plan:
        """A Plan from one flat set of keywords: Plan's own fields as they are, every other
        keyword into ``params`` (e.g. ``Plan.build(workload="microbench", out_dir=d,
        sizes=[64], iters=5)``)."""
        own = {f.name for f in fields(cls)}
        params = {**kw.pop("params", {}), **{k: kw.pop(k) for k in list(kw) if k not in own}}
        return cls(**kw, params=params)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        with reading_input():
            return cls._from_json(text)

    @classmethod
    def _from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"plan: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"plan: unknown field {unknown[0]!r}")
        if isinstance(data.get("algorithms"), list):
            data["algorithms"] = tuple(data["algorithms"])
        for name in ("workload", "out_dir"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"plan: {name}: expected a string, got {data.get(name)!r}")
        try:
            return cls(**data)
        except TypeError as exc:  # a field of the wrong type deep in validation
            raise ValueError(f"plan: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"plan: cannot read {str(path)!r} ({exc.strerror})") from None
        return cls.from_json(text)

    def rank_file(self, rank: int) -> Path:
        return Path(self.out_dir) / f"rank-{rank:05d}.parquet"

    def hops_file(self, rank: int) -> Path:
        """The rank's per-message rows when ``record_hops``."""
        return Path(self.out_dir) / f"hops-{rank:05d}.parquet"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_record_hops(record_hops: object, algorithms: tuple[str, ...]) -> None:
    """record_hops: a bool, and an explicit algorithm to record (a native call has no
    messages jitterlab sees)."""
    from jitter_models.algorithms import explicit_names, has_pattern

    if not isinstance(record_hops, bool):
        raise ValueError(f"record_hops: must be true or false, got {record_hops!r}")
    if record_hops and not any(has_pattern(a) for a in algorithms):
        raise ValueError(f"record_hops: records the messages of an explicit algorithm, but "
                         f"the algorithms are {', '.join(algorithms)}; choose one of "
                         f"{explicit_names(', ')}")


def _check_algorithms(algorithms: tuple[str, ...], colls: tuple[str, ...],
                      jitter: str | None) -> None:
    """Each algorithm known and implementing one of the collectives; a link-scoped
    schedule only with explicit algorithms (a native call has no hop to delay)."""
    from jitter_models.algorithms import (
        ALGORITHMS,
        check_algorithm,
        explicit_names,
        has_pattern,
    )

    if not algorithms:
        raise ValueError("algorithms: needs at least one algorithm")
    for a in algorithms:
        if a not in ALGORITHMS or not any(c in ALGORITHMS[a] for c in colls):
            check_algorithm(a, colls[0])
    native = [a for a in algorithms if not has_pattern(a)]
    if jitter is not None and native:
        from jitter_models import parse_schedule

        if parse_schedule(jitter).scope == "link":
            raise ValueError(f"algorithm: {native[0]!r} cannot take jitter with scope = 'link' "
                             "(a native call has no hop to delay); choose an explicit "
                             f"algorithm ({explicit_names(', ')})")
