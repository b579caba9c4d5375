"""A sweep spec: TOML to a typed, validated ``Spec``.

```toml
name = "quickstart"
workload = "tp_decode"        # a registered workload, or "module:Class"
model = "llama-3-8b"          # tp_decode's own keys: a preset, or a table of dims
compute = "emulated"          # real | emulated | none
hardware = "h100"             # roofline preset for emulated compute
batch = 1                     # or a list: one variant each
dtype = "float16"
world_sizes = [1, 2]
backend = "mpi"               # auto | gloo | nccl | mpi
launcher = "auto"             # auto (local for 1 rank, mpirun or torchrun), or a name
steps = 50
warmup = 5
seed = 0
timeout_s = 120

[[jitter]]                    # exactly the foundation's schedule form
name = "lognormal"
dist = "lognormal(median=20us, sigma=0.6)"
```

The keys below ``KEYS`` are every sweep's; a workload adds its own (``spec_keys`` of
``collectives.workload``), which it validates into ``Spec.params``. Errors name the key path
and the value, e.g. ``jitter[2].dist: lognormal: sigma: must be > 0, got -1.0`` or
``world_sizes: 3 does not divide heads=32``. Importing this module does not import torch
(``jitterlab validate`` stays fast).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collectives.backends import BACKENDS
from collectives.ops import DTYPES
from collectives.workload import SweepCommon, Workload, get_workload
from jitter_models import Schedule, check_unique_names, parse_schedule, schedule_from_table
from jitter_models.errors import reading_input
from jitter_models.syntax import check_printable
from launch.commands import LAUNCHERS

from .maxtable import load_toml_file

if TYPE_CHECKING:
    from jitter_models.network import Network

KEYS = ("name", "workload", "batch", "dtype", "world_sizes", "backend", "launcher", "steps",
        "warmup", "seed", "timeout_s", "ranks_per_node", "algorithm", "record_hops", "jitter",
        "network")
MAX_STEPS = 100_000
MAX_WORLD = 4096
MAX_SIMULATED_WORLD = 1 << 20  # jitterlab simulate (jitter_models.simulate checks per algorithm)
CHOICES = {"backend": BACKENDS, "launcher": ("auto", *LAUNCHERS),
           "dtype": DTYPES}  # (a workload may take fewer dtypes: tp_decode floats only)


@dataclass(frozen=True, kw_only=True)
class Spec:
    """One sweep: what to run at which world sizes under which jitter schedules."""

    name: str
    """Names the output folder runs/<name>/."""
    workload: str
    """A workload name or ``module:Class`` (``collectives.workload.get_workload``)."""
    params: dict[str, Any]
    """The workload's own keys, as its ``parse`` validated them (JSON-able)."""
    batches: tuple[int, ...]
    """Batch sizes: one sweep variant each."""
    dtype: str
    """Element type of messages (and of weights in the roofline)."""
    world_sizes: tuple[int, ...]
    """Ranks per point, ascending."""
    backend: str
    """auto, gloo, nccl or mpi."""
    launcher: str
    """auto or a launcher name."""
    steps: int
    """Recorded decode steps per point."""
    warmup: int
    """Unrecorded steps first."""
    seed: int
    """Seed of every schedule and of the model's weights."""
    timeout_s: float
    """Seconds without progress before a point fails."""
    ranks_per_node: int
    """Ranks per node, for node-scoped jitter, hierarchical algorithms and the model."""
    algorithm: str = "native"
    """How the all-reduces run: native (the backend's own call) or an explicit algorithm
    of jitter_models.algorithms (ring, recursive_doubling, tree, hierarchical)."""
    schedules: tuple[Schedule, ...]
    """The [[jitter]] tables, in order."""
    record_hops: bool = False
    """Explicit algorithms: also record one row per message (``hops-NNNNN.parquet`` in
    each point folder); for small runs."""
    network: Network | None = None
    """The ``[network]`` table (per-tier alpha and bandwidth) the simulator takes; None
    where the spec has none (``jitterlab run`` does not need one)."""

    @property
    def work(self) -> Workload:
        """The workload object ``workload`` names."""
        return get_workload(self.workload)

    def common(self) -> SweepCommon:
        """The common keys, as a workload sees them."""
        return SweepCommon(dtype=self.dtype, world_sizes=self.world_sizes,
                           batches=self.batches, steps=self.steps, warmup=self.warmup,
                           algorithm=self.algorithm, ranks_per_node=self.ranks_per_node)


