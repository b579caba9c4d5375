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
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .models import (  # noqa: F401  (re-exported: the model half lives there)
    PRESETS,
    ModelConfig,
    ShardLayout,
    all_reduce_bytes,
    model_config,
    shard_layout,
    site_count,
    site_kv_read_bytes,
    site_weight_bytes,
)

MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
BLOCK = 128  # width of generated MLP / embedding / LM-head blocks; never depends on tp
_TAGS = {"wq": 1, "wk": 2, "wv": 3, "wo": 4, "w_gate": 5, "w_up": 6, "w_down": 7,
         "attn_norm": 8, "mlp_norm": 9, "embed": 10, "lm_head": 11, "final_norm": 12}


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


def shard_weights(cfg: ModelConfig, layout: ShardLayout, rank: int, seed: int, *,
                  dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Weights of `rank` in `dtype` on `device`, keyed "embed", "layers.{i}.wq", ...;
    matrices are [in, out]. Drawn in float32 (the same values for every dtype, rounded
    once), each tensor converted as soon as it is made: the shard never exists whole in
    float32, so a bf16 shard needs its bf16 size plus one float32 tensor."""
    h, d, f = cfg.hidden, cfg.head_dim, cfg.ffn
    heads = range(layout.heads(rank).start * d, layout.heads(rank).stop * d)
    kv = range(layout.kv_heads(rank).start * d, layout.kv_heads(rank).stop * d)
    cols = layout.ffn_columns(rank)
    w: dict[str, torch.Tensor] = {}

    def put(key: str, t: torch.Tensor) -> None:
        w[key] = t.to(device=device, dtype=dtype).contiguous()

    put("embed", _slice(seed, 0, "embed", range(cfg.vocab), cfg.vocab, BLOCK, h, 1, 0))
    put("lm_head", _slice(seed, 0, "lm_head", range(cfg.vocab), cfg.vocab, BLOCK, h, h, 1))
    put("final_norm", _norm_weight(seed, 0, "final_norm", h))
    for i in range(cfg.layers):
        p = f"layers.{i}."
        put(p + "attn_norm", _norm_weight(seed, i, "attn_norm", h))
        put(p + "mlp_norm", _norm_weight(seed, i, "mlp_norm", h))
        put(p + "wq", _slice(seed, i, "wq", heads, cfg.heads * d, d, h, h, 1))
        put(p + "wk", _slice(seed, i, "wk", kv, cfg.kv_heads * d, d, h, h, 1))
        put(p + "wv", _slice(seed, i, "wv", kv, cfg.kv_heads * d, d, h, h, 1))
        put(p + "wo", _slice(seed, i, "wo", heads, cfg.heads * d, d, h, cfg.heads * d, 0))
        put(p + "w_gate", _slice(seed, i, "w_gate", cols, f, BLOCK, h, h, 1))
        put(p + "w_up", _slice(seed, i, "w_up", cols, f, BLOCK, h, h, 1))
        put(p + "w_down", _slice(seed, i, "w_down", cols, f, BLOCK, h, f, 0))
    return w


class Comm(Protocol):
    """What a decode step needs from the communication layer."""

    def site_start(self, site: int) -> None: ...

    def all_reduce(self, t: torch.Tensor, site: int) -> None: ...


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16 / fp16, else the dtype itself (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In at least float32, as Llama's reference does: a bf16 mean of squares over
    # thousands of values loses the scale the whole layer depends on.
    h = x.to(_wide(x.dtype))
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """Rotate-half RoPE of x [..., head_dim] at one position."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    cos = torch.cos(pos * freqs).to(x.dtype).to(x.device)
    sin = torch.sin(pos * freqs).to(x.dtype).to(x.device)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class TPDecoder:
    """One rank's shard of the model plus its KV cache; `step` decodes one token per sequence.
    Weights, KV cache, activations and the all-reduced partial sums are all in ``dtype``
    (norms and softmax compute in at least float32 and round back)."""

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
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype: the model computes in "
                             f"{', '.join(str(d).removeprefix('torch.') for d in MODEL_DTYPES)}"
                             f", got {dtype!r}")
        self.cfg, self.rank, self.batch, self.max_seq = cfg, tp_rank, batch, max_seq
        self.dtype, self.device = dtype, torch.device(device)
        self.weights = shard_weights(cfg, self.layout, tp_rank, seed, dtype=dtype,
                                     device=self.device)
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
            probs = scores.to(_wide(scores.dtype)).softmax(-1).to(scores.dtype)  # as Llama's
            attn = torch.einsum("bkgt,bktd->bkgd", probs, values)
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
