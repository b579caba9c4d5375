"""The Plan: everything a worker needs, written as JSON before the ranks start.

Every rank reads the same file and derives everything else (its delays from the seed,
its buffers, its output file name) with no communication beyond the collectives.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

BACKENDS = ("auto", "gloo", "nccl", "mpi")
WORKLOADS = ("microbench", "tp_decode")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One point's instructions for every rank."""

    workload: Literal["microbench", "tp_decode"]
    """What to run."""
    out_dir: str
    """Where each rank writes rank-NNNNN.parquet."""
    backend: Literal["auto", "gloo", "nccl", "mpi"] = "auto"
    """auto: nccl with CUDA, else gloo; mpi only on request."""
    seed: int = 0
    """Seed of the jitter schedule (and of the check inputs)."""
    jitter: str | None = None
    """One-line jitter schedule injected before each collective; None: no delay."""
    injector: Literal["auto", "host", "cuda", "none"] = "auto"
    """How delays are applied: host (sleep, then spin on CLOCK_MONOTONIC), cuda (a
    kernel on the stream), auto (cuda for GPU buffers, else host)."""
    colls: tuple[str, ...] = ("all_reduce",)
    """The collectives to time, each over every size (microbench)."""
    algorithms: tuple[str, ...] = ("native",)
    """How each collective runs: native (the backend's own call) or an explicit algorithm
    over point-to-point messages (jitter_models.algorithms); each with the collectives it
    implements."""
    sizes: tuple[int, ...] = (1024,)
    """Operation sizes S in bytes, nccl-tests semantics (microbench)."""
    dtype: str = "float32"
    """Element type."""
    redop: str = "sum"
    """Reduction for all_reduce / reduce_scatter."""
    root: int = 0
    """Root rank for broadcast."""
    iters: int = 20
    """Timed iterations per size."""
    warmup: int = 5
    """Untimed iterations per size before timing."""
    check: bool = False
    """Verify results in an extra untimed iteration with fresh, exactly checkable inputs."""
    timeout_s: float = 300.0
    """Init and collective timeout: a run with no rank making progress for this long
    fails, naming the rank that stopped."""
    model: str | dict = "tiny"
    """Model preset name, or a table of dims (tp_decode)."""
    batch: int = 1
    """Sequences decoded together (tp_decode)."""
    steps: int = 16
    """Recorded decode steps (tp_decode); ``warmup`` steps run first."""
    compute: Literal["real", "emulated", "none"] = "real"
    """tp_decode compute: run the matmuls, spin their roofline time, or skip."""
    hardware: str = "h100"
    """Roofline preset for compute = emulated."""
    save_logits: bool = False
    """tp_decode, real compute: rank 0 writes the last step's logits (logits.npy)."""
    gather_records: Literal["auto", "always"] = "auto"
    """auto: each rank writes its own file when every rank sees the run folder (checked
    at start), else rank 0 gathers and writes them all; always: gather (for tests)."""
    ranks_per_node: int = 8
    """Ranks per node: node-scoped jitter is shared by blocks of this many consecutive
    ranks (``jitter_models.node_of``), as the model and a multi-node placement assume."""
    clock_pingpong: bool = False
    """Estimate clock offsets by ping-pong even between ranks on one host (a self-check:
    the true offset there is 0). Ranks on other hosts are always measured."""
    fault: str | None = None
    """Testing aid: ``exit@RANK:N`` or ``hang@RANK:N`` makes RANK exit or hang on
    reaching timed collective N, to exercise failure handling."""

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload: unknown {self.workload!r} (known: {', '.join(WORKLOADS)})")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: unknown {self.backend!r} (known: {', '.join(BACKENDS)})")
        if self.injector not in ("auto", "host", "cuda", "none"):
            raise ValueError(f"injector: must be auto, host, cuda or none, got "
                             f"{self.injector!r}")
        for name, low in (("seed", 0), ("root", 0), ("iters", 1), ("warmup", 0),
                          ("batch", 1), ("steps", 1), ("ranks_per_node", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "colls", tuple(self.colls))
        if not self.colls:
            raise ValueError("colls: needs at least one collective")
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        _check_algorithms(self.algorithms, self.colls, self.jitter)
        if not self.sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                 for s in self.sizes):
            raise ValueError(f"sizes: must be positive integers, got {self.sizes!r}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s)
                and 0 < self.timeout_s <= 86_400):
            raise ValueError(f"timeout_s: must be > 0 s and at most a day, got "
                             f"{self.timeout_s!r}")

        if self.gather_records not in ("auto", "always"):
            raise ValueError(f"gather_records: must be auto or always, got "
                             f"{self.gather_records!r}")
        if self.backend == "mpi" and self.dtype == "bfloat16":
            raise ValueError("dtype: MPI has no bfloat16 type; use float16 or float32 with "
                             "backend mpi, or a torch backend for bfloat16")
        if self.fault is not None:
            from collectives.microbench import Fault

            Fault.parse(self.fault)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"plan: unknown field {unknown[0]!r}")
        for key in ("sizes", "colls", "algorithms"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"plan: cannot read {str(path)!r} ({exc.strerror})") from None
        return cls.from_json(text)

    def rank_file(self, rank: int) -> Path:
        return Path(self.out_dir) / f"rank-{rank:05d}.parquet"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_algorithms(algorithms: tuple[str, ...], colls: tuple[str, ...],
                      jitter: str | None) -> None:
    """Each algorithm known and implementing one of the collectives; a link-scoped
    schedule only with explicit algorithms (a native call has no hop to delay)."""
    from jitter_models.algorithms import ALGORITHMS, check_algorithm

    if not algorithms:
        raise ValueError("algorithms: needs at least one algorithm")
    for a in algorithms:
        if a not in ALGORITHMS or not any(c in ALGORITHMS[a] for c in colls):
            check_algorithm(a, colls[0])
    if jitter is not None and "native" in algorithms:
        from jitter_models import parse_schedule

        if parse_schedule(jitter).scope == "link":
            raise ValueError("algorithm: 'native' cannot take jitter with scope = 'link' "
                             "(a native call has no hop to delay); choose an explicit "
                             "algorithm (ring, recursive_doubling, tree, hierarchical)")
