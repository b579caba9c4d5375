"""The tensor-parallel decode workload: steps of a Megatron-style TP transformer, with the
schedule's delay injected before every all-reduce (two per layer per token).

Compute modes:
- ``real``: the model's matmuls run (``tensor_parallel.TPDecoder``), logits come out.
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

from dataclasses import dataclass
from typing import Any

import numpy as np

from jitter_models import Schedule

from .backends import Backend, elem_size
from .inject import HostInjector, Injector
from .timing import Records, now_ns

COMPUTE_MODES = ("real", "emulated", "none")
STEP_SITE = -1  # the per-step row
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

    def __post_init__(self) -> None:
        for f in ("hbm_bytes_per_s", "peak_flops"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"hardware.{f}: must be > 0, got {v!r}")

    def seconds(self, nbytes: float, flops: float) -> float:
        return max(nbytes / self.hbm_bytes_per_s, flops / self.peak_flops)


# Vendor datasheet figures (REFERENCES.md for H100, H200, A100; B200: 8 TB/s HBM3e and
# about 2.25 PFLOP/s dense bf16 by its datasheet).
HARDWARE: dict[str, Hardware] = {
    "h100": Hardware(name="h100", hbm_bytes_per_s=3.35e12, peak_flops=989e12),
    "h200": Hardware(name="h200", hbm_bytes_per_s=4.8e12, peak_flops=989e12),
    "a100": Hardware(name="a100", hbm_bytes_per_s=2.0e12, peak_flops=312e12),
    "b200": Hardware(name="b200", hbm_bytes_per_s=8.0e12, peak_flops=2250e12),
}


def hardware(spec: str | dict) -> Hardware:
    if isinstance(spec, dict):
        return Hardware(name="custom", **spec)
    if spec not in HARDWARE:
        raise ValueError(f"hardware: unknown preset {spec!r} (known: {', '.join(HARDWARE)}, "
                         "or a table with hbm_bytes_per_s and peak_flops)")
    return HARDWARE[spec]


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
    """The decoder's hooks: times each site, applies its delay, runs its all-reduce."""

    def __init__(self, backend: Backend, records: Records, delays_ns: np.ndarray,
                 injector: Injector, nbytes: int, mark: np.ndarray, n_sites: int):
        self.backend, self.records, self.injector = backend, records, injector
        self.delays = delays_ns
        self.nbytes, self.mark, self.n_sites = nbytes, mark, n_sites
        self.step = 0
        self._t_start = 0
        self.record = True

    def site_start(self, site: int) -> None:
        self._t_start = now_ns()

    def all_reduce(self, t: Any, site: int) -> None:
        if not self.record:  # only the step's own start and end are kept
            self.injector.inject(now_ns(), int(self.delays[self.step, site]))
            self.backend.all_reduce(t)
            self.backend.synchronize()
            return
        d = int(self.delays[self.step, site])
        t_delay = now_ns()  # compute done: the delay starts here
        self.injector.inject(t_delay, d)
        self.mark[0] = self.step * self.n_sites + site
        t1 = now_ns()
        self.backend.all_reduce(t)
        self.backend.synchronize()
        t2 = now_ns()
        self.records.add(self.step, site, 0, self.nbytes, d, self._t_start, t1, t2,
                         delay_ns=t1 - t_delay)


def run(backend: Backend, *, cfg: Any, batch: int, steps: int, warmup: int, compute: str,
        hw: Hardware | None, dtype: str, seed: int, schedule: Schedule | None,
        injector: Injector, node: int, progress: np.ndarray | None = None,
        record_sites: bool = True) -> tuple[Records, np.ndarray | None]:
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
    records.delays_clipped = clipped  # warm-up steps included: they are injected too
    mark = progress if progress is not None else np.zeros(1, dtype=np.int64)
    esize = elem_size(dtype)
    sites = _Sites(backend, records, delays_ns, injector, batch * cfg.hidden * esize, mark,
                   n_sites)
    sites.record = record_sites
    logits = None
    if compute == "real":
        from .tensor_parallel import TPDecoder

        model = TPDecoder(cfg, rank, n, seed=seed, batch=batch, max_seq=total + 1,
                          device=backend.device)
        tokens = _first_tokens(seed, batch, cfg.vocab, backend)
        for s in range(total):
            sites.step = s
            backend.barrier()
            t0 = now_ns()
            out = model.step(tokens, s, sites)
            tokens = out.argmax(dim=-1)
            records.add(s, STEP_SITE, 0, 0, 0, t0, t0, now_ns())
            logits = out
        logits = backend.to_numpy(logits.reshape(-1)).reshape(batch, cfg.vocab)
    else:
        from .models import shard_layout

        layout = shard_layout(cfg, n)  # a world size that does not divide the heads fails
        spin = HostInjector()
        buf = backend.from_numpy(np.zeros(batch * cfg.hidden, dtype="float32"), dtype)
        for s in range(total):
            sites.step = s
            backend.barrier()
            t0 = now_ns()
            costs = (site_costs(layout, batch, s, EMULATED_WEIGHT_BYTES)
                     if compute == "emulated" else None)
            for site in range(n_sites):
                sites.site_start(site)
                if costs is not None:
                    nbytes, flops = costs[site % 2]
                    spin.inject(sites._t_start, round(hw.seconds(nbytes, flops) * 1e9))
                sites.all_reduce(buf, site)
            records.add(s, STEP_SITE, 0, 0, 0, t0, t0, now_ns())
    _drop_warmup(records, warmup)
    return records, logits


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
