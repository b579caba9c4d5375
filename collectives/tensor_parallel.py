"""The model half of a Megatron-style tensor-parallel (TP) decode step, backend-agnostic.

Per layer (gpt-fast tp.py, Megatron-LM core/tensor_parallel): RMSNorm, column-parallel
QKV on the rank's heads, RoPE, KV-cache write, GQA attention over the cache, row-parallel
O projection -> ``comm.all_reduce`` (site ``2*layer``); RMSNorm, column-parallel gate/up,
SwiGLU, row-parallel down -> ``comm.all_reduce`` (site ``2*layer+1``). Embedding, final
norm and LM head are replicated, so the only communication is two all-reduces per layer.

Weights come from a seed, each block generated from its global indices (per head for
Q/K/V/O, per fixed-width column or row block for the MLP, embedding and LM head), so
every world size shards the same full model without ever materializing it. When
``kv_heads < tp`` KV heads are replicated, as vLLM does: rank r uses kv head
``r // (tp // kv_heads)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 128  # width of generated MLP / embedding / LM-head blocks; never depends on tp
_TAGS = {"wq": 1, "wk": 2, "wv": 3, "wo": 4, "w_gate": 5, "w_up": 6, "w_down": 7,
         "attn_norm": 8, "mlp_norm": 9, "embed": 10, "lm_head": 11, "final_norm": 12}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Dimensions of a Llama-style decoder."""

    name: str
    """Preset or user-given name."""
    hidden: int
    """Model (residual stream) width."""
    layers: int
    """Number of transformer layers."""
    heads: int
    """Query heads."""
    kv_heads: int
    """Key/value heads (GQA); divides heads."""
    ffn: int
    """MLP intermediate width."""
    vocab: int
    """Vocabulary size."""
    head_dim: int = 128
    """Width of one attention head (even, for RoPE)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 500000.0
    """RoPE base."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: must be a non-empty string, got {self.name!r}")
        for f in ("hidden", "layers", "heads", "kv_heads", "ffn", "vocab", "head_dim"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f}: must be an integer >= 1, got {v!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: must divide heads={self.heads}, got {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim: must be even (RoPE rotates pairs), got {self.head_dim}")
        for f in ("norm_eps", "rope_theta"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"{f}: must be a finite number > 0, got {v!r}")


def _preset(name: str, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int,
            vocab: int, **kw) -> ModelConfig:
    return ModelConfig(name=name, hidden=hidden, layers=layers, heads=heads,
                       kv_heads=kv_heads, ffn=ffn, vocab=vocab, **kw)


PRESETS: dict[str, ModelConfig] = {c.name: c for c in (
    _preset("llama-2-7b", 4096, 32, 32, 32, 11008, 32000, rope_theta=10000.0),
    _preset("llama-3-8b", 4096, 32, 32, 8, 14336, 128256),
    _preset("llama-3-70b", 8192, 80, 64, 8, 28672, 128256),
    _preset("llama-3.1-405b", 16384, 126, 128, 8, 53248, 128256),
    _preset("tiny", 256, 2, 8, 2, 1024, 512, head_dim=32),
    _preset("small", 512, 4, 16, 4, 2048, 1024, head_dim=32),
)}


def model_config(name_or_dict: str | Mapping[str, object] | ModelConfig) -> ModelConfig:
    """A preset by name, or a custom config from a mapping of ModelConfig fields."""
    if isinstance(name_or_dict, ModelConfig):
        return name_or_dict
    if isinstance(name_or_dict, str):
        if name_or_dict not in PRESETS:
            raise ValueError(f"model: unknown {name_or_dict!r} (known: {', '.join(PRESETS)})")
        return PRESETS[name_or_dict]
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(name_or_dict) - known)
    if unknown:
        raise ValueError(f"model: unknown field(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return ModelConfig(**{"name": "custom", **name_or_dict})


@dataclass(frozen=True)
class ShardLayout:
    """What one rank of a TP group holds; the same for every rank except the index ranges."""

    cfg: ModelConfig
    tp: int
    heads_per_rank: int
    kv_heads_per_rank: int
    kv_replicated: bool
    """True when kv_heads < tp: each KV head lives on tp // kv_heads ranks."""
    ffn_per_rank: int

    def heads(self, rank: int) -> range:
        """Global query heads of `rank`."""
        return range(rank * self.heads_per_rank, (rank + 1) * self.heads_per_rank)

    def kv_heads(self, rank: int) -> range:
        """Global KV heads of `rank`."""
        if self.kv_replicated:
            h = rank // (self.tp // self.cfg.kv_heads)
            return range(h, h + 1)
        return range(rank * self.kv_heads_per_rank, (rank + 1) * self.kv_heads_per_rank)

    def ffn_columns(self, rank: int) -> range:
        """Global MLP intermediate columns of `rank`."""
        return range(rank * self.ffn_per_rank, (rank + 1) * self.ffn_per_rank)


def shard_layout(cfg: ModelConfig, tp: int) -> ShardLayout:
    """Split `cfg` over `tp` ranks; ValueError when the world size does not fit the model."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"world size: must be an integer >= 1, got {tp!r}")
    if cfg.heads % tp:
        raise ValueError(f"world size {tp} does not divide heads={cfg.heads}")
    if cfg.kv_heads >= tp:
        if cfg.kv_heads % tp:
            raise ValueError(f"world size {tp} does not divide kv_heads={cfg.kv_heads}")
        kv_per_rank, replicated = cfg.kv_heads // tp, False
    else:
        if tp % cfg.kv_heads:
            raise ValueError(f"kv_heads={cfg.kv_heads} does not divide world size {tp} "
                             "(needed to replicate KV heads)")
        kv_per_rank, replicated = 1, True
    if cfg.ffn % tp:
        raise ValueError(f"world size {tp} does not divide ffn={cfg.ffn}")
    return ShardLayout(cfg, tp, cfg.heads // tp, kv_per_rank, replicated, cfg.ffn // tp)


def site_count(cfg: ModelConfig) -> int:
    """Collective sites per decode step: one after attention, one after the MLP, per layer."""
    return 2 * cfg.layers


def all_reduce_bytes(cfg: ModelConfig, batch: int, dtype_bytes: int) -> int:
    """Message size of every all-reduce: batch x hidden x dtype bytes."""
    return batch * cfg.hidden * dtype_bytes


def site_weight_bytes(layout: ShardLayout, site: int, dtype_bytes: int) -> int:
    """Weight bytes one rank reads in the compute before `site` (norm included).

    Embedding, final norm and LM head belong to no site.
    """
    c = layout.cfg
    if site % 2 == 0:
        q = layout.heads_per_rank * c.head_dim
        kv = layout.kv_heads_per_rank * c.head_dim
        params = c.hidden + c.hidden * (q + 2 * kv) + q * c.hidden
    else:
        params = c.hidden + 3 * c.hidden * layout.ffn_per_rank
    return params * dtype_bytes


def site_kv_read_bytes(layout: ShardLayout, site: int, pos: int, batch: int,
                       dtype_bytes: int) -> int:
    """KV-cache bytes one rank reads before `site` when decoding position `pos` (0 for MLP)."""
    if site % 2:
        return 0
    return 2 * batch * layout.kv_heads_per_rank * (pos + 1) * layout.cfg.head_dim * dtype_bytes


def _block(seed: int, layer: int, tag: str, index: int, shape: tuple[int, int],
           fan_in: int) -> torch.Tensor:
    rng = np.random.default_rng(np.random.SeedSequence([seed, layer, _TAGS[tag], index]))
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32) / math.sqrt(fan_in))


def _slice(seed: int, layer: int, tag: str, idx: range, total: int, block: int, other: int,
           fan_in: int, axis: int) -> torch.Tensor:
    """Columns (axis=1) or rows (axis=0) `idx` of a [.., total] matrix made of fixed blocks."""
    first, last = idx.start // block, (idx.stop - 1) // block
    parts = []
    for b in range(first, last + 1):
        width = min(block, total - b * block)
        shape = (other, width) if axis == 1 else (width, other)
        parts.append(_block(seed, layer, tag, b, shape, fan_in))
    full = torch.cat(parts, dim=axis)
    lo = idx.start - first * block
    return full.narrow(axis, lo, len(idx))


def _norm_weight(seed: int, layer: int, tag: str, hidden: int) -> torch.Tensor:
    return 1.0 + 0.1 * _block(seed, layer, tag, 0, (1, hidden), 1)[0]


def shard_weights(cfg: ModelConfig, layout: ShardLayout, rank: int,
                  seed: int) -> dict[str, torch.Tensor]:
    """Float32 weights of `rank`, keyed "embed", "layers.{i}.wq", ...; matrices are [in, out]."""
    h, d, f = cfg.hidden, cfg.head_dim, cfg.ffn
    heads = range(layout.heads(rank).start * d, layout.heads(rank).stop * d)
    kv = range(layout.kv_heads(rank).start * d, layout.kv_heads(rank).stop * d)
    cols = layout.ffn_columns(rank)
    w = {"embed": _slice(seed, 0, "embed", range(cfg.vocab), cfg.vocab, BLOCK, h, 1, 0),
         "lm_head": _slice(seed, 0, "lm_head", range(cfg.vocab), cfg.vocab, BLOCK, h, h, 1),
         "final_norm": _norm_weight(seed, 0, "final_norm", h)}
    for i in range(cfg.layers):
        p = f"layers.{i}."
        w[p + "attn_norm"] = _norm_weight(seed, i, "attn_norm", h)
        w[p + "mlp_norm"] = _norm_weight(seed, i, "mlp_norm", h)
        w[p + "wq"] = _slice(seed, i, "wq", heads, cfg.heads * d, d, h, h, 1)
        w[p + "wk"] = _slice(seed, i, "wk", kv, cfg.kv_heads * d, d, h, h, 1)
        w[p + "wv"] = _slice(seed, i, "wv", kv, cfg.kv_heads * d, d, h, h, 1)
        w[p + "wo"] = _slice(seed, i, "wo", heads, cfg.heads * d, d, h, cfg.heads * d, 0)
        w[p + "w_gate"] = _slice(seed, i, "w_gate", cols, f, BLOCK, h, h, 1)
        w[p + "w_up"] = _slice(seed, i, "w_up", cols, f, BLOCK, h, h, 1)
        w[p + "w_down"] = _slice(seed, i, "w_down", cols, f, BLOCK, h, f, 0)
    return w


class Comm(Protocol):
    """What a decode step needs from the communication layer."""

    def site_start(self, site: int) -> None: ...

    def all_reduce(self, t: torch.Tensor, site: int) -> None: ...


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """Rotate-half RoPE of x [..., head_dim] at one position."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    cos = torch.cos(pos * freqs).to(x.dtype).to(x.device)
    sin = torch.sin(pos * freqs).to(x.dtype).to(x.device)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class TPDecoder:
    """One rank's shard of the model plus its KV cache; `step` decodes one token per sequence."""

    def __init__(self, cfg: ModelConfig, tp_rank: int, tp_size: int, *, seed: int, batch: int,
                 max_seq: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        self.layout = shard_layout(cfg, tp_size)
        if isinstance(tp_rank, bool) or not isinstance(tp_rank, int) \
                or not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank: must be in [0, {tp_size}), got {tp_rank!r}")
        for name, v in (("batch", batch), ("max_seq", max_seq)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        self.cfg, self.rank, self.batch, self.max_seq = cfg, tp_rank, batch, max_seq
        self.dtype, self.device = dtype, torch.device(device)
        self.weights = {k: v.to(device=self.device, dtype=dtype)
                        for k, v in shard_weights(cfg, self.layout, tp_rank, seed).items()}
        shape = (batch, self.layout.kv_heads_per_rank, max_seq, cfg.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=self.device)
                        for _ in range(cfg.layers)]
        self.v_cache = [torch.zeros_like(k) for k in self.k_cache]

    def step(self, tokens: torch.Tensor, pos: int, comm: Comm) -> torch.Tensor:
        """Logits [batch, vocab] for `tokens` [batch] at position `pos` (0-based)."""
        if tokens.shape != (self.batch,):
            raise ValueError(f"tokens: must have shape ({self.batch},), got "
                             f"{tuple(tokens.shape)}")
        if not 0 <= pos < self.max_seq:
            raise ValueError(f"pos: must be in [0, {self.max_seq}), got {pos}")
        c, w, lay = self.cfg, self.weights, self.layout
        b, d, hq, hkv = self.batch, c.head_dim, lay.heads_per_rank, lay.kv_heads_per_rank
        x = w["embed"][tokens.to(self.device)]
        for i in range(c.layers):
            p = f"layers.{i}."
            comm.site_start(2 * i)
            xn = rms_norm(x, w[p + "attn_norm"], c.norm_eps)
            q = rope((xn @ w[p + "wq"]).view(b, hq, d), pos, c.rope_theta)
            k = rope((xn @ w[p + "wk"]).view(b, hkv, d), pos, c.rope_theta)
            self.k_cache[i][:, :, pos] = k
            self.v_cache[i][:, :, pos] = (xn @ w[p + "wv"]).view(b, hkv, d)
            keys = self.k_cache[i][:, :, :pos + 1]  # [b, hkv, t, d]
            values = self.v_cache[i][:, :, :pos + 1]
            qg = q.view(b, hkv, hq // hkv, d)  # local q head j uses local kv head j // group
            scores = torch.einsum("bkgd,bktd->bkgt", qg, keys) / math.sqrt(d)
            attn = torch.einsum("bkgt,bktd->bkgd", scores.softmax(-1), values)
            partial = attn.reshape(b, hq * d) @ w[p + "wo"]
            comm.all_reduce(partial, 2 * i)
            x = x + partial
            comm.site_start(2 * i + 1)
            xn = rms_norm(x, w[p + "mlp_norm"], c.norm_eps)
            hidden = F.silu(xn @ w[p + "w_gate"]) * (xn @ w[p + "w_up"])
            partial = hidden @ w[p + "w_down"]
            comm.all_reduce(partial, 2 * i + 1)
            x = x + partial
        return rms_norm(x, w["final_norm"], c.norm_eps) @ w["lm_head"]
