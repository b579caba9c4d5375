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
from collections.abc import Callable
from typing import Any

import numpy as np

from jitter_models import Schedule

from .backends import Backend, elem_size
from .explicit import all_reduce_call
from .hardware import HARDWARE, Hardware, hardware, memory_per_rank  # noqa: F401
from .inject import HostInjector, Injector
from .timing import Records, SiteTimer, now_ns, site_timer
from .workload import BaseWorkload, RankResult, SimSite, check_ints, with_defaults

COMPUTE_MODES = ("real", "emulated", "none")
DTYPES = ("float32", "float16", "bfloat16", "float64")  # the model's weights and messages
EMULATED_WEIGHT_BYTES = 2  # the roofline's weights and KV cache are bf16


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


def run(backend: Backend, *, cfg: Any, batch: int, steps: int, warmup: int, compute: str,
        hw: Hardware | None, dtype: str, seed: int, schedule: Schedule | None,
        injector: Injector, node: int, progress: np.ndarray | None = None,
        record_sites: bool = True, algorithm: str = "native", ranks_per_node: int = 8,
        hop_log: Any = None) -> tuple[Records, np.ndarray | None]:
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
    timer = site_timer(backend, injector, records, schedule=schedule, seed=seed,
                       mark=progress)
    timer.record_sites = record_sites
    reduce, hop_clipped = all_reduce_call(
        backend, algorithm=algorithm, count=batch * cfg.hidden, dtype=dtype,
        ranks_per_node=ranks_per_node, schedule=schedule, seed=seed, n_calls=total * n_sites,
        injector=injector, hop_log=hop_log)
    clipped += hop_clipped
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


