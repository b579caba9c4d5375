"""The one timing primitive (collectives.timing.SiteTimer), on the host clock and on a
fake CUDA event clock: what lands in which column, and that device time is read from the
events, not from the host, which runs ahead of the stream."""

from __future__ import annotations

import numpy as np

import collectives.timing as timing
from collectives.timing import STEP_SITE, Records, SiteTimer


class Stream:
    """A fake GPU stream: work enqueued runs after what is queued, on its own clock; the
    host only enqueues (1 us a launch) and waits at synchronize."""

    def __init__(self, host: list[int]):
        self.host = host  # the host clock, ns (a list so the test can move it)
        self.busy_until = 0

    def enqueue(self, duration_ns: int) -> None:
        self.host[0] += 1_000
        self.busy_until = max(self.busy_until, self.host[0]) + duration_ns

    def synchronize(self) -> None:
        self.host[0] = max(self.host[0], self.busy_until)


class Event:
    def __init__(self, stream: Stream):
        self.stream, self.t = stream, None

    def record(self) -> None:
        self.stream.enqueue(0)
        self.t = self.stream.busy_until

    def elapsed_time(self, other: Event) -> float:  # ms, as torch.cuda.Event
        return (other.t - self.t) / 1e6


class Backend:
    def __init__(self, stream: Stream):
        self.stream = stream

    def synchronize(self) -> None:
        self.stream.synchronize()


class StreamDelay:
    """Like the CUDA injector: the delay is a kernel on the stream; the host goes on."""

    def __init__(self, stream: Stream):
        self.stream = stream

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        self.stream.enqueue(delay_ns)


def test_on_cuda_the_records_hold_device_time_not_launch_time(monkeypatch):
    host = [10_000_000]
    monkeypatch.setattr(timing, "now_ns", lambda: host[0])
    stream = Stream(host)
    records = Records(8)
    timer = SiteTimer(Backend(stream), StreamDelay(stream), records,
                      event=lambda: Event(stream))
    for step in range(2):
        timer.begin_step(step)
        for site in range(2):
            timer.site(site, delay_ns=300_000, nbytes=64, index=2 * step + site,
                       compute=lambda: stream.enqueue(2_000_000),        # 2 ms of compute
                       collective=lambda: (stream.enqueue(50_000), (0, 0))[1])  # 50 us
        timer.step_row(timer.end_step())
    t = records.table()
    sites = t["site"] >= 0
    # Delay and collective as the stream ran them (to the launch latency, 1 us here),
    # although the host enqueued each in about a microsecond.
    delay = t["delay_ns"][sites]
    coll = (t["t_done_ns"] - t["t_arrive_ns"])[sites]
    compute = (t["t_arrive_ns"] - t["t_start_ns"])[sites] - delay
    assert np.all(np.abs(delay - 300_000) <= 2_000), delay
    assert np.all(np.abs(coll - 50_000) <= 2_000), coll
    assert np.all(np.abs(compute - 2_000_000) <= 2_000), compute
    # Steps: from the anchor to the stream's end of the step, about 2 x 2.35 ms.
    steps = ~sites
    assert t["site"][steps].tolist() == [STEP_SITE, STEP_SITE]
    dur = (t["t_done_ns"] - t["t_start_ns"])[steps]
    assert np.all(np.abs(dur - 4_700_000) <= 10_000), dur
    # Times are on the host clock: each step starts after the previous one ended.
    assert t["t_start_ns"][steps][1] >= t["t_done_ns"][steps][0]


class HostClock:
    """A host-only run: each clock read advances 10 ns; compute and delay advance it."""

    def __init__(self):
        self.t = 1_000

    def __call__(self) -> int:
        self.t += 10
        return self.t


class HostDelay:
    def __init__(self, clock: HostClock):
        self.clock = clock

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        self.clock.t = max(self.clock.t, t_start_ns + delay_ns)


class NoDevice:
    def synchronize(self) -> None:
        return None


def test_on_the_host_each_column_is_its_own_interval(monkeypatch):
    clock = HostClock()
    monkeypatch.setattr(timing, "now_ns", clock)
    records, mark = Records(4), np.zeros(1, dtype=np.int64)
    timer = SiteTimer(NoDevice(), HostDelay(clock), records, mark=mark)
    timer.begin_step(0)

    def compute() -> None:
        clock.t += 5_000

    def collective() -> tuple[int, int]:
        clock.t += 700
        return 40, 45

    timer.site(3, delay_ns=2_000, compute=compute, collective=collective, op=1, nbytes=8,
               index=7)
    timer.site(4, delay_ns=2_000, collective=collective, index=8)  # no compute
    t = records.table()
    assert t["site"].tolist() == [3, 4] and mark[0] == 8
    # With compute, the delay is timed from when compute ended, not from the site start.
    assert t["delay_ns"][0] == 2_000 + 10  # the deadline, then one clock read
    assert t["t_arrive_ns"][0] - t["t_start_ns"][0] >= 5_000 + 2_000
    # Without compute the delay starts at the site start (delay = t_arrive - t_start).
    assert t["delay_ns"][1] == t["t_arrive_ns"][1] - t["t_start_ns"][1]
    assert t["hop_delay_req_ns"].tolist() == [40, 40] and t["hop_delay_ns"].tolist() == [45, 45]
    assert (t["t_done_ns"] - t["t_arrive_ns"]).tolist() == [710, 710]
    assert t["op"].tolist() == [1, 0] and t["bytes"].tolist() == [8, 0]
