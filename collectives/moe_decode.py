"""The mixture-of-experts decode workload: expert-parallel decode steps, a dispatch and a
combine all-to-all per MoE layer, with uneven splits from seeded routing.

Deployment modelled (DeepSeek-V3's serving layout: data-parallel attention, expert-
parallel MoE): each of the N ranks decodes its own ``batch`` tokens; attention, the
shared experts and the dense layers run on every rank for its own tokens; the routed
experts are spread over the ranks in contiguous blocks (experts / N each, so N must
divide the expert count). A step is, per MoE layer:

1. site 2i: the layer's attention, shared experts and router on the rank's tokens (the
   first MoE layer also carries the dense layers before it), the schedule's delay, then
   the **dispatch** all-to-all: each token's hidden state to the rank of each of its
   top-k experts (tokens x top_k x hidden x dtype bytes per rank, uneven per pair);
2. site 2i+1: the rank's experts on the tokens they received, the delay, then the
   **combine** all-to-all: every copy back to its token's rank.

Routing is ``jitter_models.routing`` (uniform, or skewed: Zipf popularities with
``routing_skew``), seeded by ``routing_seed`` and the step and layer, the same on real
ranks and in the simulator; per-rank expert loads differ, and the slowest rank's experts
hold up every rank's combine: load imbalance adds to the jitter.

Compute (``compute = "emulated"``) is a host spin of the roofline time on a hardware
preset, max(weight bytes / HBM bandwidth, FLOPs / peak), weights in bf16 read once per
layer, 2 FLOPs per weight per token: attention + shared experts + router per layer on the
rank's tokens; the rank's routed experts as one grouped GEMM (each expert with a token
reads its weights once; ``routing.ExpertCost``). KV-cache reads are not modelled (a
context-independent lower bound on attention). ``compute = "none"``: delays and
all-to-alls only.

The all-to-all runs with the sweep's algorithm: ``native`` (MPI_Alltoallv, torch's
all_to_all_single with splits) or ``pairwise`` (``jitter_models.algorithm_builders``:
at step k rank r sends to r + k and receives from r - k; link-scoped jitter acts on its
messages).

Exact check: on the checked steps (every warm-up step; every step with ``check = true``)
each rank fills its dispatch blocks with values f(sender, receiver, element) = 1 +
(131 sender + 17 receiver + element) mod 1000, integers exact in every dtype used; the
receiver checks each block, adds 1 (its "experts") and the combine returns the copies,
which the sender checks for f + 1. ``RankResult.wrong``: [dispatch, combine] wrong
elements (-1: no step checked); points.csv carries their sum over ranks as ``wrong``.

Spec keys (beside ``workload = "moe_decode"``): ``model`` (a preset name, or a table with
``preset`` and any dims to override), ``routing`` ("uniform" | "skewed"),
``routing_skew`` (Zipf exponent, default 1.0, skewed only), ``routing_seed`` (default 0),
``compute`` ("emulated" | "none"), ``hardware`` (roofline preset), ``check`` (bool).
The sweep's ``batch`` is the tokens per rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from jitter_models.routing import ExpertCost, MoELoad, Router, rank_matrix

from .backends import elem_size
from .hardware import HARDWARE, hardware
from .workload import BaseWorkload, RankResult, SimSite, check_ints, with_defaults

PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeek-V3 technical report (arXiv 2412.19437) and its config.json: 61 layers, the
    # first 3 dense (FFN 18432), hidden 7168, 256 routed + 1 shared experts, top-8, expert
    # FFN 2048; MLA attention: q_lora 1536, kv_lora 512, 128 heads of 128 (+64 rope) and
    # v 128: 7168*1536 + 1536*128*192 + 7168*576 + 512*128*256 + 128*128*7168 = 187.1 M.
    "deepseek-v3": {"name": "deepseek-v3", "layers": 61, "dense_layers": 3, "hidden": 7168,
                    "experts": 256, "shared_experts": 1, "top_k": 8, "expert_ffn": 2048,
                    "dense_ffn": 18432, "attention_params": 187_105_280},
    # Mixtral of Experts (arXiv 2401.04088): 32 layers, hidden 4096, 8 experts, top-2,
    # FFN 14336; GQA attention 32 heads x 128, 8 KV heads: 2*4096*4096 + 2*4096*1024.
    "mixtral-8x7b": {"name": "mixtral-8x7b", "layers": 32, "dense_layers": 0,
                     "hidden": 4096, "experts": 8, "shared_experts": 0, "top_k": 2,
                     "expert_ffn": 14336, "dense_ffn": 0, "attention_params": 41_943_040},
}
MODEL_KEYS = tuple(PRESETS["deepseek-v3"])
ROUTINGS = ("uniform", "skewed")
COMPUTE_MODES = ("emulated", "none")
WEIGHT_BYTES = 2  # bf16 weights in the roofline, whatever the message dtype


def model_config(raw: Any) -> dict[str, Any]:
    """A preset name, or a table with ``preset`` (default deepseek-v3) and dims to
    override; ValueError naming the key."""
    if isinstance(raw, str):
        if raw not in PRESETS:
            raise ValueError(f"model: unknown preset {raw!r} (known: {', '.join(PRESETS)})")
        return {**PRESETS[raw], "preset": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"model: expected a preset name or a table, got {raw!r}")
    base = raw.get("preset", "deepseek-v3")
    if base not in PRESETS:
        raise ValueError(f"model.preset: unknown {base!r} (known: {', '.join(PRESETS)})")
    unknown = sorted(set(raw) - set(MODEL_KEYS) - {"preset"})
    if unknown:
        raise ValueError(f"model.{unknown[0]}: not a moe_decode model key (known: "
                         f"preset, {', '.join(MODEL_KEYS)})")
    dims = {k: v for k, v in raw.items() if k not in ("preset", "name")}
    custom = any(PRESETS[base][k] != v for k, v in dims.items())
    cfg = {**PRESETS[base], **dims, "preset": base}
    cfg["name"] = str(raw.get("name", f"{base} (custom)" if custom else base))
    lows = {"layers": 1, "dense_layers": 0, "hidden": 1, "experts": 1, "shared_experts": 0,
            "top_k": 1, "expert_ffn": 1, "dense_ffn": 0, "attention_params": 0}
    for key, low in lows.items():
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"model.{key}: must be an integer >= {low}, got {v!r}")
    if cfg["dense_layers"] >= cfg["layers"]:
        raise ValueError(f"model.dense_layers: must be below layers ({cfg['layers']}), "
                         f"got {cfg['dense_layers']}")
    if cfg["top_k"] > cfg["experts"]:
        raise ValueError(f"model.top_k: must be at most experts ({cfg['experts']}), "
                         f"got {cfg['top_k']}")
    return cfg


def expert_params(cfg: dict[str, Any]) -> int:
    """Weights of one routed expert: gate, up and down projections."""
    return 3 * cfg["hidden"] * cfg["expert_ffn"]


def attention_site_cost(cfg: dict[str, Any], batch: int, first: bool) -> tuple[float, float]:
    """(bytes, FLOPs) of one MoE layer's attention + shared experts + router on one rank's
    ``batch`` tokens; ``first``: with the dense layers before the first MoE layer."""
    per_layer = (cfg["attention_params"] + cfg["shared_experts"] * expert_params(cfg)
                 + cfg["hidden"] * cfg["experts"])
    params = per_layer
    if first:
        params += cfg["dense_layers"] * (cfg["attention_params"]
                                         + 3 * cfg["hidden"] * cfg["dense_ffn"])
    return params * WEIGHT_BYTES, 2.0 * params * batch


class MoEDecode(BaseWorkload):
    """Expert-parallel MoE decode as a workload (module docstring). Plan params: the spec
    keys' values plus ``batch``, ``steps`` and ``warmup``."""

    name = "moe_decode"
    spec_keys = {"model": f"a preset ({', '.join(PRESETS)}) or a table with preset and dims",
                 "routing": "uniform | skewed (Zipf popularities, routing_skew)",
                 "routing_skew": "Zipf exponent of expert popularity (skewed; default 1.0)",
                 "routing_seed": "seed of the routing draws (default 0)",
                 "compute": "emulated | none",
                 "hardware": f"roofline preset: {', '.join(HARDWARE)}",
                 "check": "check the all-to-alls' results at every step, not only warm-up"}
    DEFAULTS: dict[str, Any] = {"model": "deepseek-v3", "routing": "uniform",
                                "routing_skew": 1.0, "routing_seed": 0,
                                "compute": "emulated", "hardware": "h100", "check": False,
                                "batch": 1, "steps": 16, "warmup": 5}

    def parse(self, doc: Any, common: Any) -> dict[str, Any]:
        from jitter_models.algorithms import check_algorithm

        params = {k: doc[k] for k in self.spec_keys if k in doc}
        p = self.params(params)
        try:
            check_algorithm(common.algorithm, "all_to_all")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        experts = p["model"]["experts"]
        for n in common.world_sizes:
            if experts % n:
                raise ValueError(f"world_sizes: {n} ranks do not divide the {experts} "
                                 f"experts of {p['model']['name']} (expert parallelism "
                                 "puts experts / N on each rank)")
        return {k: p[k] for k in self.spec_keys}

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = with_defaults(self.name, self.DEFAULTS, params)
        p["model"] = model_config(p["model"])
        check_ints(p, (("batch", 1), ("steps", 1), ("warmup", 0), ("routing_seed", 0)))
        for key, choices in (("routing", ROUTINGS), ("compute", COMPUTE_MODES)):
            if p[key] not in choices:
                raise ValueError(f"{key}: must be one of {', '.join(choices)}, got {p[key]!r}")
        skew = p["routing_skew"]
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) \
                or not math.isfinite(skew) or skew < 0:
            raise ValueError(f"routing_skew: must be a finite number >= 0, got {skew!r}")
        if not isinstance(p["check"], bool):
            raise ValueError(f"check: must be true or false, got {p['check']!r}")
        hardware(p["hardware"])
        return p

    def collectives(self, params: dict[str, Any]) -> tuple[str, ...]:
        return ("all_to_all",)

    def sites_per_step(self, params: dict[str, Any]) -> int:
        cfg = model_config(params["model"])
        return 2 * (cfg["layers"] - cfg["dense_layers"])

    def message_bytes(self, params: dict[str, Any], *, batch: int, dtype: str,
                      world_size: int) -> int:
        """nccl-tests size S of one all-to-all on average: every token copy of the rank
        (tokens x top_k x hidden x dtype), its own experts' share included."""
        cfg = model_config(params["model"])
        return batch * cfg["top_k"] * cfg["hidden"] * elem_size(dtype)

    def router(self, p: dict[str, Any]) -> Router:
        cfg = p["model"]
        return Router(cfg["experts"], cfg["top_k"],
                      p["routing_skew"] if p["routing"] == "skewed" else 0.0,
                      p["routing_seed"])

    def expert_cost(self, p: dict[str, Any]) -> ExpertCost | None:
        if p["compute"] == "none":
            return None
        hw = hardware(p["hardware"])
        return ExpertCost(expert_params(p["model"]), hw.hbm_bytes_per_s, hw.peak_flops,
                          WEIGHT_BYTES)

    def attention_s(self, p: dict[str, Any], batch: int, first: bool) -> float:
        if p["compute"] == "none":
            return 0.0
        return hardware(p["hardware"]).seconds(*attention_site_cost(p["model"], batch, first))

    def simulated_sites(self, params: dict[str, Any], *, batch: int, dtype: str,
                        world_size: int) -> tuple[SimSite, ...]:
        """Dispatch and combine per MoE layer, each with its ``routing.MoELoad``: the
        per-pair bytes of that step's routing, and the combine's per-rank expert compute.
        Plan params (with ``steps``): the routing of the recorded steps (warm-up skipped),
        as the ranks drew them."""
        p = self.params({**params, "batch": batch})
        cfg, router, cost = p["model"], self.router(p), self.expert_cost(p)
        if cfg["experts"] % world_size:  # (the model's extrapolation stops here)
            raise ValueError(f"world_size: {world_size} ranks do not divide the "
                             f"{cfg['experts']} experts of {cfg['name']}")
        moe = cfg["layers"] - cfg["dense_layers"]
        nbytes = self.message_bytes(p, batch=batch, dtype=dtype, world_size=world_size)
        token_bytes = cfg["hidden"] * elem_size(dtype)
        offset = p["warmup"] if "steps" in params else 0
        sites = []
        for layer in range(moe):
            common = {"router": router, "layer": layer, "layers": moe, "batch": batch,
                      "token_bytes": token_bytes, "offset": offset}
            sites.append(SimSite(self.attention_s(p, batch, layer == 0), nbytes,
                                 "all_to_all", load=MoELoad(**common, phase="dispatch")))
            sites.append(SimSite(0.0, nbytes, "all_to_all",
                                 load=MoELoad(**common, phase="combine", cost=cost)))
        return tuple(sites)

    def describe(self, params: dict[str, Any]) -> str:
        p = self.params(params)
        cfg = p["model"]
        law = ("uniform" if p["routing"] == "uniform"
               else f"skewed (Zipf {p['routing_skew']:g})")
        return (f"moe_decode of {cfg['name']} ({cfg['experts']} experts, top-{cfg['top_k']},"
                f" {law} routing, {p['compute']} compute)")

    def model_note(self, params: dict[str, Any]) -> str:
        return ("compute(N) per rank: its own tokens' attention (constant) and its experts "
                "on the tokens routed to them (the slowest rank sets the combine)")

    def summary(self, tables: list[dict], metas: list[dict]) -> dict[str, Any]:
        wrong = [w for m in metas for w in (m.get("wrong") or []) if w >= 0]
        return {"wrong": int(sum(wrong)) if wrong else None}

    def run(self, rank: Any) -> RankResult:
        return _RankLoop(self, rank).run()


