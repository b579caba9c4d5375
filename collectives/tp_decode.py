"""The tensor-parallel decode workload: steps of a Megatron-style TP transformer, with the
schedule's delay injected before every all-reduce (two per layer per token).

Compute modes:
- ``real``: the model's matmuls run (``tensor_parallel.TPDecoder``) in the run's dtype
  (weights, KV cache, activations and messages), logits come out.
- ``emulated``: each site's compute is a spin of its roofline time on a hardware preset,
  max(bytes moved / HBM bandwidth, FLOPs / peak), from the weight and KV bytes one rank
  reads at that site (bf16: 2 bytes each, whatever the message dtype), so a CPU box
  reproduces the timing structure of a large model on many GPUs; the all-reduces move the
  real message size (batch x hidden in the run's dtype).
- ``none``: no compute, only delays and all-reduces.

Records (ARCHITECTURE.md): one row per (step, site): ``t_start`` when the site's compute
starts, ``t_arrive`` after compute and delay, ``t_done`` after the all-reduce; plus one
row per step with ``site = -1`` holding the step's start and end.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jitter_models import Schedule

from .backends import Backend, elem_size
from .inject import HostInjector, Injector
from .timing import Records, SiteTimer, cuda_event, now_ns

COMPUTE_MODES = ("real", "emulated", "none")
EMULATED_WEIGHT_BYTES = 2  # the roofline's weights and KV cache are bf16


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


def site_costs(layout: Any, batch: int, pos: int, dtype_bytes: int
               ) -> tuple[tuple[float, float], tuple[float, float]]:
    """((bytes, flops) of the attention site, (bytes, flops) of the MLP site) for one
    rank at position ``pos``: its weights read once, its KV cache read up to ``pos``;
    2 FLOPs per weight per sequence, plus the attention scores and mix over the cache."""
    from .models import site_kv_read_bytes, site_weight_bytes

    out = []
    for site in (0, 1):
        weights = site_weight_bytes(layout, site, dtype_bytes)
        flops = 2 * batch * weights / dtype_bytes
        if site == 0:
            flops += 4 * batch * layout.heads_per_rank * layout.cfg.head_dim * (pos + 1)
        out.append((weights + site_kv_read_bytes(layout, site, pos, batch, dtype_bytes),
                    flops))
    return out[0], out[1]


class _Sites:
    """The decoder's hooks (``tensor_parallel.Comm``) onto the timing primitive: each
    site's start, then its delay and all-reduce."""

    def __init__(self, timer: SiteTimer, delays_ns: np.ndarray,
                 all_reduce: Callable[[Any], tuple[int, int]], nbytes: int, n_sites: int):
        self.timer, self.delays, self._all_reduce = timer, delays_ns, all_reduce
        self.nbytes, self.n_sites = nbytes, n_sites
        self.step = 0

    def site_start(self, site: int) -> None:
        self.timer.open_site()

    def all_reduce(self, t: Any, site: int, computed: bool = True) -> None:
        self.timer.close_site(site, delay_ns=int(self.delays[self.step, site]),
                              collective=functools.partial(self._all_reduce, t),
                              nbytes=self.nbytes, index=self.step * self.n_sites + site,
                              computed=computed)


def _all_reduce(backend: Backend, algorithm: str, count: int, dtype: str,
                ranks_per_node: int, hops: np.ndarray | None = None,
                injector: Injector | None = None) -> Callable[[Any], tuple[int, int]]:
    """The sites' all-reduce: the backend's own, or an explicit algorithm whose messages
    take the link-scoped delays ``hops`` [call, send] in call order."""
    if algorithm == "native":
        def native(t: Any) -> tuple[int, int]:
            backend.all_reduce(t)
            return 0, 0
        return native
    from .explicit import Explicit

    ex = Explicit(backend, algorithm=algorithm, collective="all_reduce", count=count,
                  dtype=dtype, ranks_per_node=ranks_per_node)
    calls = [0]  # the call's number in the run: its row of hop delays

    def explicit(t: Any) -> tuple[int, int]:
        k = calls[0]
        calls[0] = k + 1
        return ex.run(t, hop_delays_ns=None if hops is None else hops[k], injector=injector)
    explicit.explicit = ex  # type: ignore[attr-defined]
    return explicit


