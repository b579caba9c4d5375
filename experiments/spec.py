"""A sweep spec: TOML to a typed, validated ``Spec``.

```toml
name = "quickstart"
workload = "tp_decode"        # or "microbench"
model = "llama-3-8b"          # a preset, or a table of dims
batch = 1                     # or a list: one variant each
compute = "emulated"          # real | emulated | none
hardware = "h100"             # roofline preset for emulated compute
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

Errors name the key path and the value, e.g. ``jitter[2].dist: lognormal: sigma: must be
> 0, got -1.0`` or ``world_sizes: 3 does not divide heads=32``. Importing this module does
not import torch (``jitterlab validate`` stays fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collectives.models import ModelConfig, model_config, shard_layout
from jitter_models import Schedule, check_unique_names, parse_schedule, schedule_from_table
from jitter_models.syntax import check_printable

from .maxtable import load_toml_file

KEYS = ("name", "workload", "model", "batch", "compute", "hardware", "dtype", "world_sizes",
        "backend", "launcher", "steps", "warmup", "seed", "timeout_s", "ranks_per_node",
        "algorithm", "jitter")
MAX_STEPS = 100_000
MAX_WORLD = 4096
CHOICES = {"workload": ("tp_decode", "microbench"), "compute": ("real", "emulated", "none"),
           "backend": ("auto", "gloo", "nccl", "mpi"),
           "launcher": ("auto", "local", "torchrun", "mpirun", "srun"),
           "dtype": ("float32", "float16", "bfloat16", "float64"),
           "hardware": ("h100", "h200", "a100", "b200")}


@dataclass(frozen=True, kw_only=True)
class Spec:
    """One sweep: what to run at which world sizes under which jitter schedules."""

    name: str
    """Names the output folder runs/<name>/."""
    workload: str
    """tp_decode or microbench."""
    model: ModelConfig
    """Model shape (tp_decode)."""
    batches: tuple[int, ...]
    """Batch sizes: one sweep variant each."""
    compute: str
    """real, emulated or none."""
    hardware: str
    """Roofline preset for emulated compute."""
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


def parse_spec(doc: dict, default_name: str = "spec") -> Spec:
    """Validate a parsed TOML document; ValueError naming the key path and value."""
    unknown = [k for k in doc if k not in KEYS]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (keys: {', '.join(KEYS)})")
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\n") \
            or name.startswith("."):
        raise ValueError(f"name: must be a plain folder name, got {name!r}")
    check_printable("name", name)
    workload = _choice(doc, "workload", "tp_decode")
    raw = doc.get("model", "tiny")
    if not isinstance(raw, (str, dict)):
        raise ValueError(f"model: expected a preset name or a table of dims, got {raw!r}")
    try:
        model = model_config(raw)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        raise ValueError(text if text.startswith("model") else f"model: {text}") from None
    world_sizes = tuple(sorted(_ints(doc, "world_sizes", [1, 2], 1, MAX_WORLD)))
    if workload == "tp_decode":
        for n in world_sizes:
            try:
                shard_layout(model, n)
            except ValueError as exc:
                raise ValueError(f"world_sizes: {exc}") from None
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
    return Spec(algorithm=algorithm, name=name, workload=workload, model=model,
                batches=_ints(doc, "batch", 1, 1, 4096),
                compute=_choice(doc, "compute", "emulated"),
                hardware=_choice(doc, "hardware", "h100"),
                dtype=_choice(doc, "dtype", "float32"), world_sizes=world_sizes,
                backend=_choice(doc, "backend", "auto"),
                launcher=_choice(doc, "launcher", "auto"),
                steps=_int("steps", doc.get("steps", 50), 1, MAX_STEPS),
                warmup=_int("warmup", doc.get("warmup", 5), 0, MAX_STEPS),
                seed=_int("seed", doc.get("seed", 0), 0, 2**63 - 1),
                timeout_s=float(timeout),
                ranks_per_node=_int("ranks_per_node", doc.get("ranks_per_node", 8), 1,
                                    MAX_WORLD),
                schedules=tuple(schedules))


def _algorithm(doc: dict, schedules: list[Schedule]) -> str:
    """The spec's algorithm; link-scoped jitter needs an explicit one (it delays the
    algorithm's messages: a native call has none to delay)."""
    from jitter_models.algorithms import check_algorithm

    value = doc.get("algorithm", "native")
    if not isinstance(value, str):
        raise ValueError(f"algorithm: expected a name, got {value!r}")
    check_algorithm(value, "all_reduce")
    for i, s in enumerate(schedules):
        if s.scope == "link" and value == "native":
            raise ValueError(f"jitter[{i}].scope: 'link' delays an explicit algorithm's "
                             "messages, but algorithm = 'native' (the backend's own call) "
                             "has none; set algorithm = 'ring', 'recursive_doubling', "
                             "'tree' or 'hierarchical'")
    return value


def _field(exc: ValueError) -> str:
    """'jitter: dist: lognormal: ...' -> 'dist: lognormal: ...' (the path goes in front)."""
    text = str(exc)
    return text[len("jitter: "):] if text.startswith("jitter: ") else text


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    return parse_spec(load_toml_file(path), default_name=path.stem)