def _int(path: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{path}: must be in [{low}, {high}], got {value!r}")
    return value


def _choice(doc: dict, key: str, default: str) -> str:
    value = doc.get(key, default)
    if value not in CHOICES[key]:
        raise ValueError(f"{key}: must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def _ints(doc: dict, key: str, default: Any, low: int, high: int) -> tuple[int, ...]:
    value = doc.get(key, default)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{key}: needs at least one value")
    out = tuple(_int(f"{key}[{i}]" if isinstance(value, list) else key, v, low, high)
                for i, v in enumerate(items))
    if len(set(out)) != len(out):
        raise ValueError(f"{key}: repeated values in {list(out)!r}")
    return out


def parse_spec(doc: dict, default_name: str = "spec", *, max_world: int = MAX_WORLD) -> Spec:
    """Validate a parsed TOML document; ``BadInput`` naming the key path and value.
    ``max_world``: the largest world size taken (the simulator takes more than a run)."""
    with reading_input():
        return _parse_spec(doc, default_name, max_world)


def _parse_spec(doc: dict, default_name: str, max_world: int) -> Spec:
    workload = _workload(doc)
    own = dict(workload.spec_keys)
    unknown = [k for k in doc if k not in KEYS and k not in own]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (keys: {', '.join((*KEYS, *own))})")
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\n") \
            or name.startswith("."):
        raise ValueError(f"name: must be a plain folder name, got {name!r}")
    check_printable("name", name)
    world_sizes = tuple(sorted(_ints(doc, "world_sizes", [1, 2], 1, max_world)))
    timeout = doc.get("timeout_s", 300.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not (math.isfinite(timeout) and 0 < timeout <= 86_400):
        raise ValueError(f"timeout_s: must be > 0 and at most 86400 seconds, got {timeout!r}")
    items = doc.get("jitter")
    if not isinstance(items, list) or not items:
        raise ValueError("jitter: needs at least one [[jitter]] table")
    schedules = []
    for i, table in enumerate(items):
        try:
            schedule = schedule_from_table(table)
        except ValueError as exc:
            raise ValueError(f"jitter[{i}].{_field(exc)}") from None
        try:  # the ranks get it as one line: that form must parse too (nesting limits)
            parse_schedule(str(schedule))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"jitter[{i}]: as the ranks receive it (one line): "
                             f"{str(exc) or 'nested too deeply'}"[:300]) from None
        schedules.append(schedule)
    check_unique_names(schedules)
    algorithm = _algorithm(doc, schedules)
    spec = Spec(algorithm=algorithm, name=name, workload=doc.get("workload", "tp_decode"),
                params={}, batches=_ints(doc, "batch", 1, 1, 4096),
                dtype=_choice(doc, "dtype", "float32"), world_sizes=world_sizes,
                backend=_choice(doc, "backend", "auto"),
                launcher=_choice(doc, "launcher", "auto"),
                steps=_int("steps", doc.get("steps", 50), 1, MAX_STEPS),
                warmup=_int("warmup", doc.get("warmup", 5), 0, MAX_STEPS),
                seed=_int("seed", doc.get("seed", 0), 0, 2**63 - 1),
                timeout_s=float(timeout),
                ranks_per_node=_int("ranks_per_node", doc.get("ranks_per_node", 8), 1,
                                    MAX_WORLD),
                schedules=tuple(schedules), record_hops=_bool(doc, "record_hops"),
                network=_network(doc))
    from launch.plan import check_record_hops

    check_record_hops(spec.record_hops, (spec.algorithm,))
    params = workload.parse({k: v for k, v in doc.items() if k in own}, spec.common())
    from jitter_models.algorithms import check_algorithm

    for collective in workload.collectives(params):  # the algorithm runs each of them
        check_algorithm(algorithm, collective)
    return dataclasses.replace(spec, params=params)


def _network(doc: dict) -> Network | None:
    table = doc.get("network")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"network: expected a table [network], got {table!r}")
    from jitter_models.network import Network

    ranks_per_node = doc.get("ranks_per_node", 8)  # validated above
    return Network.from_table(table, ranks_per_node)


def _bool(doc: dict, key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: must be true or false, got {value!r}")
    return value


def _workload(doc: dict) -> Workload:
    value = doc.get("workload", "tp_decode")
    if not isinstance(value, str) or not value:
        raise ValueError(f"workload: expected a name or 'module:Class', got {value!r}")
    check_printable("workload", value)
    return get_workload(value)


def _algorithm(doc: dict, schedules: list[Schedule]) -> str:
    """The spec's algorithm; link-scoped jitter needs an explicit one (it delays the
    algorithm's messages: a native call has none to delay)."""
    from jitter_models.algorithms import (
        ALGORITHMS,
        check_algorithm,
        explicit_names,
        has_pattern,
    )

    value = doc.get("algorithm", "native")
    if not isinstance(value, str):
        raise ValueError(f"algorithm: expected a name, got {value!r}")
    if value not in ALGORITHMS:
        check_algorithm(value, "all_reduce")  # the error naming the known ones
    for i, s in enumerate(schedules):
        if s.scope == "link" and not has_pattern(value):
            raise ValueError(f"jitter[{i}].scope: 'link' delays an explicit algorithm's "
                             f"messages, but algorithm = {value!r} (the backend's own call) "
                             f"has none; set algorithm = {explicit_names(' or ')}")
    return value


def _field(exc: ValueError) -> str:
    """'jitter: dist: lognormal: ...' -> 'dist: lognormal: ...' (the path goes in front)."""
    text = str(exc)
    return text[len("jitter: "):] if text.startswith("jitter: ") else text


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    with reading_input():
        doc = load_toml_file(path)
    return parse_spec(doc, default_name=path.stem)