def run(backend: Backend, *, cfg: Any, batch: int, steps: int, warmup: int, compute: str,
        hw: Hardware | None, dtype: str, seed: int, schedule: Schedule | None,
        injector: Injector, node: int, progress: np.ndarray | None = None,
        record_sites: bool = True, algorithm: str = "native", ranks_per_node: int = 8,
        ) -> tuple[Records, np.ndarray | None]:
    """Decode ``warmup + steps`` tokens; only the last ``steps`` are recorded. Returns the
    records and, in ``real`` mode, the last step's logits (batch x vocab).
    ``record_sites=False`` keeps only the per-step rows (to measure recording's cost)."""
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute: must be one of {', '.join(COMPUTE_MODES)}, got {compute!r}")
    n, rank = backend.world_size, backend.rank
    n_sites = 2 * cfg.layers
    total = warmup + steps
    clipped = 0
    if schedule is not None:
        delays_ns, clipped = schedule.delays_ns(seed, rank, node, n, total, n_sites)
    else:
        delays_ns = np.zeros((total, n_sites), dtype=np.int64)
    records = Records(total * (n_sites + 1))
    timer = SiteTimer(backend, injector, records, mark=progress,
                      event=cuda_event if backend.device.startswith("cuda") else None)
    timer.record_sites = record_sites
    reduce = _all_reduce(backend, algorithm, batch * cfg.hidden, dtype, ranks_per_node)
    ex = getattr(reduce, "explicit", None)
    if ex is not None and schedule is not None and schedule.scope == "link":
        from .explicit import link_delays

        (hops,), hop_clipped = link_delays(schedule, seed, rank, [(ex, total * n_sites)])
        clipped += hop_clipped
        reduce = _all_reduce(backend, algorithm, batch * cfg.hidden, dtype, ranks_per_node,
                             hops, injector)
    records.delays_clipped = clipped  # warm-up steps included: they are injected too
    sites = _Sites(timer, delays_ns, reduce, batch * cfg.hidden * elem_size(dtype), n_sites)
    if compute == "real":
        logits = _real(backend, timer, sites, cfg, batch, total, seed, dtype)
    else:
        _emulated(backend, timer, sites, cfg, batch, total, hw if compute == "emulated"
                  else None, dtype)
        logits = None
    _drop_warmup(records, warmup)
    return records, logits


def _real(backend: Backend, timer: SiteTimer, sites: _Sites, cfg: Any, batch: int,
          total: int, seed: int, dtype: str) -> np.ndarray:
    import torch

    from .tensor_parallel import TPDecoder

    # The run's dtype for weights, KV cache and messages alike: the records' bytes and
    # the memory validate states are what the model really holds.
    model = TPDecoder(cfg, backend.rank, backend.world_size, seed=seed, batch=batch,
                      max_seq=total + 1, dtype=getattr(torch, dtype), device=backend.device)
    tokens = _first_tokens(seed, batch, cfg.vocab, backend)
    out = None
    for s in range(total):
        sites.step = s
        backend.barrier()
        timer.begin_step(s)
        out = model.step(tokens, s, sites)
        tokens = out.argmax(dim=-1)
        timer.step_row(timer.end_step())
    return backend.to_numpy(out.reshape(-1)).reshape(batch, cfg.vocab)


def _emulated(backend: Backend, timer: SiteTimer, sites: _Sites, cfg: Any, batch: int,
              total: int, hw: Hardware | None, dtype: str) -> None:
    """Each site's compute a spin of its roofline time (``hw``; None: no compute)."""
    from .models import shard_layout

    layout = shard_layout(cfg, backend.world_size)  # a world size not dividing heads fails
    spin = HostInjector()
    buf = backend.from_numpy(np.zeros(batch * cfg.hidden, dtype="float32"), dtype)
    for s in range(total):
        sites.step = s
        backend.barrier()
        timer.begin_step(s)
        if hw is not None:
            costs = site_costs(layout, batch, s, EMULATED_WEIGHT_BYTES)
            spins = [round(hw.seconds(*costs[site % 2]) * 1e9) for site in range(2)]
        for site in range(sites.n_sites):
            sites.site_start(site)
            if hw is None:
                sites.all_reduce(buf, site, computed=False)
                continue
            spin.inject(now_ns(), spins[site % 2])
            sites.all_reduce(buf, site)
        timer.step_row(timer.end_step())


def _first_tokens(seed: int, batch: int, vocab: int, backend: Backend) -> Any:
    import torch

    g = np.random.default_rng([seed, 7])
    return torch.as_tensor(g.integers(0, vocab, batch), dtype=torch.int64,
                           device=backend.device)


def _drop_warmup(records: Records, warmup: int) -> None:
    """Keep only post-warm-up steps, renumbered from 0."""
    cols = records.table()
    keep = cols["step"] >= warmup
    m = int(keep.sum())
    for k, v in records.columns.items():
        v[:m] = cols[k][keep]
    records.columns["step"][:m] -= warmup
    records.n = m
