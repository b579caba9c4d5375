"""Collective ops with nccl-tests semantics (collectives.ops).

Expected outputs are checked against an independent brute-force simulation: all ranks'
inputs are built, the collective is computed with plain numpy in the target dtype (so a
float16 sum is rounded after every addition, as a ring would), and each rank's slice is
taken by hand.
"""

import re

import numpy as np
import pytest

from collectives.ops import (
    OPS,
    REDOPS,
    algbw_gbps,
    check,
    get_op,
    parse_size,
    size_sweep,
)

OP_NAMES = ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all"]
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]
WORLD_SIZES = [1, 2, 3, 4, 8]
CHUNK = 6  # elements per rank chunk in the simulations


def test_registry_holds_the_five_ops_by_name():
    assert list(OPS) == OP_NAMES
    assert all(OPS[name].name == name for name in OP_NAMES)
    assert [name for name in OP_NAMES if OPS[name].uses_redop] == ["all_reduce", "reduce_scatter"]
    assert [name for name in OP_NAMES if OPS[name].uses_root] == ["broadcast"]


def test_unknown_op_lists_the_known_ones():
    with pytest.raises(ValueError, match=re.escape(
            "unknown op 'allreduce'; known: all_reduce, all_gather, reduce_scatter, "
            "broadcast, all_to_all")):
        get_op("allreduce")
    assert get_op("broadcast") is OPS["broadcast"]


# --- bandwidth ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 64])
def test_bus_factors_follow_nccl_tests(n):
    assert OPS["all_reduce"].bus_factor(n) == 2 * (n - 1) / n
    for name in ["reduce_scatter", "all_gather", "all_to_all"]:
        assert OPS[name].bus_factor(n) == (n - 1) / n
    assert OPS["broadcast"].bus_factor(n) == 1.0


def test_bus_factor_at_one_rank_is_zero_except_broadcast():
    # nccl-tests prints busbw 0 at one rank: the formula is kept, not special-cased.
    assert [OPS[name].bus_factor(1) for name in OP_NAMES] == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_algbw_and_busbw():
    assert algbw_gbps(2_000_000_000, 0.5) == 4.0
    assert OPS["all_reduce"].busbw_gbps(1_000_000_000, 0.5, 8) == 2.0 * 2 * 7 / 8
    assert OPS["all_gather"].busbw_gbps(3_000_000_000, 1.0, 4) == 3.0 * 3 / 4
    assert OPS["broadcast"].busbw_gbps(1_000_000_000, 1.0, 64) == 1.0
    with pytest.raises(ValueError, match=re.escape("seconds=0.0: must be positive")):
        algbw_gbps(1024, 0.0)
    with pytest.raises(ValueError, match=re.escape("world_size=0: expected an integer >= 1")):
        OPS["all_reduce"].bus_factor(0)


# --- counts and rounding --------------------------------------------------------------


@pytest.mark.parametrize("name, size_bytes, elem_size, n, counts, moved", [
    ("all_reduce", 1024, 4, 8, (256, 256), 1024),
    ("all_reduce", 1001, 4, 3, (250, 250), 1000),  # partial element dropped
    ("broadcast", 1001, 2, 3, (500, 500), 1000),
    ("all_gather", 1000, 4, 3, (83, 249), 996),  # 250 elements -> 83 per rank
    ("reduce_scatter", 1000, 4, 3, (249, 83), 996),
    ("all_to_all", 1000, 4, 3, (249, 249), 996),
    ("all_gather", 1024, 4, 8, (32, 256), 1024),
    ("reduce_scatter", 12, 4, 3, (3, 1), 12),  # the smallest size: one element per rank
    ("all_to_all", 8, 8, 1, (1, 1), 8),
])
def test_counts_and_bytes_moved(name, size_bytes, elem_size, n, counts, moved):
    op = OPS[name]
    assert op.counts(size_bytes, elem_size, n) == counts
    assert op.bytes_moved(size_bytes, elem_size, n) == moved


