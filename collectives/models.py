"""Model shapes and how tensor parallelism splits them: presets, layouts, byte counts.

Torch-free, so specs can be validated (``jitterlab validate``) without importing torch;
the layers themselves are in ``tensor_parallel.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from jitter_models.syntax import check_printable


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
        check_printable("name", self.name)
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


def weight_share(cfg: ModelConfig, n: int | float) -> float:
    """The fraction of a layer's weights one rank holds at tensor-parallel width ``n``,
    for any n >= 1, including widths no real split reaches: query heads and MLP columns
    divide n ways, KV heads never below one per rank (replicated beyond kv_heads, as vLLM
    does), norms are whole on every rank. Decode reads every weight once per token, so this
    is also the rank's share of the compute (the KV cache, small at short contexts, is left
    out). Past n = heads the share stays at its value at n = heads: tensor parallelism
    cannot split attention further than one head per rank, so the extra ranks of such an
    extrapolation add jitter and collective cost and no speed."""
    if isinstance(n, bool) or not n >= 1:
        raise ValueError(f"world size: must be >= 1, got {n!r}")

    def params(width: float) -> float:
        q = max(cfg.heads / width, 1.0) * cfg.head_dim
        kv = max(cfg.kv_heads / width, 1.0) * cfg.head_dim
        ffn = max(cfg.ffn / width, 1.0)
        return 2 * cfg.hidden + cfg.hidden * (q + 2 * kv) + q * cfg.hidden + 3 * cfg.hidden * ffn

    return params(float(min(n, cfg.heads))) / params(1.0)


@dataclass(frozen=True, kw_only=True)
class RankMemory:
    """What one rank of a TP group holds in device memory for a decode run, bytes."""

    weights_bytes: int
    """Its shard of every layer, plus the replicated embedding, LM head and final norm."""
    kv_cache_bytes: int
    """K and V for every layer, batch x positions, its KV heads."""

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes


def rank_memory(cfg: ModelConfig, tp: int, *, batch: int, positions: int,
                dtype_bytes: int) -> RankMemory:
    """One rank's weights and KV cache at tensor-parallel width ``tp``, as ``TPDecoder``
    allocates them (activations, a few batch x width vectors, are left out)."""
    layout = shard_layout(cfg, tp)
    per_layer = sum(site_weight_bytes(layout, site, dtype_bytes) for site in (0, 1))
    replicated = (2 * cfg.vocab * cfg.hidden + cfg.hidden) * dtype_bytes
    # the attention site reads the whole cache at its last position: 2 x batch x kv heads
    # x positions x head_dim per layer, the cache TPDecoder allocates
    kv = cfg.layers * site_kv_read_bytes(layout, 0, positions - 1, batch, dtype_bytes)
    return RankMemory(weights_bytes=cfg.layers * per_layer + replicated, kv_cache_bytes=kv)