class TPDecode(BaseWorkload):
    """Tensor-parallel decode as a workload. Spec keys: ``model`` (a preset or a table of
    dims), ``compute`` and ``hardware``; the sweep's ``batch`` values are its variants.
    Plan params: those, plus ``batch``, ``steps``, ``warmup`` and ``save_logits``."""

    name = "tp_decode"
    spec_keys = {"model": "a preset name or a table of dims",
                 "compute": "real | emulated | none",
                 "hardware": f"roofline preset for emulated compute: {', '.join(HARDWARE)}"}
    DEFAULTS: dict[str, Any] = {"model": "tiny", "batch": 1, "steps": 16, "warmup": 5,
                                "compute": "real", "hardware": "h100", "save_logits": False}

    def parse(self, doc: Any, common: Any) -> dict[str, Any]:
        from dataclasses import asdict

        from .models import model_config, shard_layout

        if common.dtype not in DTYPES:
            raise ValueError(f"dtype: tp_decode runs in {', '.join(DTYPES)}, got "
                             f"{common.dtype!r}")
        raw = doc.get("model", "tiny")
        if not isinstance(raw, (str, dict)):
            raise ValueError(f"model: expected a preset name or a table of dims, got {raw!r}")
        try:
            model = model_config(raw)
        except (ValueError, TypeError) as exc:
            text = str(exc)
            raise ValueError(text if text.startswith("model") else f"model: {text}") from None
        for n in common.world_sizes:
            try:
                shard_layout(model, n)
            except ValueError as exc:
                raise ValueError(f"world_sizes: {exc}") from None
        return {"model": asdict(model),
                "compute": _choice(doc, "compute", "emulated", COMPUTE_MODES),
                "hardware": _choice(doc, "hardware", "h100", tuple(HARDWARE))}

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        from .models import model_config

        p = with_defaults(self.name, self.DEFAULTS, params)
        check_ints(p, (("batch", 1), ("steps", 1), ("warmup", 0)))
        if p["compute"] not in COMPUTE_MODES:
            raise ValueError(f"compute: must be one of {', '.join(COMPUTE_MODES)}, got "
                             f"{p['compute']!r}")
        hardware(p["hardware"])
        model_config(p["model"])
        return p

    def content(self, params: dict[str, Any], batch: int) -> dict[str, Any]:
        # exactly the keys points had before workloads were modules: their ids stay
        return {"model": params["model"], "batch": batch, "compute": params["compute"],
                "hardware": params["hardware"]}

    def collectives(self, params: dict[str, Any]) -> tuple[str, ...]:
        return ("all_reduce",)

    def sites_per_step(self, params: dict[str, Any]) -> int:
        from .models import model_config

        return 2 * model_config(params["model"]).layers  # attention and MLP all-reduces

    def message_bytes(self, params: dict[str, Any], *, batch: int, dtype: str,
                      world_size: int) -> int:
        from .models import model_config

        return batch * model_config(params["model"]).hidden * elem_size(dtype)

    def compute_share(self, params: dict[str, Any]) -> Callable[[float], float]:
        from .models import model_config, weight_share

        return functools.partial(weight_share, model_config(params["model"]))

    def simulated_sites(self, params: dict[str, Any], *, batch: int, dtype: str,
                        world_size: int) -> tuple[SimSite, ...]:
        """Attention and MLP sites in turn, each an all-reduce of batch x hidden. Emulated
        compute: each site's roofline time on ``hardware`` (what the ranks spin), the mean
        over the decode positions of the recorded steps (``warmup`` .. ``warmup + steps -
        1``) where ``params`` carry ``steps`` (plan params), else at position 0 (spec
        params; the KV cache read is then one position, small beside the weights at
        decode). Real or no compute: compute 0; for real compute the simulator then takes
        compute from a fit."""
        nbytes = self.message_bytes(params, batch=batch, dtype=dtype, world_size=world_size)
        n_sites = self.sites_per_step(params)
        if params["compute"] != "emulated":
            return (SimSite(0.0, nbytes, "all_reduce"),) * n_sites
        from .models import model_config, shard_layout

        layout = shard_layout(model_config(params["model"]), world_size)
        hw = hardware(params["hardware"])
        first = params.get("warmup", 0) if "steps" in params else 0
        costs = [site_costs(layout, batch, pos, EMULATED_WEIGHT_BYTES)
                 for pos in range(first, first + params.get("steps", 1))]
        per_site = [float(np.mean([hw.seconds(*c[k]) for c in costs])) for k in (0, 1)]
        return tuple(SimSite(per_site[s % 2], nbytes, "all_reduce") for s in range(n_sites))

    def describe(self, params: dict[str, Any]) -> str:
        hw = f", {params['hardware']} roofline" if params["compute"] == "emulated" else ""
        return f"tp_decode of {params['model']['name']} ({params['compute']} compute{hw})"

    def model_note(self, params: dict[str, Any]) -> str:
        heads = params["model"]["heads"]
        return ("compute(N) the measured compute scaled by the rank's share of the weights "
                f"(1/N while the {heads} heads split, constant past N = {heads})")

    def check_fit(self, params: dict[str, Any], common: Any) -> tuple[str | None, str | None]:
        """Real compute: what one rank holds at each world size, and an error where it
        cannot fit the GPU of ``hardware``."""
        if params["compute"] != "real":
            return None, None
        from .models import model_config

        return memory_per_rank(model_config(params["model"]), common.world_sizes,
                               batch=max(common.batches), steps=common.steps,
                               warmup=common.warmup, dtype=common.dtype,
                               hw=hardware(params["hardware"]))

    def run(self, rank: Any) -> Any:
        from pathlib import Path

        from .models import model_config

        p = self.params(rank.params)
        records, logits = run(
            rank.backend, cfg=model_config(p["model"]), batch=p["batch"], steps=p["steps"],
            warmup=p["warmup"], compute=p["compute"], hw=hardware(p["hardware"]),
            dtype=rank.dtype, seed=rank.seed, schedule=rank.schedule, injector=rank.injector,
            node=rank.node, progress=rank.progress, algorithm=rank.algorithms[0],
            ranks_per_node=rank.ranks_per_node, hop_log=rank.hop_log)
        if p["save_logits"] and rank.backend.rank == 0 and logits is not None:
            np.save(Path(rank.out_dir) / "logits.npy", logits)
        return RankResult(records=records, ops=[("all_reduce", rank.algorithms[0])])


def _choice(doc: Any, key: str, default: str, choices: tuple[str, ...]) -> str:
    value = doc.get(key, default)
    if value not in choices:
        raise ValueError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value