@pytest.mark.parametrize("name, size_bytes, elem_size, n, message", [
    ("all_reduce", 3, 4, 8, "all_reduce: size_bytes=3 is smaller than one element; "
                            "minimum 4 bytes"),
    ("broadcast", 0, 2, 1, "broadcast: size_bytes=0 is smaller than one element; "
                           "minimum 2 bytes"),
    ("all_gather", 28, 4, 8, "all_gather: size_bytes=28 is smaller than 8 elements "
                             "(one per rank); minimum 32 bytes"),
    ("reduce_scatter", 11, 4, 3, "minimum 12 bytes"),
    ("all_to_all", 63, 8, 8, "minimum 64 bytes"),
])
def test_too_small_sizes_name_the_minimum(name, size_bytes, elem_size, n, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OPS[name].counts(size_bytes, elem_size, n)


def test_counts_reject_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("size_bytes=-4: expected an integer >= 0")):
        OPS["all_reduce"].counts(-4, 4, 2)
    with pytest.raises(ValueError, match=re.escape("elem_size=0")):
        OPS["all_reduce"].counts(64, 0, 2)
    with pytest.raises(ValueError, match=re.escape("world_size=True")):
        OPS["all_gather"].counts(64, 4, True)


# --- inputs ---------------------------------------------------------------------------


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even) -> float32, by bit manipulation."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("redop, bound", [("sum", 4), ("max", 4), ("min", 4), ("prod", 2),
                                          ("avg", 64)])
def test_inputs_are_small_integers_exact_in_bfloat16(redop, bound):
    op, n = OPS["all_reduce"], 64
    stack = np.stack([op.inputs(r, n, 4096, np.float32, seed=11, redop=redop)
                      for r in range(n)])
    assert np.array_equal(stack, np.round(stack))
    assert np.abs(stack).max() == bound
    assert np.array_equal(_bf16_round(stack), stack)
    assert np.array_equal(_bf16_round(np.float32([257.0])), [256.0])  # the helper rounds
    if redop in ("sum", "max", "min"):
        assert np.abs(stack).sum(axis=0).max() <= 256  # every partial sum: exact in fp16/bf16
        assert set(np.unique(stack)) == set(range(-4, 5))
    if redop == "prod":
        assert (np.abs(stack) == 2).sum(axis=0).tolist() == [1] * 4096  # one +-2 per element
    if redop == "avg":
        assert not (stack % n).any()


def test_inputs_are_deterministic_and_differ_by_rank_and_seed():
    op = OPS["all_reduce"]
    a = op.inputs(1, 4, 1000, np.int64, seed=3)
    assert a.dtype == np.int64 and a.shape == (1000,)
    assert np.array_equal(a, op.inputs(1, 4, 1000, np.int64, seed=3))
    assert np.count_nonzero(a != op.inputs(2, 4, 1000, np.int64, seed=3)) > 800
    assert np.count_nonzero(a != op.inputs(1, 4, 1000, np.int64, seed=4)) > 800


def test_ops_without_a_redop_ignore_it():
    op = OPS["all_gather"]
    plain = op.inputs(0, 2, 50, np.int32, seed=1)
    assert np.array_equal(op.inputs(0, 2, 50, np.int32, seed=1, redop="prod"), plain)
    assert np.array_equal(op.inputs(0, 2, 50, np.int32, seed=1, redop="bogus"), plain)
    assert np.array_equal(op.expected(0, 2, 50, np.int32, "avg", seed=1),
                          op.expected(0, 2, 50, np.int32, "sum", seed=1))


def test_input_validation_errors():
    op = OPS["all_reduce"]
    with pytest.raises(ValueError, match=re.escape("unknown redop 'mean'; known: sum, prod, "
                                                   "max, min, avg")):
        op.inputs(0, 2, 8, np.float32, redop="mean")
    with pytest.raises(ValueError, match=r"dtype <class 'numpy.uint8'> not supported; use one "
                                         r"of float16, float32, float64, int32, int64"):
        op.inputs(0, 2, 8, np.uint8)
    with pytest.raises(ValueError, match=re.escape("dtype 'bfloat16' not supported")):
        op.expected(0, 2, 8, "bfloat16")
    with pytest.raises(ValueError, match=re.escape("rank=2 outside world_size=2")):
        op.inputs(2, 2, 8, np.float32)
    with pytest.raises(ValueError, match=re.escape("seed=-1: expected an integer >= 0")):
        op.expected(0, 2, 8, np.float32, seed=-1)
    with pytest.raises(ValueError, match=re.escape("root=3 outside world_size=3")):
        OPS["broadcast"].expected(0, 3, 8, np.float32, root=3)
    with pytest.raises(ValueError, match=re.escape(
            "reduce_scatter: send_count=7 is not a multiple of world_size=2")):
        OPS["reduce_scatter"].expected(0, 2, 7, np.float32)


