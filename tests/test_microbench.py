"""microbench.summarize on synthetic records: the arrival skew aligns each record with
the clock offset at its own time."""

from __future__ import annotations

import numpy as np
import pytest

from collectives import microbench
from collectives.timing import COLUMNS

US = 1_000


def test_skew_uses_the_offset_interpolated_at_each_arrival():
    # rank 1 arrives 30 us after rank 0 at every iteration; its clock drifts, the offset
    # to rank 0 going from 0 to 2 ms over the 100 ms the iterations span
    iters = 11
    start = 5_000_000 + np.arange(iters) * 10_000 * US  # rank 0's clock
    t_b, t_a = int(start[0]), int(start[-1]) + 100 * US  # the estimates bracket the run
    slope = 2_000 * US / (t_a - t_b)
    tables = []
    for late in (0, 30 * US):
        arrive = start + 10 * US + late
        done = start + 60 * US
        table = {k: np.zeros(iters, np.int64) for k in COLUMNS}
        table.update(step=np.arange(iters), bytes=np.full(iters, 1024), t_start_ns=start,
                     t_arrive_ns=arrive, t_done_ns=done, delay_ns=arrive - start)
        tables.append(table)
    for col in ("t_start_ns", "t_arrive_ns", "t_done_ns"):  # t_here = t_rank0 - offset(t)
        t = tables[1][col]
        tables[1][col] = t - np.rint((t - t_b) * slope).astype(np.int64)
    meta = {"clock_offset_ns": 1_000 * US, "clock_offset_before_ns": 0,
            "clock_offset_after_ns": 2_000 * US, "clock_offset_before_t_ns": t_b,
            "clock_offset_after_t_ns": t_a}

    def skew(clocks):
        (row,) = microbench.summarize(tables, colls=["all_reduce"], world_size=2,
                                      offsets_ns=clocks, wrong=[[0], [0]])
        return row["skew_us"]

    assert skew([{"clock_offset_ns": 0}, meta]) == pytest.approx(30.0, abs=0.01)
    assert abs(skew([0, 1_000 * US]) - 30.0) > 400  # one number: off by the drift
    assert skew([0, None]) is None
