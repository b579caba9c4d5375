"""The small tp_decode sweep the distributed tests run: the tiny model without compute, two
schedules (none and one with jitter), a few steps. Each test changes only what it needs."""

from __future__ import annotations

from pathlib import Path

JITTER = (("none", "constant(0s)"), ("exp", "exponential(20us)"))


def spec_text(*, jitter: tuple[tuple[str, str], ...] = JITTER, **keys: object) -> str:
    """TOML of the sweep; ``keys`` override or add top-level keys (name, backend, steps,
    world_sizes, launcher, ranks_per_node, timeout_s, ...)."""
    doc: dict[str, object] = {"name": "t", "workload": "tp_decode", "model": "tiny",
                              "compute": "none", "world_sizes": [1, 2], "backend": "mpi",
                              "steps": 5, "warmup": 1} | keys
    lines = [f"{k} = {_toml(v)}" for k, v in doc.items()]
    for name, dist in jitter:
        lines += ["", "[[jitter]]", f"name = {_toml(name)}", f"dist = {_toml(dist)}"]
    return "\n".join(lines) + "\n"


def write_spec(path: Path, **keys: object) -> Path:
    path.write_text(spec_text(**keys))
    return path


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)
