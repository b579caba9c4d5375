"""tp_decode without processes: real compute runs in the plan's dtype, and what one rank's
shard needs in GPU memory (the numbers ``jitterlab validate`` prints and checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collectives import tp_decode
from collectives.inject import make_injector
from collectives.models import PRESETS, rank_memory
from experiments.cli import main


class OneRank:
    """A world of one rank on the CPU that remembers the dtype of every all-reduce."""

    rank, world_size, device = 0, 1, "cpu"

    def __init__(self) -> None:
        self.reduced: list[torch.dtype] = []

    def barrier(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def all_reduce(self, t: torch.Tensor) -> None:
        self.reduced.append(t.dtype)

    def to_numpy(self, t: torch.Tensor) -> np.ndarray:
        return t.float().numpy()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_real_compute_runs_in_the_plan_dtype(dtype):
    backend = OneRank()
    records, logits = tp_decode.run(
        backend, cfg=PRESETS["tiny"], batch=2, steps=2, warmup=0, compute="real", hw=None,
        dtype=dtype, seed=3, schedule=None, injector=make_injector("none"), node=0)
    assert set(backend.reduced) == {getattr(torch, dtype)}
    assert len(backend.reduced) == 2 * 2 * 2  # steps x layers x 2 sites
    site = records.table()["site"] >= 0
    esize = torch.finfo(getattr(torch, dtype)).bits // 8
    assert np.all(records.table()["bytes"][site] == 2 * 256 * esize)  # what really moved
    assert logits.shape == (2, 512) and np.all(np.isfinite(logits))


def test_rank_memory_counts_every_weight_and_the_kv_cache_once():
    tiny = PRESETS["tiny"]  # hidden 256, 2 layers, 8 heads, 2 kv heads, ffn 1024, vocab 512
    from collectives.tensor_parallel import TPDecoder

    for tp in (1, 2, 8):
        dec = TPDecoder(tiny, tp - 1, tp, seed=0, batch=3, max_seq=7, dtype=torch.bfloat16)
        held = sum(w.numel() * w.element_size() for w in dec.weights.values())
        cache = sum(c.numel() * c.element_size() for c in dec.k_cache + dec.v_cache)
        got = rank_memory(tiny, tp, batch=3, positions=7, dtype_bytes=2)
        assert (got.weights_bytes, got.kv_cache_bytes) == (held, cache)
        assert got.total_bytes == held + cache


def test_llama_3_70b_in_bf16_needs_two_h100s_and_just_misses_one_h200():
    big = PRESETS["llama-3-70b"]
    one = rank_memory(big, 1, batch=1, positions=111, dtype_bytes=2)
    assert 139e9 < one.weights_bytes < 143e9  # about 70.6e9 parameters x 2 bytes
    # 80 layers x K and V x 8 kv heads x 111 positions x 128 x 2 bytes
    assert one.kv_cache_bytes == 80 * 2 * 8 * 111 * 128 * 2
    kw = dict(batch=1, steps=100, warmup=10, dtype="bfloat16")
    line, error = tp_decode.memory_per_rank(big, [1, 2, 8], hw=tp_decode.HARDWARE["h100"],
                                            **kw)
    assert error == ("world_sizes: at N=1 one rank needs 141.1 GB (weights 141.1 GB + KV "
                     "cache 36.4 MB in bfloat16); h100 has 80 GB")
    assert line == ("memory per rank (bfloat16 weights + KV cache at batch 1): N=1 141.1 GB, "
                    "N=2 72.7 GB, N=8 21.3 GB; h100 has 80 GB")
    assert "h200 has 141 GB" in tp_decode.memory_per_rank(  # 141.1 GB > 141 GB
        big, [1], hw=tp_decode.HARDWARE["h200"], **kw)[1]
    assert tp_decode.memory_per_rank(big, [1], hw=tp_decode.HARDWARE["b200"], **kw)[1] is None
    # float32 doubles it: N=2 no longer fits an H100
    _, error = tp_decode.memory_per_rank(big, [2, 4], hw=tp_decode.HARDWARE["h100"],
                                         **{**kw, "dtype": "float32"})
    assert error is not None and error.startswith("world_sizes: at N=2 one rank needs 145.")
    custom = tp_decode.hardware({"hbm_bytes_per_s": 1e12, "peak_flops": 1e14})
    assert custom.memory_bytes is None  # unknown memory: nothing to check
    assert tp_decode.memory_per_rank(big, [1], hw=custom, **kw)[1] is None


def test_hardware_memory_must_be_positive():
    with pytest.raises(ValueError, match=r"^hardware.memory_bytes: must be > 0, got -1$"):
        tp_decode.hardware({"hbm_bytes_per_s": 1e12, "peak_flops": 1e14, "memory_bytes": -1})
    assert [tp_decode.HARDWARE[k].memory_bytes for k in ("h100", "h200", "a100", "b200")] \
        == [80e9, 141e9, 80e9, 192e9]


def validate(capsys, spec) -> tuple[int, str, str]:
    """``jitterlab validate SPEC`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(["validate", str(spec)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_refuses_real_compute_that_cannot_fit_and_prints_the_memory(tmp_path,
                                                                              capsys):
    base = ('workload = "tp_decode"\nmodel = "llama-3-70b"\ncompute = "real"\n'
            'dtype = "bfloat16"\nbackend = "nccl"\nsteps = 100\nwarmup = 10\n'
            '[[jitter]]\nname = "none"\ndist = "constant(0s)"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nworld_sizes = [1, 2]\n' + base)
    code, stdout, stderr = validate(capsys, bad)
    assert code == 2, (stdout, stderr)
    assert stderr.strip().endswith(
        "world_sizes: at N=1 one rank needs 141.1 GB (weights 141.1 GB + KV cache 36.4 MB "
        "in bfloat16); h100 has 80 GB"), stderr
    assert len(stderr.strip().splitlines()) == 1 and stdout == ""
    good = tmp_path / "good.toml"
    good.write_text('name = "good"\nworld_sizes = [2, 8]\nhardware = "h100"\n' + base)
    code, stdout, stderr = validate(capsys, good)
    assert code == 0, stderr
    assert ("  memory per rank (bfloat16 weights + KV cache at batch 1): N=2 72.7 GB, "
            "N=8 21.3 GB; h100 has 80 GB\n") in stdout