# --- expected vs brute force ------------------------------------------------------------


def _reduce_in_dtype(stack: np.ndarray, redop: str) -> np.ndarray:
    """Rank-by-rank reduction in the buffer's dtype, rounding after every step."""
    if redop in ("max", "min"):
        return (np.max if redop == "max" else np.min)(stack, axis=0)
    acc = stack[0].copy()
    for row in stack[1:]:
        acc = acc * row if redop == "prod" else acc + row
    if redop == "avg":
        if np.issubdtype(stack.dtype, np.integer):
            assert not (acc % len(stack)).any()
            return acc // len(stack)
        return acc / stack.dtype.type(len(stack))
    return acc


def _brute_force(name, n, dtype, redop, root, seed):
    """Every rank's output, computed from all inputs with plain numpy."""
    op = OPS[name]
    send = CHUNK * n if name in ("reduce_scatter", "all_to_all") else CHUNK
    stack = np.stack([op.inputs(r, n, send, dtype, seed=seed, redop=redop) for r in range(n)])
    assert stack.dtype == np.dtype(dtype)
    if name == "all_reduce":
        return send, [_reduce_in_dtype(stack, redop)] * n
    if name == "reduce_scatter":
        total = _reduce_in_dtype(stack, redop)
        return send, [total[r * CHUNK:(r + 1) * CHUNK] for r in range(n)]
    if name == "all_gather":
        return send, [np.concatenate(list(stack))] * n
    if name == "broadcast":
        return send, [stack[root]] * n
    # all_to_all: rank r receives chunk r of every sender, in sender order
    return send, [np.concatenate([stack[s, r * CHUNK:(r + 1) * CHUNK] for s in range(n)])
                  for r in range(n)]


CASES = [(name, n, dtype, redop, root)
         for name in OP_NAMES
         for n in WORLD_SIZES
         for dtype in DTYPES
         for redop in (REDOPS if OPS[name].uses_redop else ["sum"])
         for root in ({0, n - 1} if name == "broadcast" else {0})]
CASES += [(name, 64, np.float16, redop, 0)  # exactness in float16 at the largest world size
          for name in ("all_reduce", "reduce_scatter") for redop in REDOPS]


@pytest.mark.parametrize("name, n, dtype, redop, root", CASES)
def test_expected_matches_brute_force(name, n, dtype, redop, root):
    seed = 1000 + n
    send, outputs = _brute_force(name, n, dtype, redop, root, seed)
    op, itemsize = OPS[name], np.dtype(dtype).itemsize
    size_bytes = CHUNK * itemsize * (n if name in ("all_gather", "reduce_scatter",
                                                   "all_to_all") else 1)
    send_count, recv_count = op.counts(size_bytes, itemsize, n)
    assert send_count == send
    for rank, want in enumerate(outputs):
        got = op.expected(rank, n, send, dtype, redop, root, seed)
        assert got.dtype == np.dtype(dtype)
        assert got.shape == (recv_count,)
        assert np.array_equal(got, want), (rank, got, want)


@pytest.mark.parametrize("redop", REDOPS)
def test_float16_sum_at_64_ranks_is_exact(redop):
    """The float16 reduction, rounded after every step, equals the exact integer result."""
    op, n, count = OPS["all_reduce"], 64, 2048
    stack = np.stack([op.inputs(r, n, count, np.float16, seed=5, redop=redop) for r in range(n)])
    exact = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min,
             "avg": lambda a, axis: np.sum(a, axis=axis) / n}[redop](
        stack.astype(np.float64), axis=0)
    assert np.array_equal(_reduce_in_dtype(stack, redop).astype(np.float64), exact)
    assert np.array_equal(op.expected(0, n, count, np.float16, redop, seed=5), exact)
    if redop == "sum":
        assert np.abs(exact).max() >= 16  # sums reach beyond any single input


