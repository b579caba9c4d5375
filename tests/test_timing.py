"""Clock offsets from ping-pong samples, and rank files: pure parts, no processes."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from collectives.clocks import (
    ClockOffset,
    aligned,
    clock_metadata,
    combine,
    offset_from_samples,
    ping_pong,
)
from collectives.timing import Records, read_rank_file, write_rank_file


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
    rec.add(step=0, site=0, op=0, nbytes=64, delay_req_ns=1000, t_start_ns=10,
            t_arrive_ns=1015, t_done_ns=2000)
    rec.add(step=1, site=0, op=0, nbytes=64, delay_req_ns=0, t_start_ns=3000,
            t_arrive_ns=3001, t_done_ns=3500)
    path = tmp_path / "rank-00000.parquet"
    write_rank_file(path, rec.table(), {"rank": 0, "clock_offset_ns": 0})
    cols, meta = read_rank_file(path)
    assert meta == {"rank": 0, "clock_offset_ns": 0}
    assert cols["delay_ns"].tolist() == [1005, 1]  # t_arrive - t_start
    assert cols["t_done_ns"].tolist() == [2000, 3500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-00000.parquet"]


# --- two clocks that really differ, through the real ping-pong ---------------------------

START_NS = 1_000_000_000  # true time when the first estimate starts
RUN_NS = 20_000_000_000   # true time between the two estimates
DRIFT = 50e-6             # the peer's clock runs 50 ppm fast
OFFSET_NS = 5_000_000     # and started 5 ms behind rank 0's


class _FakeRank:
    """One rank of a two-rank world with NCCL's semantics: ``send`` and ``recv`` are only
    enqueued, ``synchronize`` completes them; reading a buffer whose recv is pending is an
    error. Time is simulated, never slept: each rank carries its own notion of true time,
    which a clock read advances by 50 ns and a receive moves to the message's departure
    plus its transport latency (seeded, asymmetric: 3-23 us out, 2-52 us back)."""

    world_size = 2

    def __init__(self, rank: int, boxes: list[queue.Queue], rate: float, offset_ns: int):
        self.rank, self.boxes, self.rate, self.offset_ns = rank, boxes, rate, offset_ns
        self.true_ns = START_NS
        self.pending: list[tuple[str, np.ndarray, int]] = []
        self.rng = np.random.default_rng(rank)
        self.syncs = 0

    def clock(self) -> int:
        self.true_ns += 50
        return int(self.true_ns * self.rate) + self.offset_ns

    def from_numpy(self, a: np.ndarray, dtype: str) -> np.ndarray:
        return np.array(a, dtype=dtype)

    def to_numpy(self, buf: np.ndarray) -> np.ndarray:
        if any(b is buf for op, b, _ in self.pending if op == "recv"):
            raise AssertionError("read a buffer before its recv completed (no synchronize)")
        return buf.copy()

    def send(self, buf: np.ndarray, dst: int) -> None:
        self.pending.append(("send", buf.copy(), dst))

    def recv(self, buf: np.ndarray, src: int) -> None:
        self.pending.append(("recv", buf, src))

    def synchronize(self) -> None:
        self.syncs += 1
        for op, buf, _ in self.pending:
            if op == "send":
                self.boxes[1 - self.rank].put((buf, self.true_ns))
            else:
                data, sent_ns = self.boxes[self.rank].get(timeout=60)  # only if broken
                low, high = (3_000, 23_000) if self.rank == 1 else (2_000, 52_000)
                buf[...] = data
                self.true_ns = max(self.true_ns, sent_ns + int(self.rng.integers(low, high)))
        self.pending.clear()


def _true_offset(t0_ns: float) -> float:
    """t_rank0 - t_peer when rank 0's clock (true time) reads t0_ns."""
    return t0_ns - (t0_ns * (1 + DRIFT) - OFFSET_NS)