def pair_counts(router: Router, step: int, layer: int, n: int, batch: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) token copies from rank r to rank q, and (experts,) tokens per expert."""
    counts = router.counts(step, layer, n, batch)
    return rank_matrix(counts, n), counts.sum(axis=0)


def _fill(n: int, sender: int, counts_el: np.ndarray, receiver_side: bool, me: int
          ) -> np.ndarray:
    """The check values of one buffer of packed blocks: block j of ``counts_el[j]``
    elements holds f(sender, receiver, element) (module docstring); ``receiver_side``:
    the blocks a rank receives (sender j, receiver ``me``), else those it sends."""
    parts = []
    for j in range(n):
        s, r = (j, me) if receiver_side else (me, j)
        parts.append(1 + (131 * s + 17 * r + np.arange(int(counts_el[j]))) % 1000)
    return np.concatenate(parts) if parts else np.zeros(0)


class _RankLoop:
    """One rank's steps (module docstring): routing drawn up front, then per step and MoE
    layer the dispatch and combine sites through the rank's SiteTimer."""

    def __init__(self, work: MoEDecode, rank: Any):
        self.work, self.rank = work, rank
        self.p = p = work.params(rank.params)
        self.backend = b = rank.backend
        self.n, self.me = b.world_size, b.rank
        cfg = p["model"]
        self.layers = cfg["layers"] - cfg["dense_layers"]
        self.total = p["warmup"] + p["steps"]
        self.h, self.esize = cfg["hidden"], elem_size(rank.dtype)
        router, cost = work.router(p), work.expert_cost(p)
        # per (step, layer): copies this rank sends each rank, receives from each, and
        # its experts' compute
        self.send = np.zeros((self.total, self.layers, self.n), dtype=np.int64)
        self.recv = np.zeros_like(self.send)
        self.expert_ns = np.zeros((self.total, self.layers), dtype=np.int64)
        for step in range(self.total):
            for layer in range(self.layers):
                pairs, per_expert = pair_counts(router, step, layer, self.n, p["batch"])
                self.send[step, layer] = pairs[self.me]
                self.recv[step, layer] = pairs[:, self.me]
                if cost is not None:
                    self.expert_ns[step, layer] = round(
                        float(cost.seconds(per_expert, self.n)[self.me]) * 1e9)
        self.attn_ns = [round(work.attention_s(p, p["batch"], layer == 0) * 1e9)
                        for layer in range(self.layers)]
        # per (step, layer): element counts sent and received, and the bytes that leave
        # the rank each way, as Python values: nothing to convert inside a step
        self.plan = [[self._counts(self.send[k, j] * self.h, self.recv[k, j] * self.h)
                      for j in range(self.layers)] for k in range(self.total)]

    def _counts(self, send_el: np.ndarray, recv_el: np.ndarray) -> tuple:
        """(send counts, receive counts, bytes sent, bytes received) of one layer."""
        out = [send_el.tolist(), recv_el.tolist()]
        return (*out, *((sum(c) - c[self.me]) * self.esize for c in out))

    def _all_to_all(self) -> tuple[Callable[..., tuple[int, int]], int]:
        """call(out, out_counts, inp, in_counts) -> hop delays, and hop draws clipped."""
        from jitter_models.algorithms import has_pattern

        from .explicit import Explicit, link_delays

        rank, backend = self.rank, self.backend
        algorithm = rank.algorithms[0]
        if not has_pattern(algorithm):
            def native(out, out_counts, inp, in_counts) -> tuple[int, int]:
                backend.all_to_all_v(out, out_counts, inp, in_counts)
                return 0, 0
            return native, 0
        ex = Explicit(backend, algorithm=algorithm, collective="all_to_all", count=self.n,
                      dtype=rank.dtype, ranks_per_node=rank.ranks_per_node)
        ex.hop_log = rank.hop_log
        hops, clipped = None, 0
        if rank.schedule is not None and rank.schedule.scope == "link":
            (hops,), clipped = link_delays(rank.schedule, rank.seed, self.me,
                                           [(ex, self.total * 2 * self.layers)])
        calls = [0]

        def explicit(out, out_counts, inp, in_counts) -> tuple[int, int]:
            k = calls[0]
            calls[0] = k + 1
            return ex.run(inp, out, hop_delays_ns=None if hops is None else hops[k],
                          injector=rank.injector, in_counts=in_counts,
                          out_counts=out_counts)
        return explicit, clipped

    def run(self) -> RankResult:
        from .inject import HostInjector
        from .timing import Records, now_ns

        p, rank, backend = self.p, self.rank, self.backend
        n_sites = 2 * self.layers
        clipped = 0
        if rank.schedule is not None:
            delays, clipped = rank.schedule.delays_ns(rank.seed, self.me, rank.node, self.n,
                                                      self.total, n_sites)
        else:
            delays = np.zeros((self.total, n_sites), dtype=np.int64)
        a2a, hop_clipped = self._all_to_all()
        records = Records(p["steps"] * (n_sites + 1))
        records.delays_clipped = clipped + hop_clipped
        timer = rank.site_timer(records)
        h = self.h
        copies = p["batch"] * p["model"]["top_k"]
        max_recv = int(self.recv.sum(axis=2).max())
        inp = backend.from_numpy(np.zeros(copies * h, dtype="float32"), rank.dtype)
        out = backend.from_numpy(np.zeros(max(max_recv, 1) * h, dtype="float32"), rank.dtype)
        spin = HostInjector()
        wrong = [0, 0]
        checked = False
        rows = delays.tolist()
        for step in range(self.total):
            check = p["check"] or step < p["warmup"]
            checked |= check
            timer.record_sites = step >= p["warmup"]
            backend.barrier()
            timer.begin_step(step - p["warmup"])
            for layer in range(self.layers):
                send_el, recv_el, send_bytes, recv_bytes = self.plan[step][layer]
                site = 2 * layer

                def dispatch_compute(send_el=send_el, layer=layer, check=check) -> None:
                    t0 = now_ns()
                    if check:
                        backend.copy(inp, backend.from_numpy(
                            _fill(self.n, self.me, np.array(send_el), False, self.me),
                            rank.dtype))
                    spin.inject(t0, self.attn_ns[layer])

                def combine_compute(recv_el=recv_el, step=step, layer=layer,
                                    check=check) -> None:
                    t0 = now_ns()
                    if check:
                        wrong[0] += self._check(out, recv_el, 0)
                        m = int(sum(recv_el))
                        backend.copy(out[:m], backend.from_numpy(
                            backend.to_numpy(out[:m]) + 1, rank.dtype))
                    spin.inject(t0, int(self.expert_ns[step, layer]))

                timer.site(site, delay_ns=rows[step][site],
                           collective=lambda s=send_el, r=recv_el: a2a(out, r, inp, s),
                           compute=dispatch_compute, nbytes=send_bytes,
                           index=step * n_sites + site)
                timer.site(site + 1, delay_ns=rows[step][site + 1],
                           collective=lambda s=send_el, r=recv_el: a2a(inp, s, out, r),
                           compute=combine_compute, nbytes=recv_bytes,
                           index=step * n_sites + site + 1)
                if check:
                    wrong[1] += self._check(inp, send_el, 1)
            end = timer.end_step()
            if step >= p["warmup"]:
                timer.step_row(end)
        return RankResult(records=records, wrong=wrong if checked else [-1, -1],
                          ops=[("all_to_all", rank.algorithms[0])])

    def _check(self, buf: Any, counts_el: list[int], plus: int) -> int:
        """Wrong elements of the packed blocks in ``buf``: dispatch (``plus`` 0, blocks
        received) or combine (``plus`` 1, the rank's own copies back from each rank)."""
        m = int(sum(counts_el))
        got = self.backend.to_numpy(buf[:m]).astype(np.float64)
        expected = _fill(self.n, self.me, np.array(counts_el), plus == 0, self.me) + plus
        return int(np.count_nonzero(got != expected))