def test_results_depend_on_every_rank():
    """A reduction that drops one rank, or a misplaced chunk, would be caught."""
    n, send = 8, 8 * 64
    op = OPS["all_reduce"]
    full = op.expected(0, n, send, np.int64, "sum", seed=2)
    partial = sum(op.inputs(r, n, send, np.int64, seed=2) for r in range(n - 1))
    assert check(partial, full) > send // 2
    a2a = OPS["all_to_all"]
    assert check(a2a.expected(0, n, send, np.int64, seed=2),
                 a2a.expected(1, n, send, np.int64, seed=2)) > send // 2
    prod = op.expected(0, n, send, np.int64, "prod", seed=2)
    assert set(np.unique(prod)) == {-2, 2}


# --- check ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_check_counts_injected_errors_exactly(dtype):
    expected = OPS["all_reduce"].expected(0, 4, 1000, dtype, "sum", seed=9)
    rng = np.random.default_rng(0)
    for wrong in [0, 1, 17, 1000]:
        received = expected.copy()
        where = rng.choice(1000, wrong, replace=False)
        received[where] += 1
        assert check(received, expected) == wrong
    if np.issubdtype(dtype, np.floating):
        received = expected.copy()
        received[[3, 5]] = np.nan
        assert check(received, expected) == 2
        assert check(received, expected, atol=1.0) == 2


def test_check_tolerance_and_shape():
    expected = np.zeros(4, np.float32)
    received = np.float32([0.0, 1e-3, -2e-3, 1.0])
    assert check(received, expected) == 3
    assert check(received, expected, atol=2.5e-3) == 1
    with pytest.raises(ValueError, match=re.escape("received shape (3,) != expected shape (4,)")):
        check(received[:3], expected)
    with pytest.raises(ValueError, match=re.escape("atol=-1.0: must be >= 0")):
        check(received, expected, atol=-1.0)


# --- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("1", 1), ("1024", 1024), ("1K", 1024), ("1k", 1024), ("64K", 65536),
    ("8M", 8 * 1024**2), ("8m", 8 * 1024**2), ("1G", 1024**3), ("4g", 4 * 1024**3),
    (" 32 M ", 32 * 1024**2), (4096, 4096),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "K", "1.5K", "-1", "1KB", "1T", "1 K B", "0x10",
                                  None, 2.0, True])
def test_parse_size_errors_name_the_value(text):
    with pytest.raises(ValueError, match=re.escape(f"invalid size {text!r}: expected whole "
                                                   "bytes with an optional K, M or G suffix")):
        parse_size(text)
    with pytest.raises(ValueError, match=re.escape("invalid size -5: must be >= 0")):
        parse_size(-5)


@pytest.mark.parametrize("low, high, factor, sizes", [
    ("8", "128", 2, [8, 16, 32, 64, 128]),
    ("1K", "1M", 4, [1024, 4096, 16384, 65536, 262144, 1048576]),
    (8, 100, 2, [8, 16, 32, 64]),  # stops at the last size not above max
    (8, 8, 1, [8]),  # one size: any factor
    ("32M", "32M", 0, [32 * 1024**2]),
    (3, 30, 3, [3, 9, 27]),
])
def test_size_sweep(low, high, factor, sizes):
    assert size_sweep(low, high, factor) == sizes


def test_size_sweep_errors():
    with pytest.raises(ValueError, match=re.escape("step_factor=1: must be at least 2 to go "
                                                   "from 8 to 64 bytes")):
        size_sweep(8, 64, 1)
    with pytest.raises(ValueError, match=re.escape("step_factor=-2: must be at least 2")):
        size_sweep(8, 64, -2)
    with pytest.raises(ValueError, match=re.escape("step_factor=1.5: expected an integer")):
        size_sweep(8, 64, 1.5)
    with pytest.raises(ValueError, match=re.escape("max_bytes='1K' is smaller than "
                                                   "min_bytes='1M'")):
        size_sweep("1M", "1K")
    with pytest.raises(ValueError, match=re.escape("min_bytes=0: must be at least 1 byte")):
        size_sweep(0, 64)
    with pytest.raises(ValueError, match=re.escape("invalid size '8X'")):
        size_sweep("8X", 64)


def test_the_native_algorithm_implements_exactly_the_ops_here():
    # jitter_models (no torch, below collectives) declares native's collectives itself.
    from jitter_models.algorithms import ALGORITHMS

    assert set(ALGORITHMS["native"]) == set(OPS)
