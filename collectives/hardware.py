"""GPU roofline presets for emulated compute, and whether a model's shard fits a GPU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .backends import elem_size


@dataclass(frozen=True, kw_only=True)
class Hardware:
    """A GPU's roofline: what one rank can read and compute per second."""

    name: str
    """Preset name or 'custom'."""
    hbm_bytes_per_s: float
    """Memory bandwidth, bytes/s."""
    peak_flops: float
    """Dense bf16 peak, FLOP/s."""
    memory_bytes: float | None = None
    """Device memory, bytes (datasheet GB, 1e9); None where unknown (a custom table)."""

    def __post_init__(self) -> None:
        for f in ("hbm_bytes_per_s", "peak_flops", "memory_bytes"):
            v = getattr(self, f)
            if v is None and f == "memory_bytes":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"hardware.{f}: must be > 0, got {v!r}")

    def seconds(self, nbytes: float, flops: float) -> float:
        return max(nbytes / self.hbm_bytes_per_s, flops / self.peak_flops)


# Vendor datasheet figures (REFERENCES.md for H100, H200, A100; B200: 8 TB/s HBM3e and
# about 2.25 PFLOP/s dense bf16 by its datasheet). Memory: the datasheets' 80, 141, 80
# (A100 80GB) and 192 GB, taken as 1e9 bytes: a little under what the devices report
# (an H100 shows 79.6 GiB = 85.5e9 B), which leaves room for the CUDA context.
HARDWARE: dict[str, Hardware] = {
    "h100": Hardware(name="h100", hbm_bytes_per_s=3.35e12, peak_flops=989e12,
                     memory_bytes=80e9),
    "h200": Hardware(name="h200", hbm_bytes_per_s=4.8e12, peak_flops=989e12,
                     memory_bytes=141e9),
    "a100": Hardware(name="a100", hbm_bytes_per_s=2.0e12, peak_flops=312e12,
                     memory_bytes=80e9),
    "b200": Hardware(name="b200", hbm_bytes_per_s=8.0e12, peak_flops=2250e12,
                     memory_bytes=192e9),
}


def hardware(spec: str | dict) -> Hardware:
    if isinstance(spec, dict):
        return Hardware(name="custom", **spec)
    if spec not in HARDWARE:
        raise ValueError(f"hardware: unknown preset {spec!r} (known: {', '.join(HARDWARE)}, "
                         "or a table with hbm_bytes_per_s, peak_flops and optionally "
                         "memory_bytes)")
    return HARDWARE[spec]


def _gb(nbytes: float) -> str:
    if nbytes < 1e8:
        return f"{nbytes / 1e6:.1f} MB"
    return f"{nbytes / 1e9:.1f}".removesuffix(".0") + " GB"


def memory_per_rank(cfg: Any, world_sizes: Any, *, batch: int, steps: int, warmup: int,
                    dtype: str, hw: Hardware) -> tuple[str, str | None]:
    """For real compute: one line of what one rank holds at each world size, and an error
    line for the smallest world size whose shard does not fit ``hw``'s memory (None when
    all fit, or the memory is unknown). Positions: ``warmup + steps + 1``, the KV cache
    ``run`` allocates."""
    from .models import rank_memory

    esize = elem_size(dtype)
    need = {n: rank_memory(cfg, n, batch=batch, positions=warmup + steps + 1,
                           dtype_bytes=esize) for n in world_sizes}
    line = (f"memory per rank ({dtype} weights + KV cache at batch {batch}): "
            + ", ".join(f"N={n} {_gb(m.total_bytes)}" for n, m in need.items())
            + (f"; {hw.name} has {_gb(hw.memory_bytes)}" if hw.memory_bytes else ""))
    for n, m in need.items():
        if hw.memory_bytes is not None and m.total_bytes > hw.memory_bytes:
            return line, (f"world_sizes: at N={n} one rank needs {_gb(m.total_bytes)} "
                          f"(weights {_gb(m.weights_bytes)} + KV cache "
                          f"{_gb(m.kv_cache_bytes)} in {dtype}); {hw.name} has "
                          f"{_gb(hw.memory_bytes)}")
    return line, None
