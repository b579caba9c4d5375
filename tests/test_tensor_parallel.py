"""Tensor-parallel decode model: layouts, deterministic sharded weights, and TP == no TP.

`SimulatedGroup` runs every rank's `TPDecoder` in its own thread of one process; its
all-reduce meets at a barrier and sums the ranks' tensors in rank order, so every rank
gets bit-identical results, as a real all-reduce promises.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from collectives.tensor_parallel import (
    PRESETS,
    ModelConfig,
    TPDecoder,
    all_reduce_bytes,
    model_config,
    shard_layout,
    shard_weights,
    site_count,
    site_kv_read_bytes,
    site_weight_bytes,
)

SEED = 1234


class _RankComm:
    def __init__(self, group: "SimulatedGroup", rank: int) -> None:
        self.group, self.rank = group, rank
        self.sites: list[tuple[str, int]] = []

    def site_start(self, site: int) -> None:
        self.sites.append(("start", site))

    def all_reduce(self, t: torch.Tensor, site: int) -> None:
        self.sites.append(("all_reduce", site))
        g = self.group
        g.slots[self.rank] = (site, t)
        g.barrier.wait()
        assert len({s for s, _ in g.slots}) == 1, f"ranks at different sites: {g.slots}"
        total = g.slots[0][1].clone()
        for _, x in g.slots[1:]:  # rank order, the same on every rank
            total += x
        g.barrier.wait()  # everyone has read the inputs before anyone overwrites its own
        t.copy_(total)


class SimulatedGroup:
    """tp decoders of one model in one process, stepped in lockstep by threads."""

    def __init__(self, cfg: ModelConfig, size: int, *, batch: int, max_seq: int,
                 dtype: torch.dtype = torch.float32) -> None:
        self.size = size
        self.decoders = [TPDecoder(cfg, r, size, seed=SEED, batch=batch, max_seq=max_seq,
                                   dtype=dtype) for r in range(size)]
        self.comms = [_RankComm(self, r) for r in range(size)]
        self.slots: list = [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def step(self, tokens: torch.Tensor, pos: int) -> list[torch.Tensor]:
        def run(r: int) -> torch.Tensor:
            try:
                return self.decoders[r].step(tokens, pos, self.comms[r])
            except BaseException:
                self.barrier.abort()  # free the peers instead of leaving them at the barrier
                raise
        with ThreadPoolExecutor(self.size) as pool:
            return [f.result() for f in [pool.submit(run, r) for r in range(self.size)]]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# Sharded and one-rank logits differ only by rounding: the order of the sums inside each
# all-reduced matmul, and each rank's partial sum rounded to the dtype before the
# all-reduce adds them. Relative to the logits' norm (their scale) that is a few units of
# the dtype's epsilon, the 4 all-reduce sites and the matmuls each adding O(eps) that the
# layers carry on: measured at most 6 eps in float32 / float64 (long accumulations
# dominate) and 1.3 eps in bf16 / fp16 (the final rounding dominates), for tiny and kv1 at
# tp 2 and 4. 16 eps leaves over 2.5x margin; a wrong shard is off by O(1).
LOGITS_TOL_EPS = 16


def logits_tol(dtype: torch.dtype) -> float:
    return LOGITS_TOL_EPS * torch.finfo(dtype).eps


KV1 = ModelConfig(name="kv1", hidden=128, layers=2, heads=4, kv_heads=1, ffn=384, vocab=300,
                  head_dim=32)


@pytest.mark.parametrize("cfg, dtype, sizes", [
    (PRESETS["tiny"], torch.float32, (2, 4)), (KV1, torch.float32, (2, 4)),
    (PRESETS["tiny"], torch.bfloat16, (2,)), (PRESETS["tiny"], torch.float16, (2,))],
    ids=["tiny", "kv1", "tiny-bf16", "tiny-fp16"])
def test_tp_logits_match_single_rank(cfg, dtype, sizes):
    batch, steps = 3, 6
    ref = SimulatedGroup(cfg, 1, batch=batch, max_seq=steps, dtype=dtype)
    groups = {tp: SimulatedGroup(cfg, tp, batch=batch, max_seq=steps, dtype=dtype)
              for tp in sizes}
    tokens = torch.tensor([1, 7, cfg.vocab - 1])
    tol = logits_tol(dtype)
    for pos in range(steps):
        (want,) = ref.step(tokens, pos)
        assert want.dtype == dtype
        for tp, group in groups.items():
            got = group.step(tokens, pos)
            for r in range(1, tp):
                assert torch.equal(got[r], got[0]), (tp, r, pos)
            assert _rel(got[0], want) <= tol, (tp, pos, _rel(got[0], want))
        tokens = want.argmax(-1)  # the reference's choice feeds every world size
    # the logits depend on the history: a fresh decoder at the last position differs
    fresh = SimulatedGroup(cfg, 1, batch=batch, max_seq=steps, dtype=dtype)
    assert _rel(fresh.step(tokens, steps - 1)[0], ref.step(tokens, steps - 1)[0]) > 4 * tol
    big = groups[max(sizes)]
    sites = [("start", 0), ("all_reduce", 0), ("start", 1), ("all_reduce", 1),
             ("start", 2), ("all_reduce", 2), ("start", 3), ("all_reduce", 3)]
    assert big.comms[-1].sites[:8] == sites
    assert len(big.comms[-1].sites) == 2 * site_count(cfg) * steps


def test_weights_and_kv_cache_are_in_the_decoder_dtype():
    dec = TPDecoder(PRESETS["tiny"], 0, 2, seed=SEED, batch=1, max_seq=2, dtype=torch.bfloat16)
    assert {w.dtype for w in dec.weights.values()} == {torch.bfloat16}
    assert {c.dtype for c in dec.k_cache + dec.v_cache} == {torch.bfloat16}
    # the same draws, rounded once: bf16 weights are the float32 ones rounded
    f32 = TPDecoder(PRESETS["tiny"], 0, 2, seed=SEED, batch=1, max_seq=2)
    assert torch.equal(dec.weights["layers.1.wq"], f32.weights["layers.1.wq"].bfloat16())
    with pytest.raises(ValueError, match=r"^dtype: the model computes in float32, float16, "
                                         r"bfloat16, float64, got torch.int8$"):
        TPDecoder(PRESETS["tiny"], 0, 2, seed=SEED, batch=1, max_seq=2, dtype=torch.int8)


def test_shard_weights_are_slices_of_the_full_model():
    cfg = model_config({"name": "odd", "hidden": 64, "layers": 1, "heads": 4, "kv_heads": 2,
                        "ffn": 200, "vocab": 70, "head_dim": 16})  # ffn/tp not a BLOCK multiple
    full = shard_weights(cfg, shard_layout(cfg, 1), 0, SEED)
    d = cfg.head_dim
    for tp in (2, 4):
        layout = shard_layout(cfg, tp)
        for r in range(tp):
            w = shard_weights(cfg, layout, r, SEED)
            q = slice(r * (4 // tp) * d, (r + 1) * (4 // tp) * d)
            kvh = layout.kv_heads(r)
            kv = slice(kvh.start * d, kvh.stop * d)
            f = slice(r * 200 // tp, (r + 1) * 200 // tp)
            assert torch.equal(w["layers.0.wq"], full["layers.0.wq"][:, q])
            assert torch.equal(w["layers.0.wo"], full["layers.0.wo"][q])
            assert torch.equal(w["layers.0.wk"], full["layers.0.wk"][:, kv])
            assert torch.equal(w["layers.0.wv"], full["layers.0.wv"][:, kv])
            assert torch.equal(w["layers.0.w_gate"], full["layers.0.w_gate"][:, f])
            assert torch.equal(w["layers.0.w_up"], full["layers.0.w_up"][:, f])
            assert torch.equal(w["layers.0.w_down"], full["layers.0.w_down"][f])
            for k in ("embed", "lm_head", "final_norm", "layers.0.attn_norm"):
                assert torch.equal(w[k], full[k])
    assert full["embed"].shape == (70, 64) and full["lm_head"].shape == (64, 70)
    assert not torch.equal(full["layers.0.w_gate"], full["layers.0.w_up"])
    other = shard_weights(cfg, shard_layout(cfg, 1), 0, SEED + 1)
    assert not torch.equal(other["layers.0.wq"], full["layers.0.wq"])
    # scale N(0, 1/fan_in): down's fan-in is ffn
    assert abs(float(full["layers.0.w_down"].std()) * 200 ** 0.5 - 1) < 0.05


def test_layout_sharded_and_replicated_kv():
    tiny = PRESETS["tiny"]
    two = shard_layout(tiny, 2)
    assert (two.heads_per_rank, two.kv_heads_per_rank, two.kv_replicated) == (4, 1, False)
    assert [two.kv_heads(r) for r in range(2)] == [range(0, 1), range(1, 2)]
    eight = shard_layout(tiny, 8)
    assert eight.kv_replicated and [eight.kv_heads(r).start for r in range(8)] == \
        [0, 0, 0, 0, 1, 1, 1, 1]
    assert eight.heads(5) == range(5, 6) and eight.ffn_columns(1) == range(128, 256)
    assert shard_layout(PRESETS["llama-3-70b"], 8).kv_heads_per_rank == 1


@pytest.mark.parametrize("cfg, tp, message", [
    (PRESETS["llama-3-8b"], 3, "world size 3 does not divide heads=32"),
    (ModelConfig(name="a", hidden=64, layers=1, heads=12, kv_heads=6, ffn=64, vocab=8,
                 head_dim=8), 4, "world size 4 does not divide kv_heads=6"),
    (ModelConfig(name="b", hidden=64, layers=1, heads=24, kv_heads=3, ffn=64, vocab=8,
                 head_dim=8), 8,
     "kv_heads=3 does not divide world size 8 (needed to replicate KV heads)"),
    (ModelConfig(name="c", hidden=64, layers=1, heads=6, kv_heads=3, ffn=1024, vocab=8,
                 head_dim=8), 3, "world size 3 does not divide ffn=1024"),
    (PRESETS["tiny"], 0, "world size: must be an integer >= 1, got 0"),
])
def test_layout_errors(cfg, tp, message):
    with pytest.raises(ValueError) as e:
        shard_layout(cfg, tp)
    assert str(e.value) == message


def test_presets_match_references():
    table = {  # REFERENCES.md, "Tensor-parallel decode"
        "llama-2-7b": (4096, 32, 32, 32, 11008, 32000),
        "llama-3-8b": (4096, 32, 32, 8, 14336, 128256),
        "llama-3-70b": (8192, 80, 64, 8, 28672, 128256),
        "llama-3.1-405b": (16384, 126, 128, 8, 53248, 128256),
    }
    for name, dims in table.items():
        c = model_config(name)
        assert (c.hidden, c.layers, c.heads, c.kv_heads, c.ffn, c.vocab) == dims
        assert c.head_dim == 128
    # message = batch x hidden x dtype bytes: bf16 8 / 16 / 32 KiB per sequence
    assert [all_reduce_bytes(model_config(n), 1, 2) for n in
            ("llama-3-8b", "llama-3-70b", "llama-3.1-405b")] == [8192, 16384, 32768]
    assert site_count(model_config("llama-3-70b")) == 160


def test_byte_counts():
    c = PRESETS["llama-3-70b"]
    lay = shard_layout(c, 8)
    rank = sum(site_weight_bytes(lay, s, 2) for s in range(site_count(c)))
    sharded = (c.hidden * (c.heads + 2 * c.kv_heads) * 128 + c.heads * 128 * c.hidden
               + 3 * c.hidden * c.ffn)
    assert rank == c.layers * (sharded // 8 + 2 * c.hidden) * 2  # norms are replicated
    assert 130e9 < 8 * rank < 142e9  # about 70B bf16 parameters less embedding and LM head
    assert site_kv_read_bytes(lay, 0, pos=9, batch=2, dtype_bytes=2) == 2 * 2 * 1 * 10 * 128 * 2
    assert site_kv_read_bytes(lay, 1, pos=9, batch=2, dtype_bytes=2) == 0


@pytest.mark.parametrize("kw, message", [
    ({"hidden": 0}, "hidden: must be an integer >= 1, got 0"),
    ({"kv_heads": 3}, "kv_heads: must divide heads=8, got 3"),
    ({"head_dim": 31}, "head_dim: must be even (RoPE rotates pairs), got 31"),
    ({"norm_eps": -1.0}, "norm_eps: must be a finite number > 0, got -1.0"),
    ({"vocab": True}, "vocab: must be an integer >= 1, got True"),
])
def test_config_errors(kw, message):
    base = {"name": "t", "hidden": 64, "layers": 1, "heads": 8, "kv_heads": 2, "ffn": 64,
            "vocab": 8, "head_dim": 8}
    with pytest.raises(ValueError) as e:
        ModelConfig(**{**base, **kw})
    assert str(e.value) == message


def test_model_config_lookup_errors():
    with pytest.raises(ValueError, match=r"model: unknown 'llama-9' \(known: llama-2-7b"):
        model_config("llama-9")
    with pytest.raises(ValueError, match="model: unknown field\\(s\\) layer "):
        model_config({"layer": 2})
    assert model_config({"hidden": 64, "layers": 1, "heads": 2, "kv_heads": 1, "ffn": 8,
                         "vocab": 4}).name == "custom"


def test_decoder_rejects_bad_inputs():
    dec = TPDecoder(PRESETS["tiny"], 1, 2, seed=SEED, batch=2, max_seq=4)
    with pytest.raises(ValueError, match=r"pos: must be in \[0, 4\), got 4"):
        dec.step(torch.tensor([0, 1]), 4, None)
    with pytest.raises(ValueError, match=r"tokens: must have shape \(2,\), got \(3,\)"):
        dec.step(torch.tensor([0, 1, 2]), 0, None)
    with pytest.raises(ValueError, match=r"tp_rank: must be in \[0, 2\), got 2"):
        TPDecoder(PRESETS["tiny"], 2, 2, seed=SEED, batch=1, max_seq=1)
