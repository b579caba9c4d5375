"""Clock offsets from ping-pong samples, and rank files: pure parts, no processes."""

from __future__ import annotations

import numpy as np
import pytest

from collectives.timing import (
    ClockOffset,
    Records,
    combine,
    offset_from_samples,
    read_rank_file,
    write_rank_file,
)


def test_offset_from_the_fastest_round_trip_brackets_the_truth():
    rng = np.random.default_rng(0)
    true_offset = 123_456_789  # t_rank0 = t_peer + offset
    t0 = np.cumsum(rng.integers(10_000, 20_000, 64))
    out = rng.integers(1_000, 50_000, 64)   # rank 0 -> peer, ns (asymmetric, noisy)
    back = rng.integers(1_000, 50_000, 64)  # peer -> rank 0
    t1 = t0 + out - true_offset             # the peer's clock when it stamps
    t2 = t0 + out + back
    est = offset_from_samples(t0, t1, t2)
    i = int(np.argmin(out + back))
    assert est.uncertainty_ns == (out[i] + back[i] + 1) // 2
    assert abs(est.offset_ns - true_offset) <= est.uncertainty_ns


def test_negative_round_trips_are_refused():
    with pytest.raises(ValueError, match="negative round trip"):
        offset_from_samples(np.array([10]), np.array([0]), np.array([5]))


def test_combine_covers_the_drift_between_before_and_after():
    before = ClockOffset(offset_ns=1000, uncertainty_ns=50)
    after = ClockOffset(offset_ns=1400, uncertainty_ns=80)
    both = combine(before, after)
    assert both.offset_ns == 1200 and both.uncertainty_ns == 80 + 200
    unknown = ClockOffset(offset_ns=None, uncertainty_ns=None)
    assert combine(unknown, after) == after and combine(before, unknown) == before


def test_rank_file_round_trip_is_atomic_and_keeps_metadata(tmp_path):
    rec = Records(2)
    rec.add(0, 0, 0, 64, 1000, 10, 1015, 2000)
    rec.add(1, 0, 0, 64, 0, 3000, 3001, 3500)
    path = tmp_path / "rank-00000.parquet"
    write_rank_file(path, rec.table(), {"rank": 0, "clock_offset_ns": 0})
    cols, meta = read_rank_file(path)
    assert meta == {"rank": 0, "clock_offset_ns": 0}
    assert cols["delay_ns"].tolist() == [1005, 1]  # t_arrive - t_start
    assert cols["t_done_ns"].tolist() == [2000, 3500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-00000.parquet"]