def _estimate(ranks: list[_FakeRank]) -> list[ClockOffset]:
    out: list = [None, None]

    def run(r: int) -> None:
        out[r] = ping_pong(ranks[r], 1, rounds=32, clock=ranks[r].clock)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_ping_pong_between_drifting_clocks_and_interpolation_recover_the_true_offset():
    boxes: list[queue.Queue] = [queue.Queue(), queue.Queue()]
    ranks = [_FakeRank(0, boxes, 1.0, 0), _FakeRank(1, boxes, 1 + DRIFT, -OFFSET_NS)]
    before = _estimate(ranks)
    for r in ranks:  # the run: both idle for RUN_NS of true time
        r.true_ns += RUN_NS
    after = _estimate(ranks)
    assert ranks[0].syncs == ranks[1].syncs == 2 * 2 * 32 + 2  # after every send and recv
    for on_0, on_peer in (before, after):
        assert on_peer == on_0  # the peer gets rank 0's estimate
        # within the half round trip; 2 ns more for the integer clocks and the drift
        # during that half trip (50 ppm of < 40 us)
        assert abs(on_0.offset_ns - _true_offset(on_0.t_ns)) <= on_0.uncertainty_ns + 2
        assert 0 < on_0.uncertainty_ns < 40_000
    b, a = before[1], after[1]
    assert a.t_ns - b.t_ns == pytest.approx(RUN_NS, rel=1e-4)
    assert b.offset_ns - a.offset_ns == pytest.approx(DRIFT * RUN_NS, rel=0.05)  # 1 ms
    meta = clock_metadata(b, a)
    unc = max(b.uncertainty_ns, a.uncertainty_ns) + 2
    one = combine(b, a).offset_ns
    for t0 in (b.t_ns, (b.t_ns + a.t_ns) // 2, a.t_ns):  # rank 0's clock
        t_peer = np.array([round(t0 * (1 + DRIFT)) - OFFSET_NS])
        got = aligned(t_peer, meta)
        assert abs(int(got[0]) - t0) <= unc, (t0, int(got[0]) - t0)
        if t0 != (b.t_ns + a.t_ns) // 2:  # one averaged offset is off by half the drift
            assert abs(int(t_peer[0]) + one - t0) > 400_000 > 10 * unc


def test_aligned_interpolates_inside_and_clamps_outside_the_two_estimates():
    meta = {"clock_offset_ns": 1500, "clock_offset_before_ns": 1000,
            "clock_offset_after_ns": 2000, "clock_offset_before_t_ns": 10_000,
            "clock_offset_after_t_ns": 1_010_000}  # 1000 ppm: offset(t0) = 1000 + t0/1000
    t0 = [6_000, 10_000, 510_000, 1_010_000, 2_002_000]  # rank 0's clock
    t_here = np.array([5_000, 9_000, 508_500, 1_008_000, 2_000_000])
    assert aligned(t_here, meta).tolist() == t0  # ends held, not extrapolated
    with pytest.raises(ValueError, match=r"^clock_offset_after_ns: 600000 implies a drift "
                                         r"of 0.6 from 0 between t=0 and t=1000000$"):
        aligned(t_here, {**meta, "clock_offset_before_ns": 0, "clock_offset_after_ns": 600_000,
                         "clock_offset_before_t_ns": 0, "clock_offset_after_t_ns": 1_000_000})
    # older files and callers: one number everywhere; unknown stays unknown
    assert aligned(t_here, {"clock_offset_ns": 7}).tolist() == (t_here + 7).tolist()
    assert aligned(t_here, 7).tolist() == (t_here + 7).tolist()
    assert aligned(t_here, None) is None
    assert aligned(t_here, {"clock_offset_ns": None}) is None
    same_host = clock_metadata(ClockOffset(offset_ns=0, uncertainty_ns=0),
                               ClockOffset(offset_ns=0, uncertainty_ns=0))
    assert aligned(t_here, same_host).tolist() == t_here.tolist()
